"""`show ipsec` and the IPsec line of `show dmvpn`, over the API socket
(the SA state from a stand-in for the daemon's IpsecManager; the real one is
exercised end to end in tests/e2e/test_ipsec.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dmvpn.cli.show import show_group
from dmvpn.nhrp.sim import build_cloud
from dmvpn.wire import address_text

from .test_server import Served, _cli


class FakeIpsec:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def view(self) -> dict[str, Any]:
        return self.data


def _sa_view(local: str, remote: str) -> dict[str, Any]:
    return {
        "charon": {
            "mode": "managed",
            "pid": 4242,
            "vici_socket": "/run/x/charon.vici",
            "version": "charon 5.9.8",
            "ready": True,
            "restarts": 1,
        },
        "authentication": "certificate",
        "esp": "kernel-libipsec",
        "esp_mode": "tunnel",
        "identity": "10.0.0.11",
        "identity_binding": True,
        "stats": {"initiated": 1, "failed": 0, "torn_down": 0, "lost": 0},
        "peers": [
            {
                "local": local,
                "remote": remote,
                "state": "up",
                "for": 12.0,
                "bindings": 1,
                "initiated": True,
                "failures": 0,
                "retry_in": None,
                "last_error": None,
                "idle_for": None,
                "ike": {
                    "state": "ESTABLISHED",
                    "local_id": "10.0.0.11",
                    "remote_id": "10.0.0.1",
                    "encryption": "AES_GCM_16-256",
                    "prf": "PRF_HMAC_SHA2_384",
                    "dh_group": "CURVE_25519",
                    "age": 12,
                    "rekey_in": 14000,
                    "nat": True,
                },
                "child": {
                    "state": "INSTALLED",
                    "mode": "TUNNEL",
                    "encap": True,
                    "encryption": "AES_GCM_16-256",
                    "spi_in": "c1",
                    "spi_out": "c2",
                    "packets_in": 3,
                    "bytes_in": 420,
                    "packets_out": 4,
                    "bytes_out": 2048,
                    "age": 12,
                    "rekey_in": 3300,
                    "local_ts": [f"{local}/32[gre]"],
                    "remote_ts": [f"{remote}/32[gre]"],
                },
            },
            {
                "local": local,
                "remote": "203.0.113.9",
                "state": "failed",
                "for": 3.0,
                "bindings": 1,
                "initiated": False,
                "failures": 2,
                "retry_in": 2.0,
                "last_error": "received AUTHENTICATION_FAILED notify error",
                "idle_for": None,
                "ike": None,
                "child": None,
            },
        ],
    }


@pytest.fixture
def spoke1(tmp_path: Path) -> Iterator[Served]:
    net = build_cloud(spokes=2, phase=3)
    net.start()
    net.run_until(5.0)
    served = Served(tmp_path / "spoke1.sock", net, "spoke1")
    engine = net.nodes["spoke1"].engine
    local = address_text(engine.nbma)
    hub = address_text(engine.config.nhs[0].nbma)
    served.server.ipsec = FakeIpsec(_sa_view(local, hub))
    try:
        yield served
    finally:
        served.close()


def test_show_ipsec_text_and_json(spoke1: Served) -> None:
    sock = str(spoke1.server.path)
    data = json.loads(_cli(show_group, "ipsec", "--json", "--socket", sock).output)
    assert data["enabled"] and data["node"] == "spoke1"
    assert data["peers"][0]["child"]["packets_out"] == 4
    assert data["interfaces"] == {}  # the fake runtimes keep no hold counters
    out = _cli(show_group, "ipsec", "--socket", sock)
    assert out.exit_code == 0, out.output
    text = out.output
    assert "charon: charon 5.9.8 (pid 4242), VICI /run/x/charon.vici, ready, restarts 1" in text
    assert "authentication: certificate, identity 10.0.0.11, identity binding on" in text
    assert "ESP: kernel-libipsec, tunnel mode proposed" in text
    assert "IKE SA: ESTABLISHED, 10.0.0.11 <-> 10.0.0.1, AES_GCM_16-256" in text
    assert "Child SA: INSTALLED TUNNEL UDP-encap, AES_GCM_16-256, SPIs c1_i c2_o" in text
    assert "in  3 pkts 420 B, out 4 pkts 2.0 KB" in text
    assert (
        "Peer 203.0.113.9" in text
        and "last error: received AUTHENTICATION_FAILED notify error (2 failures, retry in 2s)"
        in text
    )


def test_show_dmvpn_shows_each_peers_sa(spoke1: Served) -> None:
    sock = str(spoke1.server.path)
    data = json.loads(_cli(show_group, "dmvpn", "--json", "--socket", sock).output)
    peers = data["interfaces"][0]["peers"]
    states = [p["ipsec"]["state"] if p["ipsec"] else None for p in peers]
    assert "up" in states
    out = _cli(show_group, "dmvpn", "--socket", sock).output
    assert "IPsec: UP for 12s" in out


def test_show_ipsec_without_ipsec(spoke1: Served) -> None:
    spoke1.server.ipsec = None
    out = _cli(show_group, "ipsec", "--socket", str(spoke1.server.path))
    assert "spoke1: IPsec is not configured (no `ipsec` section)" in out.output


def test_ipsec_metrics(spoke1: Served) -> None:
    from dmvpn.cli.show import ApiClient

    text = ApiClient(spoke1.server.path).text("/metrics")
    assert 'dmvpn_ipsec_peers{state="up"} 1.0' in text
    assert 'dmvpn_ipsec_peers{state="failed"} 1.0' in text
    assert 'dmvpn_ipsec_sas_total{result="initiated"} 1.0' in text
    assert "dmvpn_ipsec_charon_restarts_total 1.0" in text
    assert "dmvpn_nhrp_identity_refused_total" in text
