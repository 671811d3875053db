/* The per-packet loop of the userspace mGRE data plane, in C.
 *
 * Python keeps every decision (NHRP, ARP, multicast, hub hairpins, counters
 * per peer); this only moves plain unicast IPv4 between the TAP device and
 * the raw GRE socket, on a thread of its own without the GIL. The
 * destination MAC (02:00 + NBMA IPv4 address, see forwarding.py) is the NBMA
 * address to send to. Anything else is handed to Python ("punted").
 *
 * With a TAP opened with IFF_VNET_HDR and TUNSETOFFLOAD (TSO4 + CSUM, see
 * devices.py) the kernel hands over TCP super-segments of up to 64 KB; they
 * are cut here into gso_size pieces with full checksums, as a NIC would, so
 * the underlay only ever carries ordinary MTU-sized GRE. The other way,
 * consecutive in-order segments of one TCP flow read from the socket in one
 * batch are merged (GRO) into one super-packet written with a virtio_net_hdr,
 * so the kernel routes and delivers one packet instead of several.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <poll.h>
#include <time.h>
#include <linux/virtio_net.h>

#define BUF 65600
#define HEAD 64          /* headroom in front of every frame buffer */
#define VH 10            /* struct virtio_net_hdr: TUNSETVNETHDRSZ's default */
#define GRO_MAX 62000    /* merged IP packets stay below the 16-bit total length */
#define PUMP_PEERS 256
#define TXQ 64           /* GRE packets handed to one sendmmsg() */
#define TAP_BATCH 64    /* reads per wake-up (each may be a 64 KB super-segment) */
#define SOCK_BATCH 128  /* packets per wake-up: the more, the longer the GRO runs */

#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80

typedef struct {
    unsigned char nbma[4];
    uint64_t txp, txb, rxp, rxb;
    unsigned char dst[4];
    int used;
} pstat;

/* One pump's state: every pump (one per DMVPN interface) has its own. */
typedef struct {
    int tap, sock, punt, vnet, ghl, mtu;
    long long key;
    unsigned char mac[6];
    pstat pt[PUMP_PEERS];
    int npt;
    /* The TCP super-packet being merged: Ethernet frame at gro + VH. */
    size_t glen;
    int gcount, gclosed;
    pstat *gpeer;
    uint32_t gnext;
    uint16_t gmss;
    unsigned char tbuf[HEAD + BUF]; /* from the TAP (vnet header at HEAD - VH) */
    /* The pieces of a super-segment, sent together with sendmmsg(). */
    struct mmsghdr q[TXQ];
    struct iovec qiov[TXQ];
    struct sockaddr_in qto[TXQ];
    pstat *qpeer[TXQ];
    int nq;
    unsigned char seg[2 * BUF];
    unsigned char rbuf[HEAD + BUF]; /* from the socket */
    unsigned char gro[VH + BUF];
    unsigned char sbuf[1 + PUMP_PEERS * 40];
} pump_t;

static uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void put16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }
static void put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = (v >> 16) & 0xff; p[2] = (v >> 8) & 0xff; p[3] = v & 0xff;
}

/* RFC 1071 one's complement sum, accumulated in native order; the result is
 * stored back with memcpy in the same order, which makes it byte-order free. */
static uint64_t sum16(uint64_t acc, const unsigned char *d, size_t n) {
    uint32_t w;
    uint16_t h;
    while (n >= 4) { memcpy(&w, d, 4); acc += w; d += 4; n -= 4; }
    if (n >= 2) { memcpy(&h, d, 2); acc += h; d += 2; n -= 2; }
    if (n) { h = 0; memcpy(&h, d, 1); acc += h; }
    return acc;
}
static uint16_t fold(uint64_t acc) {
    while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
    return (uint16_t)acc;
}
/* The TCP pseudo-header (RFC 793 3.1) of an IPv4 header, for a TCP length. */
static uint64_t pseudo(const unsigned char *ip, size_t tcplen) {
    unsigned char ph[4] = {0, 6, (unsigned char)(tcplen >> 8), (unsigned char)tcplen};
    return sum16(sum16(0, ip + 12, 8), ph, 4);
}
static void ip_csum(unsigned char *ip, int ihl) {
    ip[10] = ip[11] = 0;
    uint16_t c = (uint16_t)~fold(sum16(0, ip, ihl));
    memcpy(ip + 10, &c, 2);
}

static pstat *pfind(pump_t *P, const unsigned char *nbma) {
    for (int i = 0; i < P->npt; i++)
        if (memcmp(P->pt[i].nbma, nbma, 4) == 0) return &P->pt[i];
    if (P->npt == PUMP_PEERS) return NULL;
    pstat *p = &P->pt[P->npt++];
    memset(p, 0, sizeof(*p));
    memcpy(p->nbma, nbma, 4);
    return p;
}

static void flush_stats(pump_t *P) {
    size_t off = 1;
    unsigned char *s = P->sbuf;
    s[0] = 'S';
    for (int i = 0; i < P->npt; i++) {
        pstat *p = &P->pt[i];
        if (!p->used) continue;
        memcpy(s + off, p->nbma, 4);
        uint64_t v[4] = {p->txp, p->txb, p->rxp, p->rxb};
        memcpy(s + off + 4, v, 32);
        memcpy(s + off + 36, p->dst, 4);
        off += 40;
        p->txp = p->txb = p->rxp = p->rxb = 0;
        p->used = 0;
    }
    if (off > 1) (void)!send(P->punt, s, off, MSG_DONTWAIT);
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------ TAP -> GRE */

/* One ordinary frame (checksums complete, at most the MTU; HEAD bytes of
 * headroom): GRE to the peer its destination MAC names, or to Python. The
 * GRE header is written over the tail of the Ethernet header (no copy). */
static void tx_flush(pump_t *P) {
    int i = 0;
    while (i < P->nq) {
        int r = sendmmsg(P->sock, P->q + i, P->nq - i, 0);
        if (r <= 0) { i++; continue; } /* this one is dropped, as sendto() would */
        for (int k = i; k < i + r; k++) {
            pstat *p = P->qpeer[k];
            p->txp++;
            p->txb += P->qiov[k].iov_len;
            p->used = 1;
        }
        i += r;
    }
    P->nq = 0;
}

static void tap_frame(pump_t *P, unsigned char *frame, size_t n, int batch) {
    pstat *p = NULL;
    if (n >= 34 && frame[0] == 0x02 && frame[1] == 0x00 && frame[12] == 0x08 &&
        frame[13] == 0x00 && (p = pfind(P, frame + 2)) != NULL) {
        int ghl = P->ghl;
        unsigned char *gre = frame + 14 - ghl;
        gre[0] = P->key >= 0 ? 0x20 : 0x00;
        gre[1] = 0x00;
        gre[2] = 0x08;
        gre[3] = 0x00;
        if (P->key >= 0) put32(gre + 4, (uint32_t)P->key);
        struct sockaddr_in to = {0};
        to.sin_family = AF_INET;
        memcpy(&to.sin_addr, frame + 2, 4);
        size_t len = n - 14 + ghl;
        if (batch) {
            /* The packet stays where it is until tx_flush(). */
            int k = P->nq++;
            P->qto[k] = to;
            P->qiov[k] = (struct iovec){gre, len};
            P->q[k].msg_hdr = (struct msghdr){.msg_name = &P->qto[k],
                                              .msg_namelen = sizeof(to),
                                              .msg_iov = &P->qiov[k],
                                              .msg_iovlen = 1};
            P->qpeer[k] = p;
            memcpy(p->dst, frame + 30, 4);
            return;
        }
        if (sendto(P->sock, gre, len, 0, (struct sockaddr *)&to, sizeof(to)) >= 0) {
            p->txp++;
            p->txb += len;
            memcpy(p->dst, frame + 30, 4);
            p->used = 1;
        }
        return;
    }
    frame[-1] = 'T';
    (void)!send(P->punt, frame - 1, n + 1, MSG_DONTWAIT);
}

/* A TCP/IPv4 super-segment (TUN_F_TSO4) cut into gso_size pieces the way
 * the kernel's tcp_gso_segment does: sequence numbers advance, IP ids count
 * up, CWR stays on the first piece, FIN and PSH on the last; every checksum
 * is computed in full. Malformed ones are dropped. */
static void tap_tso(pump_t *P, const unsigned char *frame, size_t n, size_t mss) {
    if (n < 54 || frame[12] != 0x08 || frame[13] != 0x00 || (frame[14] >> 4) != 4) return;
    const unsigned char *ip0 = frame + 14;
    int ihl = (ip0[0] & 0x0f) * 4;
    if (ihl < 20 || ip0[9] != 6 || n < (size_t)14 + ihl + 20) return;
    int thl = (ip0[ihl + 12] >> 4) * 4;
    size_t hl = 14 + ihl + thl;
    if (thl < 20 || n < hl || mss == 0) return;
    size_t plen = n - hl;
    uint32_t seq0 = get32(ip0 + ihl + 4);
    uint16_t id0 = get16(ip0 + 4);
    unsigned char flags = ip0[ihl + 13];
    size_t off = 0, at = 0;
    for (unsigned i = 0;; i++) {
        size_t len = plen - off < mss ? plen - off : mss;
        int last = off + len >= plen;
        if (P->nq == TXQ || at + HEAD + hl + len > sizeof(P->seg)) {
            tx_flush(P);
            at = 0;
        }
        unsigned char *s = P->seg + at + HEAD;
        at += (HEAD + hl + len + 63) & ~(size_t)63;
        memcpy(s, frame, hl);
        memcpy(s + hl, frame + hl + off, len);
        unsigned char *ip = s + 14, *t = s + 14 + ihl;
        put16(ip + 2, (uint16_t)(ihl + thl + len));
        put16(ip + 4, (uint16_t)(id0 + i));
        ip_csum(ip, ihl);
        put32(t + 4, seq0 + (uint32_t)off);
        t[13] = flags & ~((last ? 0 : TCP_FIN | TCP_PSH) | (i ? TCP_CWR : 0));
        t[16] = t[17] = 0;
        uint16_t c = (uint16_t)~fold(sum16(pseudo(ip, thl + len), t, thl + len));
        memcpy(t + 16, &c, 2);
        tap_frame(P, s, hl + len, 1);
        off += len;
        if (last) break;
    }
    tx_flush(P);
}

/* A frame read from the TAP, behind its virtio_net_hdr when the TAP has one. */
static void tap_in(pump_t *P, unsigned char *frame, size_t n) {
    if (P->vnet) {
        struct virtio_net_hdr vh;
        memcpy(&vh, frame - VH, VH); /* native order: legacy header, LE host */
        if (vh.gso_type != VIRTIO_NET_HDR_GSO_NONE) {
            if ((vh.gso_type & ~VIRTIO_NET_HDR_GSO_ECN) == VIRTIO_NET_HDR_GSO_TCPV4)
                tap_tso(P, frame, n, vh.gso_size);
            return; /* no other GSO type is offered (TUNSETOFFLOAD) */
        }
        if (vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
            /* Checksum offload (TUN_F_CSUM): the field holds the
             * pseudo-header sum; finish it over the rest of the packet. */
            size_t st = vh.csum_start, of = vh.csum_offset;
            if (st + of + 2 > n) return;
            uint16_t c = (uint16_t)~fold(sum16(0, frame + st, n - st));
            if (c == 0) c = 0xffff; /* as skb_checksum_help: 0 means none for UDP */
            memcpy(frame + st + of, &c, 2);
        }
    }
    tap_frame(P, frame, n, 0);
}

/* ------------------------------------------------------------ GRE -> TAP */

static void tap_write(pump_t *P, struct virtio_net_hdr *vh, const unsigned char *eth,
                      const unsigned char *ip, size_t iplen) {
    struct iovec iov[3];
    int k = 0;
    if (P->vnet) iov[k++] = (struct iovec){vh, VH};
    iov[k++] = (struct iovec){(void *)eth, 14};
    iov[k++] = (struct iovec){(void *)ip, iplen};
    (void)!writev(P->tap, iov, k);
}

static void gro_flush(pump_t *P) {
    if (!P->glen) return;
    struct virtio_net_hdr vh = {0};
    unsigned char *eth = P->gro + VH, *ip = eth + 14;
    if (P->gcount > 1) {
        size_t tot = P->glen - 14;
        int thl = (ip[32] >> 4) * 4;
        put16(ip + 2, (uint16_t)tot);
        ip_csum(ip, 20);
        /* Checksum offload on the way in: the field holds the pseudo-header
         * sum, the kernel (or the host's stack, as CHECKSUM_PARTIAL) the rest.
         * Every merged segment's own checksum was verified first. */
        uint16_t c = fold(pseudo(ip, tot - 20));
        memcpy(ip + 36, &c, 2);
        vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        vh.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
        vh.hdr_len = (uint16_t)(14 + 20 + thl);
        vh.gso_size = P->gmss;
        vh.csum_start = 34;
        vh.csum_offset = 16;
    }
    tap_write(P, &vh, eth, ip, P->glen - 14);
    P->glen = 0;
}

/* Merge an inner IPv4 packet into the pending super-packet if it is the
 * next in-order TCP segment of the same flow with identical headers
 * (Linux's tcp_gro_receive rules: same ack, window and options, flags only
 * ACK with PSH closing the run, all but the last segment exactly gso_size);
 * else start a new run with it if it is such a segment. Returns 0 if the
 * packet must go out on its own. */
static int gro_add(pump_t *P, pstat *p, const unsigned char *in, size_t n) {
    if (n < 41 || in[0] != 0x45 || in[9] != 6 || get16(in + 2) != n ||
        (get16(in + 6) & 0x3fff) != 0)
        return 0; /* options, not TCP, padded, or a fragment */
    if (fold(sum16(0, in, 20)) != 0xffff) return 0; /* a corrupt IP header stays as it is */
    const unsigned char *t = in + 20;
    int thl = (t[12] >> 4) * 4;
    if (thl < 20 || (size_t)20 + thl >= n || (t[13] & ~TCP_PSH) != TCP_ACK) return 0;
    if (fold(sum16(pseudo(in, n - 20), t, n - 20)) != 0xffff) return 0; /* corrupt */
    size_t plen = n - 20 - thl;
    uint32_t seq = get32(t + 4);
    if (P->glen) {
        const unsigned char *g = P->gro + VH + 14, *gt = g + 20;
        if (P->gpeer == p && !P->gclosed && seq == P->gnext && plen <= P->gmss &&
            P->glen + plen <= GRO_MAX && memcmp(g + 12, in + 12, 8) == 0 && g[1] == in[1] &&
            g[6] == in[6] && g[8] == in[8] && memcmp(gt, t, 4) == 0 &&
            memcmp(gt + 8, t + 8, 5) == 0 && memcmp(gt + 14, t + 14, 2) == 0 &&
            memcmp(gt + 20, t + 20, thl - 20) == 0) {
            memcpy(P->gro + VH + P->glen, t + thl, plen);
            P->glen += plen;
            P->gcount++;
            P->gnext += (uint32_t)plen;
            if (t[13] & TCP_PSH) P->gro[VH + 14 + 20 + 13] |= TCP_PSH;
            P->gclosed = plen < P->gmss || (t[13] & TCP_PSH);
            return 1;
        }
        gro_flush(P);
    }
    unsigned char *eth = P->gro + VH;
    memcpy(eth, P->mac, 6);
    eth[6] = 0x02;
    eth[7] = 0x00;
    memcpy(eth + 8, p->nbma, 4);
    eth[12] = 0x08;
    eth[13] = 0x00;
    memcpy(eth + 14, in, n);
    P->glen = 14 + n;
    P->gcount = 1;
    P->gpeer = p;
    P->gmss = (uint16_t)plen;
    P->gnext = seq + (uint32_t)plen;
    P->gclosed = (t[13] & TCP_PSH) != 0;
    return 1;
}

/* A TCP/IPv4 packet from the cloud longer than the TAP's MTU: a super-packet
 * the underlay's kernel merged (GRO for GRE, where its gre module is loaded)
 * and our raw socket read as one (see segment.py). Written with a
 * virtio_net_hdr that has the kernel cut it to the MTU, as gro_flush does for
 * our own merges; the stale TCP checksum becomes the pseudo-header sum. */
static int gro_super(pump_t *P, const struct sockaddr_in *from, unsigned char *in, size_t n) {
    if (!P->vnet || n < 41 || in[0] != 0x45 || in[9] != 6 || get16(in + 2) != n ||
        (get16(in + 6) & 0x3fff) != 0)
        return 0;
    int thl = (in[32] >> 4) * 4;
    int mss = P->mtu - 20 - thl;
    if (thl < 20 || (size_t)20 + thl >= n || mss < 8) return 0;
    gro_flush(P); /* keep the order within the flow */
    ip_csum(in, 20);
    uint16_t c = fold(pseudo(in, n - 20));
    memcpy(in + 36, &c, 2);
    struct virtio_net_hdr vh = {0};
    vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    vh.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
    vh.hdr_len = (uint16_t)(14 + 20 + thl);
    vh.gso_size = (uint16_t)mss;
    vh.csum_start = 34;
    vh.csum_offset = 16;
    unsigned char eth[14];
    memcpy(eth, P->mac, 6);
    eth[6] = 0x02;
    eth[7] = 0x00;
    memcpy(eth + 8, &from->sin_addr, 4);
    eth[12] = 0x08;
    eth[13] = 0x00;
    tap_write(P, &vh, eth, in, n);
    return 1;
}

static void gre_in(pump_t *P, unsigned char *b, size_t n, const struct sockaddr_in *from) {
    int ghl = P->ghl;
    if (n < 24) return;
    int ihl = (b[0] & 0x0f) * 4;
    if (ihl < 20 || n < (size_t)ihl + 4) return;
    unsigned char *gre = b + ihl;
    int plain = n >= (size_t)ihl + ghl + 20 && gre[1] == 0x00 && gre[2] == 0x08 &&
                gre[3] == 0x00 && gre[0] == (P->key >= 0 ? 0x20 : 0x00);
    if (plain && P->key >= 0) plain = get32(gre + 4) == (uint32_t)P->key;
    unsigned char *inner = gre + ghl;
    size_t ilen = n - ihl - ghl;
    pstat *p = NULL;
    if (plain && inner[16] < 224 && (inner[0] >> 4) == 4 &&
        (p = pfind(P, (const unsigned char *)&from->sin_addr)) != NULL) {
        p->rxp++;
        p->rxb += n - ihl;
        p->used = 1;
        if (P->mtu > 0 && ilen > (size_t)P->mtu && gro_super(P, from, inner, ilen)) return;
        if (P->vnet && gro_add(P, p, inner, ilen)) return;
        gro_flush(P); /* keep the order within the flow */
        unsigned char eth[14];
        memcpy(eth, P->mac, 6);
        eth[6] = 0x02;
        eth[7] = 0x00;
        memcpy(eth + 8, &from->sin_addr, 4);
        eth[12] = 0x08;
        eth[13] = 0x00;
        struct virtio_net_hdr vh = {0};
        tap_write(P, &vh, eth, inner, ilen);
        return;
    }
    /* 'G' + src + GRE, written in front of the GRE packet. */
    unsigned char *msg = gre - 5;
    msg[0] = 'G';
    memcpy(msg + 1, &from->sin_addr, 4);
    (void)!send(P->punt, msg, n - ihl + 5, MSG_DONTWAIT);
}

/* ------------------------------------------------------------ the loop */

static void pump_loop(pump_t *P, int stop) {
    struct pollfd fds[3] = {{P->tap, POLLIN, 0}, {P->sock, POLLIN, 0}, {stop, POLLIN, 0}};
    double next_flush = mono() + 0.1;
    int vh = P->vnet ? VH : 0;
    for (;;) {
        int r = poll(fds, 3, 500);
        if (r < 0 && errno != EINTR) break;
        if (fds[2].revents) break;
        if (fds[0].revents & POLLIN) {
            for (int i = 0; i < TAP_BATCH; i++) {
                unsigned char *frame = P->tbuf + HEAD;
                ssize_t n = read(P->tap, frame - vh, BUF);
                if (n < vh) break;
                tap_in(P, frame, (size_t)(n - vh));
            }
        }
        if (fds[1].revents & POLLIN) {
            for (int i = 0; i < SOCK_BATCH; i++) {
                struct sockaddr_in from;
                socklen_t fl = sizeof(from);
                unsigned char *b = P->rbuf + HEAD;
                ssize_t n = recvfrom(P->sock, b, BUF, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
                if (n < 0) break;
                gre_in(P, b, (size_t)n, &from);
            }
            gro_flush(P); /* never hold a packet back past the batch */
        }
        double now = mono();
        if (now >= next_flush) {
            flush_stats(P);
            next_flush = now + 0.1;
        }
    }
    flush_stats(P);
}

/* pump(tap_fd, sock_fd, key or -1, local_mac, punt_fd, stop_fd, vnet_hdr=False, mtu=0):
 * the data plane loop on a thread of its own, without the GIL. Plain unicast
 * IPv4 goes straight through both ways; everything else is passed to Python
 * over punt_fd (a SOCK_SEQPACKET socket) as one message: 'T' + frame (from
 * the TAP; super-segments already cut) or 'G' + source IPv4 (4) + GRE packet
 * (from the socket). Per-peer totals go the same way every 0.1 s as 'S' +
 * records of nbma (4), tx packets, tx bytes, rx packets, rx bytes (4 x
 * uint64) and the last inner destination sent to that peer (4). vnet_hdr:
 * the TAP was opened with IFF_VNET_HDR (offloads, see above); mtu: the
 * TAP's, above which a TCP packet from the cloud is cut (0: never). Returns when
 * stop_fd is readable. */
static PyObject *pump(PyObject *self, PyObject *args) {
    (void)self;
    int tap, sock, punt, stop, vnet = 0, mtu = 0;
    long long key;
    const char *mac;
    Py_ssize_t maclen;
    if (!PyArg_ParseTuple(args, "iiLy#ii|pi", &tap, &sock, &key, &mac, &maclen, &punt, &stop,
                          &vnet, &mtu))
        return NULL;
    if (maclen != 6) {
        PyErr_SetString(PyExc_ValueError, "local_mac must be 6 bytes");
        return NULL;
    }
    pump_t *P = calloc(1, sizeof(pump_t));
    if (P == NULL) return PyErr_NoMemory();
    P->tap = tap;
    P->sock = sock;
    P->punt = punt;
    P->vnet = vnet;
    P->mtu = mtu;
    P->key = key;
    P->ghl = key >= 0 ? 8 : 4;
    memcpy(P->mac, mac, 6);
    Py_BEGIN_ALLOW_THREADS
    pump_loop(P, stop);
    Py_END_ALLOW_THREADS
    free(P);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pump", pump, METH_VARARGS, "Run the data plane loop until stop_fd is readable (no GIL)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastpath(void) { return PyModule_Create(&module); }
