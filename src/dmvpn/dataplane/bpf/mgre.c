// SPDX-License-Identifier: GPL-2.0
/* The eBPF fast path of a DMVPN interface (dataplane/ebpf.py loads it).
 *
 * dmvpn_egress (tcx egress of the TAP): an IPv4/IPv6 frame to a bound peer's
 * MAC (02:00 + NBMA address) becomes outer IPv4 + GRE and leaves through the
 * underlay by bpf_redirect_neigh. dmvpn_ingress (tcx ingress of the
 * underlay): GRE with our key from a bound peer is stripped, given an
 * Ethernet header and redirected into the TAP's ingress. Anything else
 * (ARP, ICMPv6/ND, multicast, NHRP, unbound peers, other keys) passes
 * (PASS) to the userspace path as if this program were not there.
 *
 * The daemon owns the maps: `peers` holds exactly the NBMA addresses that
 * have a binding (a peer is fast-pathed only when bound) and their counters;
 * `config` is one entry, with `flags` = 0 turning both programs into
 * pass-throughs (a redirecting hub, IPsec).
 *
 * TCP, UDP and IPv6 go the fast way only to a peer proven to decapsulate in
 * its kernel (capable_ns): their checksums may still be partial and their
 * packets GSO-sized, which a NIC finishes but a veth passes on as is, and a
 * peer's raw GRE socket would get them unfinished. The daemon proves a peer
 * by pinging its tunnel address: the reply this program sent carries
 * PROBE_ID. ICMP and the rest carry finished checksums: always fast.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_GRE 47
#define IPPROTO_ICMPV6 58
#define GRE_KEY_PRESENT 0x2000

/* Not ours: tcx runs the next program on the device, if any, then passes it
 * on (TC_ACT_OK would end the chain and skip other programs, e.g. another
 * interface's on the same underlay). */
#define PASS TC_ACT_UNSPEC

#define CFG_ON 1     /* fast path enabled */
#define CFG_KEY 2    /* GRE key configured */
#define CFG_IPV6 4   /* the overlay carries IPv6 */
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
/* The outer IP id of what this program encapsulates: an echo reply with it
 * proves the peer's kernel (this program) answered, not its userspace path. */
#define PROBE_ID 0xD3B9
/* How long a proven peer stays proven without a new probe reply. */
#define CAPABLE_NS (30ULL * 1000000000ULL)

struct config {
	__u32 local;            /* our NBMA address (network order) */
	__u32 key;              /* GRE key (network order) */
	__u32 flags;
	__u32 tap_ifindex;
	__u32 underlay_ifindex;
	__u32 max_inner;        /* largest non-GSO inner packet that fits the underlay */
	__u8 tap_mac[6];
	__u8 pad[2];
};

struct peer {
	__u64 tx_packets;
	__u64 tx_bytes;         /* GRE header + payload, as the userspace path counts */
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 capable_ns;       /* when the peer's kernel last answered a probe */
	__u8 last_dst[4];       /* the inner IPv4 destination last sent (0: none):
	                         * which shortcut carried it (use, refresh) */
	__u8 pad[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);     /* NBMA address, network order */
	__type(value, struct peer);
} peers SEC(".maps");

struct outer {
	__u8 ver_ihl;
	__u8 tos;
	__u16 tot_len;
	__u16 id;
	__u16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__u32 saddr;
	__u32 daddr;
	__u16 gre_flags;
	__u16 gre_proto;
	__u32 gre_key;
} __attribute__((packed));

static __always_inline __u16 ip_checksum(const struct outer *o)
{
	const __u16 *w = (const __u16 *)o;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

static __always_inline struct config *get_config(void)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || !(cfg->flags & CFG_ON))
		return 0;
	return cfg;
}

SEC("tc")
int dmvpn_egress(struct __sk_buff *skb)
{
	struct config *cfg = get_config();
	__u8 eth[ETH_HLEN];
	struct outer o = {};
	struct peer *peer;
	__u32 nbma, olen, segs;
	__u16 proto;
	__u8 next;
	__u8 dst[4] = {};

	if (!cfg)
		return PASS;
	if (bpf_skb_load_bytes(skb, 0, eth, ETH_HLEN) < 0)
		return PASS;
	if (eth[0] != 0x02 || eth[1] != 0x00)
		return PASS;   /* multicast, broadcast, not a peer's MAC */
	proto = ((__u16)eth[12] << 8) | eth[13];
	if (proto == ETH_P_IPV6) {
		if (!(cfg->flags & CFG_IPV6))
			return PASS;
		/* ICMPv6 carries ND, which the userspace path answers from NHRP. */
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &next, 1) < 0 || next == IPPROTO_ICMPV6)
			return PASS;
	} else if (proto != ETH_P_IP) {
		return PASS;
	}
	__builtin_memcpy(&nbma, &eth[2], 4);
	peer = bpf_map_lookup_elem(&peers, &nbma);
	if (!peer)
		return PASS;   /* unbound: the userspace path (via the NHS) */
	if (!skb->gso_size && skb->len - ETH_HLEN > cfg->max_inner)
		return PASS;   /* would not fit: the kernel's fragmentation */
	if (proto == ETH_P_IP) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 9, &next, 1) < 0 ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 16, dst, 4) < 0)
			return PASS;
	} else {
		next = IPPROTO_TCP;   /* IPv6 but ICMPv6: treat as possibly partial */
	}
	if ((next == IPPROTO_TCP || next == IPPROTO_UDP || skb->gso_size) &&
	    bpf_ktime_get_ns() - peer->capable_ns > CAPABLE_NS)
		return PASS;   /* not proven: the userspace path finishes them */

	olen = 20 + ((cfg->flags & CFG_KEY) ? 8 : 4);
	/* Fails (-EALREADY) on a packet still marked encapsulated, e.g. a hairpin
	 * a peer's program encapsulated on this host: then the userspace path. */
	if (bpf_skb_adjust_room(skb, olen, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_GRE))
		return PASS;

	o.ver_ihl = 0x45;
	o.id = bpf_htons(PROBE_ID);
	o.tot_len = bpf_htons(skb->len - ETH_HLEN);
	o.frag_off = bpf_htons(0x4000);   /* DF, as the raw GRE socket sends */
	o.ttl = 64;
	o.protocol = IPPROTO_GRE;
	o.saddr = cfg->local;
	o.daddr = nbma;
	o.gre_proto = bpf_htons(proto);
	if (cfg->flags & CFG_KEY) {
		o.gre_flags = bpf_htons(GRE_KEY_PRESENT);
		o.gre_key = cfg->key;
	}
	o.check = ip_checksum(&o);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &o, olen, 0) < 0)
		return TC_ACT_SHOT;   /* the packet is half-rewritten: drop it */
	eth[12] = 0x08;
	eth[13] = 0x00;
	bpf_skb_store_bytes(skb, 0, eth, ETH_HLEN, 0);

	segs = skb->gso_segs ? skb->gso_segs : 1;
	__sync_fetch_and_add(&peer->tx_packets, segs);
	__sync_fetch_and_add(&peer->tx_bytes, skb->len - ETH_HLEN - 20);
	__builtin_memcpy(peer->last_dst, dst, 4);
	return bpf_redirect_neigh(cfg->underlay_ifindex, 0, 0, 0);
}

SEC("tc")
int dmvpn_ingress(struct __sk_buff *skb)
{
	struct config *cfg = get_config();
	struct outer o;
	struct peer *peer;
	__u8 eth[ETH_HLEN];
	__u8 inner[40];
	__u32 hlen, segs, size;
	__u16 proto;
	__u8 icmp_type;

	if (!cfg || skb->protocol != bpf_htons(ETH_P_IP))
		return PASS;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &o, 24) < 0)
		return PASS;
	if (o.ver_ihl != 0x45 || o.protocol != IPPROTO_GRE || o.daddr != cfg->local ||
	    (o.frag_off & bpf_htons(0x3fff)))
		return PASS;
	if (cfg->flags & CFG_KEY) {
		if (o.gre_flags != bpf_htons(GRE_KEY_PRESENT))
			return PASS;
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 24, &o.gre_key, 4) < 0 ||
		    o.gre_key != cfg->key)
			return PASS;   /* another cloud's key */
		hlen = 8;
	} else {
		if (o.gre_flags != 0)
			return PASS;
		hlen = 4;
	}
	proto = bpf_ntohs(o.gre_proto);
	if (proto == ETH_P_IP) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 20 + hlen, inner, 20) < 0)
			return PASS;
		/* Multicast and broadcast: the userspace path maps their MACs. */
		if (inner[16] >= 224 || (inner[16] == 255 && inner[17] == 255 &&
					 inner[18] == 255 && inner[19] == 255))
			return PASS;
	} else if (proto == ETH_P_IPV6 && (cfg->flags & CFG_IPV6)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 20 + hlen, inner, 40) < 0)
			return PASS;
		if (inner[6] == IPPROTO_ICMPV6 || inner[24] == 0xff)
			return PASS;   /* ND and multicast: the userspace path */
	} else {
		return PASS;   /* NHRP (0x2001) and the rest */
	}
	peer = bpf_map_lookup_elem(&peers, &o.saddr);
	if (!peer)
		return PASS;   /* not bound: the userspace path decides */
	if (proto == ETH_P_IP && o.id == bpf_htons(PROBE_ID) && inner[9] == IPPROTO_ICMP &&
	    bpf_skb_load_bytes(skb, ETH_HLEN + 20 + hlen + 20, &icmp_type, 1) == 0 &&
	    icmp_type == 0)
		peer->capable_ns = bpf_ktime_get_ns();   /* an echo reply from its program */

	segs = skb->gso_segs ? skb->gso_segs : 1;
	size = skb->len - ETH_HLEN - 20;
	if (bpf_skb_adjust_room(skb, -(__s32)(20 + hlen), BPF_ADJ_ROOM_MAC, 0))
		return PASS;
	__sync_fetch_and_add(&peer->rx_packets, segs);
	__sync_fetch_and_add(&peer->rx_bytes, size);
	__builtin_memcpy(eth, cfg->tap_mac, 6);
	eth[6] = 0x02;
	eth[7] = 0x00;
	__builtin_memcpy(&eth[8], &o.saddr, 4);
	eth[12] = proto >> 8;
	eth[13] = proto & 0xff;
	if (bpf_skb_store_bytes(skb, 0, eth, ETH_HLEN, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(cfg->tap_ifindex, BPF_F_INGRESS);
}

char LICENSE[] SEC("license") = "GPL";
