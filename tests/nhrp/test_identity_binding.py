"""Identity binding in the engine: a registration or a direct resolution
answer binds only what the sender's IPsec identity may claim."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from dmvpn.nhrp import Engine, EngineConfig, SendPacket
from dmvpn.nhrp.outputs import BindingAdded, Event
from dmvpn.wire import CieCode, PacketType, decode_nhrp

from ..vectors import records

A = IPv4Address
SPOKE_NBMA = A("169.254.100.1")  # the Cisco spoke of the capture, claiming 155.1.0.1


def _hub(binding: bool) -> Engine:
    cfg = EngineConfig(
        protocol_address=A("155.1.0.5"),
        nbma_address=A("169.254.100.5"),
        server=True,
        authentication=b"NHRPAUTH",
        identity_binding=binding,
    )
    engine = Engine(cfg)
    engine.start(0.0)
    engine.pop_outputs()
    return engine


def _register(hub: Engine, vectors: Path) -> tuple[int, list[object]]:
    rec = records(vectors / "tcpdump_NHRP_registration.pcap")[0]
    assert rec.nhrp_bytes is not None
    hub.receive(rec.nhrp_bytes, SPOKE_NBMA, 10.0)
    outs = hub.pop_outputs()
    (send,) = [o for o in outs if isinstance(o, SendPacket)]
    reply = decode_nhrp(send.data)
    assert reply.type == PacketType.REGISTRATION_REPLY
    return reply.cies[0].code, outs


def test_registration_of_an_address_the_identity_may_not_claim_is_refused(vectors: Path) -> None:
    hub = _hub(binding=True)
    # Its certificate says 155.1.0.2: it may not register 155.1.0.1.
    hub.set_claims(SPOKE_NBMA, (IPv4Network("155.1.0.2/32"),))
    code, outs = _register(hub, vectors)
    assert code == CieCode.ADMINISTRATIVELY_PROHIBITED
    assert not [o for o in outs if isinstance(o, BindingAdded)]
    (event,) = [o for o in outs if isinstance(o, Event) and o.kind == "identity-refused"]
    assert event.message == (
        "registration for 155.1.0.1 from 169.254.100.1 refused: its IPsec "
        "identity may claim 155.1.0.2/32"
    )
    assert hub.stats["identity.refused"] == 1
    assert not [e for e in hub.cache_view(10.0) if e["type"] == "dynamic"]


def test_unknown_identity_is_refused_and_the_right_one_accepted(vectors: Path) -> None:
    hub = _hub(binding=True)
    code, _ = _register(hub, vectors)
    assert code == CieCode.ADMINISTRATIVELY_PROHIBITED
    hub.set_claims(SPOKE_NBMA, (IPv4Network("155.1.0.0/29"),))
    code, outs = _register(hub, vectors)
    assert code == CieCode.SUCCESS
    assert BindingAdded(A("155.1.0.1"), SPOKE_NBMA, "dynamic") in outs
    hub.set_claims(SPOKE_NBMA, None)
    assert hub._core.claims == {}  # white box: nothing public lists claims


def test_without_identity_binding_claims_do_not_matter(vectors: Path) -> None:
    hub = _hub(binding=False)
    hub.set_claims(SPOKE_NBMA, (IPv4Network("155.1.0.2/32"),))
    code, _ = _register(hub, vectors)
    assert code == CieCode.SUCCESS


def _phase3(claim: str) -> tuple[object, Engine]:
    from dataclasses import replace

    from dmvpn.nhrp.sim import build_cloud, spoke_lan, spoke_nbma

    net = build_cloud(spokes=2, phase=3)
    spoke1 = net.nodes["spoke1"].engine
    spoke1.retune(replace(spoke1.config, identity_binding=True), 0.0)
    spoke1.set_claims(spoke_nbma(1), (IPv4Network(claim),))  # what spoke2's identity covers
    net.start()
    net.run_until(5.0)
    host2 = spoke_lan(1).network_address + 10
    assert net.send_data("spoke1", host2).path == ("spoke1", "hub1", "spoke2")
    net.run_until(net.now + 0.1)
    return net.send_data("spoke1", host2).path, spoke1


def test_a_direct_resolution_answer_binds_only_what_its_sender_may_claim() -> None:
    # spoke2 (10.0.1.2) answers spoke1 straight from its NBMA address.
    path, spoke1 = _phase3("10.0.1.2/32")
    assert path == ("spoke1", "spoke2") and spoke1.stats.get("identity.refused", 0) == 0
    path, spoke1 = _phase3("10.0.1.9/32")  # its identity covers another address
    assert path == ("spoke1", "hub1", "spoke2")
    assert spoke1.stats["identity.refused"] == 1
    # The registration with the hub (our NHS) is not subject to it: still up.
    assert [s.state for s in spoke1.nhs_states()] == ["up"]
