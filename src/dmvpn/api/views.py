"""The management API's JSON views and Prometheus metrics, built from engines.

Pure functions: an :class:`Iface` (a name, an engine, optionally a forwarder,
the engine's address family) and ``now`` (the engine's clock) in, JSON-safe
dicts out. The server serves them, the CLI renders them, and the tests build
engines directly. The shapes are documented in docs/API.md: keys may be
added, never renamed or removed.

Vocabulary follows Cisco's `show dmvpn` / `show ip nhrp`, with nhrpd's entry
types (static, dynamic, nhs, cached, local, incomplete, negative).

A dual-stack interface runs two engines, so it is two Ifaces (family 4, then
6) with the same name: every row says its ``family``, as Cisco's `show dmvpn`
prints "IPv4 NHRP Details" and "IPv6 NHRP Details" for one tunnel.

Why one module of this length: `show`'s JSON views and the Prometheus
metrics read the same engine surface and counters and must agree on names and
families; apart, every change to one would need the other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dmvpn.dataplane.plane import DataPlaneCounters
from dmvpn.dataplane.pmtu import PathMtuCache
from dmvpn.nhrp import (
    CLEAR_SCOPES,
    CacheEntry,
    ClearScope,
    Engine,
    EntryFlag,
    EntryType,
    NhsState,
    NhsStatus,
)
from dmvpn.wire import Address, PacketType, address_text

from .paging import Page

__all__ = [
    "ATTRIBUTE_LEGEND",
    "CLEAR_SCOPES",
    "PACKET_TYPES",
    "Iface",
    "add_path_mtu",
    "clear_nhrp",
    "dmvpn_view",
    "format_duration",
    "metric_families",
    "nhrp_view",
    "nhs_view",
    "shortcut_view",
    "traffic_view",
]

# The eight NHRP packet types by their counter names (tx.<name>, rx.<name>).
PACKET_TYPES: tuple[str, ...] = tuple(t.name.lower() for t in PacketType)

ATTRIBUTE_LEGEND: dict[str, str] = {
    "S": "Static (configured map or NHS)",
    "D": "Dynamic (registered with us, or learnt by resolution)",
    "I": "Incomplete (resolution pending, or failed: negative)",
    "N": "NATed (the peer's claimed NBMA address differs from the one it is reached at)",
    "L": "Local (a prefix behind this node)",
    "T1": "Route Installed (the peer's tunnel address, bound as next hop of shortcut routes)",
    "T2": "Nexthop-override (a shortcut route: a prefix via the peer's tunnel address)",
}


@dataclass(frozen=True, slots=True)
class Iface:
    """One NHRP engine of a DMVPN interface as the views see it.

    The forwarder is shared by both families of an interface: the caller gives
    it to one Iface only (the IPv4 one), so its counters are not shown twice.
    """

    name: str
    engine: Engine
    forwarder: DataPlaneCounters | None = None
    family: Literal[4, 6] = 4
    # The overlay VRF (the interface's `namespace`); None: the daemon's own.
    vrf: str | None = None


# ---------------------------------------------------------------- helpers


def format_duration(seconds: float | None) -> str:
    """Cisco's up/down and expiry times: 00:01:02 under a day, then 1d02h,
    then 2w3d; "never" for None. Negative (overdue) times show as zero."""
    if seconds is None:
        return "never"
    s = max(0, int(seconds))
    if s < 86400:
        return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    days, hours = divmod(s // 3600, 24)
    if days < 7:
        return f"{days}d{hours:02d}h"
    return f"{days // 7}w{days % 7}d"


def _text(addr: Address | None) -> str | None:
    return None if addr is None else address_text(addr)


def _addr_key(addr: Address | None) -> tuple[int, int]:
    if addr is None:
        return (9, 0)  # incomplete entries (no NBMA address yet) last
    if isinstance(addr, IPv4Address | IPv6Address):
        return (addr.version, int(addr))
    return (0, int.from_bytes(addr, "big") if addr else 0)


def _shortcut_next_hops(engine: Engine) -> set[Address]:
    return {e.next_hop for e in engine.shortcuts() if e.next_hop is not None}


def _is_own(entry: CacheEntry, engine: Engine) -> bool:
    return (
        entry.type == EntryType.LOCAL
        and entry.is_host
        and entry.protocol == engine.config.protocol_address
    )


def attributes(entry: CacheEntry, shortcut_next_hops: set[Address]) -> list[str]:
    """The `show dmvpn` Attrb letters of an entry, in Cisco's order."""
    out: list[str] = []
    t = entry.type
    if t in (EntryType.STATIC, EntryType.NHS):
        out.append("S")
    elif t in (EntryType.DYNAMIC, EntryType.CACHED):
        out.append("D")
    elif t in (EntryType.INCOMPLETE, EntryType.NEGATIVE):
        out.append("I")
    if entry.flags & EntryFlag.NAT:
        out.append("N")
    if t == EntryType.LOCAL:
        out.append("L")
    if t == EntryType.CACHED and entry.is_host and entry.protocol in shortcut_next_hops:
        out.append("T1")
    if entry.is_shortcut:
        out.append("T2")
    return out


def cisco_flags(entry: CacheEntry, shortcut_next_hops: set[Address]) -> list[str]:
    """The `show ip nhrp` "Flags:" words of an entry."""
    out: list[str] = []
    f = entry.flags
    if f & EntryFlag.UNIQUE:
        out.append("unique")
    if entry.type == EntryType.DYNAMIC:
        out.append("registered")
    if f & EntryFlag.USED:
        out.append("used")
    if entry.is_host and entry.type not in (
        EntryType.LOCAL,
        EntryType.INCOMPLETE,
        EntryType.NEGATIVE,
    ):
        out.append("nhop")
    if entry.type == EntryType.CACHED and entry.is_host and entry.protocol in shortcut_next_hops:
        out.append("rib")
    if entry.is_shortcut:
        out += ["rib", "nho"]
    if f & EntryFlag.NAT:
        out.append("nat")
    if entry.type == EntryType.LOCAL:
        out.append("local")
    if entry.type == EntryType.NEGATIVE:
        out.append("negative")
    return out


def _role(engine: Engine) -> str:
    cfg = engine.config
    if cfg.server and cfg.nhs:
        return "hub/spoke"
    return "hub" if cfg.server else "spoke"


# NHS client state -> (show dmvpn State, show ip nhrp nhs status letters).
_NHS_STATE: dict[NhsState, tuple[str, str]] = {
    NhsState.UP: ("UP", "RE"),
    NhsState.PROBING: ("NHRP", "E"),
    NhsState.DOWN: ("DOWN", "W"),
    NhsState.STANDBY: ("DOWN", "S"),
}


def _entry_state(entry: CacheEntry, nhs: NhsStatus | None, now: float) -> tuple[str, float]:
    """(State, seconds in it) for `show dmvpn`."""
    age = now - entry.created
    if entry.type == EntryType.NHS and nhs is not None:
        state = _NHS_STATE[nhs.state][0]
        if nhs.state is NhsState.UP and nhs.up_since is not None:
            return state, now - nhs.up_since
        return state, age
    if entry.type in (EntryType.INCOMPLETE, EntryType.NEGATIVE):
        return "NHRP", age
    return "UP", age


# ---------------------------------------------------------------- show dmvpn


# What `state=` may be on /v1/dmvpn (the State column, lower case).
DMVPN_STATES = frozenset({"up", "nhrp", "down"})


def dmvpn_interface(iface: Iface, now: float, page: Page | None = None) -> dict[str, Any]:
    """One interface of `show dmvpn`: its peers (entries grouped by NBMA
    address), filtered and paged by `page` (api/paging.py): rows are built
    for the page's peers only."""
    engine = iface.engine
    nexthops = _shortcut_next_hops(engine)
    nhs_by_protocol = {s.protocol: s for s in engine.nhs_states()}
    groups: dict[Any, list[CacheEntry]] = {}
    group_nbma: dict[Any, Address | None] = {}
    for entry in engine.entries():
        if _is_own(entry, engine):
            continue
        if page is not None:
            if not page.matches_peer(entry):
                continue
            if page.state is not None:
                nhs = nhs_by_protocol.get(entry.protocol) if entry.type == EntryType.NHS else None
                if _entry_state(entry, nhs, now)[0].lower() != page.state:
                    continue
        # Entries without an NBMA address (incomplete) are a peer each.
        key: Any = entry.nbma if entry.nbma is not None else ("incomplete", entry.protocol)
        groups.setdefault(key, []).append(entry)
        group_nbma[key] = entry.nbma
    keys = sorted(groups, key=lambda k: (_addr_key(group_nbma[k]), str(k)))
    total = len(keys)
    if page is not None:
        start, end = page.slice(total)
        keys = keys[start:end]
    peers = []
    for key in keys:
        # Host entries (the peer's tunnel address) first, then prefixes; each
        # by address (a stable sort of entries already in address order).
        entries = sorted(groups[key], key=lambda e: not e.is_host)
        rows = [_dmvpn_row(e, nhs_by_protocol, nexthops, now) for e in entries]
        peers.append({"nbma": _text(group_nbma[key]), "entry_count": len(rows), "entries": rows})
    view = {
        "interface": iface.name,
        "family": iface.family,
        "vrf": iface.vrf,
        "type": _role(engine),
        "tunnel_address": address_text(engine.config.protocol_address),
        "nbma_address": address_text(engine.nbma),
        "public_nbma": _text(engine.public_nbma),
        "peer_count": total,
        "peers": peers,
    }
    if page is not None:
        view.update(page.paging(total, len(peers)))
    return view


def _dmvpn_row(
    entry: CacheEntry,
    nhs_by_protocol: dict[Address, NhsStatus],
    nexthops: set[Address],
    now: float,
) -> dict[str, Any]:
    nhs = nhs_by_protocol.get(entry.protocol) if entry.type == EntryType.NHS else None
    state, seconds = _entry_state(entry, nhs, now)
    attrs = attributes(entry, nexthops)
    return {
        "tunnel_address": address_text(entry.next_hop or entry.protocol),
        "target": f"{address_text(entry.protocol)}/{entry.prefix_length}",
        "type": entry.type.value,
        "state": state,
        "updn_seconds": round(seconds, 1),
        "updn": format_duration(round(seconds, 1)),
        "attributes": attrs,
        "attrb": "".join(attrs),
        "claimed_nbma": _text(entry.claimed_nbma),
        "group": entry.group,  # the NHRP group its registration named (hub)
    }


def dmvpn_view(
    node: str, ifaces: Sequence[Iface], now: float, page: Page | None = None
) -> dict[str, Any]:
    """`show dmvpn`: {"node", "legend", "interfaces": [...]}; `page` filters
    and pages each interface's peers."""
    return {
        "node": node,
        "legend": ATTRIBUTE_LEGEND,
        "interfaces": [dmvpn_interface(i, now, page) for i in ifaces],
    }


def add_path_mtu(data: dict[str, Any], caches: dict[str, Any], now: float) -> None:
    """`show dmvpn`: each peer of an interface with `tunnel.path_mtu_discovery`
    gets "path_mtu" (null until a value is learned): the outer packet size
    that fits the path to that peer (dataplane/pmtu.py), where it came from,
    and when it ages out. ``caches`` maps interface names to their data
    plane's PathMtuCache, or None where path MTU discovery is off (no key)."""
    for itf in data["interfaces"]:
        cache = caches.get(itf["interface"])
        if not isinstance(cache, PathMtuCache):
            continue
        learned = {str(nbma): e for nbma, e in cache.entries(now).items()}
        for peer in itf["peers"]:
            e = learned.get(peer["nbma"] or "")
            peer["path_mtu"] = (
                None
                if e is None
                else {
                    "mtu": e.mtu,
                    "source": e.source,
                    "reporter": _text(e.reporter),
                    "age_seconds": round(now - e.learned, 1),
                    "expires_seconds": round(cache.age - (now - e.learned), 1),
                }
            )


# ---------------------------------------------------------------- show nhrp


def _nhrp_entry(
    iface: Iface, entry: CacheEntry, nexthops: set[Address], now: float
) -> dict[str, Any]:
    view = entry.view(now)
    view["interface"] = iface.name
    view["family"] = iface.family
    view["prefix_length"] = entry.prefix_length
    view["cisco_flags"] = cisco_flags(entry, nexthops)
    view["shortcut"] = entry.is_shortcut
    # The texts format the rounded numbers beside them, so both always agree.
    view["created_text"] = format_duration(view["created"])
    view["expires_text"] = format_duration(view["expires_in"])
    return view


def nhrp_view(
    node: str, ifaces: Sequence[Iface], now: float, page: Page | None = None
) -> dict[str, Any]:
    """`show nhrp` (the cache): {"node", "entries": [...]} sorted by address;
    `page` filters (peer, entry type) and pages them, rows built for the
    page only."""
    selected: list[tuple[Iface, CacheEntry]] = []
    keep = page.entry_filter() if page is not None else None
    for iface in ifaces:
        selected += [(iface, e) for e in iface.engine.entries() if keep is None or keep(e)]
    total = len(selected)
    if page is not None:
        start, end = page.slice(total)
        selected = selected[start:end]
    nexthops = {id(i): _shortcut_next_hops(i.engine) for i in ifaces}
    entries = [_nhrp_entry(i, e, nexthops[id(i)], now) for i, e in selected]
    view: dict[str, Any] = {"node": node, "entries": entries}
    if page is not None:
        view.update(page.paging(total, len(entries)))
    return view


def shortcut_view(node: str, ifaces: Sequence[Iface], now: float) -> dict[str, Any]:
    """`show nhrp shortcut`: the shortcut routes only (prefix via next hop)."""
    entries: list[dict[str, Any]] = []
    for iface in ifaces:
        nexthops = _shortcut_next_hops(iface.engine)
        entries += [_nhrp_entry(iface, e, nexthops, now) for e in iface.engine.shortcuts()]
    return {"node": node, "entries": entries}


def nhs_view(node: str, ifaces: Sequence[Iface], now: float) -> dict[str, Any]:
    """`show nhrp nhs`: the NHSes of every interface, preferred first."""
    rows: list[dict[str, Any]] = []
    for iface in ifaces:
        for s in iface.engine.nhs_states():
            row: dict[str, Any] = dict(s.view(now))
            row["interface"] = iface.name
            row["family"] = iface.family
            row["status"] = _NHS_STATE[s.state][1]
            row["up_for_text"] = None if s.up_since is None else format_duration(row["up_for"])
            rows.append(row)
    return {"node": node, "nhs": rows}


# ---------------------------------------------------------------- traffic


def _error_counters(stats: dict[str, int]) -> dict[str, int]:
    """Everything that went wrong, by kind: rx.<problem> (not a packet type),
    tx.rate_limited, internal_errors."""
    out: dict[str, int] = {}
    for key, n in stats.items():
        if key.startswith("rx.") and key[3:] not in PACKET_TYPES and key != "rx.packets":
            out[key[3:]] = n
    if stats.get("tx.rate_limited"):
        out["rate_limited"] = stats["tx.rate_limited"]
    if stats.get("internal_errors"):
        out["internal"] = stats["internal_errors"]
    return dict(sorted(out.items()))


def traffic_interface(iface: Iface) -> dict[str, Any]:
    stats = iface.engine.stats
    cfg = iface.engine.config
    sent = {t: stats.get(f"tx.{t}", 0) for t in PACKET_TYPES}
    received = {t: stats.get(f"rx.{t}", 0) for t in PACKET_TYPES}
    return {
        "interface": iface.name,
        "family": iface.family,
        "max_send": {"packets": cfg.max_send, "interval": cfg.max_send_interval},
        "sent": {"total": sum(sent.values()), **sent},
        "received": {"total": stats.get("rx.packets", 0), **received},
        "redirects_suppressed": stats.get("redirect.rate_limited", 0),
        "errors": _error_counters(stats),
        "error_indications_sent": {
            key.removeprefix("tx.error."): n
            for key, n in sorted(stats.items())
            if key.startswith("tx.error.")
        },
        "counters": dict(sorted(stats.items())),
        "dataplane": dict(sorted(iface.forwarder.stats.items())) if iface.forwarder else {},
    }


def traffic_view(node: str, ifaces: Sequence[Iface]) -> dict[str, Any]:
    """`show nhrp traffic`: NHRP messages sent and received by type, errors,
    and every engine and data-plane counter."""
    return {"node": node, "interfaces": [traffic_interface(i) for i in ifaces]}


# ---------------------------------------------------------------- clear


def clear_nhrp(iface: Iface, now: float, scope: ClearScope = "all") -> list[dict[str, Any]]:
    """`clear nhrp` on one engine (:meth:`Engine.clear`): the rows of what
    went. The caller must then drain the engine's outputs."""
    return [
        {
            "interface": iface.name,
            "family": iface.family,
            "protocol": f"{address_text(entry.protocol)}/{entry.prefix_length}",
            "type": entry.type.value,
            "nbma": _text(entry.nbma),
        }
        for entry in iface.engine.clear(now, scope)
    ]


# ---------------------------------------------------------------- metrics


_METRIC_PREFIXES: tuple[tuple[str, str, str, str], ...] = (
    # (stats key prefix, metric name, label, help)
    (
        "registrations.",
        "dmvpn_nhrp_registrations",
        "result",
        "Registrations: sent/succeeded/retransmitted (as NHC); accepted/refreshed/refused/"
        "expired/purged/cleared (as NHS)",
    ),
    (
        "resolution.",
        "dmvpn_nhrp_resolutions",
        "result",
        "Resolutions: requests_sent/retransmitted/bound/failed/refreshes (as requester); "
        "forwarded/answered_as_owner/answered_from_cache (as NHS or owner)",
    ),
    (
        "redirect.",
        "dmvpn_nhrp_redirects",
        "result",
        "Phase 3 redirects (Traffic Indications): sent/rate_limited (hub), "
        "received/ignored (spoke)",
    ),
    ("event.", "dmvpn_nhrp_events", "kind", "Engine events by kind (as streamed by /v1/events)"),
)

_SINGLE_COUNTERS: dict[str, tuple[str, str]] = {
    "shortcuts.installed": ("dmvpn_nhrp_shortcuts_installed", "Shortcut routes installed"),
    "cache.expired": ("dmvpn_nhrp_cache_expired", "Resolved entries expired while idle"),
    "purge.entries_removed": ("dmvpn_nhrp_purge_entries_removed", "Entries removed by purges"),
    "identity.refused": (
        "dmvpn_nhrp_identity_refused",
        "Registrations and direct resolution answers refused by IPsec identity binding",
    ),
}


def metric_families(node: str, ifaces: Sequence[Iface], now: float) -> Iterator[Metric]:
    """Every metric of a node, computed at scrape time from counters the
    engine and the forwarder keep anyway (nothing is counted twice).

    Engine metrics carry a ``family`` label ("4" or "6"): a dual-stack
    interface has two engines, each with its own counters and cache. The
    forwarder's (per NBMA peer, data plane) have none: it is one per interface.
    """
    yield _info(node)
    messages = CounterMetricFamily(
        "dmvpn_nhrp_messages",
        "NHRP messages by type and direction",
        labels=["interface", "family", "type", "direction"],
    )
    errors = CounterMetricFamily(
        "dmvpn_nhrp_errors",
        "NHRP packets dropped or refused, and internal errors, by kind",
        labels=["interface", "family", "kind"],
    )
    error_ind = CounterMetricFamily(
        "dmvpn_nhrp_error_indications_sent",
        "Error Indications sent, by RFC 2332 error code",
        labels=["interface", "family", "code"],
    )
    by_prefix = {
        prefix: CounterMetricFamily(name, help_, labels=["interface", "family", label])
        for prefix, name, label, help_ in _METRIC_PREFIXES
    }
    singles = {
        key: CounterMetricFamily(name, help_, labels=["interface", "family"])
        for key, (name, help_) in _SINGLE_COUNTERS.items()
    }
    cache = GaugeMetricFamily(
        "dmvpn_nhrp_cache_entries",
        "NHRP cache entries by type",
        labels=["interface", "family", "type"],
    )
    nhs_up = GaugeMetricFamily(
        "dmvpn_nhrp_nhs_up",
        "1 when registered with this NHS, else 0",
        labels=["interface", "family", "nhs", "nbma"],
    )
    peers = GaugeMetricFamily(
        "dmvpn_peers",
        "NBMA peers in `show dmvpn` (bound, or resolving)",
        labels=["interface", "family"],
    )
    pkts = CounterMetricFamily(
        "dmvpn_peer_packets",
        "GRE packets (data and NHRP) exchanged with an NBMA peer",
        labels=["interface", "peer", "direction"],
    )
    octets = CounterMetricFamily(
        "dmvpn_peer_bytes",
        "GRE bytes (GRE header + payload) exchanged with an NBMA peer",
        labels=["interface", "peer", "direction"],
    )
    dataplane = CounterMetricFamily(
        "dmvpn_dataplane_packets",
        "Data-plane counters (forwarder), by counter name",
        labels=["interface", "counter"],
    )
    other = CounterMetricFamily(
        "dmvpn_nhrp_other",
        "Engine counters with no metric of their own",
        labels=["interface", "family", "counter"],
    )
    for iface in ifaces:
        name = iface.name
        fam = str(iface.family)
        stats = iface.engine.stats
        used: set[str] = {"rx.packets", "tx.rate_limited", "internal_errors"}
        for t in PACKET_TYPES:
            messages.add_metric([name, fam, t, "sent"], stats.get(f"tx.{t}", 0))
            messages.add_metric([name, fam, t, "received"], stats.get(f"rx.{t}", 0))
            used |= {f"tx.{t}", f"rx.{t}"}
        for kind, n in _error_counters(stats).items():
            errors.add_metric([name, fam, kind], n)
            used.add(f"rx.{kind}")
        for key, n in sorted(stats.items()):
            if key in used:
                continue
            if key.startswith("tx.error."):
                error_ind.add_metric([name, fam, key.removeprefix("tx.error.")], n)
            elif key in singles:
                singles[key].add_metric([name, fam], n)
            else:
                for prefix, family in by_prefix.items():
                    if key.startswith(prefix):
                        family.add_metric([name, fam, key.removeprefix(prefix)], n)
                        break
                else:
                    other.add_metric([name, fam, key], n)
        for t, n in iface.engine.entry_counts().items():
            cache.add_metric([name, fam, t.value], n)
        for s in iface.engine.nhs_states():
            nhs_up.add_metric(
                [name, fam, address_text(s.protocol), address_text(s.nbma)],
                1 if s.state is NhsState.UP else 0,
            )
        peers.add_metric([name, fam], dmvpn_interface(iface, now)["peer_count"])
        if iface.forwarder is not None:
            for nbma, c in sorted(iface.forwarder.peers.items()):
                peer = str(nbma)
                pkts.add_metric([name, peer, "tx"], c.tx_packets)
                pkts.add_metric([name, peer, "rx"], c.rx_packets)
                octets.add_metric([name, peer, "tx"], c.tx_bytes)
                octets.add_metric([name, peer, "rx"], c.rx_bytes)
            for key, n in sorted(iface.forwarder.stats.items()):
                dataplane.add_metric([name, key], n)
    yield from (messages, errors, error_ind, *by_prefix.values(), *singles.values())
    yield from (cache, nhs_up, peers, pkts, octets, dataplane, other)


def _info(node: str) -> Metric:
    from dmvpn import __version__

    info = GaugeMetricFamily(
        "dmvpn_node_info", "The node this daemon runs (always 1)", labels=["node", "version"]
    )
    info.add_metric([node, __version__], 1)
    return info
