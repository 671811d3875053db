"""Real FRR nhrpd (User-Mode Linux, kernel mGRE) against dmvpn in the lab,
in both roles. The beginning of issue 5's interop suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

DMVPN = str(Path(sys.executable).with_name("dmvpn"))
FRR = Path(__file__).resolve().parents[2] / "src" / "dmvpn" / "lab" / "frr"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, UML taps)")


def _events(log: Path, kind: str) -> list[dict]:  # type: ignore[type-arg]
    lines = log.read_text().splitlines() if log.exists() else []
    return [r for r in (json.loads(x) for x in lines if x.startswith("{")) if r.get("kind") == kind]


def _wait(what: str, check: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@contextmanager
def lab_with_uml(tmp: Path, nhrpd_conf: str, addr: str, tunnel: str) -> Iterator[tuple[str, Path]]:
    """A dmvpn lab, plus an nhrpd router in UML on its underlay; yields the
    lab prefix and the guest's output directory (console.log)."""
    for tool in ("linux.uml", "vtysh"):
        assert shutil.which(tool), f"{tool} missing: ./run.sh test installs it"
    prefix = f"dmu{os.getpid() % 10000}-"
    work = tmp / "uml"
    work.mkdir()
    shutil.copy(FRR / nhrpd_conf, work / "nhrpd.conf")
    shutil.copy(FRR / "zebra.conf", work / "zebra.conf")
    inet = f"{prefix}inet"
    tap = f"ut{os.getpid() % 10000}"
    uml: subprocess.Popen[bytes] | None = None
    subprocess.run([DMVPN, "lab", "up", "--prefix", prefix], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
        subprocess.run(["ip", "link", "set", tap, "netns", inet], check=True)
        subprocess.run(["ip", "netns", "exec", inet, "ip", "link", "set", tap, "master", "br0",
                        "up"], check=True)  # fmt: skip
        # UML opens the tap by name in its own namespace: run it in the lab's.
        uml = subprocess.Popen(
            ["ip", "netns", "exec", inet, "linux.uml", f"umid={prefix}nhrpd",
             f"uml_dir={work}", "mem=384M", "root=/dev/root", "rootfstype=hostfs",
             "rootflags=/", "rw", f"init={FRR / 'uml-nhrpd-spoke-init.sh'}", "con0=fd:0,fd:1",
             "con=null", f"vec0:transport=tap,ifname={tap}", f"ADDR={addr}", f"TUN={tunnel}",
             f"DIR={work}", "ROUNDS=5"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        yield prefix, work / "guest"
        uml.wait(timeout=60)  # the guest halts after its rounds of show commands
    finally:
        if uml is not None and uml.poll() is None:
            uml.kill()
            uml.wait(timeout=10)
        subprocess.run(["ip", "netns", "exec", inet, "ip", "link", "del", tap],
                       capture_output=True)  # fmt: skip
        subprocess.run([DMVPN, "lab", "down", "--prefix", prefix], capture_output=True)


def test_nhrpd_spoke_registers_with_a_dmvpn_hub(tmp_path: Path) -> None:
    with lab_with_uml(tmp_path, "nhrpd-spoke.conf", "172.30.0.21", "10.0.0.21") as (prefix, out):
        hub_log = Path(f"/run/dmvpn-lab/{prefix}/hub1.log")

        def registered() -> list[dict]:  # type: ignore[type-arg]
            return [e for e in _events(hub_log, "registered") if e.get("nbma") == "172.30.0.21"]

        _wait("the dmvpn hub to register nhrpd", registered)
        (event,) = registered()
        assert event["protocol"] == "10.0.0.21" and event["unique"] is False
    console = (out / "console.log").read_text()
    # nhrpd's side: the NHS binding in its cache, from a real reply.
    assert any("nhs" in line and "10.0.0.1" in line and "172.30.0.1" in line
               for line in console.splitlines()), console[-2000:]  # fmt: skip


def test_dmvpn_spoke_registers_with_an_nhrpd_hub(tmp_path: Path) -> None:
    with lab_with_uml(tmp_path, "nhrpd-hub.conf", "172.30.0.22", "10.0.0.2") as (prefix, out):
        # Move spoke3 from the lab's hub to the nhrpd hub.
        status = subprocess.run([DMVPN, "lab", "status", "--prefix", prefix, "--json"],
                                check=True, capture_output=True, text=True).stdout  # fmt: skip
        (spoke3,) = [n for n in json.loads(status)["nodes"] if n["name"] == "spoke3"]
        for pid in spoke3["pids"]:
            os.kill(pid, 15)
        time.sleep(1)
        config = {
            "node": "spoke3x", "socket": str(tmp_path / "spoke3x.sock"),
            "interfaces": [{
                "name": "dmvpn0", "address": "10.0.0.13/24",
                "tunnel": {"source": "172.30.0.13", "key": 42},
                "nhrp": {"network_id": 1, "holdtime": 60, "registration_no_unique": True,
                         "nhs": [{"address": "10.0.0.2", "nbma": "172.30.0.22"}]},
            }],
        }  # fmt: skip
        (tmp_path / "spoke3x.yaml").write_text(yaml.safe_dump(config))
        log = tmp_path / "spoke3x.log"
        spoke = subprocess.Popen(
            ["ip", "netns", "exec", f"{prefix}spoke3", DMVPN, "run", "-c",
             str(tmp_path / "spoke3x.yaml")], stderr=log.open("w"),
        )  # fmt: skip
        try:
            _wait("nhrpd to accept our registration", lambda: _events(log, "nhs-up"))
            console = out / "console.log"

            def listed() -> bool:  # nhrpd's `show ip nhrp cache`, printed by the guest
                return console.exists() and "dynamic  10.0.0.13" in console.read_text()

            _wait("nhrpd's cache to show us", listed)
        finally:
            spoke.terminate()
            spoke.wait(timeout=10)
    assert _events(log, "deregistered")
