"""Access routers of the lab: a router between one spoke and the underlay
bridge (data only, no I/O; `dmvpn.lab.access` builds them).

A spoke's `access: {mtu: 1380, drop_icmp: true, firewall: true}` puts a
router of its own, named `<spoke>acc`, on its uplink, as an LTE or PPPoE
access network does:

- `mtu`: the access link's MTU (the spoke's nbma0 and the router's port to
  it). Packets bigger than that are fragmented by the router, or, with DF,
  dropped and answered with ICMP Fragmentation Needed (RFC 1191).
- `drop_icmp`: the router drops ICMP Fragmentation Needed, its own and any it
  forwards: a path MTU black hole (RFC 2923 2.1).
- `firewall`: an underlay firewall that forwards only what a cloud needs
  (docs/MTU.md's table: GRE, ESP, UDP 500/4500, ICMP Fragmentation Needed,
  and what answers a flow already let through).

The spoke keeps its underlay address: the router answers ARP on each side
for the addresses behind the other (proxy ARP), so nothing else in the lab
changes. Its own address, the source of its ICMP, is
underlay_network .(150+S) for spoke number S.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ACCESS_BASE", "AccessPlan", "AccessSpec", "access_name", "plan_access_router"]

# Access router of spoke S is underlay_network[ACCESS_BASE + S].
ACCESS_BASE = 150


class AccessSpec(BaseModel):
    """A spoke's `access:` key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # 576: the least every IPv4 host must take (RFC 791); the tunnel's
    # 1400 plus GRE must fit 1500 or path MTU discovery/MSS take over.
    mtu: Annotated[int, Field(ge=576, le=1500)] | None = None
    drop_icmp: bool = False
    firewall: bool = False


@dataclass(frozen=True, slots=True)
class AccessPlan:
    """One access router with its address."""

    name: str  # <spoke>acc
    spoke: str
    address: IPv4Interface  # on the underlay bridge
    mtu: int | None
    drop_icmp: bool
    firewall: bool


def access_name(spoke: str) -> str:
    return f"{spoke}acc"


def plan_access_router(
    spoke: str, spoke_index: int, spec: AccessSpec, underlay: IPv4Network
) -> AccessPlan:
    """The access router of spoke number `spoke_index`; ValueError when the
    underlay has no address for it."""
    n = ACCESS_BASE + spoke_index
    if n >= underlay.num_addresses - 1:
        raise ValueError(f"access: no address number {n} in {underlay} for {spoke}'s router")
    return AccessPlan(
        access_name(spoke),
        spoke,
        IPv4Interface(f"{underlay[n]}/{underlay.prefixlen}"),
        spec.mtu,
        spec.drop_icmp,
        spec.firewall,
    )
