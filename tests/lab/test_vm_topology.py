"""`kind: vm` and per-node `dataplane:` as data (issue 15): which node runs
which data plane, the configs the guests get, and the refusals (no root)."""

from __future__ import annotations

from typing import Any

import pytest

from dmvpn.config import parse_config
from dmvpn.lab import Topology, TopologyError
from dmvpn.lab.netns import Lab
from dmvpn.lab.vmnode import DmvpnGuests


def _topo(hubs: list[dict[str, Any]], spokes: list[dict[str, Any]], **top: Any) -> Topology:
    return Topology.from_data({**top, "nodes": {"hubs": hubs, "spokes": spokes}})


def _plane(topo: Topology, node: str) -> str | None:
    itf = topo.node_config(node)["interfaces"][0]
    plane = itf.get("dataplane")
    return None if plane is None else str(plane)


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(TopologyError) as info:
        Topology.from_data(data)
    return info.value.problems


def test_vm_nodes_run_the_kernel_plane_unless_they_say() -> None:
    topo = _topo(
        [{"name": "hub1", "kind": "vm"}],
        [
            {"name": "spoke1"},
            {"name": "spoke2", "kind": "vm", "dataplane": "userspace"},
            {"name": "spoke3", "dataplane": "auto"},
        ],
    )
    assert [p.name for p in topo.vm_routers] == ["hub1", "spoke2"]
    assert topo.frr_routers == [] and [p.name for p in topo.dmvpn_routers] == ["spoke1", "spoke3"]
    assert _plane(topo, "hub1") == "kernel"
    assert _plane(topo, "spoke1") is None  # the config's default
    assert _plane(topo, "spoke2") == "userspace"
    assert _plane(topo, "spoke3") == "auto"
    # What the guests run is a valid node config, on the plane asked.
    for node in ("hub1", "spoke2"):
        cfg = DmvpnGuests(Lab(topo, prefix="vmt-"), [node]).config(node)
        assert parse_config(cfg).interfaces[0].dataplane == _plane(topo, node)
        assert cfg["socket"] == "/run/dmvpn.sock"


def test_the_topology_plane_is_the_default_of_namespace_nodes_only() -> None:
    topo = _topo([{"name": "hub1"}], [{"name": "spoke1", "kind": "vm"}], dataplane="ebpf")
    assert _plane(topo, "hub1") == "ebpf"
    assert _plane(topo, "spoke1") == "kernel"  # no eBPF in guests
    # A node's own plane wins over the topology's.
    topo = _topo([{"name": "hub1", "dataplane": "kernel"}], [], dataplane="userspace")
    assert _plane(topo, "hub1") == "kernel"


def test_frr_guests_keep_their_dmvpn_default_of_kernel() -> None:
    # tests/interop/kernelcloud.py: our daemon in the `kind: frr` wiring.
    topo = _topo([{"name": "hub1", "kind": "frr"}], [{"name": "spoke1"}])
    cfg = DmvpnGuests(Lab(topo, prefix="vmt-")).config("hub1")
    assert cfg["interfaces"][0]["dataplane"] == "kernel"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            {"nodes": {"hubs": [{"name": "hub1", "kind": "frr", "dataplane": "kernel"}]}},
            "nodes.hubs.0.dataplane: an frr node runs nhrpd on the guest kernel's mGRE; "
            "dataplane is for dmvpn and vm nodes",
        ),
        (
            {
                "nodes": {
                    "hubs": [{"name": "hub1"}],
                    "spokes": [{"name": "s1", "kind": "vm", "dataplane": "ebpf"}],
                }
            },
            "nodes.spokes.0.dataplane: ebpf is not built for guests (its programs are "
            "compiled for the host's kernel); use kernel, userspace or auto",
        ),
        (
            {"ipv6": True, "nodes": {"hubs": [{"name": "hub1", "dataplane": "kernel"}]}},
            "nodes.hubs.0.dataplane: kernel does not do ipv6 yet",
        ),
        (
            {"front_door_vrf": True, "nodes": {"hubs": [{"name": "hub1", "dataplane": "kernel"}]}},
            "nodes.hubs.0.dataplane: kernel does not do front_door_vrf yet",
        ),
        (
            {"front_door_vrf": True, "nodes": {"hubs": [{"name": "hub1", "dataplane": "ebpf"}]}},
            "nodes.hubs.0.dataplane: ebpf is not yet with front_door_vrf",
        ),
        (
            {"vrf_clouds": True, "nodes": {"hubs": [{"name": "hub1", "dataplane": "ebpf"}]}},
            "nodes.hubs.0.dataplane: ebpf is not yet with vrf_clouds",
        ),
        (
            {"nodes": {"hubs": [{"name": "hub1", "dataplane": "tap"}]}},
            "nodes.hubs.0.dataplane: Input should be 'userspace', 'ebpf', 'kernel' or 'auto'",
        ),
        (
            {
                "ipsec_psk": "lab-psk-0123456789",
                "nodes": {"hubs": [{"name": "hub1", "kind": "frr"}]},
            },
            "ipsec_psk: frr nodes run no strongSwan in the lab; use ipsec_psk with dmvpn and vm "
            "nodes only",
        ),
    ],
)
def test_refusals_name_the_field_and_the_reason(data: dict[str, Any], problem: str) -> None:
    problems = _problems(data)
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(
    ("top", "spoke", "words"),
    [
        ({"ipv6": True}, {}, "ipv6: the lab configures IPv6 on dmvpn nodes only"),
        ({"routing": {"protocol": "bgp"}}, {}, "routing daemons beside dmvpn nodes only"),
        ({}, {"nat": "nat1"}, "nodes.spokes.0.nat: only dmvpn spokes"),
        ({}, {"access": {"mtu": 1400}}, "nodes.spokes.0.access: only dmvpn spokes"),
    ],
)
def test_vm_nodes_are_refused_what_guests_do_not_get(
    top: dict[str, Any], spoke: dict[str, Any], words: str
) -> None:
    spokes = [{"name": "spoke1", "kind": "vm", **spoke}]
    problems = _problems({**top, "nodes": {"hubs": [{"name": "hub1"}], "spokes": spokes}})
    assert any(words in p for p in problems), problems
