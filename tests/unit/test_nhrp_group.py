"""The NHRP group (Cisco per-tunnel QoS): byte layout in a Registration
Request, round trip, `dmvpn decode`, and what the hub's engine makes of it.
Sans-IO; milliseconds."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from dmvpn.decode.render import extension_json, nhrp_text
from dmvpn.nhrp import Engine, EngineConfig, NhsConfig, PeerGroup, SendPacket
from dmvpn.nhrp.outputs import BindingRemoved, Event
from dmvpn.wire import (
    CISCO_OUI,
    DecodeError,
    EncodeError,
    NhrpPacket,
    PacketType,
    VendorPrivateExtension,
    decode_nhrp,
    group_extension,
    group_of,
)

A = IPv4Address
HUB = EngineConfig(protocol_address=A("10.0.0.1"), nbma_address=A("192.0.2.1"), server=True)
SPOKE = EngineConfig(
    protocol_address=A("10.0.0.11"),
    nbma_address=A("192.0.2.11"),
    nhs=(NhsConfig(A("10.0.0.1"), A("192.0.2.1")),),
    group="gold",
)


def _sent(engine: Engine) -> list[SendPacket]:
    return [o for o in engine.pop_outputs() if isinstance(o, SendPacket)]


def _registration(cfg: EngineConfig = SPOKE) -> SendPacket:
    spoke = Engine(cfg)
    spoke.start(0.0)
    (reg,) = _sent(spoke)
    return reg


def test_extension_bytes_are_type_8_cisco_oui_then_the_name() -> None:
    reg = _registration()
    data = reg.data
    pkt = decode_nhrp(data)
    assert pkt.type is PacketType.REGISTRATION_REQUEST
    # Vendor Private (8), compulsory bit clear, length 3 + 4, OUI 00:00:0C, "gold".
    wire = bytes.fromhex("0008 0007 00000c") + b"gold"
    assert data.count(wire) == 1
    # Between Authentication (7) and Cisco NAT (9): Cisco's ascending order.
    types = [e.TYPE for e in pkt.extensions]
    assert types == [3, 4, 5, 8, 9, 0]
    assert group_of(pkt.extensions) == "gold"
    assert pkt.encode() == data  # byte-exact round trip


def test_no_group_no_extension_and_only_in_registrations() -> None:
    reg = _registration(replace(SPOKE, group=None))
    assert group_of(decode_nhrp(reg.data).extensions) is None
    assert all(not isinstance(e, VendorPrivateExtension) for e in reg.packet.extensions)


@pytest.mark.parametrize(
    ("name", "why"),
    [("", "empty"), ("a b", "spaces"), ("x" * 65, "at most 64"), ("caf\u00e9", "ASCII")],
)
def test_bad_group_names_are_refused(name: str, why: str) -> None:
    with pytest.raises(EncodeError, match=why):
        group_extension(name)
    with pytest.raises(ValueError, match=why):
        replace(SPOKE, group=name)


def test_malformed_cisco_vendor_data_is_a_decode_error_other_ouis_are_ignored() -> None:
    bad = VendorPrivateExtension(oui=CISCO_OUI, data=b"\x01\x02")
    with pytest.raises(DecodeError, match="printable"):
        group_of((bad,))
    assert group_of((VendorPrivateExtension(oui=b"\x00\x10\x20", data=b"gold"),)) is None


def test_decode_shows_the_group() -> None:
    data = _registration().data
    pkt = decode_nhrp(data)
    (vendor,) = [e for e in pkt.extensions if isinstance(e, VendorPrivateExtension)]
    assert extension_json(vendor) | {"oui": "00000c", "nhrp_group": "gold"} == extension_json(
        vendor
    )
    assert "NHRP group: gold" in "\n".join(nhrp_text(pkt, len(data)))


def _hub_receives(hub: Engine, reg: SendPacket, src: IPv4Address, now: float) -> list[object]:
    hub.receive(reg.data, src, now)
    return hub.pop_outputs()


def test_hub_records_the_group_and_tells_the_host() -> None:
    hub = Engine(HUB)
    hub.start(0.0)
    hub.pop_outputs()
    outs = _hub_receives(hub, _registration(), A("192.0.2.11"), 1.0)
    assert PeerGroup(A("10.0.0.11"), A("192.0.2.11"), "gold") in outs
    entry = hub.entry(A("10.0.0.11"))
    assert entry is not None and entry.group == "gold"
    assert entry.view(1.0)["group"] == "gold"
    # The reply hands the extension back (RFC 2332 5.3: non-compulsory, kept).
    (reply,) = [o for o in outs if isinstance(o, SendPacket)]
    assert group_of(reply.packet.extensions) == "gold"
    # A refresh with the same group and NBMA: nothing new for the host.
    outs = _hub_receives(hub, _registration(), A("192.0.2.11"), 2.0)
    assert not [o for o in outs if isinstance(o, PeerGroup)]
    # Another group: told again.
    outs = _hub_receives(hub, _registration(replace(SPOKE, group="bronze")), A("192.0.2.11"), 3.0)
    assert PeerGroup(A("10.0.0.11"), A("192.0.2.11"), "bronze") in outs


def test_the_group_follows_the_spoke_to_a_new_nbma_and_goes_with_it() -> None:
    hub = Engine(HUB)
    hub.start(0.0)
    cfg = replace(SPOKE, registration_unique=False)
    _hub_receives(hub, _registration(cfg), A("192.0.2.11"), 1.0)
    moved = _registration(replace(cfg, nbma_address=A("192.0.2.99")))
    outs = _hub_receives(hub, moved, A("192.0.2.99"), 2.0)
    assert BindingRemoved(A("10.0.0.11"), A("192.0.2.11")) in outs
    assert PeerGroup(A("10.0.0.11"), A("192.0.2.99"), "gold") in outs
    hub.clear(3.0, "all")
    assert BindingRemoved(A("10.0.0.11"), A("192.0.2.99")) in hub.pop_outputs()


def test_a_malformed_group_is_counted_and_the_spoke_registers_without_one() -> None:
    hub = Engine(HUB)
    hub.start(0.0)
    hub.pop_outputs()
    reg = _registration().packet
    exts = tuple(
        VendorPrivateExtension(oui=CISCO_OUI, data=b"\x00bad")
        if isinstance(e, VendorPrivateExtension)
        else e
        for e in reg.extensions
    )
    bad: NhrpPacket = reg.evolve(extensions=exts)
    hub.receive(bad.encode(), A("192.0.2.11"), 1.0)
    outs = hub.pop_outputs()
    assert PeerGroup(A("10.0.0.11"), A("192.0.2.11"), None) in outs
    assert hub.stats["rx.bad_group"] == 1
    assert any(isinstance(o, Event) and o.kind == "malformed" for o in outs)
    entry = hub.entry(A("10.0.0.11"))
    assert entry is not None and entry.group is None
    (reply,) = [o for o in outs if isinstance(o, SendPacket)]
    assert reply.packet.type is PacketType.REGISTRATION_REPLY
    assert all(c.code == 0 for c in reply.packet.cies)
