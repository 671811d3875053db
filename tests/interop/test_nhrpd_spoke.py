"""A real FRR nhrpd spoke (User-Mode Linux, kernel mGRE) registers with a
dmvpn hub in the lab. The beginning of issue 5's interop suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

DMVPN = str(Path(sys.executable).with_name("dmvpn"))
FRR = Path(__file__).resolve().parents[2] / "src" / "dmvpn" / "lab" / "frr"
PREFIX = f"dmu{os.getpid() % 10000}-"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, UML taps)")


def test_nhrpd_spoke_registers_with_a_dmvpn_hub(tmp_path: Path) -> None:
    for tool in ("linux.uml", "vtysh", "tshark"):
        assert shutil.which(tool), f"{tool} missing: ./run.sh test installs it"
    work = tmp_path / "uml"
    work.mkdir()
    shutil.copy(FRR / "nhrpd-spoke.conf", work / "nhrpd.conf")
    shutil.copy(FRR / "zebra.conf", work / "zebra.conf")
    inet = f"{PREFIX}inet"
    tap = f"ut{os.getpid() % 10000}"
    uml: subprocess.Popen[bytes] | None = None
    subprocess.run([DMVPN, "lab", "up", "--prefix", PREFIX], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
        subprocess.run(["ip", "link", "set", tap, "netns", inet], check=True)
        subprocess.run(["ip", "netns", "exec", inet, "ip", "link", "set", tap, "master", "br0",
                        "up"], check=True)  # fmt: skip
        # UML opens the tap by name in its own namespace: run it in the lab's.
        uml = subprocess.Popen(
            ["ip", "netns", "exec", inet, "linux.uml", f"umid={PREFIX}nhrpd",
             f"uml_dir={work}", "mem=384M", "root=/dev/root", "rootfstype=hostfs",
             "rootflags=/", "rw", f"init={FRR / 'uml-nhrpd-spoke-init.sh'}", "con0=fd:0,fd:1",
             "con=null", f"vec0:transport=tap,ifname={tap}", "ADDR=172.30.0.21",
             "TUN=10.0.0.21", f"DIR={work}", "ROUNDS=4"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        hub_log = Path(f"/run/dmvpn-lab/{PREFIX}/hub1.log")

        def registered() -> list[dict]:  # type: ignore[type-arg]
            lines = hub_log.read_text().splitlines() if hub_log.exists() else []
            records = [json.loads(line) for line in lines if line.startswith("{")]
            return [r for r in records if r.get("kind") == "registered"
                    and r.get("nbma") == "172.30.0.21"]  # fmt: skip

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not registered():
            time.sleep(0.5)
        (event,) = registered()
        assert event["protocol"] == "10.0.0.21" and event["unique"] is False
        uml.wait(timeout=60)  # the guest halts after its rounds of show commands
        console = (work / "guest" / "console.log").read_text()
        # nhrpd's side: the NHS binding is in its cache, from a real reply.
        assert "10.0.0.1" in console and "172.30.0.1" in console, console[-2000:]
        assert "nhs" in console
    finally:
        if uml is not None and uml.poll() is None:
            uml.kill()
            uml.wait(timeout=10)
        subprocess.run(["ip", "netns", "exec", inet, "ip", "link", "del", tap],
                       capture_output=True)  # fmt: skip
        subprocess.run([DMVPN, "lab", "down", "--prefix", PREFIX], capture_output=True)
