"""The story `dmvpn lab demo` tells: build the default cloud, send traffic
from host1 to host2, watch the first packets go through the hub and the phase
3 shortcut form, then take everything down.

Free of click: every line goes to the ``echo`` callback the caller gives, and
failures are `LabError`s. The command (`dmvpn.cli.lab`) owns what a terminal
needs: root, signals, and taking the lab down when something fails.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import time
from collections.abc import Callable, Sequence

from dmvpn.daemon.routing import RTPROT_DMVPN

from .netns import Lab, LabError
from .runner import Runner, dmvpn_command
from .text import summary, table_lines
from .topology import DEFAULT_PREFIX

__all__ = ["REQUIRED_TOOLS", "Demo", "missing_tools"]

# Run inside the lab's namespaces, so they must be on this machine.
REQUIRED_TOOLS = ("traceroute", "ping")

Echo = Callable[[str], None]


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


class Demo:
    """One run of the demo on ``lab`` (built on `Topology.default()`).

    ``show_available``: whether this dmvpn has `dmvpn show`; without it the
    NHRP bindings are shown as the kernel's neighbour entries. ``keep``: leave
    the lab up at the end (one step fewer).
    """

    def __init__(self, lab: Lab, echo: Echo, show_available: bool, keep: bool = False) -> None:
        self.lab = lab
        self.echo = echo
        self.show_available = show_available
        self.keep = keep
        self.steps = 6 if keep else 7
        self.topo = lab.topology
        self.runner = Runner(lab)
        self.started = time.monotonic()
        self.number = 0
        self.legend_shown = False
        # Address -> "node interface", to name each traceroute hop.
        self.names: dict[str, str] = {}
        for p in self.topo.routers + self.topo.hosts:
            lan = "eth0" if p.role == "host" else "lan0"
            for addr, itf in ((p.nbma, "nbma0"), (p.tunnel, "dmvpn0"), (p.lan, lan)):
                if addr is not None:
                    self.names[str(addr.ip)] = f"{p.name} {itf}"

    # -- output --

    def step(self, title: str) -> None:
        self.number += 1
        self.echo(f"\n[{self.number}/{self.steps}] {title}")

    def say(self, text: str) -> None:
        for line in text.splitlines():
            self.echo(f"      {line}".rstrip())

    def sh(self, node: str, argv: Sequence[str], note: str = "", check: bool = True) -> str:
        """Run argv in the node, print it like a terminal transcript, return its output."""
        prompt = "$" if self.topo.role(node) == "host" else "#"
        self.echo(f"  {node}{prompt} {shlex.join(argv)}" + (f"    ({note})" if note else ""))
        res = self.lab.exec(node, argv, capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise LabError(f"`{shlex.join(argv)}` in {node} failed: {res.stderr.strip()}")
        out = str(res.stdout)
        self.say(out.rstrip() or "(nothing)")
        return out

    def traceroute(self, src: str, dst: str) -> list[str]:
        # One probe at a time (-N 1): the destination answers once, not once per
        # extra probe, so its ICMP rate limit never hides the last hop.
        argv = ["traceroute", "-n", "-N", "1", "-q", "1", "-w", "1", "-m", "6", dst]
        self.echo(f"  {src}$ {shlex.join(argv)}")
        res = self.lab.exec(src, argv, capture_output=True, text=True, timeout=30)
        hops: list[str] = []
        for line in res.stdout.splitlines():
            m = re.match(r"\s*(\d+)\s+(\S+)\s*(.*)", line)
            if m is None:
                self.say(line)
                continue
            number, addr, rest = m.groups()
            hops.append(addr)
            self.say(f"{number:>2}  {addr:<15} {rest:<10}  {self.names.get(addr, '')}")
        if res.returncode != 0:
            raise LabError(f"traceroute from {src} failed: {res.stderr.strip()}")
        return hops

    def show_dmvpn(self, node: str, fallback_note: str) -> None:
        if self.show_available:
            socket = str(self.runner.socket_path(node))
            argv = [*dmvpn_command(), "show", "dmvpn", "--socket", socket]
            self.echo(f"  {node}# dmvpn show dmvpn")
            res = self.lab.exec(node, argv, capture_output=True, text=True, timeout=30)
            if res.returncode == 0:
                out = res.stdout.rstrip()
                _, rule, table = out.partition("=" * 20)
                if self.legend_shown and rule:
                    # Once is enough: later tables start after the legend's rule.
                    out = "(legend as above)\n" + table.lstrip("=").strip("\n")
                self.legend_shown = True
                self.say(out or "(nothing)")
                return
            self.say(f"(dmvpn show failed: {res.stderr.strip()}; the kernel's view instead)")
        self.echo(f"  {node}# ip neigh show dev dmvpn0    ({fallback_note})")
        argv = ["ip", "neigh", "show", "dev", "dmvpn0"]
        res = self.lab.exec(node, argv, capture_output=True, text=True, timeout=30)
        for line in res.stdout.splitlines():
            # The userspace data plane's MAC for a peer is 02:00 + its NBMA address.
            m = re.match(r"(\S+) lladdr 02:00((?::[0-9a-f]{2}){4})\b", line)
            nbma = ".".join(str(int(b, 16)) for b in m.group(2)[1:].split(":")) if m else ""
            peer = self.names.get(m.group(1), "").split(" ")[0] if m else ""
            self.say(f"{line.rstrip():<50}" + (f"  NBMA {nbma} ({peer})" if m else ""))

    # -- the story --

    def run(self, built: Callable[[], None]) -> None:
        """Steps 1 to 6. ``built`` is called once the lab exists: from then on,
        a failure must take it down."""
        topo, runner = self.topo, self.runner
        hub = topo.plan("hub1")
        spoke1, spoke2 = topo.plan("spoke1"), topo.plan("spoke2")
        host1, host2 = topo.plan("host1"), topo.plan("host2")
        assert hub.tunnel and spoke1.tunnel and spoke2.tunnel and host1.lan and host2.lan
        hub_ip, spoke2_ip, host2_ip = str(hub.tunnel.ip), str(spoke2.tunnel.ip), str(host2.lan.ip)
        self.echo(
            f"dmvpn lab demo: a {summary(topo)}, in network namespaces (prefix {self.lab.prefix!r})"
        )

        self.step('Build the cloud: an "internet" bridge, hub1, spoke1..3, a LAN host behind each')
        self.lab.up()
        built()
        rows = [["NODE", "ROLE", "UNDERLAY (NBMA)", "TUNNEL", "LAN"]]
        rows += [
            [d["name"], d["role"], d["underlay"] or "-", d["tunnel"] or "-", d["lan"] or "-"]
            for d in topo.describe(self.lab.prefix)
        ]
        for line in table_lines(rows, indent=6):
            self.echo(line)
        runner.start()
        self.say(f"started `dmvpn run` on {', '.join(runner.routers)} (logs: {self.lab.run_dir}/)")

        self.step("Registration: each spoke tells hub1 its tunnel and NBMA addresses (NHRP)")
        took = runner.wait_registered()
        for e in sorted(runner.events("hub1", "registered"), key=lambda e: e["ts"]):
            who = self.names.get(str(e.get("protocol")), "?").split()[0]
            self.say(f"hub1: {e['message']}  ({who})")
        self.say(f"all spokes registered {took:.1f} s after the daemons started")
        self.show_dmvpn("hub1", "hub1's NHRP registrations, as neighbour entries")

        self.step("host1 -> host2, first packets: spoke1 only has the summary route via hub1")
        self.sh("spoke1", ["ip", "route", "show", "dev", "dmvpn0"], "the tunnel's routes")
        since = time.time()
        before = self.traceroute("host1", host2_ip)
        if hub_ip not in before:
            raise LabError(f"the first packets did not go through hub1 ({hub_ip}): {before}")
        self.say(f"-> hop {before.index(hub_ip) + 1} is hub1 ({hub_ip}): spoke to hub to spoke")

        self.step("Phase 3 at work: hub1 redirects, spoke1 resolves, spoke2 answers directly")
        runner.wait_for(
            "spoke1's shortcut route to host2's network",
            lambda: spoke2_ip in self._shortcuts("spoke1"),
            timeout=15,
        )
        # The replies from host2 bring spoke2 its own shortcut back to host1.
        with contextlib.suppress(LabError):
            runner.wait_for("", lambda: runner.events("spoke2", "shortcut") != [], timeout=2)
        kinds = {
            "redirect",
            "resolution-sent",
            "resolution-forwarded",
            "resolution-answered",
            "resolved",
            "shortcut",
        }
        story = [
            e
            for n in runner.routers
            for e in runner.events(n)
            if e.get("kind") in kinds and e.get("ts", 0) >= since - 1
        ]
        story.sort(key=lambda e: e["ts"])
        t0 = story[0]["ts"] if story else since
        for e in story:
            self.say(f"{(e['ts'] - t0) * 1000:4.0f} ms  {e['node']:<7} {e['message']}")
        shortcuts = ["ip", "route", "show", "proto", str(RTPROT_DMVPN)]
        self.sh("spoke1", shortcuts, "NHRP shortcut routes")

        self.step("host1 -> host2 again: straight from spoke1 to spoke2")
        after = self.traceroute("host1", host2_ip)
        if hub_ip in after or spoke2_ip not in after:
            raise LabError(f"the path did not go direct to spoke2 ({spoke2_ip}): {after}")
        self.say(f"-> hop {after.index(spoke2_ip) + 1} is spoke2 ({spoke2_ip}): hub1 is gone")
        self.sh("host1", ["ping", "-c", "3", "-i", "0.2", "-W", "1", host2_ip])

        self.step("What the spokes know now (NHRP bindings, both ways)")
        self.show_dmvpn("spoke1", "NHRP bindings, as neighbour entries")
        self.show_dmvpn("spoke2", "NHRP bindings, as neighbour entries")

    def finish(self, down: Callable[[], list[str]]) -> None:
        """After `run`: say how to explore a kept lab, or take it down with
        ``down`` (which returns the namespaces it deleted) as the last step."""
        if self.keep:
            prefix = self.lab.prefix
            px = "" if prefix == DEFAULT_PREFIX else f" --prefix {prefix}"
            self.echo(
                f"\nThe lab is still up (--keep). Explore it:\n"
                f"  dmvpn lab status{px}\n"
                f"  dmvpn lab exec{px} host1 -- traceroute -n 192.168.3.10\n"
                f"  dmvpn lab exec{px} spoke1 -- ip route show proto {RTPROT_DMVPN}\n"
                f"  dmvpn lab down{px}"
            )
        else:
            self.step("Tear down: stop the daemons (the spokes deregister), delete the namespaces")
            removed = down()
            self.say(f"deleted {len(removed)} namespaces and the lab's files; nothing is left")
        self.echo(f"\nDemo finished in {time.monotonic() - self.started:.1f} s.")

    def _shortcuts(self, node: str) -> str:
        argv = ["ip", "route", "show", "proto", str(RTPROT_DMVPN)]
        return str(self.lab.exec(node, argv, capture_output=True, text=True, timeout=10).stdout)
