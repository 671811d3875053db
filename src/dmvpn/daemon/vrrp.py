"""First-hop redundancy for a dual spoke site (`vrrp:` in the node config):
VRRPv3 (RFC 5798) for IPv4, whose gateway role follows the spoke's dmvpn
state.

A site whose LAN has two spokes gives its hosts one gateway address, held
by whichever spoke is master. A spoke is *eligible* while at least one of
its NHSes is up (`track_nhs`): a master that loses every NHS resigns at
once (an advertisement with priority 0, RFC 5798 6.4.3), so the other spoke
takes over after its skew time, and an ineligible spoke never takes over.
A spoke whose daemon dies (kill -9) stops advertising: the backup takes
over after 3 intervals plus its skew (0.7 s at the lab's 0.2 s).

Why in the daemon and not FRR's vrrpd beside it: the role must follow NHS
state and the daemon's life. vrrpd keeps advertising when dmvpn dies, and
has no way to track NHS state, so the hosts' gateway would stay on a spoke
that cannot reach the cloud.

The address and the virtual MAC live on a macvlan (`vrrp<VRID>`) over the
LAN interface, up only while master: the hosts' ARP entry (address ->
00:00:5e:00:01:VRID) never changes, and a gratuitous ARP on takeover moves
the LAN's bridges to the new master. A master killed with -9 leaves its
macvlan up: harmless, the bridges follow the new master's frames and the
hosts' unicast ARP probes go there (a restarted daemon deletes it first).

`VrrpGroup` is the state machine (no I/O, no clock); `VrrpRouter` its
sockets, macvlan and timer on the daemon's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from enum import StrEnum
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from dmvpn.wire import DecodeError
from dmvpn.wire.vrrp import VRRP_GROUP, VRRP_PROTOCOL, VrrpAdvert, decode_vrrp, virtual_mac

__all__ = ["VrrpGroup", "VrrpRole", "VrrpRouter"]


class VrrpRole(StrEnum):
    INIT = "init"
    BACKUP = "backup"
    MASTER = "master"


class VrrpGroup:
    """One virtual router (RFC 5798 6.4), preempting, with eligibility.

    The host calls `start`, `receive`, `set_eligible` and `on_timer` at
    `deadline()`; each returns what to do: ("advert", priority) to send,
    ("master",) / ("backup",) to take or give up the address."""

    def __init__(
        self, vrid: int, priority: int, interval: float, address: IPv4Address, own: IPv4Address
    ) -> None:
        self.vrid = vrid
        self.priority = priority
        self.interval = interval  # our advertisement interval, s
        self.master_interval = interval  # the master's, learnt from its adverts
        self.address = address
        self.own = own  # our primary address: the tie-break between equal priorities
        self.role = VrrpRole.INIT
        self.eligible = False
        self.down_at: float | None = None  # backup: when the master is presumed dead
        self.advert_at: float | None = None  # master: the next advertisement
        self.transitions = 0

    def skew(self) -> float:
        return (256 - self.priority) * self.master_interval / 256

    def master_down(self) -> float:
        return 3 * self.master_interval + self.skew()

    def advert(self, priority: int | None = None) -> VrrpAdvert:
        cs = max(1, min(0xFFF, round(self.interval * 100)))
        prio = self.priority if priority is None else priority
        return VrrpAdvert(self.vrid, prio, cs, (self.address,))

    def deadline(self) -> float | None:
        return self.advert_at if self.role is VrrpRole.MASTER else self.down_at

    def start(self, now: float, eligible: bool) -> list[tuple[Any, ...]]:
        self.eligible = eligible
        return self._backup(now)

    def set_eligible(self, eligible: bool, now: float) -> list[tuple[Any, ...]]:
        if eligible == self.eligible:
            return []
        self.eligible = eligible
        if self.role is VrrpRole.MASTER and not eligible:
            # Resign: the backup takes over after its skew, not 3 intervals.
            return [("advert", 0), *self._backup(now)]
        if self.role is VrrpRole.BACKUP:
            self.down_at = now + self.master_down() if eligible else None
        return []

    def receive(self, adv: VrrpAdvert, src: IPv4Address, now: float) -> list[tuple[Any, ...]]:
        if adv.vrid != self.vrid or src == self.own:
            return []
        if self.role is VrrpRole.BACKUP:
            if adv.priority == 0:
                self.down_at = now + self.skew() if self.eligible else None
            elif adv.priority >= self.priority or not self.eligible:
                self.master_interval = adv.interval_cs / 100
                self.down_at = now + self.master_down() if self.eligible else None
            # A lower priority master: preempt when the timer runs out.
            return []
        if self.role is VrrpRole.MASTER:
            if adv.priority == 0:
                self.advert_at = now + self.interval
                return [("advert", self.priority)]
            if adv.priority > self.priority or (adv.priority == self.priority and src > self.own):
                self.master_interval = adv.interval_cs / 100
                return self._backup(now)
        return []

    def on_timer(self, now: float) -> list[tuple[Any, ...]]:
        if self.role is VrrpRole.MASTER and self.advert_at is not None and now >= self.advert_at:
            self.advert_at = now + self.interval
            return [("advert", self.priority)]
        if (
            self.role is VrrpRole.BACKUP
            and self.eligible
            and self.down_at is not None
            and now >= self.down_at
        ):
            self.role = VrrpRole.MASTER
            self.transitions += 1
            self.down_at = None
            self.advert_at = now + self.interval
            return [("advert", self.priority), ("master",)]
        return []

    def _backup(self, now: float) -> list[tuple[Any, ...]]:
        was = self.role
        self.role = VrrpRole.BACKUP
        self.advert_at = None
        self.master_interval = self.interval
        self.down_at = now + self.master_down() if self.eligible else None
        if was is VrrpRole.MASTER:
            self.transitions += 1
            return [("backup",)]
        return []


Log = Callable[..., None]


class VrrpRouter:
    """A `VrrpGroup` on a LAN interface: the advertisement socket, the
    macvlan holding the address, the timer. `eligible()` is asked at start
    and whenever `update()` is called (an NHS changed state)."""

    def __init__(self, cfg: Any, ipr: Any, log: Log, eligible: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.ipr = ipr
        self.log = log
        self.eligible = eligible
        self.device = f"vrrp{cfg.vrid}"
        self.mac = virtual_mac(cfg.vrid)
        self.group: VrrpGroup | None = None
        self.rx_bad = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._parent = 0
        self._vip: IPv4Address = cfg.address

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        links = self.ipr.link_lookup(ifname=self.cfg.interface)
        if not links:
            raise OSError(f"no interface {self.cfg.interface}")
        self._parent = links[0]
        own = self._primary()
        self._macvlan()
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP_PROTOCOL)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.cfg.interface.encode())
            mreqn = struct.pack("=4s4si", VRRP_GROUP.packed, own.packed, self._parent)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        self.group = VrrpGroup(self.cfg.vrid, self.cfg.priority, self.cfg.interval, self._vip, own)
        self._do(self.group.start(loop.time(), self._eligible()))

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.group is not None and self.group.role is VrrpRole.MASTER:
            self._send(0)  # resign: the backup takes over after its skew
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        with contextlib.suppress(Exception):
            self.ipr.link("del", ifname=self.device)

    def view(self) -> dict[str, Any]:
        """The group's state for the API (`/v1/vrrp`, `show vrrp`)."""
        g = self.group
        return {
            "interface": self.cfg.interface,
            "vrid": self.cfg.vrid,
            "address": str(self._vip),
            "device": self.device,
            "role": (g.role if g is not None else VrrpRole.INIT).value,
            "priority": self.cfg.priority,
            "interval": self.cfg.interval,
            "track_nhs": self.cfg.track_nhs,
            "eligible": g.eligible if g is not None else False,
            "own": None if g is None else str(g.own),
            "transitions": 0 if g is None else g.transitions,
            "rx_bad": self.rx_bad,
        }

    def update(self) -> None:
        if self.group is None or self._loop is None:
            return
        self._do(self.group.set_eligible(self._eligible(), self._loop.time()))

    # -- internals ----------------------------------------------------------

    def _eligible(self) -> bool:
        return not self.cfg.track_nhs or self.eligible()

    def _primary(self) -> IPv4Address:
        for msg in self.ipr.get_addr(family=socket.AF_INET, index=self._parent):
            return IPv4Address(msg.get_attr("IFA_ADDRESS"))
        raise OSError(f"{self.cfg.interface} has no IPv4 address (VRRP needs one)")

    def _macvlan(self) -> None:
        # A macvlan left by a daemon killed with -9 is replaced.
        with contextlib.suppress(Exception):
            self.ipr.link("del", ifname=self.device)
        self.ipr.link(
            "add",
            ifname=self.device,
            kind="macvlan",
            link=self._parent,
            macvlan_mode="bridge",
            address=self.mac,
        )
        # The parent must not answer ARP for the address with its own MAC,
        # nor the macvlan (when down) for the parent's; no IPv6 on the
        # macvlan (both spokes would claim the same link-local address).
        for dev, key, value in (
            (self.cfg.interface, "ipv4/conf/{}/arp_ignore", "1"),
            (self.cfg.interface, "ipv4/conf/{}/arp_announce", "2"),
            (self.device, "ipv4/conf/{}/arp_ignore", "1"),
            (self.device, "ipv4/conf/{}/rp_filter", "0"),
            (self.device, "ipv6/conf/{}/disable_ipv6", "1"),
        ):
            with contextlib.suppress(OSError):
                Path("/proc/sys/net", key.format(dev)).write_text(value)

    def _do(self, actions: list[tuple[Any, ...]]) -> None:
        for action in actions:
            if action[0] == "advert":
                self._send(action[1])
            elif action[0] == "master":
                self._become_master()
            elif action[0] == "backup":
                self._become_backup()
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        assert self.group is not None and self._loop is not None
        at = self.group.deadline()
        if at is not None:
            self._timer = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        assert self.group is not None and self._loop is not None
        self._timer = None
        self._do(self.group.on_timer(self._loop.time()))

    def _send(self, priority: int) -> None:
        if self._sock is None or self.group is None:
            return
        try:
            data = self.group.advert(priority).encode(self.group.own)
            self._sock.sendto(data, (str(VRRP_GROUP), 0))
        except OSError as exc:
            self.log("vrrp-error", f"{self.cfg.interface}: advertisement not sent: {exc}")

    def _readable(self) -> None:
        assert self._sock is not None and self.group is not None and self._loop is not None
        while True:
            try:
                packet = self._sock.recv(2048)
            except OSError:
                return
            if len(packet) < 20 or packet[0] >> 4 != 4:
                continue
            ihl = (packet[0] & 0x0F) * 4
            src, dst = IPv4Address(packet[12:16]), IPv4Address(packet[16:20])
            try:
                if packet[8] != 255:  # RFC 5798 7.1: TTL 255, or it was routed
                    raise DecodeError(f"TTL {packet[8]}", 8)
                adv = decode_vrrp(packet[ihl:], src, dst)
            except DecodeError:
                self.rx_bad += 1
                continue
            self._do(self.group.receive(adv, src, self._loop.time()))

    def _become_master(self) -> None:
        try:
            self.ipr.link("set", index=self._dev_index(), state="up")
            with contextlib.suppress(Exception):  # already there (a restart)
                self.ipr.addr("add", index=self._dev_index(), address=str(self._vip), prefixlen=32)
            self._gratuitous_arp()
        except Exception as exc:
            self.log("vrrp-error", f"{self.device}: cannot take the address: {exc}")
        self.log(
            "vrrp-master",
            f"gateway {self._vip} (VRID {self.cfg.vrid}) taken on {self.cfg.interface}",
            vrid=self.cfg.vrid,
            address=str(self._vip),
        )

    def _become_backup(self) -> None:
        with contextlib.suppress(Exception):
            self.ipr.link("set", index=self._dev_index(), state="down")
        self.log(
            "vrrp-backup",
            f"gateway {self._vip} (VRID {self.cfg.vrid}) given up"
            + ("" if self._eligible() else ": no NHS is up"),
            vrid=self.cfg.vrid,
            address=str(self._vip),
        )

    def _dev_index(self) -> int:
        return int(self.ipr.link_lookup(ifname=self.device)[0])

    def _gratuitous_arp(self) -> None:
        """An ARP request for our own address from the virtual MAC: bridges
        learn where it is now; hosts refresh an entry they hold."""
        mac = bytes.fromhex(self.mac.replace(":", ""))
        ip = self._vip.packed
        frame = (
            b"\xff" * 6
            + mac
            + struct.pack("!HHHBBH", 0x0806, 1, 0x0800, 6, 4, 1)
            + mac
            + ip
            + b"\x00" * 6
            + ip
        )
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((self.device, 0))
            for _ in range(2):
                s.send(frame)
