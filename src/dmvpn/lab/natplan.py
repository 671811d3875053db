"""NAT routers of the lab: their names and addresses (data only, no I/O).

A spoke's `nat: NAME` puts it behind the NAT router NAME: a namespace of its
own between the spoke and the underlay bridge, masquerading everything that
leaves it (one public address, port translation for UDP/TCP; see
docs/NAT.md for what happens to GRE, which has no ports). Several spokes may
name the same NAT router: they then share its one public address, as behind
a home or office PAT.

Addressing, by the NAT router's position in order of first mention (1-based):

    public   underlay_network .(200+N)        on the underlay bridge
    inside   172.31.N.0/24: the NAT router at .1, spoke number S at .(10+S)

`dmvpn.lab.nat` builds them; `dmvpn.lab.topology` resolves the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

__all__ = ["INSIDE_NETWORK", "NAT_PUBLIC_BASE", "NatPlan", "plan_nat_routers"]

# Every NAT router's inside network is a /24 of this one.
INSIDE_NETWORK = IPv4Network("172.31.0.0/16")
# NAT router N's public address is underlay_network[NAT_PUBLIC_BASE + N].
NAT_PUBLIC_BASE = 200


@dataclass(frozen=True, slots=True)
class NatPlan:
    """One NAT router with its addresses and the spokes behind it."""

    name: str
    index: int  # 1-based, in order of first mention by a spoke
    public: IPv4Interface  # on the underlay bridge: every inside spoke's post-NAT address
    inside: IPv4Interface  # its address on the inside network (the spokes' gateway)
    spokes: tuple[str, ...]  # behind it, in spoke order

    @property
    def inside_network(self) -> IPv4Network:
        return self.inside.network

    def spoke_address(self, spoke_index: int) -> IPv4Interface:
        """The inside address of spoke number `spoke_index` (1-based) behind it."""
        net = self.inside.network
        return IPv4Interface(f"{net[10 + spoke_index]}/{net.prefixlen}")


def plan_nat_routers(
    behind: list[tuple[str, str, int]], underlay: IPv4Network
) -> dict[str, NatPlan]:
    """NAT routers from (spoke name, NAT router name, spoke index) in spoke order.

    Raises ValueError (with the field path) when the plan has no room.
    """
    spokes: dict[str, list[str]] = {}
    for spoke, nat, _ in behind:
        spokes.setdefault(nat, []).append(spoke)
    out: dict[str, NatPlan] = {}
    for n, (name, members) in enumerate(spokes.items(), 1):
        if NAT_PUBLIC_BASE + n >= underlay.num_addresses - 1:
            raise ValueError(
                f"nat {name!r}: no public address number {NAT_PUBLIC_BASE + n} in {underlay}"
            )
        if n > 255:
            raise ValueError(f"nat {name!r}: at most 255 NAT routers")
        public: IPv4Address = underlay[NAT_PUBLIC_BASE + n]
        inside = IPv4Network(f"{INSIDE_NETWORK[n << 8]}/24")
        out[name] = NatPlan(
            name,
            n,
            IPv4Interface(f"{public}/{underlay.prefixlen}"),
            IPv4Interface(f"{inside[1]}/24"),
            tuple(members),
        )
    for spoke, nat, index in behind:
        if 10 + index >= 255:
            raise ValueError(f"{spoke}: spoke number {index} has no address behind nat {nat!r}")
    return out
