"""The NHRP cache: protocol address (or prefix) -> NBMA address.

Entry types follow nhrpd, which engineers meet on Linux (Cisco shows both
dynamic and cached as "dynamic"): static (configured map), dynamic
(registered with us, we are its NHS), nhs (our NHS), cached (learned from a
Resolution Reply), local (our own address or a prefix behind us that we
answered for), incomplete (resolution pending) and negative (resolution
failed). Shortcut routes are cached entries for a prefix with a next hop.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntFlag, StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any

from dmvpn.wire import Address, address_text

Network = IPv4Network | IPv6Network


class EntryType(StrEnum):
    STATIC = "static"
    DYNAMIC = "dynamic"
    NHS = "nhs"
    CACHED = "cached"
    LOCAL = "local"
    INCOMPLETE = "incomplete"
    NEGATIVE = "negative"


# Types that bind a protocol address to an NBMA address the data plane uses.
BOUND_TYPES = frozenset({EntryType.STATIC, EntryType.DYNAMIC, EntryType.NHS, EntryType.CACHED})


class EntryFlag(IntFlag):
    USED = 0x01  # data went through it since it was last refreshed
    UNIQUE = 0x02  # registered with the unique flag
    NAT = 0x04  # the peer is behind NAT: claimed NBMA != observed source
    AUTHORITATIVE = 0x08  # learned from the owner (or its NHS) with A set
    SHORTCUT = 0x10  # a phase 3 route installed for this prefix (Cisco "rib nho")


NO_FLAGS = EntryFlag(0)


def host_length(addr: Address) -> int:
    return 32 if isinstance(addr, IPv4Address) else 128


class CacheEntry:
    __slots__ = (
        "claimed_nbma",
        "created",
        "expires",
        "flags",
        "group",
        "handed_out",
        "holding_time",
        "last_used",
        "mtu",
        "nbma",
        "next_hop",
        "prefix_length",
        "protocol",
        "refreshed",
        "request_id",
        "type",
    )

    def __init__(
        self,
        protocol: Address,
        type: EntryType,
        now: float,
        *,
        nbma: Address | None = None,
        prefix_length: int | None = None,
        expires: float | None = None,
        flags: EntryFlag = NO_FLAGS,
        claimed_nbma: Address | None = None,
        next_hop: Address | None = None,
        request_id: int = 0,
        holding_time: int = 0,
        mtu: int = 0,
    ) -> None:
        self.protocol = protocol
        self.type = type
        self.nbma = nbma
        self.prefix_length = host_length(protocol) if prefix_length is None else prefix_length
        self.created = now
        self.refreshed = now
        self.expires = expires
        self.flags = flags
        self.claimed_nbma = claimed_nbma
        self.next_hop = next_hop
        self.request_id = request_id
        self.holding_time = holding_time
        self.mtu = mtu
        self.last_used: float | None = None
        # The NHRP group a dynamic (registered) entry's registration named
        # (Cisco per-tunnel QoS); None for every other entry.
        self.group: str | None = None
        # (NBMA, protocol) of requesters we gave this binding to: whom to
        # purge when it changes (RFC 2332 5.2.5).
        self.handed_out: set[tuple[Address, Address]] | None = None

    @property
    def is_host(self) -> bool:
        return self.prefix_length == host_length(self.protocol)

    @property
    def is_shortcut(self) -> bool:
        """A phase 3 shortcut route: a prefix via a peer's tunnel address."""
        return not self.is_host and bool(self.flags & EntryFlag.SHORTCUT)

    @property
    def prefix(self) -> Network:
        return ip_network(f"{address_text(self.protocol)}/{self.prefix_length}", strict=False)

    def view(self, now: float) -> dict[str, Any]:
        """A `show`-ready description (JSON-safe)."""
        return {
            "protocol": f"{address_text(self.protocol)}/{self.prefix_length}",
            "type": self.type.value,
            "nbma": address_text(self.nbma) if self.nbma is not None else None,
            "claimed_nbma": (
                address_text(self.claimed_nbma) if self.claimed_nbma is not None else None
            ),
            "next_hop": address_text(self.next_hop) if self.next_hop is not None else None,
            "flags": [f.name.lower() for f in EntryFlag if self.flags & f and f.name],
            "created": round(now - self.created, 1),
            "expires_in": None if self.expires is None else round(self.expires - now, 1),
            "holding_time": self.holding_time,
            "used": self.last_used is not None,
            "group": self.group,
        }


def entry_order(entry: CacheEntry) -> tuple[int, int, int]:
    """Sort key of entries in address order: family, address, prefix length
    (odd-length addresses, which only a fuzzer makes, first)."""
    addr = entry.protocol
    if isinstance(addr, IPv4Address | IPv6Address):
        return (addr.version, int(addr), entry.prefix_length)
    return (0, int.from_bytes(addr, "big") if addr else 0, entry.prefix_length)


class Cache:
    """Host entries in a dict; the few prefix entries searched longest first."""

    def __init__(self) -> None:
        self.hosts: dict[Address, CacheEntry] = {}
        self.prefixes: dict[Network, CacheEntry] = {}

    def __len__(self) -> int:
        return len(self.hosts) + len(self.prefixes)

    def __iter__(self) -> Iterator[CacheEntry]:
        yield from self.hosts.values()
        yield from self.prefixes.values()

    def host(self, addr: Address) -> CacheEntry | None:
        return self.hosts.get(addr)

    def lookup(self, addr: Address) -> CacheEntry | None:
        """The host entry for ``addr``, else the longest prefix entry holding it."""
        entry = self.hosts.get(addr)
        if entry is not None or not self.prefixes:
            return entry
        if not isinstance(addr, IPv4Address | IPv6Address):
            return None
        best: CacheEntry | None = None
        for net, e in self.prefixes.items():
            if (
                net.version == addr.version
                and addr in net
                and (best is None or e.prefix_length > best.prefix_length)
            ):
                best = e
        return best

    def put(self, entry: CacheEntry) -> CacheEntry | None:
        """Insert, returning the entry it replaced."""
        if entry.is_host:
            old = self.hosts.get(entry.protocol)
            self.hosts[entry.protocol] = entry
        else:
            key = entry.prefix
            old = self.prefixes.get(key)
            self.prefixes[key] = entry
        return old

    def remove(self, entry: CacheEntry) -> bool:
        if entry.is_host:
            if self.hosts.get(entry.protocol) is entry:
                del self.hosts[entry.protocol]
                return True
            return False
        key = entry.prefix
        if self.prefixes.get(key) is entry:
            del self.prefixes[key]
            return True
        return False
