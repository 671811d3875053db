"""What charon is given, rendered from the node config (no charon needed)."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from dmvpn.config import Ipsec, parse_config
from dmvpn.daemon.reload import plan_reload
from dmvpn.ipsec.settings import (
    KERNEL_PLUGINS,
    PLUGINS,
    conn_name,
    peer_conn,
    responder_conn,
    secrets,
    strongswan_conf,
)

A, B = IPv4Address("172.30.0.11"), IPv4Address("172.30.0.1")


def test_strongswan_conf_keeps_everything_private() -> None:
    run = Path("/run/x")
    text = strongswan_conf(run, run / "charon.vici", run / "charon.log")
    assert "socket = unix:///run/x/charon.vici" in text
    assert "path = /run/x/charon.log" in text
    # kernel-libipsec before kernel-netlink (real-peers.md), and the fwmark
    # pair that keeps IKE out of the ESP tunnel.
    plugins = PLUGINS.split()
    assert plugins.index("kernel-libipsec") < plugins.index("kernel-netlink")
    assert "fwmark = 0x42" in text and "fwmark = !0x42" in text
    assert "load_modular = no" in text


def test_kernel_esp_leaves_kernel_libipsec_out() -> None:
    run = Path("/var/lib/x")
    text = strongswan_conf(run, run / "charon.vici", run / "charon.log", kernel_esp=True)
    assert "kernel-libipsec" not in text and "kernel-libipsec" not in KERNEL_PLUGINS
    assert f"load = {KERNEL_PLUGINS}" in text and "kernel-netlink" in KERNEL_PLUGINS.split()
    assert "fwmark = 0x42" in text  # IKE still marked


def test_transport_mode_on_the_kernel_plane_protects_gre_between_nbma_addresses() -> None:
    node = parse_config(
        {
            "node": "n",
            "interfaces": [
                {
                    "name": "gre1",
                    "address": "10.0.0.11/24",
                    "dataplane": "kernel",
                    "tunnel": {"source": str(A)},
                    "nhrp": {"network_id": 1},
                }
            ],
            "ipsec": {"psk": "a-long-shared-secret"},
        }
    )
    assert node.ipsec is not None
    child = peer_conn(node.ipsec, A, B, None, {})[conn_name(B)]["children"]["gre"]
    assert child["mode"] == "transport" and child["local_ts"] == ["172.30.0.11/32[gre]"]


def test_peer_connection_protects_gre_only_between_nbma_addresses() -> None:
    cfg = Ipsec(psk="a-long-shared-secret", dpd_delay=5, child_lifetime=600)
    ((name, conn),) = peer_conn(cfg, A, B, None, {}).items()
    assert name == conn_name(B) == "dmvpn-172.30.0.1"
    assert conn["local_addrs"] == ["172.30.0.11"] and conn["remote_addrs"] == ["172.30.0.1"]
    assert conn["version"] == 2 and conn["proposals"] == ["aes256gcm16-prfsha384-x25519"]
    assert conn["dpd_delay"] == "5s" and conn["unique"] == "replace"
    assert conn["local"] == {"auth": "psk"} and conn["remote"] == {"auth": "psk", "id": "%any"}
    child = conn["children"]["gre"]
    assert child["local_ts"] == ["172.30.0.11/32[gre]"]
    assert child["remote_ts"] == ["0.0.0.0/0[gre]"]  # narrowed by IKE (natmap.py)
    assert child["mode"] == "tunnel" and child["esp_proposals"] == ["aes256gcm16-x25519"]
    assert child["rekey_time"] == "600s" and child["life_time"] == "660s"


def test_responder_template_accepts_gre_from_any_peer() -> None:
    cfg = Ipsec(psk="a-long-shared-secret")
    ((name, conn),) = responder_conn(cfg, A, None, {}).items()
    assert name == "dmvpn-any-172.30.0.11"
    assert conn["remote_addrs"] == ["%any"]
    assert conn["children"]["gre"]["remote_ts"] == ["0.0.0.0/0[gre]"]


def test_certificates_and_identity() -> None:
    cfg = Ipsec(ca=Path("ca"), certificate=Path("c"), private_key=Path("k"))
    creds = {"ca": b"CA", "certificate": b"CERT", "private_key": b"KEY"}
    conn = peer_conn(cfg, A, B, "10.0.0.11", creds)[conn_name(B)]
    assert conn["local"] == {"auth": "pubkey", "certs": [b"CERT"], "id": "10.0.0.11"}
    assert conn["remote"] == {"auth": "pubkey", "cacerts": [b"CA"], "id": "%any"}
    assert [c for c, _ in secrets(cfg, creds)] == ["load_cert", "load_cert", "load_key"]
    psk = Ipsec(psk="a-long-shared-secret")
    assert secrets(psk, {}) == [
        (
            "load_shared",
            {"id": "dmvpn-psk", "type": "IKE", "data": "a-long-shared-secret", "owners": []},
        )
    ]


def test_reload_refuses_an_ipsec_change() -> None:
    base = {
        "node": "n",
        "interfaces": [
            {
                "name": "d",
                "address": "10.0.0.1/24",
                "tunnel": {"source": "192.0.2.1"},
                "nhrp": {"network_id": 1},
            }
        ],
    }
    old = parse_config(dict(base, ipsec={"psk": "a-long-shared-secret"}))
    new = parse_config(dict(base, ipsec={"psk": "another-long-secret"}))
    plan = plan_reload(old, new)
    assert plan.refused == ["ipsec changed: restart the daemon to apply it"]
    assert plan_reload(old, old).ok


def test_lab_topology_turns_ipsec_on_for_every_dmvpn_router() -> None:
    import pytest

    from dmvpn.lab.topology import Topology, TopologyError

    topo = Topology.from_data({"ipsec_psk": "lab-psk-0123456789"})
    for plan in topo.routers:
        config = parse_config(topo.node_config(plan.name))
        assert config.ipsec is not None and config.ipsec.psk == "lab-psk-0123456789"
    assert "ipsec" not in Topology.from_data({}).node_config("spoke1")
    with pytest.raises(TopologyError) as info:
        Topology.from_data(
            {
                "ipsec_psk": "lab-psk-0123456789",
                "nodes": {"hubs": [{"name": "hub1", "kind": "frr"}]},
            }
        )
    assert info.value.problems == [
        "ipsec_psk: frr nodes run no strongSwan in the lab; use ipsec_psk with dmvpn and vm "
        "nodes only"
    ]
    # vm nodes run our daemon, and it its own charon (kernel ESP in the guest).
    vm = Topology.from_data(
        {"ipsec_psk": "lab-psk-0123456789", "nodes": {"spokes": [{"name": "spoke1", "kind": "vm"}]}}
    )
    assert vm.node_config("spoke1")["ipsec"] == {"psk": "lab-psk-0123456789"}
