"""Filters, counts and pages for the views a hub's 50,000 spokes make large.

`show dmvpn` of 50,000 spokes was 2.9 MB of text and `/v1/nhrp` 20 MB of
JSON, built and sent while registrations waited (issue 20). The list views
(`/v1/dmvpn`, `/v1/nhrp`) take, besides `interface` and `family`:

    peer=ADDR      only what concerns this peer: entries whose tunnel (or
                   next-hop) address or NBMA address is ADDR
    state=S        only peers/entries in this state (`show dmvpn`'s State
                   column: up, nhrp, ike, down...; case-insensitive); on
                   /v1/nhrp the entry type (dynamic, static, nhs, cached...)
    limit=N        at most N peers (dmvpn) or entries (nhrp) per interface
                   (0: counts only)
    offset=N       skip the first N (in the view's address order)

and answer, beside the lists, `total` (how many matched before paging),
`offset`, `limit` (null: all) and `count` (how many are in this answer).
Filters select cache entries before any row is built, and only the page's
rows are built, so a page of 100 of 50,000 spokes costs a sort, not 50,000
rows. Bad values are a 400 naming the parameter and why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address

from dmvpn.nhrp.cache import CacheEntry, EntryType
from dmvpn.wire import Address

__all__ = ["Page", "QueryError", "parse_page"]

MAX_LIMIT = 1_000_000


class QueryError(ValueError):
    """A query parameter that cannot be used; the message names it."""


@dataclass(frozen=True)
class Page:
    peer: Address | None = None
    state: str | None = None
    limit: int | None = None
    offset: int = 0

    @property
    def filtered(self) -> bool:
        return self.peer is not None or self.state is not None

    def slice(self, n: int) -> tuple[int, int]:
        """The [start, end) of a page of a list of `n`."""
        start = min(self.offset, n)
        end = n if self.limit is None else min(n, start + self.limit)
        return start, end

    def matches_peer(self, entry: CacheEntry) -> bool:
        peer = self.peer
        return peer is None or peer in (entry.protocol, entry.nbma, entry.next_hop)

    def matches_type(self, entry: CacheEntry) -> bool:
        return self.state is None or entry.type.value == self.state

    def entry_filter(self) -> Callable[[CacheEntry], bool] | None:
        """For /v1/nhrp: peer and entry type (`state` names a type there)."""
        if not self.filtered:
            return None
        return lambda e: self.matches_peer(e) and self.matches_type(e)

    def paging(self, total: int, count: int) -> dict[str, int | None]:
        return {"total": total, "offset": self.offset, "limit": self.limit, "count": count}


def _int(query: Mapping[str, str], name: str, low: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"{name}: {raw!r} is not a whole number") from None
    if value < low or value > MAX_LIMIT:
        raise QueryError(f"{name}: {value} is out of range ({low}-{MAX_LIMIT})")
    return value


def parse_page(query: Mapping[str, str], states: frozenset[str] | None = None) -> Page:
    """The filters and page of a request; QueryError names what is wrong.
    `states`: what `state` may be (None: the cache entry types)."""
    peer: Address | None = None
    raw_peer = query.get("peer")
    if raw_peer:
        try:
            peer = ip_address(raw_peer)
        except ValueError:
            raise QueryError(f"peer: {raw_peer!r} is not an IPv4 or IPv6 address") from None
    state = query.get("state") or None
    if state is not None:
        state = state.lower()
        allowed = states if states is not None else frozenset(t.value for t in EntryType)
        if state not in allowed:
            raise QueryError(f"state: {state!r} is not one of {', '.join(sorted(allowed))}")
    return Page(
        peer=peer,
        state=state,
        limit=_int(query, "limit", 0),
        offset=_int(query, "offset", 0) or 0,
    )
