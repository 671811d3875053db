"""Our VRRP against a real one: FRR's vrrpd (Debian's frr 8.4) holds the
backup side of a dual spoke site whose master is our daemon. vrrpd must
accept our advertisements (Backup, learning our 200 ms interval), take the
gateway when our daemon is killed, and yield it when our daemon returns
with its higher priority."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from dmvpn.lab.failover import kill_daemon, outage
from dmvpn.lab.netns import Lab
from dmvpn.lab.runner import Runner
from dmvpn.lab.topology import Topology

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)

SITE = {
    "phase": 1,
    "nodes": {
        "hubs": [{"name": "hub1"}],
        "spokes": [
            {"name": "spoke1", "site": "hq"},
            {"name": "spoke2", "site": "hq"},
            {"name": "spoke3"},
        ],
    },
}
VRRPD = """interface lan0
 vrrp 1 version 3
 vrrp 1 priority 190
 vrrp 1 advertisement-interval 200
 vrrp 1 ip 192.168.1.1
!
"""


@pytest.fixture
def site() -> Iterator[tuple[Lab, Runner]]:
    # The default state path: FRR (user frr) cannot reach a pytest tmp_path.
    lab = Lab(Topology.from_data(SITE), prefix=f"vri{os.getpid() % 100000}-")
    lab.up()
    try:
        runner = Runner(lab)
        base = runner.node_config

        def node_config(node: str) -> dict[str, Any]:
            cfg = base(node)
            if node == "spoke2":
                cfg.pop("vrrp")  # vrrpd is spoke2's VRRP
            return cfg

        runner.node_config = node_config  # type: ignore[method-assign]
        runner.start()
        runner.wait_registered()
        yield lab, runner
    finally:
        lab.down()


def start_vrrpd(lab: Lab) -> Any:
    # vrrpd wants the macvlan made for it: the virtual MAC, the address.
    for args in (
        ["add", "vrrp4-2-1", "link", "lan0", "type", "macvlan", "mode", "bridge"],
        ["set", "vrrp4-2-1", "address", "00:00:5e:00:01:01", "addrgenmode", "random"],
    ):
        lab.exec("spoke2", ["ip", "link", *args], check=True)
    lab.exec("spoke2", ["ip", "addr", "add", "192.168.1.1/32", "dev", "vrrp4-2-1"], check=True)
    lab.exec("spoke2", ["ip", "link", "set", "vrrp4-2-1", "up"], check=True)
    lab.exec("spoke2", ["sysctl", "-qw", "net.ipv4.conf.lan0.arp_ignore=1"], check=True)
    lab.run_dir.chmod(0o711)  # FRR runs as user frr
    work = lab.run_dir / "spoke2.vrrpd"
    work.mkdir()
    frr = pwd.getpwnam("frr")
    os.chown(work, frr.pw_uid, frr.pw_gid)
    for daemon, text in (("zebra", "!\n"), ("vrrpd", VRRPD)):
        conf = work / f"{daemon}.conf"
        conf.write_text(text)
        os.chown(conf, frr.pw_uid, frr.pw_gid)
        argv = [f"/usr/lib/frr/{daemon}", "-f", str(conf), "-i", str(work / f"{daemon}.pid")]
        argv += ["-z", str(work / "zserv.api"), "--vty_socket", str(work), "-P", "0"]
        with (work / f"{daemon}.out").open("wb") as out:
            lab.popen("spoke2", argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return work


def test_frr_vrrpd_shares_the_gateway_with_us(site: tuple[Lab, Runner]) -> None:
    lab, runner = site
    work = start_vrrpd(lab)

    def vrrpd_status() -> str:
        argv = ["vtysh", "--vty_socket", str(work), "-c", "show vrrp"]
        out = lab.exec("spoke2", argv, capture_output=True, text=True).stdout
        return next((ln.split()[-1] for ln in out.splitlines() if "Status (v4)" in ln), "")

    runner.wait_for("spoke1 (ours) master", lambda: bool(runner.events("spoke1", "vrrp-master")))
    runner.wait_for("vrrpd backup to us", lambda: vrrpd_status() == "Backup", timeout=20)
    lost = outage(lab, "host1", "192.168.3.10", lambda: kill_daemon(lab, "spoke1"), traffic=False)
    assert lost.recovered and lost.seconds < 3.0, lost
    assert vrrpd_status() == "Master"
    runner.procs.pop("spoke1").wait()
    runner.start(["spoke1"])  # a new log: its first vrrp-master is the takeback
    runner.wait_for("spoke1 master again", lambda: bool(runner.events("spoke1", "vrrp-master")))
    runner.wait_for("vrrpd backup again", lambda: vrrpd_status() == "Backup", timeout=10)
    assert lab.ping("host1", "192.168.3.10", timeout=5)
