"""Per-tunnel QoS on a hub: each registered spoke of an NHRP group gets the
group's shaper on the underlay egress, keyed by its NBMA address
(qospolicy.py has the policy and the tc layout; this module keeps the state
and runs tc).

Fed by the engine's outputs: PeerGroup (a registration named a group, moved
to another NBMA address, or changed group) and BindingRemoved (the
registration went: expired, purged, cleared). Two registrations from one
NBMA address (a dual-stack spoke's IPv4 and IPv6 engines) share one shaper.

Failures never stop NHRP: a group with no policy is logged once per spoke
and the spoke is served unshaped (Cisco does the same for an unmapped
group); a tc command that fails is logged and the spoke is served unshaped.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Protocol

from dmvpn.qospolicy import (
    MAX_SLOTS,
    Qos,
    Shaping,
    add_commands,
    rate_text,
    remove_commands,
    root_commands,
    teardown_commands,
)
from dmvpn.wire import Address, address_text


class Log(Protocol):
    def __call__(self, kind: str, message: str, **details: Any) -> None: ...


class TcError(Exception):
    pass


def tc_argv(namespace: str | None) -> list[str]:
    """tc, in the underlay namespace with a front-door VRF (`tc -n NS`)."""
    return ["tc", "-n", namespace] if namespace else ["tc"]


def run_tc(lines: list[str], namespace: str | None = None) -> None:
    """Run tc commands as one batch (one fork, not one per line)."""
    proc = subprocess.run(
        [*tc_argv(namespace), "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise TcError((proc.stderr or proc.stdout).strip().replace("\n", "; "))


_CLASS = re.compile(r"^class htb (\S+) ")
_SENT = re.compile(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)")


def tc_class_stats(device: str, namespace: str | None = None) -> dict[str, dict[str, int]]:
    """Per HTB class id ("1:10"): bytes, packets, drops, overlimits. Parsed
    from `tc -s class show` (the text form: Debian 12's tc has no JSON for
    classes)."""
    proc = subprocess.run(
        [*tc_argv(namespace), "-s", "class", "show", "dev", device],
        capture_output=True,
        text=True,
        check=False,
    )
    out: dict[str, dict[str, int]] = {}
    current: str | None = None
    for line in proc.stdout.splitlines():
        m = _CLASS.match(line)
        if m is not None:
            current = m.group(1)
            continue
        m = _SENT.search(line)
        if m is not None and current is not None:
            b, p, d, o = (int(x) for x in m.groups())
            out[current] = {"bytes": b, "packets": p, "drops": d, "overlimits": o}
            current = None
    return out


@dataclass
class Peer:
    """One spoke's NBMA address: the groups its registrations named, and
    the shaper in place (if any)."""

    nbma: IPv4Address
    groups: dict[Address, str | None]  # protocol address -> group
    shaping: Shaping | None = None
    why_unshaped: str | None = None

    @property
    def group(self) -> str | None:
        named = [g for g in self.groups.values() if g is not None]
        return named[-1] if named else None


class QosShaper:
    def __init__(
        self,
        cfg: Qos,
        *,
        gre_key: bool,
        log: Log,
        interface: str,
        device_of: Callable[[IPv4Address], str | None],
        run: Callable[[list[str]], None] = run_tc,
        stats: Callable[[str], dict[str, dict[str, int]]] = tc_class_stats,
    ) -> None:
        self.cfg = cfg
        self.gre_key = gre_key
        self.log = log
        self.interface = interface
        self.device_of = device_of
        self.run = run
        self.stats = stats
        self.peers: dict[IPv4Address, Peer] = {}
        self.devices: set[str] = set()  # where we put the HTB root
        self.counters = {"shaped": 0, "unshaped_unknown_group": 0, "tc_errors": 0}

    # ------------------------------------------------------------ engine outputs

    def peer_group(self, protocol: Address, nbma: Address, group: str | None) -> None:
        if not isinstance(nbma, IPv4Address):
            return  # the underlay is IPv4
        for other in list(self.peers.values()):
            if other.nbma != nbma and protocol in other.groups:
                del other.groups[protocol]  # the registration moved
                self._reconcile(other)
        peer = self.peers.get(nbma)
        if peer is None:
            peer = self.peers[nbma] = Peer(nbma, {})
        peer.groups.pop(protocol, None)  # re-insert: the latest group wins
        peer.groups[protocol] = group
        self._reconcile(peer)

    def unbind(self, protocol: Address, nbma: Address) -> None:
        peer = self.peers.get(nbma) if isinstance(nbma, IPv4Address) else None
        if peer is not None and protocol in peer.groups:
            del peer.groups[protocol]
            self._reconcile(peer)

    # ------------------------------------------------------------ tc

    def _reconcile(self, peer: Peer) -> None:
        group = peer.group if peer.groups else None
        policy = self.cfg.groups.get(group) if group is not None else None
        current = peer.shaping
        if current is not None and current.group == group and current.policy == policy:
            return
        if current is not None:
            self._remove(current)
            peer.shaping = None
        peer.why_unshaped = None
        if group is not None and policy is None:
            peer.why_unshaped = f"no policy for group {group!r}"
            self.counters["unshaped_unknown_group"] += 1
            self.log(
                "qos-unknown-group",
                f"{peer.nbma} registered in NHRP group {group!r}, which has no "
                f"qos policy on {self.interface}; served unshaped",
                interface=self.interface,
                nbma=str(peer.nbma),
                group=group,
            )
        elif policy is not None and group is not None:
            peer.shaping = self._add(peer.nbma, group, policy)
        if not peer.groups:
            del self.peers[peer.nbma]

    def _slot(self, device: str) -> int | None:
        used = {
            p.shaping.slot
            for p in self.peers.values()
            if p.shaping is not None and p.shaping.device == device
        }
        for slot in range(1, MAX_SLOTS + 1):
            if slot not in used:
                return slot
        return None

    def _add(self, nbma: IPv4Address, group: str, policy: Any) -> Shaping | None:
        device = self.cfg.device or self.device_of(nbma)
        if device is None:
            self._failed(nbma, group, "no route to it on the underlay")
            return None
        slot = self._slot(device)
        if slot is None:
            self._failed(nbma, group, f"{MAX_SLOTS} spokes already shaped on {device}")
            return None
        shaping = Shaping(device, slot, nbma, group, policy, self.gre_key)
        lines = add_commands(shaping)
        if device not in self.devices:
            lines = root_commands(device) + lines
        try:
            self.run(lines)
        except (TcError, OSError) as exc:
            try:  # leave nothing half made
                self.run(remove_commands(shaping))
            except (TcError, OSError):
                pass
            self._failed(nbma, group, f"tc: {exc}")
            return None
        self.devices.add(device)
        self.counters["shaped"] += 1
        self.log(
            "qos-shaped",
            f"{nbma} (group {group}) shaped to {rate_text(policy.rate)} "
            f"(ceil {rate_text(policy.ceiling)}) on {device}, class {shaping.classid}",
            interface=self.interface,
            nbma=str(nbma),
            group=group,
            device=device,
            classid=shaping.classid,
        )
        return shaping

    def _failed(self, nbma: IPv4Address, group: str, why: str) -> None:
        self.counters["tc_errors"] += 1
        peer = self.peers.get(nbma)
        if peer is not None:
            peer.why_unshaped = why
        self.log(
            "qos-error",
            f"cannot shape {nbma} (group {group}): {why}; served unshaped",
            interface=self.interface,
            nbma=str(nbma),
            group=group,
        )

    def _remove(self, shaping: Shaping) -> None:
        try:
            self.run(remove_commands(shaping))
        except (TcError, OSError) as exc:
            self.counters["tc_errors"] += 1
            self.log(
                "qos-error",
                f"removing the shaper of {shaping.nbma}: {exc}",
                interface=self.interface,
                nbma=str(shaping.nbma),
            )
        else:
            self.log(
                "qos-unshaped",
                f"{shaping.nbma} (group {shaping.group}) no longer shaped",
                interface=self.interface,
                nbma=str(shaping.nbma),
                group=shaping.group,
            )

    def close(self) -> None:
        """Take the shapers away (daemon stop): the devices' qdiscs go back
        to the kernel's default."""
        for device in sorted(self.devices):
            try:
                self.run(teardown_commands(device))
            except (TcError, OSError):
                pass  # the device (or its namespace) is already gone
        self.devices.clear()
        self.peers.clear()

    # ------------------------------------------------------------ views

    def view(self) -> dict[str, Any]:
        """`show nhrp group`: the policies, and per spoke its group and shaper
        with the HTB class's counters."""
        stats = {d: self.stats(d) for d in sorted(self.devices)}
        peers = []
        for nbma in sorted(self.peers):
            peer = self.peers[nbma]
            s = peer.shaping
            row: dict[str, Any] = {
                "nbma": str(nbma),
                "protocols": sorted(address_text(p) for p in peer.groups),
                "group": peer.group,
                "shaped": s is not None,
                "why_unshaped": peer.why_unshaped,
            }
            if s is not None:
                row |= {
                    "device": s.device,
                    "classid": s.classid,
                    "rate": rate_text(s.policy.rate),
                    "ceil": rate_text(s.policy.ceiling),
                    "counters": stats.get(s.device, {}).get(s.classid, {}),
                }
            peers.append(row)
        return {
            "interface": self.interface,
            "device": self.cfg.device,
            "policies": {name: p.view() for name, p in sorted(self.cfg.groups.items())},
            "peers": peers,
            "counters": dict(self.counters),
        }
