"""Per-tunnel QoS policies (Cisco `ip nhrp map group NAME service-policy
output POLICY`): what a hub's config says, validated, and the tc commands
that carry one policy out for one spoke. Pure: no I/O (daemon/qos.py runs
the commands).

A hub interface's `qos.groups` maps an NHRP group name to a policy: a shaper
(`rate`, optional `ceil` and `burst`) for everything the hub sends to each
spoke of the group, with optional DSCP classes inside (each a guaranteed
`rate` and a `ceil` it may borrow up to). As on Cisco, every spoke of a
group gets a shaper of its own: the rate is per spoke, not shared.

The shaping is HTB on the hub's underlay egress, keyed by the spoke's NBMA
address (the address the hub's packets go to: the post-NAT one for a spoke
behind NAT), so it applies to GRE from any data plane and to ESP alike:

    root 1: htb (unclassified traffic is not shaped: HTB's direct queue)
      class 1:<slot*16>      rate/ceil/burst of the group   <- u32 dst NBMA/32
        class 1:<slot*16+i>  one per DSCP class             <- inner DSCP (GRE) or outer DSCP
        class 1:<slot*16+15> the rest ("default" class)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dmvpn.wire import group_problem

# Per slot: the group's class and up to 14 DSCP classes plus the default one.
SLOT_WIDTH = 16
MAX_CLASSES = 14
# HTB class minors are 16 bits; slot 0 is never used (1:0 is the qdisc).
MAX_SLOTS = 0xFFFF // SLOT_WIDTH
# tc's own lower bound makes no sense below a few packets a second; HTB with
# 64-bit rates (Linux 3.13+) goes well above 100 Gbit/s.
MIN_RATE = 8_000
MAX_RATE = 400_000_000_000
# GRE (4, 8 with a key) + outer IPv4 (20) + Ethernet (14) on top of the tunnel MTU.
_OVERHEAD = 20 + 8 + 14

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(bit|bps)?\s*$", re.IGNORECASE)
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(b)?\s*$", re.IGNORECASE)
_RATE_UNIT = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "t": 1_000_000_000_000}
_SIZE_UNIT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

# DSCP names (RFC 2474 class selectors, RFC 2597 AF, RFC 3246 EF, RFC 5865 VA).
DSCP_NAMES: dict[str, int] = {
    "default": 0,
    "be": 0,
    "ef": 46,
    "va": 44,
    **{f"cs{i}": i * 8 for i in range(8)},
    **{f"af{c}{d}": c * 8 + d * 2 for c in range(1, 5) for d in range(1, 4)},
}


def parse_rate(value: object) -> int:
    """A rate in bits per second: an int, or tc's words (``10mbit``,
    ``512kbit``, ``1gbit``; ``bps`` is bytes per second, as in tc)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a rate")
    if isinstance(value, int):
        bits = value
    elif isinstance(value, str):
        m = _RATE.match(value)
        if m is None:
            raise ValueError(f"{value!r} is not a rate (e.g. 10mbit, 512kbit, 1gbit)")
        scale = _RATE_UNIT[m.group(2).lower()] * (8 if (m.group(3) or "").lower() == "bps" else 1)
        bits = int(float(m.group(1)) * scale)
    else:
        raise ValueError(f"{value!r} is not a rate")
    if not MIN_RATE <= bits <= MAX_RATE:
        raise ValueError(f"rate {bits} bit/s is outside {MIN_RATE}..{MAX_RATE} bit/s")
    return bits


def parse_size(value: object) -> int:
    """A size in bytes: an int, or ``32kb``, ``1500b``, ``1mb`` (binary units, as tc)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if m is None:
            raise ValueError(f"{value!r} is not a size in bytes (e.g. 32kb, 1500b)")
        size = int(m.group(1)) * _SIZE_UNIT[m.group(2).lower()]
    else:
        raise ValueError(f"{value!r} is not a size")
    if not 1 <= size <= 0xFFFFFFF:
        raise ValueError(f"size {size} bytes is outside 1..{0xFFFFFFF}")
    return size


def parse_dscp(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a DSCP")
    if isinstance(value, int):
        if not 0 <= value <= 63:
            raise ValueError(f"DSCP {value} is outside 0..63")
        return value
    if isinstance(value, str) and value.lower() in DSCP_NAMES:
        return DSCP_NAMES[value.lower()]
    raise ValueError(f"{value!r} is not a DSCP (0..63, or ef, af11..af43, cs0..cs7, va, default)")


def rate_text(bits: int) -> str:
    """How `show` prints a rate: tc's units, exact."""
    for unit, div in (("gbit", 1_000_000_000), ("mbit", 1_000_000), ("kbit", 1_000)):
        if bits % div == 0:
            return f"{bits // div}{unit}"
    return f"{bits}bit"


Rate = Annotated[int, Field(description="bit/s")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QosClass(_Strict):
    """A DSCP class inside a group's shaper (Cisco's child policy)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
    dscp: Annotated[list[int], Field(min_length=1)]
    rate: int
    ceil: int | None = None

    _rates = field_validator("rate", "ceil", mode="before")(
        lambda v: None if v is None else parse_rate(v)
    )

    @field_validator("dscp", mode="before")
    @classmethod
    def _dscp(cls, v: Any) -> Any:
        items = v if isinstance(v, list) else [v]
        return [parse_dscp(x) for x in items]


class QosPolicy(_Strict):
    """What the hub sends to each spoke of one NHRP group: shaped to `rate`,
    borrowing up to `ceil` (default: `rate`) when the link has room."""

    rate: int
    ceil: int | None = None
    burst: int | None = None  # bytes; default: HTB's (rate / HZ, at least one MTU)
    classes: list[QosClass] = []

    _rates = field_validator("rate", "ceil", mode="before")(
        lambda v: None if v is None else parse_rate(v)
    )
    _burst = field_validator("burst", mode="before")(lambda v: None if v is None else parse_size(v))

    @model_validator(mode="after")
    def _consistent(self) -> QosPolicy:
        ceil = self.ceiling
        if ceil < self.rate:
            raise ValueError(f"ceil {rate_text(ceil)} is below rate {rate_text(self.rate)}")
        if len(self.classes) > MAX_CLASSES:
            raise ValueError(f"at most {MAX_CLASSES} classes (one HTB slot of {SLOT_WIDTH})")
        seen: dict[int, str] = {}
        names: set[str] = set()
        for i, c in enumerate(self.classes):
            if c.name in names or c.name == "default":
                raise ValueError(f"classes.{i}.name {c.name!r} is used twice (or is 'default')")
            names.add(c.name)
            for d in c.dscp:
                if d in seen:
                    raise ValueError(f"classes.{i}: DSCP {d} is already in class {seen[d]!r}")
                seen[d] = c.name
            if c.ceil is not None and c.ceil < c.rate:
                raise ValueError(f"classes.{i}.ceil is below its rate")
            if (c.ceil or c.rate) > ceil:
                raise ValueError(
                    f"classes.{i} ({c.name}) may use {rate_text(c.ceil or c.rate)}, "
                    f"more than the group's ceil {rate_text(ceil)}"
                )
        total = sum(c.rate for c in self.classes)
        if self.classes and total + MIN_RATE > self.rate:
            # HTB cannot guarantee more than the parent has: an over-committed
            # child policy would quietly not do what it says.
            raise ValueError(
                f"the classes' rates add up to {rate_text(total)}, which leaves less than "
                f"{rate_text(MIN_RATE)} of rate {rate_text(self.rate)} for the default class"
            )
        return self

    @property
    def ceiling(self) -> int:
        return self.ceil if self.ceil is not None else self.rate

    def check_burst(self, mtu: int) -> str | None:
        """Why the burst cannot work over a tunnel of this MTU (None: it can)."""
        if self.burst is not None and self.burst < mtu + _OVERHEAD:
            return (
                f"burst {self.burst} bytes is less than one full packet "
                f"(tunnel MTU {mtu} + {_OVERHEAD} bytes of GRE, IPv4 and Ethernet)"
            )
        return None

    def view(self) -> dict[str, Any]:
        return {
            "rate": rate_text(self.rate),
            "ceil": rate_text(self.ceiling),
            "burst": self.burst,
            "classes": [
                {
                    "name": c.name,
                    "dscp": c.dscp,
                    "rate": rate_text(c.rate),
                    "ceil": rate_text(c.ceil or self.ceiling),
                }
                for c in self.classes
            ],
        }


class Qos(_Strict):
    """A hub interface's per-tunnel QoS: NHRP group -> policy."""

    groups: Annotated[dict[str, QosPolicy], Field(min_length=1)]
    # The underlay device to shape on. Default: the device of the route to
    # each spoke's NBMA address (asked of the kernel when the spoke registers).
    device: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,15}$")] | None = None

    @field_validator("groups")
    @classmethod
    def _names(cls, v: dict[str, QosPolicy]) -> dict[str, QosPolicy]:
        for name in v:
            problem = group_problem(name)
            if problem is not None:
                raise ValueError(f"group name {name!r} {problem}")
        return v


# ---------------------------------------------------------------- tc commands


@dataclass(frozen=True, slots=True)
class Shaping:
    """One spoke's shaper: where, which slot, which policy."""

    device: str
    slot: int
    nbma: IPv4Address
    group: str
    policy: QosPolicy
    gre_key: bool  # GRE header of 8 bytes rather than 4: where the inner DSCP sits

    @property
    def classid(self) -> str:
        return f"1:{self.slot * SLOT_WIDTH:x}"


def root_commands(device: str) -> list[str]:
    # `default 0`: packets no filter claims bypass the shaper (HTB's direct
    # queue), so spokes without a group, and everything else the hub sends,
    # go out as before.
    return [f"qdisc replace dev {device} root handle 1: htb default 0"]


def teardown_commands(device: str) -> list[str]:
    return [f"qdisc del dev {device} root handle 1:"]


def _htb(rate: int, ceil: int, burst: int | None) -> str:
    out = f"htb rate {rate}bit ceil {ceil}bit"
    if burst is not None:
        out += f" burst {burst}b cburst {burst}b"
    return out


def add_commands(s: Shaping) -> list[str]:
    """tc -batch lines that shape everything to ``s.nbma`` by ``s.policy``."""
    dev, p, base = s.device, s.policy, s.slot * SLOT_WIDTH
    shaper = _htb(p.rate, p.ceiling, p.burst)
    cmds = [f"class replace dev {dev} parent 1: classid 1:{base:x} {shaper}"]
    # Leaves keep HTB's default queue (pfifo): fq_codel or sfq would be
    # kinder to mixed flows, but not every kernel has them (this lab's has
    # neither), and a policy must apply wherever the config was accepted.
    if p.classes:
        # Inner IPv4 DSCP of a GRE packet: outer IPv4 (20, no options from
        # the kernel) + GRE (4, 8 with a key), then byte 1 of the inner header.
        inner_tos = 20 + (8 if s.gre_key else 4) + 1
        default = base + SLOT_WIDTH - 1
        for i, c in enumerate(p.classes, 1):
            cid = f"1:{base + i:x}"
            cmds.append(
                f"class replace dev {dev} parent 1:{base:x} classid {cid} "
                f"{_htb(c.rate, c.ceil or p.ceiling, None)}"
            )
            for d in c.dscp:
                tos = d << 2
                cmds.append(
                    f"filter add dev {dev} parent 1:{base:x} protocol ip prio 1 u32 "
                    f"match ip protocol 47 0xff match u8 0x{tos:02x} 0xfc at {inner_tos} "
                    f"flowid {cid}"
                )
                # ESP, or GRE whose sender copied the inner DSCP outwards.
                cmds.append(
                    f"filter add dev {dev} parent 1:{base:x} protocol ip prio 2 u32 "
                    f"match ip dsfield 0x{tos:02x} 0xfc flowid {cid}"
                )
        rest = p.rate - sum(c.rate for c in p.classes)
        cmds.append(
            f"class replace dev {dev} parent 1:{base:x} classid 1:{default:x} "
            f"{_htb(rest, p.ceiling, None)}"
        )
        cmds.append(
            f"filter add dev {dev} parent 1:{base:x} protocol all prio 3 u32 "
            f"match u32 0 0 flowid 1:{default:x}"
        )
    # The spoke's filter at the root, at a priority of its own (the slot) so
    # that it can be taken out alone: u32 hash-table handles are shared by
    # every filter of the qdisc, so a fixed handle could clash.
    cmds.append(
        f"filter add dev {dev} parent 1: protocol ip prio {s.slot} u32 "
        f"match ip dst {s.nbma}/32 flowid 1:{base:x}"
    )
    return cmds


def remove_commands(s: Shaping) -> list[str]:
    dev, base = s.device, s.slot * SLOT_WIDTH
    cmds = [f"filter del dev {dev} parent 1: protocol ip prio {s.slot}"]
    if s.policy.classes:
        cmds.append(f"filter del dev {dev} parent 1:{base:x}")
        for i in range(1, len(s.policy.classes) + 1):
            cmds.append(f"class del dev {dev} classid 1:{base + i:x}")
        cmds.append(f"class del dev {dev} classid 1:{base + SLOT_WIDTH - 1:x}")
    cmds.append(f"class del dev {dev} classid 1:{base:x}")
    return cmds
