"""The API server on a real UNIX socket (in a temporary directory) serving
simulator engines, and the CLI talking to it: no root, no namespaces."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from dmvpn.api.server import EVENT_BACKLOG, ApiError, ApiServer
from dmvpn.cli.show import (
    ApiClient,
    DaemonUnavailable,
    clear_group,
    events_cmd,
    resolve_socket,
    show_group,
)
from dmvpn.dataplane.forwarding import Forwarder
from dmvpn.dataplane.pmtu import PathMtuCache
from dmvpn.nhrp import Engine, Event, Output, ShortcutRemoved
from dmvpn.nhrp.sim import SimNetwork, build_cloud, spoke_lan, spoke_tunnel

from .test_views import _dual_cloud


@dataclass
class FakeRuntime:
    """The parts of the daemon's InterfaceRuntime the server uses."""

    cfg: Any
    engine: Engine
    forwarder: Forwarder
    outputs: list[Output] = field(default_factory=list)

    def apply(self) -> None:
        self.outputs += self.engine.pop_outputs()


def _runtime(name: str, engine: Engine) -> FakeRuntime:
    fw = Forwarder(
        engine=engine,
        tunnel_address=engine.config.protocol_address,  # type: ignore[arg-type]
        local_mac=b"\x02\0\0\0\0\1",
        key=None,
        send_gre=lambda n, d: None,
        write_tap=lambda f: None,
    )
    return FakeRuntime(SimpleNamespace(name=name), engine, fw)


class Served:
    """An ApiServer running on its own event loop in a thread."""

    def __init__(self, path: Path, net: SimNetwork, node: str) -> None:
        self.net = net
        self.runtimes = [_runtime("dmvpn0", net.nodes[node].engine)]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = ApiServer(node, self.runtimes, path, clock=lambda: net.now)
        self.call(self.server.start)

    def call(self, factory: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return await factory()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def publish(self, kind: str, message: str, **details: Any) -> None:
        self.loop.call_soon_threadsafe(self.server.publish, "dmvpn0", Event(kind, message, details))

    def wait_subscribers(self, n: int) -> None:
        deadline = time.monotonic() + 5
        while self.server.subscribers != n:
            assert time.monotonic() < deadline, "no subscriber showed up"
            time.sleep(0.01)

    def close(self) -> None:
        self.call(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def spoke1(tmp_path: Path) -> Iterator[Served]:
    net = build_cloud(spokes=2, phase=3)
    net.start()
    net.run_until(5.0)
    net.send_data("spoke1", spoke_lan(1).network_address + 10)
    net.run_until(5.5)
    served = Served(tmp_path / "spoke1.sock", net, "spoke1")
    try:
        yield served
    finally:
        served.close()


def _cli(group: Any, *args: str) -> Any:
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


def test_show_commands_over_the_socket(spoke1: Served) -> None:
    sock = str(spoke1.server.path)
    out = _cli(show_group, "dmvpn", "--socket", sock)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("Legend: Attrb --> S - Static")
    assert "Interface: dmvpn0, IPv4 NHRP Details" in lines
    assert "Type:Spoke, NHRP Peers:2," in lines
    i = lines.index(" # Ent  Peer NBMA Addr Peer Tunnel Add State  UpDn Tm Attrb")
    assert lines[i + 2].split() == ["1", "192.0.2.1", "10.0.0.1", "UP", "00:00:05", "S"]
    assert lines[i + 3].split() == [
        "2",
        "198.18.0.2",
        str(spoke_tunnel(1)),
        "UP",
        "00:00:00",
        "DT1",
    ]
    assert lines[i + 4].split() == [str(spoke_tunnel(1)), "UP", "00:00:00", "DT2"]
    as_json = json.loads(_cli(show_group, "dmvpn", "--socket", sock, "--json").output)
    assert as_json["node"] == "spoke1" and as_json["interfaces"][0]["peer_count"] == 2

    out = _cli(show_group, "nhrp", "--socket", sock).output
    assert (
        f"{spoke_lan(1)} via {spoke_tunnel(1)}\n   dmvpn0 created 00:00:00, expire 01:59:59\n"
        "   Type: cached, Flags: rib nho\n   NBMA address: 198.18.0.2\n" in out
    )
    assert "10.0.0.1/32 via 10.0.0.1\n   dmvpn0 created 00:00:05, never expire\n" in out

    # Options given to the `nhrp` group reach its subcommands too.
    shortcut = json.loads(_cli(show_group, "nhrp", "--socket", sock, "--json", "shortcut").output)
    assert [e["protocol"] for e in shortcut["entries"]] == [str(spoke_lan(1))]
    nhs = _cli(show_group, "nhrp", "nhs", "--socket", sock).output.splitlines()
    assert nhs[1] == "dmvpn0:" and nhs[2].startswith("10.0.0.1  RE  NBMA Address: 192.0.2.1")
    traffic = json.loads(_cli(show_group, "nhrp", "traffic", "--socket", sock, "--json").output)
    (itf,) = traffic["interfaces"]
    assert itf["received"]["traffic_indication"] == 1 and itf["sent"]["resolution_request"] == 1
    text = _cli(show_group, "nhrp", "traffic", "--socket", sock).output
    assert text.startswith("dmvpn0: Max-send limit:100000Pkts/10Sec\n   Sent: Total 2\n")

    bad = CliRunner().invoke(show_group, ["dmvpn", "--socket", sock, "-i", "tun9"])
    assert bad.exit_code == 1 and "no interface 'tun9' on node spoke1" in bad.output


def test_show_dmvpn_gives_each_peer_its_learned_path_mtu(spoke1: Served) -> None:
    sock = str(spoke1.server.path)
    # Off (no PathMtuCache on the forwarder): no key at all.
    plain = json.loads(_cli(show_group, "dmvpn", "--socket", sock, "--json").output)
    assert all("path_mtu" not in p for p in plain["interfaces"][0]["peers"])
    assert "Path MTU" not in _cli(show_group, "dmvpn", "--socket", sock).output

    # On: the hub's path learned from an ICMP report 10 s ago; the other peer's not.
    cache = PathMtuCache()
    now = spoke1.net.now
    cache.learn(IPv4Address("192.0.2.1"), 1380, now - 10, "icmp", IPv4Address("198.51.100.1"))
    spoke1.runtimes[0].forwarder.path_mtu = cache
    data = json.loads(_cli(show_group, "dmvpn", "--socket", sock, "--json").output)
    peers = {p["nbma"]: p["path_mtu"] for p in data["interfaces"][0]["peers"]}
    assert peers == {
        "192.0.2.1": {
            "mtu": 1380,
            "source": "icmp",
            "reporter": "198.51.100.1",
            "age_seconds": 10.0,
            "expires_seconds": 590.0,
        },
        "198.18.0.2": None,
    }
    text = _cli(show_group, "dmvpn", "--socket", sock).output
    assert "Path MTU: 1380 (icmp from 198.51.100.1, 10s ago, expires in 590s)" in text
    assert "Path MTU: not learned" in text


def test_clear_over_the_socket_withdraws_through_the_runtime(spoke1: Served) -> None:
    sock = str(spoke1.server.path)
    out = _cli(clear_group, "nhrp", "shortcut", "--socket", sock)
    assert out.output == f"cleared {spoke_lan(1)} (cached) on dmvpn0\n1 entry cleared on spoke1\n"
    rt = spoke1.runtimes[0]
    assert [o for o in rt.outputs if isinstance(o, ShortcutRemoved)]  # applied by the server
    data = json.loads(_cli(clear_group, "nhrp", "--socket", sock, "--json").output)
    assert data["scope"] == "all"
    assert [c["protocol"] for c in data["cleared"]] == [f"{spoke_tunnel(1)}/32"]
    assert json.loads(_cli(show_group, "nhrp", "shortcut", "--json", "--socket", sock).output) == {
        "node": "spoke1",
        "entries": [],
    }
    client = ApiClient(spoke1.server.path)
    with pytest.raises(Exception, match="scope must be one of: all, shortcut"):
        client.request("POST", "/v1/nhrp/clear", {"scope": "nope"})
    assert client.request("GET", "/v1")["interfaces"] == ["dmvpn0"]


def test_events_stream_filters_and_ends_when_the_server_stops(spoke1: Served) -> None:
    client = ApiClient(spoke1.server.path)
    got: list[dict[str, Any]] = []

    def follow() -> None:
        got.extend(client.stream("/v1/events?kind=shortcut,redirect"))

    reader = threading.Thread(target=follow)
    reader.start()
    spoke1.wait_subscribers(1)
    spoke1.publish("registered", "not wanted")
    spoke1.publish("shortcut", "shortcut 10.128.1.0/24 via 10.0.1.2", prefix="10.128.1.0/24")
    time.sleep(0.2)
    spoke1.call(spoke1.server.stop)  # the stream ends cleanly, the socket goes
    reader.join(5)
    assert not reader.is_alive()
    assert [(e["kind"], e["details"]) for e in got] == [("shortcut", {"prefix": "10.128.1.0/24"})]
    assert got[0]["node"] == "spoke1" and got[0]["interface"] == "dmvpn0"
    assert not spoke1.server.path.exists()


def test_events_command_prints_n_events(spoke1: Served) -> None:
    def feed() -> None:
        spoke1.wait_subscribers(1)
        spoke1.publish("nhs-up", "registered with NHS 10.0.0.1", nhs="10.0.0.1")
        spoke1.publish("shortcut", "shortcut 10.128.1.0/24 via 10.0.1.2")

    feeder = threading.Thread(target=feed)
    feeder.start()
    out = _cli(events_cmd, "--socket", str(spoke1.server.path), "--count", "2", "--json")
    feeder.join(5)
    events = [json.loads(line) for line in out.output.splitlines()]
    assert [e["kind"] for e in events] == ["nhs-up", "shortcut"]
    assert events[0]["message"] == "registered with NHS 10.0.0.1"
    spoke1.wait_subscribers(0)  # the server noticed the client left


def test_metrics_endpoint(spoke1: Served) -> None:
    text = ApiClient(spoke1.server.path).text("/metrics")
    assert 'dmvpn_node_info{node="spoke1",version="0.1.0"} 1.0' in text
    assert (
        'dmvpn_nhrp_messages_total{direction="received",family="4",interface="dmvpn0",'
        'type="traffic_indication"} 1.0'
    ) in text
    assert (
        'dmvpn_nhrp_nhs_up{family="4",interface="dmvpn0",nbma="192.0.2.1",nhs="10.0.0.1"} 1.0'
    ) in text


def test_socket_lifecycle(tmp_path: Path, spoke1: Served) -> None:
    net = spoke1.net
    # A live daemon's socket is refused, not stolen.
    with pytest.raises(ApiError, match="another dmvpn daemon is listening"):
        Served(spoke1.server.path, net, "spoke1")
    # A socket file whose daemon died is replaced.
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    other = Served(stale, net, "spoke2")
    try:
        assert ApiClient(stale).request("GET", "/v1")["node"] == "spoke2"
    finally:
        other.close()
    assert not stale.exists()
    # Anything else at the path is left alone.
    plain = tmp_path / "plain.sock"
    plain.write_text("x")
    with pytest.raises(ApiError, match="is not a socket"):
        Served(plain, net, "spoke2")
    assert plain.read_text() == "x"


def test_errors_name_the_socket(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sock"
    out = CliRunner().invoke(show_group, ["dmvpn", "--socket", str(missing)])
    assert out.exit_code == 1
    assert f"no dmvpn daemon: {missing} does not exist" in out.output
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    out = CliRunner().invoke(clear_group, ["nhrp", "--socket", str(stale)])
    assert out.exit_code == 1 and f"no dmvpn daemon listens on {stale}" in out.output
    out = CliRunner().invoke(events_cmd, ["--socket", str(stale)])
    assert out.exit_code == 1 and str(stale) in out.output


def test_resolve_socket(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert resolve_socket(Path("/x.sock"), "hub1", run) == Path("/x.sock")
    assert resolve_socket(None, "hub1", run) == run / "hub1.sock"
    with pytest.raises(DaemonUnavailable, match="no dmvpn daemon is running"):
        resolve_socket(None, None, run)
    run.mkdir()
    (run / "hub1.sock").touch()
    assert resolve_socket(None, None, run) == run / "hub1.sock"
    (run / "spoke1.sock").touch()
    with pytest.raises(Exception, match=r"several nodes run here \(hub1, spoke1\)"):
        resolve_socket(None, None, run)


def test_a_slow_events_client_loses_events_and_is_told(spoke1: Served) -> None:
    client = ApiClient(spoke1.server.path)
    got: list[dict[str, Any]] = []

    def follow() -> None:
        for event in client.stream("/v1/events"):
            got.append(event)
            if event["kind"] == "last":
                return

    reader = threading.Thread(target=follow)
    reader.start()
    spoke1.wait_subscribers(1)

    def burst() -> None:  # in one loop callback: the stream cannot drain meanwhile
        for i in range(EVENT_BACKLOG + 10):
            spoke1.server.publish("dmvpn0", Event("burst", f"event {i}"))

    spoke1.loop.call_soon_threadsafe(burst)
    time.sleep(0.5)
    spoke1.publish("last", "after the burst")
    reader.join(10)
    assert not reader.is_alive()
    # The backlog's worth arrives in order, the newest ten are lost, and the
    # client is told how many (as soon as the server notices).
    bursts = [e["message"] for e in got if e["kind"] == "burst"]
    assert bursts == [f"event {i}" for i in range(EVENT_BACKLOG)]
    (note,) = [e for e in got if e["kind"] == "events-dropped"]
    assert note["details"] == {"count": 10} and got[-1]["kind"] == "last"


@dataclass
class DualRuntime:
    """A dual-stack InterfaceRuntime: the IPv4 engine, the IPv6 one, one forwarder."""

    cfg: Any
    engine: Engine
    engine6: Engine
    forwarder: Forwarder
    outputs: list[Output] = field(default_factory=list)

    def apply(self) -> None:
        self.outputs += self.engine.pop_outputs() + self.engine6.pop_outputs()


def test_a_dual_stack_interface_over_the_socket(tmp_path: Path) -> None:
    _, s1 = _dual_cloud()
    rt = DualRuntime(
        SimpleNamespace(name="dmvpn0"), s1.e4, s1.e6, _runtime("dmvpn0", s1.e4).forwarder
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ApiServer("spoke1", [rt], tmp_path / "s.sock", clock=lambda: 2.0)

    def call(factory: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return await factory()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10)

    call(server.start)
    try:
        sock = str(server.path)
        lines = _cli(show_group, "dmvpn", "--socket", sock).output.splitlines()
        v4 = lines.index("Interface: dmvpn0, IPv4 NHRP Details")
        v6 = lines.index("Interface: dmvpn0, IPv6 NHRP Details")
        assert v4 < v6 and lines[v6 + 1] == "Type:Spoke, NHRP Peers:2,"
        assert lines[v6 + 6].split() == ["2", "198.51.100.12", "fd00::12", "UP", "00:00:01", "DT1"]
        only6 = json.loads(_cli(show_group, "dmvpn", "--socket", sock, "-f", "6", "--json").output)
        assert [(i["family"], i["tunnel_address"]) for i in only6["interfaces"]] == [
            (6, "fd00::11")
        ]
        nhs = _cli(show_group, "nhrp", "nhs", "--socket", sock).output.splitlines()
        assert nhs[1] == "dmvpn0:" and nhs[2].startswith("10.0.0.1  RE")
        assert nhs[3] == "dmvpn0 (IPv6):" and nhs[4].startswith(
            "fd00::1  RE  NBMA Address: 192.0.2.1"
        )
        nhrp = json.loads(
            _cli(show_group, "nhrp", "--socket", sock, "--family", "4", "--json").output
        )
        assert {e["family"] for e in nhrp["entries"]} == {4}
        traffic = _cli(show_group, "nhrp", "traffic", "--socket", sock).output
        assert "\ndmvpn0 (IPv6): Max-send limit:" in traffic
        client = ApiClient(server.path)
        with pytest.raises(Exception, match="family must be 4 or 6, not '5'"):
            client.request("GET", "/v1/nhrp?family=5")
        text = client.text("/metrics")
        assert (
            'dmvpn_nhrp_messages_total{direction="received",family="6",interface="dmvpn0",'
            'type="traffic_indication"} 1.0'
        ) in text
        assert 'dmvpn_peers{family="6",interface="dmvpn0"} 2.0' in text
        # clear, one family: the IPv4 engine keeps everything.
        out = _cli(clear_group, "nhrp", "shortcut", "--socket", sock, "--family", "6")
        assert out.output == "cleared fd00:2::/64 (cached) on dmvpn0\n1 entry cleared on spoke1\n"
        assert [o for o in rt.outputs if isinstance(o, ShortcutRemoved)]
        data = json.loads(_cli(clear_group, "nhrp", "--socket", sock, "--json").output)
        assert [(c["family"], c["protocol"]) for c in data["cleared"]] == [(6, "fd00::12/128")]
    finally:
        call(server.stop)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
