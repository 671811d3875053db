"""Filters, counts and pages of the list views (api/paging.py): a hub's
50,000 spokes shown a page at a time, one peer, one state (issue 20)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

import pytest
from click.testing import CliRunner

from dmvpn.api.paging import Page, QueryError, parse_page
from dmvpn.api.views import DMVPN_STATES, Iface, dmvpn_view, nhrp_view
from dmvpn.cli.show import show_group
from dmvpn.nhrp.sim import SimNetwork, build_cloud, spoke_nbma, spoke_tunnel

from .test_server import Served

A = IPv4Address


@pytest.fixture(scope="module")
def hub() -> SimNetwork:
    net = build_cloud(phase=3, spokes=7)
    net.start()
    net.run_until(5.0)
    return net


def _hub(net: SimNetwork) -> list[Iface]:
    return [Iface("dmvpn0", net.nodes["hub1"].engine)]


def _nbmas(view: dict) -> list[str]:  # type: ignore[type-arg]
    return [p["nbma"] for p in view["interfaces"][0]["peers"]]


def test_pages_of_peers_in_address_order_with_counts(hub: SimNetwork) -> None:
    full = dmvpn_view("hub1", _hub(hub), hub.now)
    everyone = _nbmas(full)
    assert len(everyone) == 7
    page = dmvpn_view("hub1", _hub(hub), hub.now, Page(limit=3, offset=2))
    (itf,) = page["interfaces"]
    assert _nbmas(page) == everyone[2:5]
    assert (itf["total"], itf["offset"], itf["limit"], itf["count"]) == (7, 2, 3, 3)
    assert itf["peer_count"] == 7  # all of them, not the page
    # The page's rows are the rows the full view has.
    assert itf["peers"] == full["interfaces"][0]["peers"][2:5]
    last = dmvpn_view("hub1", _hub(hub), hub.now, Page(limit=3, offset=6))["interfaces"][0]
    assert last["count"] == 1 and last["total"] == 7
    beyond = dmvpn_view("hub1", _hub(hub), hub.now, Page(offset=50))["interfaces"][0]
    assert beyond["peers"] == [] and beyond["total"] == 7
    counts = dmvpn_view("hub1", _hub(hub), hub.now, Page(limit=0))["interfaces"][0]
    assert counts["peers"] == [] and counts["total"] == 7 and counts["count"] == 0


def test_one_peer_by_nbma_or_tunnel_address(hub: SimNetwork) -> None:
    by_nbma = dmvpn_view("hub1", _hub(hub), hub.now, Page(peer=spoke_nbma(3)))
    assert _nbmas(by_nbma) == [str(spoke_nbma(3))]
    by_tunnel = dmvpn_view("hub1", _hub(hub), hub.now, Page(peer=spoke_tunnel(3)))
    assert by_tunnel["interfaces"][0]["peers"] == by_nbma["interfaces"][0]["peers"]
    nobody = dmvpn_view("hub1", _hub(hub), hub.now, Page(peer=A("203.0.113.99")))
    assert nobody["interfaces"][0]["total"] == 0


def test_state_filter(hub: SimNetwork) -> None:
    up = dmvpn_view("hub1", _hub(hub), hub.now, Page(state="up"))["interfaces"][0]
    assert up["total"] == 7
    assert all(e["state"] == "UP" for p in up["peers"] for e in p["entries"])
    down = dmvpn_view("hub1", _hub(hub), hub.now, Page(state="down"))["interfaces"][0]
    assert down["total"] == 0


def test_nhrp_entries_filtered_by_peer_and_type_and_paged(hub: SimNetwork) -> None:
    full = nhrp_view("hub1", _hub(hub), hub.now)
    assert "total" not in full  # the unpaged view as before
    dynamic = nhrp_view("hub1", _hub(hub), hub.now, Page(state="dynamic"))
    assert dynamic["total"] == 7 and {e["type"] for e in dynamic["entries"]} == {"dynamic"}
    one = nhrp_view("hub1", _hub(hub), hub.now, Page(peer=spoke_nbma(0)))
    assert [e["nbma"] for e in one["entries"]] == [str(spoke_nbma(0))]
    page = nhrp_view("hub1", _hub(hub), hub.now, Page(limit=2, offset=1))
    assert page["entries"] == full["entries"][1:3] and page["total"] == len(full["entries"])


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"limit": "ten"}, "limit: 'ten' is not a whole number"),
        ({"offset": "-1"}, "offset: -1 is out of range"),
        ({"peer": "10.0.0.300"}, "peer: '10.0.0.300' is not an IPv4 or IPv6 address"),
        ({"state": "sleepy"}, "state: 'sleepy' is not one of down, nhrp, up"),
    ],
)
def test_bad_queries_name_the_parameter(query: dict[str, str], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_page(query, DMVPN_STATES)


def test_queries_parse() -> None:
    page = parse_page(
        {"peer": "10.0.0.2", "state": "UP", "limit": "5", "offset": "10"}, DMVPN_STATES
    )
    assert page == Page(peer=A("10.0.0.2"), state="up", limit=5, offset=10)
    assert parse_page({}, None) == Page()
    assert parse_page({"state": "dynamic"}, None).state == "dynamic"


def test_show_filters_over_the_socket(tmp_path, hub: SimNetwork) -> None:  # type: ignore[no-untyped-def]
    served = Served(tmp_path / "hub1.sock", hub, "hub1")
    try:
        sock = str(served.server.path)
        run = CliRunner().invoke
        out = run(show_group, ["dmvpn", "--socket", sock, "--limit", "2", "--offset", "1"])
        assert out.exit_code == 0, out.output
        assert "Type:Hub, NHRP Peers:7,\nShowing peers 2-3\n" in out.output
        assert str(spoke_nbma(1)) in out.output and str(spoke_nbma(0)) not in out.output
        one = run(show_group, ["dmvpn", "--socket", sock, "--peer", str(spoke_tunnel(4)), "--json"])
        (itf,) = json.loads(one.output)["interfaces"]
        assert [p["nbma"] for p in itf["peers"]] == [str(spoke_nbma(4))]
        nhrp = run(show_group, ["nhrp", "--socket", sock, "--state", "dynamic", "--json"])
        assert json.loads(nhrp.output)["total"] == 7
        bad = run(show_group, ["dmvpn", "--socket", sock, "--state", "sleepy"])
        assert bad.exit_code == 1 and "state: 'sleepy' is not one of" in bad.output
    finally:
        served.close()
