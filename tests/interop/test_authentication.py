"""Issue 5 case 4: NHRP authentication between dmvpn and nhrpd.

Debian 12's FRR 8.4 has no `ip nhrp authentication` (it ignores the line), so
the frr nodes here boot a Debian 13 root with FRR 10.3, made by debootstrap
(`dmvpn.lab.frrroot`, cached in $DMVPN_FRR_ROOT_CACHE, /var/cache/dmvpn-lab
by default; about a minute to build).

    hub1  dmvpn     hub2  frr (10.3)     spoke1  frr (10.3)     spoke2  dmvpn

Mismatches are only ever made between an nhrpd and a dmvpn node: two nhrpd
10.3 with different passwords answer each other's Error Indications with
Error Indications, about a thousand a second each way, for ever (seen here,
see docs/INTEROP.md).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dmvpn.lab.frrroot import ensure_root

from .mixed import DMVPN, Cloud, mixed_cloud

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, QEMU, chroot)")

PASSWORD = "lab1"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    root = ensure_root()
    topology = {
        "phase": 3,
        "holdtime": 30,
        "authentication": PASSWORD,
        "frr_root": str(root),
        "nodes": {
            "hubs": [{"name": "hub1"}, {"name": "hub2", "kind": "frr"}],
            "spokes": [{"name": "spoke1", "kind": "frr"}, {"name": "spoke2"}],
        },
    }
    tmp = tmp_path_factory.mktemp("auth")
    with mixed_cloud(topology, f"dau{os.getpid() % 10000}-", tmp) as c:
        yield c


def test_matching_passwords_register_everywhere(cloud: Cloud) -> None:
    assert "FRRouting 10." in cloud.vtysh("spoke1", "show version")
    assert f"ip nhrp authentication {PASSWORD}" in cloud.vtysh("hub2", "show running-config")
    # nhrpd spoke1 with both hubs; our spoke2 with both hubs.
    assert cloud.nhs_up("spoke1") == {"10.0.0.1", "10.0.0.2"}
    assert {e["nhs"] for e in cloud.runner.events("spoke2", "nhs-up")} == {"10.0.0.1", "10.0.0.2"}
    cache = cloud.cache("hub1")
    assert cache["10.0.0.11/32"]["nbma"] == "172.30.0.11"
    assert cache["10.0.0.12/32"]["nbma"] == "172.30.0.12"
    expected = {"10.0.0.11": ("dynamic", "172.30.0.11"), "10.0.0.12": ("dynamic", "172.30.0.12")}
    cloud.wait(
        "nhrpd's hub to list both spokes",
        lambda: expected.items() <= cloud.nhrpd_cache("hub2").items(),
    )
    assert not cloud.runner.events("hub1", "auth-failure")
    assert not cloud.runner.events("spoke2", "auth-failure")


def test_our_hub_refuses_nhrpd_with_another_password(cloud: Cloud) -> None:
    # Our hub's password changes (SIGHUP applies it live); nhrpd spoke1 keeps
    # the old one. Our hub refuses it with a clear log line and an Error
    # Indication (code 11), which nhrpd logs.
    since = time.time()
    path = cloud.runner.config_path("hub1")
    config = yaml.safe_load(path.read_text())
    config["interfaces"][0]["nhrp"]["authentication"] = "other1"
    path.write_text(yaml.safe_dump(config))
    os.kill(cloud.runner.running()["hub1"], signal.SIGHUP)
    cloud.wait(
        "hub1 to reload",
        lambda: [e for e in cloud.runner.events("hub1", "reloaded") if e["ts"] >= since],
    )

    def refused() -> list[dict[str, object]]:
        return [
            e
            for e in cloud.runner.events("hub1", "auth-failure")
            if e["ts"] >= since and e["src"] == "172.30.0.11"
        ]

    cloud.wait("our hub to refuse nhrpd spoke1", refused, timeout=20)
    assert refused()[0]["message"] == "Registration Request from 172.30.0.11 failed authentication"
    cloud.wait(
        "nhrpd to log our refusal",
        lambda: "From 172.30.0.1: error: authentication failure" in cloud.nhrpd_log("spoke1"),
    )
    # Back to the cloud's password for the next test.
    config["interfaces"][0]["nhrp"]["authentication"] = PASSWORD
    path.write_text(yaml.safe_dump(config))
    os.kill(cloud.runner.running()["hub1"], signal.SIGHUP)


def test_nhrpd_hub_and_ours_refuse_our_spoke_with_another_password(cloud: Cloud) -> None:
    # Our spoke2 restarts with another password: both hubs refuse it; our
    # spoke logs the refusals it gets back (Error Indications it cannot
    # authenticate).
    os.kill(cloud.runner.running()["spoke2"], signal.SIGKILL)
    config = cloud.runner.node_config("spoke2")
    config["interfaces"][0]["nhrp"]["authentication"] = "wrong1"
    path = cloud.lab.run_dir / "spoke2-wrong.yaml"
    path.write_text(yaml.safe_dump(config))
    log = cloud.lab.run_dir / "spoke2-wrong.log"
    since = time.time()
    with log.open("wb") as out:
        proc = cloud.lab.popen("spoke2", [DMVPN, "run", "-c", str(path)], stdout=out, stderr=out)
    try:
        cloud.wait(
            "our hub to refuse spoke2",
            lambda: [
                e
                for e in cloud.runner.events("hub1", "auth-failure")
                if e["ts"] >= since and e["src"] == "172.30.0.12"
            ],
        )
        cloud.wait(
            "nhrpd's hub to refuse spoke2",
            lambda: "From 172.30.0.12: error: authentication failure" in cloud.nhrpd_log("hub2"),
        )

        def refusals() -> set[str]:  # what our spoke says about the answers
            return {e["message"] for e in _events(log, "auth-failure")}

        cloud.wait(
            "our spoke to log both refusals",
            lambda: (
                refusals()
                >= {
                    "Error Indication from 172.30.0.1 failed authentication",
                    "Error Indication from 172.30.0.2 failed authentication",
                }
            ),
        )
        assert not _events(log, "nhs-up")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _events(log: Path, kind: str) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines()
    records = [json.loads(x) for x in lines if x.startswith("{")]
    return [r for r in records if r.get("kind") == kind]


def test_every_nhrp_packet_on_the_underlay_decodes(cloud: Cloud) -> None:
    senders = cloud.check_capture()
    assert "registration_request" in senders["172.30.0.11"]
    assert {"registration_reply", "error_indication"} <= senders["172.30.0.2"]
    assert "error_indication" in senders["172.30.0.1"]  # ours, refusing
    # nhrpd's refusals quote the packet in error cut short (tshark: malformed).
    assert cloud.truncated_by_nhrpd
