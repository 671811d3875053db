"""A mixed cloud for the interop tests: dmvpn nodes in namespaces and FRR nhrpd
nodes in User-Mode Linux (`kind: frr`), with the underlay captured throughout.

One cloud per test module (booting guests costs seconds); each module's last
test checks the capture (issue 5, case 6).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dmvpn.lab import Lab, Topology
from dmvpn.lab.frrconf import FRR_LOGS
from dmvpn.lab.frrnode import FrrNodes, nhs_in_cache, wait_registered
from dmvpn.lab.runner import Runner

from ..capture import flush

DMVPN = str(Path(sys.executable).with_name("dmvpn"))


class Cloud:
    def __init__(self, lab: Lab, runner: Runner, frr: FrrNodes, pcap: Path) -> None:
        self.lab, self.runner, self.frr, self.pcap = lab, runner, frr, pcap
        self.topo = lab.topology
        self.capture: subprocess.Popen[bytes] | None = None
        self.truncated_by_nhrpd: list[int] = []  # frames (see check_capture)

    def kind(self, node: str) -> str:
        return self.topo.plan(node).kind

    def tunnel(self, node: str) -> str:
        addr = self.topo.plan(node).tunnel
        assert addr is not None
        return str(addr.ip)

    def nbma(self, node: str) -> str:
        addr = self.topo.plan(node).nbma
        assert addr is not None
        return str(addr.ip)

    def lan_ip(self, node: str) -> str:
        addr = self.topo.plan(node).lan
        assert addr is not None
        return str(addr.ip)

    def wait(self, what: str, check: Callable[[], object], timeout: float = 30) -> float:
        start = time.monotonic()
        while not check():
            if time.monotonic() - start > timeout:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.3)
        return time.monotonic() - start

    # -- what the routers say ---------------------------------------------------

    def vtysh(self, node: str, command: str) -> str:
        return self.frr.vtysh(node, command)

    def dmvpn_show(self, node: str, *args: str) -> Any:
        """`dmvpn show ARGS --json` against a dmvpn node's daemon."""
        sock = str(self.runner.socket_path(node))
        res = self.lab.exec(
            node,
            [DMVPN, "show", *args, "--json", "--socket", sock],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def cache(self, node: str) -> dict[str, dict[str, Any]]:
        """ "address/length" -> entry, from our `show nhrp`."""
        return {e["protocol"]: e for e in self.dmvpn_show(node, "nhrp")["entries"]}

    def nhrpd_cache(self, node: str) -> dict[str, tuple[str, str]]:
        """nhrpd's `show ip nhrp cache`: protocol -> (type, NBMA)."""
        rows: dict[str, tuple[str, str]] = {}
        for line in self.vtysh(node, "show ip nhrp cache").splitlines()[1:]:
            w = line.split()
            if len(w) >= 4:
                rows[w[2]] = (w[1], w[3])
        return rows

    def nhrpd_shortcuts(self, node: str) -> dict[str, str]:
        """nhrpd's `show ip nhrp shortcut`: prefix -> via, for completed shortcuts."""
        rows = {}
        for line in self.vtysh(node, "show ip nhrp shortcut").splitlines()[1:]:
            w = line.split()
            if len(w) >= 3 and w[0] != "incomplete":
                rows[w[1]] = w[2]
        return rows

    def nhs_up(self, node: str) -> set[str]:
        return nhs_in_cache(self.vtysh(node, "show ip nhrp cache"))

    def _sh(self, node: str, command: str) -> str:
        if self.kind(node) == "frr":
            return self.frr.run(node, command).output
        return str(
            self.lab.exec(node, ["sh", "-c", command], capture_output=True, text=True).stdout
        )

    def tunnel_nbma(self, node: str, dst: str) -> str:
        """The NBMA address the node's kernel sends packets for dst to: its
        route's next hop (nhrpd also installs host routes without one), then
        that neighbour's link-layer address (kernel mGRE: the NBMA address;
        our TAP: 02:00 + the NBMA address)."""
        route = self._sh(node, f"ip route get {dst}")
        m = re.search(r"via (\S+)", route)
        hop = m.group(1) if m else dst
        neigh = self._sh(node, f"ip neigh show {hop}")
        m = re.search(r"lladdr (\S+)", neigh)
        assert m, f"{node}: no neighbour for {hop} ({route.strip()}; {neigh.strip()})"
        lladdr = m.group(1)
        if lladdr.startswith("02:00:"):
            return ".".join(str(int(b, 16)) for b in lladdr.split(":")[2:])
        return lladdr

    def shortcut_route(self, node: str, prefix: str) -> str | None:
        """A dmvpn node's NHRP shortcut route (protocol 177) for prefix: its next hop."""
        out = self.lab.exec(
            node, ["ip", "route", "show", "proto", "177", prefix], capture_output=True, text=True
        ).stdout
        m = re.search(r"via (\S+)", out)
        return m.group(1) if m else None

    def nhrpd_log(self, node: str) -> str:
        return self.frr.run(node, f"cat {FRR_LOGS}/nhrpd.log").output

    def ping(self, host: str, dst: str, count: int = 3) -> bool:
        res = self.lab.exec(
            host,
            ["ping", "-c", str(count), "-i", "0.3", "-W", "1", dst],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return res.returncode == 0

    # -- the capture (case 6) ---------------------------------------------------

    def start_capture(self) -> None:
        errors = (self.pcap.parent / "dumpcap.err").open("w")
        self.capture = self.lab.popen(
            "inet",
            ["dumpcap", "-q", "-i", "br0", "-f", "ip proto 47", "-w", str(self.pcap)],
            stdout=errors,
            stderr=errors,
        )
        self.wait("the capture to start", lambda: self.pcap.exists() and self.pcap.stat().st_size)
        flush(self.lab, self.pcap)  # capturing from here on

    def stop_capture(self) -> None:
        if self.capture is not None and self.capture.poll() is None:
            self.capture.terminate()
            self.capture.wait(timeout=10)

    def check_capture(self) -> dict[str, set[str]]:
        """Every NHRP packet decodes and re-encodes exactly (ours) and dissects
        cleanly (tshark); returns NBMA source -> NHRP types sent."""
        flush(self.lab, self.pcap)  # nothing sent so far is left in the ring
        self.stop_capture()
        decoded = subprocess.run(
            [DMVPN, "decode", "--json", "--nhrp-only", str(self.pcap)],
            capture_output=True,
            text=True,
        )
        assert decoded.returncode == 0, decoded.stderr[-2000:]
        recs = [json.loads(line) for line in decoded.stdout.splitlines()]
        assert recs, "no NHRP captured"
        bad = [r for r in recs if r["error"] or not r["roundtrip"]]
        assert not bad, bad[:3]
        # tshark: no malformed NHRP, but for nhrpd's own Error Indications,
        # which carry the packet in error cut short (docs/INTEROP.md).
        frr = {self.nbma(p.name) for p in self.topo.frr_routers}
        by_frame = {r["frame"]: r for r in recs}
        self.truncated_by_nhrpd = []
        malformed = subprocess.run(
            [
                "tshark",
                "-r",
                str(self.pcap),
                "-o",
                "nhrp.auth_ext_has_addr:FALSE",
                "-Y",
                "nhrp && (_ws.malformed || _ws.expert.severity >= warning)",
                "-T",
                "fields",
                "-e",
                "frame.number",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for frame in map(int, malformed):
            r = by_frame[frame]
            nhrp = r["nhrp"]
            inner_size = int(nhrp["contents"][20:24], 16) if len(nhrp["contents"]) >= 24 else 0
            cut_short = len(nhrp["contents"]) // 2 < inner_size
            ok = r["outer_src"] in frr and nhrp["type"] == "error_indication" and cut_short
            assert ok, f"tshark flags frame {frame}: {r}"
            self.truncated_by_nhrpd.append(frame)
        count = subprocess.run(
            ["tshark", "-r", str(self.pcap), "-Y", "nhrp", "-T", "fields", "-e", "frame.number"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert len(count) == len(recs)  # tshark sees every NHRP packet we do
        senders: dict[str, set[str]] = {}
        for r in recs:
            senders.setdefault(r["outer_src"], set()).add(r["nhrp"]["type"])
        return senders


@contextmanager
def mixed_cloud(topology: dict[str, Any], prefix: str, tmp: Path) -> Iterator[Cloud]:
    for tool in ("qemu-system-x86_64", "vtysh", "dumpcap", "tshark"):
        assert shutil.which(tool), f"{tool} missing: ./run.sh test installs it"
    lab = Lab(Topology.from_data(topology), prefix=prefix)
    lab.up()
    try:
        runner, frr = Runner(lab), FrrNodes(lab)
        cloud = Cloud(lab, runner, frr, tmp / "underlay.pcapng")
        cloud.start_capture()
        frr.start()  # the guests boot while our daemons start
        runner.start()
        frr.wait_ready()
        wait_registered(runner, frr, timeout=60)
        yield cloud
    finally:
        try:
            if "cloud" in locals():
                cloud.stop_capture()
                keep = os.environ.get("DMVPN_INTEROP_KEEP")
                if keep:  # for a post-mortem: the guests' logs and the capture
                    shutil.copytree(
                        lab.run_dir,
                        Path(keep) / prefix,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.sock"),
                    )
                    shutil.copy(cloud.pcap, Path(keep) / prefix)
        finally:
            lab.down()
