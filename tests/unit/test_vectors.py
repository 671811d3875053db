"""The codec against real Cisco and OpenNHRP captures: bytes win."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from dmvpn.wire import (
    AuthenticationExtension,
    CieCode,
    EndExtension,
    ForwardTransitNhsExtension,
    NatAddressExtension,
    PacketType,
    RegistrationFlag,
    ResponderAddressExtension,
    ReverseTransitNhsExtension,
    decode_nhrp,
)

from ..vectors import NHRP_CAPTURES, records


@pytest.mark.parametrize("name", NHRP_CAPTURES)
def test_every_nhrp_packet_roundtrips_exactly(vectors: Path, name: str) -> None:
    recs = [r for r in records(vectors / name) if r.nhrp_bytes is not None]
    assert recs, f"no NHRP found in {name}"
    for rec in recs:
        assert rec.error is None, rec.error
        assert rec.nhrp is not None
        # The whole GRE payload is the NHRP packet: re-encoding gives it back,
        # checksum included.
        assert rec.nhrp.encode() == rec.nhrp_bytes
        assert rec.roundtrip is True


def test_cisco_registration_fields(vectors: Path) -> None:
    req, rep = records(vectors / "tcpdump_NHRP_registration.pcap")[:2]
    assert req.gre is not None and req.gre.key == 2
    p = req.nhrp
    assert p is not None and p.type == PacketType.REGISTRATION_REQUEST
    assert p.hop_count == 255
    assert p.flags == RegistrationFlag.U | RegistrationFlag.NAT
    assert p.request_id == 1
    assert p.src_nbma == IPv4Address("169.254.100.1")
    assert p.src_proto == IPv4Address("155.1.0.1")
    assert p.dst_proto == IPv4Address("155.1.0.5")
    (cie,) = p.cies
    assert (cie.code, cie.prefix_length, cie.mtu, cie.holding_time) == (0, 32, 17912, 7200)
    kinds = [type(e) for e in p.extensions]
    assert kinds == [
        ResponderAddressExtension,
        ForwardTransitNhsExtension,
        ReverseTransitNhsExtension,
        AuthenticationExtension,
        NatAddressExtension,
        EndExtension,
    ]
    auth = p.extensions[3]
    assert isinstance(auth, AuthenticationExtension)
    assert (auth.auth_type, auth.data, auth.compulsory) == (1, b"NHRPAUTH", True)
    nat = p.extensions[4]
    assert isinstance(nat, NatAddressExtension) and not nat.compulsory
    assert nat.cies[0].nbma == IPv4Address("169.254.100.5")
    assert nat.cies[0].protocol == IPv4Address("155.1.0.5")
    r = rep.nhrp
    assert r is not None and r.type == PacketType.REGISTRATION_REPLY and r.request_id == 1
    resp = r.extensions[0]
    assert isinstance(resp, ResponderAddressExtension)
    assert resp.cies[0].nbma == IPv4Address("169.254.100.5")


def test_no_unique_registration_and_responder(vectors: Path) -> None:
    req, rep = records(vectors / "tcpdump_NHRP-responder-address.pcap")[:2]
    assert req.nhrp is not None and rep.nhrp is not None
    assert not req.nhrp.flags & RegistrationFlag.U
    resp = rep.nhrp.extensions[0]
    assert isinstance(resp, ResponderAddressExtension) and len(resp.cies) == 1
    assert resp.cies[0].code == CieCode.SUCCESS


def test_ios_dynamips_prefix_255(vectors: Path) -> None:
    (rec,) = records(vectors / "tcpdump_ios_nhrp.pcap")
    assert rec.gre is not None and rec.gre.key is None
    p = rec.nhrp
    assert p is not None
    (cie,) = p.cies
    assert (cie.prefix_length, cie.mtu, cie.holding_time) == (255, 1514, 30)
    auth = p.extension(AuthenticationExtension)
    assert isinstance(auth, AuthenticationExtension) and auth.data == b"CISCO"


def test_opennhrp_purge_with_zero_cies(vectors: Path) -> None:
    recs = records(vectors / "cloutd_NHRP.pcapng")
    types = [r.nhrp.type for r in recs if r.nhrp]
    assert types == [
        PacketType.REGISTRATION_REQUEST,
        PacketType.REGISTRATION_REPLY,
        PacketType.PURGE_REQUEST,
        PacketType.PURGE_REPLY,
    ]
    purge = recs[2].nhrp
    assert purge is not None and purge.cies == () and purge.hop_count == 16
    # OpenNHRP orders extensions 4, 5, 3 (and 9) before End.
    assert [e.TYPE for e in recs[0].nhrp.extensions] == [4, 5, 3, 9, 0]  # type: ignore[union-attr]


def test_malformed_vector_is_a_clean_decode_error(vectors: Path) -> None:
    (rec,) = records(vectors / "tcpdump_pb_nhrp_1.pcap")
    assert rec.nhrp is None and rec.error is not None
    assert rec.error_layer == "nhrp"
    assert rec.error.offset == 10 and "ar$pktsz" in rec.error.reason


def test_various_gre_headers(vectors: Path) -> None:
    recs = records(vectors / "tcpdump_various_gre.pcap")
    assert recs and all(r.error is None for r in recs)
    assert {r.gre.key for r in recs if r.gre} == {0x28}
    # tcpdump: "gre-proto-0x8909" (Cisco metadata), "keep-alive" (0), CDPv2 (0x2000).
    assert {r.gre.protocol for r in recs if r.gre} == {0x8909, 0x0000, 0x2000}
    assert all(r.nhrp is None for r in recs)


def test_gre_headers_reencode(vectors: Path) -> None:
    from dmvpn.wire import decode_ethernet, decode_gre, decode_ipv4

    for path in sorted(vectors.glob("*.pcap*")):
        for rec in records(path):
            if rec.gre is None:
                continue
            assert decode_gre(rec.gre.encode()) == rec.gre
    # And the bytes themselves, for one keyed Cisco frame.
    from dmvpn.decode.pcapfile import read_capture

    _, frames = read_capture(vectors / "tcpdump_various_gre.pcap")
    frame = list(frames)[11][1]
    _, gre_bytes = decode_ipv4(decode_ethernet(frame).payload)
    assert decode_gre(gre_bytes).encode() == gre_bytes


def test_checksum_is_verified(vectors: Path) -> None:
    (rec,) = records(vectors / "tcpdump_ios_nhrp.pcap")[:1]
    data = bytearray(rec.nhrp_bytes or b"")
    data[-5] ^= 0x01
    with pytest.raises(Exception) as info:
        decode_nhrp(bytes(data))
    assert "checksum" in str(info.value)
