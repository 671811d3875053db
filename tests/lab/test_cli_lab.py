"""`dmvpn lab`: the command line over real namespaces and daemons (root), and its errors.

Every lab here has a per-run prefix ("dmvpnl<pid>...-"), so a lab a developer
has up is never touched, and every fixture and test takes its labs down in a
`finally` and checks that nothing is left: no namespace, no state file, no run
directory, no daemon.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dmvpn.cli import main
from dmvpn.cli.lab import lab_group
from dmvpn.config import parse_config
from dmvpn.lab import Lab, LabError
from dmvpn.lab.runner import Runner
from dmvpn.lab.topology import Topology

PREFIX = f"dmvpnl{os.getpid()}-"  # the default lab, up for the whole module
OTHER = f"dmvpnl{os.getpid()}o-"  # labs built and taken down inside one test
DEMO = f"dmvpnl{os.getpid()}d-"  # `lab demo`

# The real `dmvpn lab` once it is registered; until then the group itself.
if "lab" in getattr(main, "commands", {}):
    LAB = [str(Path(sys.executable).with_name("dmvpn")), "lab"]
else:
    LAB = [sys.executable, "-c", "from dmvpn.cli.lab import lab_group; lab_group()"]
SHOW_EXISTS = "show" in getattr(main, "commands", {})


def lab_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=timeout)


# -- no root needed -------------------------------------------------------------


def test_every_subcommand_takes_a_prefix() -> None:
    runner = CliRunner()
    names = {"up", "down", "status", "exec", "show", "demo"}
    assert set(lab_group.commands) == names
    for name in names:
        res = runner.invoke(lab_group, [name, "--help"])
        assert res.exit_code == 0 and "--prefix" in res.output, name
        assert "[default: dmvpn-]" in res.output, name


def test_usage_errors() -> None:
    runner = CliRunner()
    res = runner.invoke(lab_group, ["status", "--prefix", "bad prefix"])
    assert res.exit_code == 2 and "bad lab prefix" in res.output
    res = runner.invoke(lab_group, ["exec", "host1", "--"])
    assert res.exit_code == 2 and "no COMMAND to run" in res.output
    res = runner.invoke(lab_group, ["status", "--prefix", "nolabhere-"])
    assert res.exit_code == 1
    assert "no lab with prefix 'nolabhere-'" in res.output and "lab up" in res.output


def test_run_dir_sits_beside_the_state_file(tmp_path: Path) -> None:
    assert Lab(prefix="lab1-").run_dir == Path("/run/dmvpn-lab/lab1-")
    assert Lab(prefix="lab1-", state_path=tmp_path / "s.json").run_dir == tmp_path / "s"
    runner = Runner(Lab(prefix="lab1-"), dmvpn=["dmvpn"])
    config = parse_config(runner.node_config("spoke2"), "spoke2")
    assert config.socket == Path("/run/dmvpn-lab/lab1-/spoke2.sock")
    assert runner.log_path("hub1") == Path("/run/dmvpn-lab/lab1-/hub1.log")


# -- real namespaces: root ------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "tests/lab/test_cli_lab.py builds network namespaces and must run as root "
            "(deselect the namespace tests with -k 'not netns' to run the rest)"
        )


def _netns(prefix: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _status(prefix: str) -> dict[str, Any]:
    res = lab_cli("status", "--json", "--prefix", prefix)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _daemon_pids(prefix: str) -> list[int]:
    return [pid for node in _status(prefix)["nodes"] for pid in node["pids"]]


def _assert_nothing_left(prefix: str, pids: Sequence[int] = ()) -> None:
    lab = Lab(prefix=prefix)
    assert not _netns(prefix)
    assert not lab.state_path.exists() and not lab.run_dir.exists()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "daemons left running"


def _force_down(prefix: str) -> None:
    """Whatever a failed test left: taken down, then checked."""
    try:
        Lab(prefix=prefix).down()
    finally:
        assert not _netns(prefix)


@pytest.fixture(scope="module")
def cloud() -> Iterator[dict[str, Any]]:
    """`dmvpn lab up` with the default topology, for the tests that only look at it."""
    _require_root()
    try:
        res = lab_cli("up", "--prefix", PREFIX)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "every spoke registered in" in res.stdout
        status = _status(PREFIX)
        yield status
        pids = [pid for node in status["nodes"] for pid in node["pids"]]
        res = lab_cli("down", "--prefix", PREFIX)
        assert res.returncode == 0, res.stderr
        assert "stopped 4 daemon(s), deleted 8 namespace(s)" in res.stdout
        _assert_nothing_left(PREFIX, pids)
    finally:
        _force_down(PREFIX)


DEFAULT_NODES = [
    ("hub1", "hub", "172.30.0.1/24", "10.0.0.1/24", None),
    ("spoke1", "spoke", "172.30.0.11/24", "10.0.0.11/24", "192.168.1.1/24"),
    ("spoke2", "spoke", "172.30.0.12/24", "10.0.0.12/24", "192.168.2.1/24"),
    ("spoke3", "spoke", "172.30.0.13/24", "10.0.0.13/24", "192.168.3.1/24"),
    ("host1", "host", None, None, "192.168.1.10/24"),
    ("host2", "host", None, None, "192.168.2.10/24"),
    ("host3", "host", None, None, "192.168.3.10/24"),
]


def test_netns_up_status_json(cloud: dict[str, Any]) -> None:
    assert (cloud["prefix"], cloud["phase"], cloud["holdtime"]) == (PREFIX, 3, 60)
    nodes = cloud["nodes"]
    rows = [(n["name"], n["role"], n["underlay"], n["tunnel"], n["lan"]) for n in nodes]
    assert rows == DEFAULT_NODES
    assert all(n["up"] and n["namespace"] == PREFIX + n["name"] for n in nodes)
    assert _netns(PREFIX) == {PREFIX + n for n in ("inet", *[r[0] for r in DEFAULT_NODES])}
    run_dir = Path(cloud["run_dir"])
    for n in nodes:
        if n["role"] == "host":
            assert n["daemon"] is None and n["pids"] == []
            continue
        assert n["daemon"] == "running" and len(n["pids"]) == 1 and _alive(n["pids"][0])
        config = parse_config(yaml.safe_load(Path(n["config"]).read_text()), n["config"])
        assert config.node == n["name"] and config.socket == run_dir / f"{n['name']}.sock"
        assert str(config.interfaces[0].address) == n["tunnel"]
    hub_log = [json.loads(line) for line in (run_dir / "hub1.log").read_text().splitlines()]
    registered = {r["protocol"] for r in hub_log if r["kind"] == "registered"}
    assert registered == {"10.0.0.11", "10.0.0.12", "10.0.0.13"}


def test_netns_status_table(cloud: dict[str, Any]) -> None:
    res = lab_cli("status", "--prefix", PREFIX)
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[0] == f"lab '{PREFIX}': phase 3 DMVPN, 1 hub, 3 spokes, holdtime 60 s"
    assert lines[1].split() == [
        "NODE",
        "ROLE",
        "KIND",
        "NAMESPACE",
        "UNDERLAY",
        "TUNNEL",
        "LAN",
        "STATE",
    ]
    by_node = {line.split()[0]: line.split() for line in lines[2:]}
    assert by_node["hub1"][:7] == [
        "hub1",
        "hub",
        "dmvpn",
        PREFIX + "hub1",
        "172.30.0.1/24",
        "10.0.0.1/24",
        "-",
    ]
    assert by_node["spoke2"][4:8] == ["172.30.0.12/24", "10.0.0.12/24", "192.168.2.1/24", "dmvpn"]
    assert by_node["spoke2"][8] == "running"
    assert by_node["host3"][1:] == [
        "host",
        "-",
        PREFIX + "host3",
        "-",
        "-",
        "192.168.3.10/24",
        "up",
    ]


def test_netns_exec(cloud: dict[str, Any]) -> None:
    # LAN to LAN across the cloud, and the command's exit status is ours.
    res = lab_cli(
        "exec", "--prefix", PREFIX, "host1", "--", "ping", "-c", "2", "-W", "1", "192.168.3.10"
    )
    assert res.returncode == 0 and "2 received" in res.stdout, res.stdout + res.stderr
    assert lab_cli("exec", "--prefix", PREFIX, "host2", "--", "sh", "-c", "exit 7").returncode == 7
    res = lab_cli("exec", "--prefix", PREFIX, "spoke1", "--", "ip", "-br", "addr", "show", "lan0")
    assert "192.168.1.1/24" in res.stdout
    res = lab_cli(
        "exec", "--prefix", PREFIX, "inet", "--", "ip", "-br", "link", "show", "master", "br0"
    )
    ports = {line.split()[0].split("@")[0] for line in res.stdout.splitlines()}
    assert ports == {"v-hub1", "v-spoke1", "v-spoke2", "v-spoke3"}
    res = lab_cli("exec", "--prefix", PREFIX, "spoke9", "--", "true")
    assert res.returncode == 1 and "no node 'spoke9'" in res.stderr and "host3" in res.stderr


def test_netns_show(cloud: dict[str, Any]) -> None:
    res = lab_cli("show", "--prefix", PREFIX, "host1", "dmvpn")
    assert res.returncode == 1 and "host1 runs no dmvpn daemon" in res.stderr
    res = lab_cli("show", "--prefix", PREFIX, "spoke1", "dmvpn")
    if SHOW_EXISTS:
        assert res.returncode == 0, res.stderr
        assert "10.0.0.1" in res.stdout and "172.30.0.1" in res.stdout
    else:
        assert res.returncode == 1 and "no `show` command" in res.stderr


def test_netns_up_refuses_an_existing_lab(cloud: dict[str, Any]) -> None:
    res = lab_cli("up", "--prefix", PREFIX)
    assert res.returncode == 1 and f"prefix '{PREFIX}' already exists" in res.stderr
    assert _status(PREFIX) == cloud  # untouched: same namespaces, same daemons


TOPOLOGY = {
    "phase": 2,
    "holdtime": 30,
    "nodes": {
        "hubs": [{"name": "hq"}, {"name": "dr"}],
        "spokes": [
            {"name": "paris", "host": "pc1"},
            {"name": "lyon", "lan": "192.168.50.0/24"},
        ],
    },
}


def test_netns_topology_file_then_down_after_the_daemons_crashed(tmp_path: Path) -> None:
    _require_root()
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(TOPOLOGY))
    try:
        res = lab_cli("up", str(path), "--prefix", OTHER)
        assert res.returncode == 0, res.stdout + res.stderr
        status = _status(OTHER)
        assert (status["phase"], status["holdtime"]) == (2, 30)
        rows = [(n["name"], n["role"], n["tunnel"], n["lan"]) for n in status["nodes"]]
        assert rows == [
            ("hq", "hub", "10.0.0.1/24", None),
            ("dr", "hub", "10.0.0.2/24", None),
            ("paris", "spoke", "10.0.0.11/24", "192.168.1.1/24"),
            ("lyon", "spoke", "10.0.0.12/24", "192.168.50.1/24"),
            ("pc1", "host", None, "192.168.1.10/24"),
            ("host2", "host", None, "192.168.50.10/24"),
        ]
        # Both hubs have both spokes, and phase 2 goes direct after resolution.
        for hub in ("hq", "dr"):
            log = Path(status["run_dir"], f"{hub}.log").read_text()
            assert log.count('"kind": "registered"') == 2, hub
        res = lab_cli(
            "exec", "--prefix", OTHER, "pc1", "--", "ping", "-c", "2", "-W", "1", "192.168.50.10"
        )
        assert res.returncode == 0, res.stdout
        # A crash: every daemon killed at once, nothing cleaned up by them.
        pids = _daemon_pids(OTHER)
        assert len(pids) == 4
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            while _alive(pid):
                time.sleep(0.02)
        states = {n["name"]: n["daemon"] for n in _status(OTHER)["nodes"]}
        assert states == {
            "hq": "stopped",
            "dr": "stopped",
            "paris": "stopped",
            "lyon": "stopped",
            "pc1": None,
            "host2": None,
        }
        res = lab_cli("down", "--prefix", OTHER)
        assert res.returncode == 0 and "deleted 7 namespace(s)" in res.stdout, res.stderr
        _assert_nothing_left(OTHER, pids)
        res = lab_cli("down", "--prefix", OTHER)
        assert res.returncode == 0 and "nothing to take down" in res.stdout
    finally:
        _force_down(OTHER)


def test_netns_down_after_the_builder_and_its_state_file_were_lost() -> None:
    _require_root()
    lab = Lab(prefix=OTHER)
    builder = subprocess.Popen([*LAB, "up", "--prefix", OTHER], stdout=subprocess.DEVNULL)
    try:
        # Kill `lab up` once its daemons run, before it finishes waiting for them.
        deadline = time.monotonic() + 30
        pids: list[int] = []
        while len(pids) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
            try:
                pids = [p["pid"] for p in json.loads(lab.state_path.read_text())["pids"]]
            except (OSError, ValueError):
                continue
        builder.kill()
        builder.wait()
        assert len(pids) == 4 and all(_alive(p) for p in pids)
        lab.state_path.unlink()  # the worst case: no record of the daemons
        res = lab_cli("down", "--prefix", OTHER)
        assert res.returncode == 0 and "deleted 8 namespace(s)" in res.stdout, res.stderr
        _assert_nothing_left(OTHER, pids)
    finally:
        builder.kill()
        builder.wait()
        _force_down(OTHER)


def test_netns_runner_reports_a_daemon_that_exits() -> None:
    _require_root()
    lab = Lab(prefix=OTHER)
    try:
        lab.up()
        runner = Runner(lab, dmvpn=[sys.executable, "-c", "print('no luck'); raise SystemExit(3)"])
        runner.start(["hub1"])
        with pytest.raises(LabError, match=r"dmvpn on hub1 exited \(status 3\)") as info:
            runner.wait_registered(timeout=10)
        assert "no luck" in str(info.value)
    finally:
        lab.down()
        _assert_nothing_left(OTHER)


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def _hops(text: str) -> list[str]:
    """The addresses of the traceroute hop lines ("  2  10.0.0.1  0.5 ms  hub1 dmvpn0")."""
    return [m.group(1) for m in re.finditer(r"(?m)^\s+\d+\s+(\d+\.\d+\.\d+\.\d+)\s", text)]


def test_netns_demo_shows_the_shortcut_and_leaves_nothing() -> None:
    _require_root()
    started = time.monotonic()
    try:
        res = lab_cli("demo", "--prefix", DEMO, timeout=60)
        took = time.monotonic() - started
        out = res.stdout
        assert res.returncode == 0, out + res.stderr
        assert took < 60
        # The first packets through hub1, then the shortcut, then direct to spoke2.
        hops = _hops(_section(out, "[3/7]", "[4/7]"))
        assert hops == ["192.168.1.1", "10.0.0.1", "10.0.0.12", "192.168.2.10"], out
        shortcut = _section(out, "[4/7]", "[5/7]")
        assert "Traffic Indication to 172.30.0.11" in shortcut
        assert "spoke1# ip route show proto 177" in shortcut
        assert "192.168.2.0/24 via 10.0.0.12 dev dmvpn0" in shortcut
        hops = _hops(_section(out, "[5/7]", "ping"))
        assert hops == ["192.168.1.1", "10.0.0.12", "192.168.2.10"], out
        assert "3 received" in _section(out, "[5/7]", "[6/7]")
        spokes = _section(out, "[6/7]", "[7/7]")
        assert "spoke1# " in spokes and "spoke2# " in spokes
        assert "10.0.0.12" in spokes and "10.0.0.11" in spokes
        assert "nothing is left" in out
        _assert_nothing_left(DEMO)
    finally:
        _force_down(DEMO)


def test_netns_demo_cleans_up_on_ctrl_c() -> None:
    _require_root()
    lab = Lab(prefix=DEMO)
    # As from a terminal: SIGINT at its default. A suite started in the
    # background by a non-interactive shell inherits SIGINT ignored, and the
    # demo rightly keeps an ignored signal ignored (nohup).
    demo = subprocess.Popen(
        [*LAB, "demo", "--prefix", DEMO],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 30
        pids: list[int] = []
        while len(pids) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
            try:
                pids = [p["pid"] for p in json.loads(lab.state_path.read_text())["pids"]]
            except (OSError, ValueError):
                continue
        assert len(pids) == 4
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=30)
        assert demo.returncode == 130, out
        _assert_nothing_left(DEMO, pids)
    finally:
        demo.kill()
        demo.wait()
        _force_down(DEMO)


def test_netns_access_router_in_status_exec_and_down(tmp_path: Path) -> None:
    """A spoke's `access:` router (dmvpn.lab.access): its row in `lab status`,
    `lab exec` into it, its ruleset, and `lab down` takes it away."""
    _require_root()
    path = tmp_path / "access.yaml"
    access = {"mtu": 1380, "drop_icmp": True, "firewall": True}
    path.write_text(yaml.safe_dump({"nodes": {"spokes": [{"name": "spoke1", "access": access}]}}))
    prefix = f"dmvpnl{os.getpid()}a-"
    try:
        res = lab_cli("up", str(path), "--prefix", prefix)
        assert res.returncode == 0, res.stdout + res.stderr
        (row,) = _status(prefix)["access_routers"]
        assert row == {
            "name": "spoke1acc",
            "namespace": f"{prefix}spoke1acc",
            "spoke": "spoke1",
            "address": "172.30.0.151/24",
            "mtu": 1380,
            "drop_icmp": True,
            "firewall": True,
            "up": True,
        }
        table = lab_cli("status", "--prefix", prefix).stdout
        assert re.search(r"spoke1acc +\S+ +spoke1 +172.30.0.151/24 +1380 +dropped", table), table
        rules = lab_cli("exec", "--prefix", prefix, "spoke1acc", "--", "nft", "list", "ruleset")
        assert "table ip dmvpnlab_access" in rules.stdout, rules.stderr
        link = lab_cli("exec", "--prefix", prefix, "spoke1", "--", "ip", "link", "show", "nbma0")
        assert "mtu 1380" in link.stdout
        res = lab_cli("down", "--prefix", prefix)
        assert res.returncode == 0 and "deleted 5 namespace(s)" in res.stdout, res.stdout
        _assert_nothing_left(prefix)
    finally:
        _force_down(prefix)


def test_vrfs_describe_what_the_node_config_builds() -> None:
    """`Topology.vrfs` (what `lab status` lists) names the namespace, interface,
    GRE key and network-id each router's config puts in each VRF."""
    topo = Topology.from_data(
        {
            "key": 7,
            "vrf_clouds": True,
            "nodes": {"hubs": [{"name": "hub1"}], "spokes": [{"name": "spoke1"}]},
        }
    )
    for name in ("hub1", "spoke1"):
        itfs = topo.node_config(name, "px-")["interfaces"]
        got = [
            (v["namespace"], v["interface"], v["key"], v["network_id"])
            for v in topo.vrfs(name, "px-")
        ]
        want = [
            (i["namespace"], i["name"], i["tunnel"]["key"], i["nhrp"]["network_id"]) for i in itfs
        ]
        assert (
            got
            == want
            == [
                (f"px-{name}-vrf1", "dmvpn1", 7, 1),
                (f"px-{name}-vrf2", "dmvpn2", 8, 2),
            ]
        )
    assert [(v["host"], v["host_namespace"]) for v in topo.vrfs("spoke1", "px-")] == [
        ("host1", "px-host1"),
        ("host1", "px-host1-vrf2"),
    ]
    assert topo.vrfs("hub1", "px-")[0]["host"] is None
    assert topo.vrfs("host1", "px-") == []
    assert Topology.default().vrfs("spoke1") == []


def test_netns_vrf_clouds_in_status_and_exec(tmp_path: Path) -> None:
    """A vrf_clouds lab: `lab status` lists each router's VRFs and each VRF's
    host; `lab exec --vrf K` runs in VRF K of a router or host."""
    _require_root()
    path = tmp_path / "vrf.yaml"
    nodes = {"hubs": [{"name": "hub1"}], "spokes": [{"name": "spoke1"}, {"name": "spoke2"}]}
    path.write_text(yaml.safe_dump({"key": 1, "vrf_clouds": True, "nodes": nodes}))
    prefix = f"dmvpnl{os.getpid()}v-"
    try:
        res = lab_cli("up", str(path), "--prefix", prefix)
        assert res.returncode == 0, res.stdout + res.stderr
        data = _status(prefix)
        assert data["vrf_clouds"] is True
        assert f"exec --prefix {prefix} --vrf 2 host1 -- ping" in res.stdout, res.stdout
        spoke1 = next(n for n in data["nodes"] if n["name"] == "spoke1")
        assert spoke1["vrfs"][1] == {
            "vrf": 2,
            "namespace": f"{prefix}spoke1-vrf2",
            "interface": "dmvpn2",
            "key": 2,
            "network_id": 2,
            "host": "host1",
            "host_namespace": f"{prefix}host1-vrf2",
        }
        table = lab_cli("status", "--prefix", prefix).stdout
        assert re.search(rf"hub1 +1 +{prefix}hub1-vrf1 +dmvpn1 +1 +1 +-", table), table
        assert re.search(rf"spoke1 +2 +{prefix}spoke1-vrf2 +dmvpn2 +2 +2 +host1 \(in ", table)
        link = lab_cli(
            "exec", "--prefix", prefix, "--vrf", "2", "spoke1", "--", "ip", "-br", "link"
        )
        assert "dmvpn2" in link.stdout and "dmvpn1" not in link.stdout, link.stdout + link.stderr
        # VRF 2's host1 reaches VRF 2's host2 over cloud 2.
        ping = ["ping", "-c", "1", "-W", "2", "192.168.2.10"]
        res = lab_cli("exec", "--prefix", prefix, "--vrf", "2", "host1", "--", *ping)
        assert res.returncode == 0, res.stdout + res.stderr
        for bad, why in (("3", "no VRF 3"), ("1", "inet has no VRFs")):
            node = "spoke1" if bad == "3" else "inet"
            res = lab_cli("exec", "--prefix", prefix, "--vrf", bad, node, "--", "true")
            assert res.returncode == 1 and why in res.stderr, res.stderr
        assert lab_cli("down", "--prefix", prefix).returncode == 0
        _assert_nothing_left(prefix)
    finally:
        _force_down(prefix)
