"""The lab builder: the addressing plan and node configs (no root), then real namespaces (root).

The namespace tests build labs with a per-run prefix ("dmvpnt<pid>-"), so they
never touch a lab a developer has up, and every fixture takes its labs down in
a `finally`, so a failing test leaves no namespace behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dmvpn.config import parse_config
from dmvpn.lab import Lab, LabError, Topology, TopologyError

PREFIX = f"dmvpnt{os.getpid()}-"
OTHER = f"dmvpnt{os.getpid()}x-"  # labs built and taken down inside one test

DEFAULT_ROWS = [
    ("hub1", "hub", "172.30.0.1/24", "10.0.0.1/24", None),
    ("spoke1", "spoke", "172.30.0.11/24", "10.0.0.11/24", "192.168.1.1/24"),
    ("spoke2", "spoke", "172.30.0.12/24", "10.0.0.12/24", "192.168.2.1/24"),
    ("spoke3", "spoke", "172.30.0.13/24", "10.0.0.13/24", "192.168.3.1/24"),
    ("host1", "host", None, None, "192.168.1.10/24"),
    ("host2", "host", None, None, "192.168.2.10/24"),
    ("host3", "host", None, None, "192.168.3.10/24"),
]


# -- the topology: no root needed ---------------------------------------------


def _rows(topo: Topology, prefix: str = "dmvpn-") -> list[tuple[object, ...]]:
    out = []
    for row in topo.describe(prefix):
        assert row["namespace"] == prefix + row["name"]
        out.append((row["name"], row["role"], row["underlay"], row["tunnel"], row["lan"]))
    return out


def test_default_addressing_plan() -> None:
    topo = Topology.load(None)
    assert topo == Topology.default() == Topology.from_data({}) == Topology.from_data(None)
    assert (topo.phase, topo.key, topo.holdtime, topo.authentication) == (3, 42, 60, None)
    assert _rows(topo) == DEFAULT_ROWS
    assert [topo.role(n) for n in ("hub1", "spoke2", "host3")] == ["hub", "spoke", "host"]
    assert topo.plan("host2").peer == "spoke2" and topo.plan("spoke2").peer == "host2"
    with pytest.raises(KeyError, match="no node 'spoke9'"):
        topo.role("spoke9")
    with pytest.raises(ValueError, match="LAN host"):
        topo.node_config("host1")


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_node_configs_follow_the_phase(phase: int) -> None:
    topo = Topology.from_data({"phase": phase, "authentication": "lab", "key": 7})
    configs = {r.name: parse_config(topo.node_config(r.name), r.name) for r in topo.routers}
    hub = configs["hub1"].interfaces[0]
    assert hub.is_hub and hub.name == "dmvpn0" and str(hub.address) == "10.0.0.1/24"
    assert str(hub.tunnel.source) == "172.30.0.1" and hub.tunnel.key == 7
    assert hub.nhrp.network_id == 1 and hub.nhrp.holdtime == 60
    assert hub.nhrp.map_multicast == ["dynamic"] and hub.nhrp.redirect == (phase == 3)
    assert hub.nhrp.authentication == "lab"
    assert [(str(r.prefix), str(r.via)) for r in configs["hub1"].routes] == [
        (f"192.168.{n}.0/24", f"10.0.0.{10 + n}") for n in (1, 2, 3)
    ]
    spoke = configs["spoke2"].interfaces[0]
    assert not spoke.is_hub and str(spoke.tunnel.source) == "172.30.0.12"
    assert [(str(n.address), str(n.nbma), n.priority) for n in spoke.nhrp.nhs] == [
        ("10.0.0.1", "172.30.0.1", 1)
    ]
    assert spoke.nhrp.map_multicast == ["nhs"] and spoke.nhrp.registration_no_unique
    assert spoke.nhrp.shortcut == (phase == 3) and spoke.nhrp.resolution == (phase != 1)
    routes = [(str(r.prefix), str(r.via)) for r in configs["spoke2"].routes]
    if phase == 2:
        assert routes == [("192.168.1.0/24", "10.0.0.11"), ("192.168.3.0/24", "10.0.0.13")]
    else:
        assert routes == [("192.168.0.0/16", "10.0.0.1")]


CUSTOM = """\
phase: 2
holdtime: 30
nodes:
  hubs:
    - {name: hub1}
    - {name: hub2, nbma: 172.30.0.200, tunnel: 10.0.0.200}
  spokes:
    - {name: branch, lan: 192.168.77.0/24, host: pc}
    - {name: spoke2}
"""


def test_custom_topology_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(CUSTOM)
    topo = Topology.load(path)
    assert _rows(topo, "x-") == [
        ("hub1", "hub", "172.30.0.1/24", "10.0.0.1/24", None),
        ("hub2", "hub", "172.30.0.200/24", "10.0.0.200/24", None),
        ("branch", "spoke", "172.30.0.11/24", "10.0.0.11/24", "192.168.77.1/24"),
        ("spoke2", "spoke", "172.30.0.12/24", "10.0.0.12/24", "192.168.2.1/24"),
        ("pc", "host", None, None, "192.168.77.10/24"),
        ("host2", "host", None, None, "192.168.2.10/24"),
    ]
    spoke = parse_config(topo.node_config("spoke2"))
    nhs = spoke.interfaces[0].nhrp.nhs
    assert [(str(n.address), n.priority) for n in nhs] == [("10.0.0.1", 1), ("10.0.0.200", 2)]
    assert [(str(r.prefix), str(r.via)) for r in spoke.routes] == [("192.168.77.0/24", "10.0.0.11")]
    assert spoke.interfaces[0].nhrp.holdtime == 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            CUSTOM.replace("{name: spoke2}", "{name: spoke2, nbmaa: 172.30.0.99}"),
            "nodes.spokes.1.nbmaa: Extra inputs are not permitted",
        ),
        ("phase: 4\n", "phase: Input should be 1, 2 or 3"),
        ("holdtme: 60\n", "holdtme: Extra inputs are not permitted"),
        ("authentication: much-too-long\n", "authentication: String should have at most 8"),
        ("nodes: {hubs: []}\n", "nodes.hubs: List should have at least 1 item"),
        ("nodes: {spokes: [{name: Spoke-1}]}\n", "nodes.spokes.0.name: String should match"),
        (
            "nodes: {spokes: [{name: s1, nbma: 172.30.0.1}]}\n",
            "nodes.spokes.0.nbma 172.30.0.1 is also the underlay address of hub1",
        ),
        (
            "nodes: {spokes: [{name: s1, tunnel: 10.9.0.1}]}\n",
            "nodes.spokes.0.tunnel 10.9.0.1 is not a host address of 10.0.0.0/24",
        ),
        (
            "nodes: {spokes: [{name: s1}, {name: s2, lan: 192.168.1.0/25}]}\n",
            "nodes.spokes.1.lan 192.168.1.0/25 overlaps s1's LAN 192.168.1.0/24",
        ),
        (
            "nodes: {spokes: [{name: s1, lan: 10.1.0.0/24}]}\n",
            "nodes.spokes.0.lan 10.1.0.0/24 is outside lan_summary 192.168.0.0/16",
        ),
        (
            "nodes: {spokes: [{name: s1, host: hub1}]}\n",
            "nodes.spokes.0.host: name 'hub1' is already used by nodes.hubs.0.name",
        ),
        ("nodes: {hubs: [{name: inet}]}\n", "nodes.hubs.0.name: 'inet' is reserved"),
        ("[1, 2]\n", "(top level): expected a mapping of settings"),
        ("phase: [unclosed\n", "line 2, column 1: not valid YAML"),
    ],
)
def test_bad_topology_is_rejected_with_the_field_path(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as info:
        Topology.load(path)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
    assert str(path) in str(info.value)


def test_lab_names_without_root(tmp_path: Path) -> None:
    lab = Lab(prefix="dmvpn-", state_path=tmp_path / "s.json")
    assert lab.namespaces == ["dmvpn-" + n for n in ("inet", *[r[0] for r in DEFAULT_ROWS])]
    assert Lab(prefix="lab1-").state_path == Path("/run/dmvpn-lab/lab1-.json")
    assert lab._ours("dmvpn-spoke1") and lab._ours("dmvpn-inet")
    assert not lab._ours("dmvpn-t1-spoke1")  # another lab's prefix, "dmvpn-t1-"
    with pytest.raises(KeyError):
        lab.namespace("nope")
    for bad in ("dmvpn", "-x-", "a b-", "x" * 30 + "-"):
        with pytest.raises(LabError, match="bad lab prefix"):
            Lab(prefix=bad)


# -- real namespaces: root ------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "tests/lab/test_netns.py builds network namespaces and must run as root "
            "(deselect the namespace tests with -k 'not netns' to run the rest)"
        )


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _with_prefix(prefix: str) -> set[str]:
    return {ns for ns in _netns() if ns.startswith(prefix)}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The default lab, built once for the read-only tests; always taken down."""
    _require_root()
    built = Lab(Topology.default(), prefix=PREFIX)
    try:
        built.up()
        yield built
    finally:
        built.down()
        assert not _with_prefix(PREFIX)


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """Labs a test builds and takes down itself; whatever is left is taken down after."""
    _require_root()
    made: list[Lab] = []

    def make(topology: Topology | None = None, prefix: str = OTHER) -> Lab:
        made.append(Lab(topology, prefix=prefix))
        made[-1].up()
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            each.down()
        assert not _with_prefix(OTHER)


def _json(lab: Lab, node: str, *argv: str) -> list[dict[str, object]]:
    res = lab.exec(node, ["ip", "-j", *argv], check=True, capture_output=True, text=True)
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _addresses(lab: Lab, node: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for link in _json(lab, node, "-4", "addr", "show"):
        infos = link["addr_info"]
        assert isinstance(infos, list)
        out[str(link["ifname"])] = [f"{a['local']}/{a['prefixlen']}" for a in infos]
    return out


def test_netns_every_namespace_exists(lab: Lab) -> None:
    names = ["inet", "hub1", "spoke1", "spoke2", "spoke3", "host1", "host2", "host3"]
    assert _with_prefix(PREFIX) == {PREFIX + n for n in names} == set(lab.namespaces)
    assert lab.state_path.exists()
    assert _addresses(lab, "hub1") == {"lo": ["127.0.0.1/8"], "nbma0": ["172.30.0.1/24"]}
    assert _addresses(lab, "spoke1") == {
        "lo": ["127.0.0.1/8"],
        "nbma0": ["172.30.0.11/24"],
        "lan0": ["192.168.1.1/24"],
    }
    assert _addresses(lab, "host3") == {"lo": ["127.0.0.1/8"], "eth0": ["192.168.3.10/24"]}
    assert _json(lab, "host1", "route", "show", "default")[0]["gateway"] == "192.168.1.1"
    ports = {str(p["ifname"]) for p in _json(lab, "inet", "link", "show", "master", "br0")}
    assert ports == {"v-hub1", "v-spoke1", "v-spoke2", "v-spoke3"}
    for node, forwarding in (("hub1", "1"), ("spoke2", "1"), ("host1", "0")):
        res = lab.exec(node, ["cat", "/proc/sys/net/ipv4/ip_forward"], capture_output=True)
        assert res.stdout.decode().strip() == forwarding, node


def test_netns_host_reaches_its_spoke(lab: Lab) -> None:
    assert lab.ping("host1", "192.168.1.1")


def test_netns_spoke_reaches_hub_over_the_underlay(lab: Lab) -> None:
    assert lab.ping("spoke1", "172.30.0.1")
    assert lab.ping("spoke3", "172.30.0.12")
    # The underlay knows no LAN: only the tunnel will carry LAN traffic.
    assert not lab.ping("host1", "172.30.0.1", timeout=0.5)


def test_netns_router_configs_parse(lab: Lab) -> None:
    for router in lab.topology.routers:
        cfg = parse_config(lab.topology.node_config(router.name), router.name)
        source = f"{cfg.interfaces[0].tunnel.source}/24"
        assert _addresses(lab, router.name)["nbma0"] == [source], router.name


def test_netns_describe_and_status(lab: Lab) -> None:
    assert _rows(lab.topology, PREFIX) == DEFAULT_ROWS
    status = lab.status()
    assert [s["name"] for s in status] == [r[0] for r in DEFAULT_ROWS]
    assert all(s["up"] and s["pids"] == [] for s in status)


def test_netns_up_refuses_an_existing_lab(lab: Lab) -> None:
    with pytest.raises(LabError, match=f"prefix '{PREFIX}' already exists"):
        Lab(prefix=PREFIX).up()
    assert _with_prefix(PREFIX) == set(lab.namespaces)  # untouched


def test_netns_down_stops_processes_and_removes_everything(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab()
    polite = lab.popen("hub1", ["sleep", "60"])
    stubborn = lab.popen(
        "spoke1",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
    pids = {s["name"]: s["pids"] for s in lab.status()}
    assert pids["hub1"] == [polite.pid] and pids["spoke1"] == [stubborn.pid]
    removed = lab.down(timeout=0.5)
    assert set(removed) == set(lab.namespaces)
    assert polite.wait(5) == -signal.SIGTERM
    assert stubborn.wait(5) == -signal.SIGKILL
    assert not _with_prefix(OTHER) and not lab.state_path.exists()
    assert lab.down() == []  # nothing left: still fine


def test_netns_down_after_a_crash_lost_the_state_file(make_lab: Callable[..., Lab]) -> None:
    topo = Topology.from_data({"nodes": {"spokes": [{"name": "s1"}]}})
    built = make_lab(topo)
    assert Lab.attach(OTHER).topology == topo  # what `lab status` in another process sees
    built.state_path.unlink()
    with pytest.raises(LabError, match="no lab with prefix"):
        Lab.attach(OTHER)
    fresh = Lab(prefix=OTHER)  # a new process, default topology, no state
    assert set(fresh.down()) == {OTHER + n for n in ("inet", "hub1", "s1", "host1")}
    assert not _with_prefix(OTHER)


def test_netns_failed_up_leaves_nothing(tmp_path: Path) -> None:
    _require_root()

    class Broken(Lab):
        def _build(self) -> None:
            super()._build()
            self._ip("-n", self.namespace("hub1"), "link", "set", "nosuchdev", "up")

    lab = Broken(prefix=OTHER, state_path=tmp_path / "state.json")
    try:
        with pytest.raises(LabError, match="nosuchdev") as info:
            lab.up()
        assert "set nosuchdev up` failed (exit 1)" in str(info.value)
        assert not _with_prefix(OTHER) and not lab.state_path.exists()
    finally:
        lab.down()
