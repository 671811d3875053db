"""frr lab nodes without root: the topology vocabulary turned into nhrpd.conf,
the guest's set-up and vtysh commands. (The guests themselves boot in
tests/interop.)"""

from __future__ import annotations

import pytest

from dmvpn.lab import Topology, TopologyError
from dmvpn.lab.frrconf import guest_setup, nhrpd_conf, vtysh_command
from dmvpn.lab.frrnode import nhs_in_cache


def _mixed(**settings: object) -> Topology:
    return Topology.from_data(
        {
            **settings,
            "nodes": {
                "hubs": [{"name": "hub1"}, {"name": "hub2", "kind": "frr"}],
                "spokes": [
                    {"name": "spoke1", "kind": "frr"},
                    {"name": "spoke2", "kind": "frr", "registration_no_unique": False},
                    {"name": "spoke3"},
                ],
            },
        }
    )


def test_kind_is_part_of_the_plan_and_the_status_rows() -> None:
    topo = _mixed()
    assert [p.name for p in topo.frr_routers] == ["hub2", "spoke1", "spoke2"]
    assert [p.name for p in topo.dmvpn_routers] == ["hub1", "spoke3"]
    kinds = {row["name"]: row["kind"] for row in topo.describe()}
    frr = {"hub2", "spoke1", "spoke2"}
    assert kinds == {n: "frr" if n in frr else "dmvpn" for n in topo.names}
    # The native spoke's config still names both hubs, whatever runs them.
    nhs = topo.node_config("spoke3")["interfaces"][0]["nhrp"]["nhs"]
    assert [n["nbma"] for n in nhs] == ["172.30.0.1", "172.30.0.2"]
    assert topo.node_config("spoke3")["interfaces"][0]["nhrp"]["registration_no_unique"] is True


def test_unknown_kind_is_rejected_with_its_path() -> None:
    with pytest.raises(TopologyError) as err:
        Topology.from_data({"nodes": {"spokes": [{"name": "s1", "kind": "cisco"}]}})
    assert any(p.startswith("nodes.spokes.0.kind:") for p in err.value.problems)


def test_nhrpd_spoke_config_uses_the_topology_vocabulary() -> None:
    conf = nhrpd_conf(_mixed(holdtime=30, key=7, authentication="secret"), "spoke1")
    lines = [line.strip() for line in conf.splitlines()]
    assert "interface mgre0" in lines and "tunnel source nbma0" in lines
    assert "ip nhrp network-id 1" in lines and "ip nhrp holdtime 30" in lines
    assert "ip nhrp authentication secret" in lines
    assert [x for x in lines if x.startswith("ip nhrp nhs")] == [
        "ip nhrp nhs 10.0.0.1 nbma 172.30.0.1",
        "ip nhrp nhs 10.0.0.2 nbma 172.30.0.2",
    ]
    assert "ip nhrp registration no-unique" in lines and "ip nhrp shortcut" in lines
    assert "ip nhrp redirect" not in lines
    unique = nhrpd_conf(_mixed(phase=2), "spoke2")
    assert "no-unique" not in unique and "shortcut" not in unique  # phase 2: no shortcuts


def test_nhrpd_hub_config_redirects_in_phase_3_only() -> None:
    conf = nhrpd_conf(_mixed(), "hub2")
    assert " ip nhrp redirect" in conf and "nhrp nflog-group 1" in conf and "nhs" not in conf
    setup = guest_setup(_mixed(), "hub2")
    # Redirect needs the hairpinned packets logged to nhrpd (NFLOG).
    assert "iptables -A FORWARD -i mgre0 -o mgre0" in setup and "--nflog-group 1" in setup
    phase1 = _mixed(phase=1)
    assert "redirect" not in nhrpd_conf(phase1, "hub2")
    assert "iptables" not in guest_setup(phase1, "hub2")


def test_guest_setup_routes_via_tunnel_addresses_onlink() -> None:
    setup = guest_setup(_mixed(key=7), "spoke1").splitlines()
    assert "tunnel add mgre0 mode gre key 7 ttl 64 dev nbma0" in setup
    assert "addr add 10.0.0.11/32 dev mgre0" in setup  # nhrpd needs the /32
    assert (
        "addr add 172.30.0.11/24 dev nbma0" in setup and "addr add 192.168.1.1/24 dev lan0" in setup
    )
    assert "route add 192.168.0.0/16 via 10.0.0.1 dev mgre0 onlink" in setup
    hub = guest_setup(_mixed(), "hub2").splitlines()
    assert "route add 192.168.3.0/24 via 10.0.0.13 dev mgre0 onlink" in hub
    assert not any("lan0" in line for line in hub)  # a hub has no LAN
    phase2 = guest_setup(_mixed(phase=2), "spoke1").splitlines()
    assert "route add 192.168.2.0/24 via 10.0.0.12 dev mgre0 onlink" in phase2
    assert not any("192.168.1.0/24 via" in line for line in phase2)


def test_only_frr_routers_get_nhrpd_configs() -> None:
    for node in ("hub1", "spoke3", "host1"):
        with pytest.raises(ValueError, match="not an frr router"):
            nhrpd_conf(_mixed(), node)


def test_show_words_map_to_vtysh() -> None:
    assert vtysh_command(["nhrp"]) == "show ip nhrp cache"
    assert vtysh_command(["nhrp", "nhs", "--json"]) == "show ip nhrp nhs json"
    assert vtysh_command(("nhrp", "shortcut")) == "show ip nhrp shortcut"
    assert vtysh_command(["dmvpn"]) == "show dmvpn"
    assert vtysh_command(["ip", "nhrp", "cache"]) == "show ip nhrp cache"
    assert vtysh_command(["show", "running-config"]) == "show running-config"
    with pytest.raises(ValueError, match="no nhrpd equivalent of `show nhrp traffic`"):
        vtysh_command(["nhrp", "traffic"])


def test_nhs_state_read_from_nhrpd_cache() -> None:
    # FRR 8.4's `show ip nhrp cache`, as printed in a lab guest.
    text = """\
Iface    Type     Protocol                 NBMA                     Claimed NBMA             Flags  Identity
mgre0    nhs      10.0.0.1                 172.30.0.1               172.30.0.1                TA
mgre0    dynamic  10.0.0.13                172.30.0.13              172.30.0.13               T
mgre0    local    10.0.0.11                172.30.0.11              172.30.0.11                     -
"""  # noqa: E501
    assert nhs_in_cache(text) == {"10.0.0.1"}
    assert nhs_in_cache(text.replace(" nhs ", " dynamic ")) == set()
