"""Hypothesis strategies for every NHRP packet the encoder can produce.

``nhrp_packets(realistic=False)`` draws anything the codec can represent
(odd address lengths, arbitrary contents): used for the round-trip property.
``nhrp_packets(realistic=True)`` keeps addresses consistent with the address
family and puts a real IP packet or NHRP packet inside indications: what a
peer could send, used for the tshark cross-check.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import strategies as st

from dmvpn.wire import (
    AddressFamily,
    AuthenticationExtension,
    Cie,
    EndExtension,
    Extension,
    ExtensionType,
    ForwardTransitNhsExtension,
    IPv4Header,
    IPv6Header,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    ProtocolType,
    ResponderAddressExtension,
    ReverseTransitNhsExtension,
    UnknownExtension,
    VendorPrivateExtension,
)
from dmvpn.wire.nhrp_types import Address

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

ipv4 = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1))


def _raw(length: int) -> st.SearchStrategy[Address]:
    if length == 4:
        return ipv4
    if length == 16:
        return ipv6
    return st.binary(min_size=length, max_size=length)


def any_address(max_len: int) -> st.SearchStrategy[Address]:
    return st.one_of(
        st.just(b""),
        ipv4,
        ipv6,
        st.integers(1, max_len).filter(lambda n: n not in (4, 16)).flatmap(_raw),
    )


def family_address(family: str, optional: bool = True) -> st.SearchStrategy[Address]:
    addr: st.SearchStrategy[Address] = ipv4 if family == "4" else ipv6
    return st.one_of(st.just(b""), addr) if optional else addr


def cies(
    nbma: st.SearchStrategy[Address], proto: st.SearchStrategy[Address], realistic: bool
) -> st.SearchStrategy[Cie]:
    return st.builds(
        Cie,
        code=st.sampled_from([0, 4, 5, 11, 12, 13, 14]) if realistic else u8,
        prefix_length=u8,
        mtu=u16,
        holding_time=u16,
        preference=u8,
        nbma=nbma,
        protocol=proto,
        nbma_sub=st.just(b"") if realistic else st.binary(max_size=8),
        nbma_e164=st.just(False) if realistic else st.booleans(),
        nbma_sub_e164=st.just(False) if realistic else st.booleans(),
    )


_KNOWN_EXT = {int(t) for t in ExtensionType}


def extensions(
    cie: st.SearchStrategy[Cie], realistic: bool
) -> st.SearchStrategy[tuple[Extension, ...]]:
    cie_list = st.lists(cie, max_size=3).map(tuple)
    one: st.SearchStrategy[Extension] = st.one_of(
        st.builds(ResponderAddressExtension, cies=cie_list, compulsory=st.booleans()),
        st.builds(ForwardTransitNhsExtension, cies=cie_list, compulsory=st.booleans()),
        st.builds(ReverseTransitNhsExtension, cies=cie_list, compulsory=st.booleans()),
        st.builds(NatAddressExtension, cies=cie_list, compulsory=st.booleans()),
        st.builds(
            AuthenticationExtension,
            data=st.binary(max_size=16),
            auth_type=st.just(1) if realistic else u32,
            compulsory=st.booleans(),
        ),
        st.builds(
            VendorPrivateExtension,
            oui=st.binary(min_size=3, max_size=3),
            data=st.binary(max_size=16),
            compulsory=st.booleans(),
        ),
        st.builds(
            UnknownExtension,
            type=st.integers(0, 0x3FFF).filter(lambda t: t not in _KNOWN_EXT),
            data=st.binary(max_size=16),
            compulsory=st.booleans(),
        ),
    )
    return st.tuples(st.lists(one, max_size=5), st.booleans()).map(
        lambda pair: (*pair[0], EndExtension()) if pair[1] else tuple(pair[0])
    )


def _echo(icmp_type: int, ident: int, seq: int, body: bytes) -> bytes:
    from dmvpn.wire import internet_checksum

    head = bytes([icmp_type, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big")
    csum = internet_checksum(head + body)
    return head[:2] + csum.to_bytes(2, "big") + head[4:] + body


def _embedded_ip(family: str) -> st.SearchStrategy[bytes]:
    """A real ping cut to the IP header + 8 bytes, as Cisco sends it (nhrpd
    sends the whole packet: both kinds are drawn)."""
    cut = st.sampled_from([True, False])
    body = st.binary(min_size=0, max_size=32)
    if family == "4":
        return st.builds(
            lambda s, d, i, q, b, c: IPv4Header(src=s, dst=d, protocol=1).encode(_echo(8, i, q, b))[
                : 28 if c else None
            ],
            ipv4,
            ipv4,
            u16,
            u16,
            body,
            cut,
        )
    # ICMPv6's checksum covers a pseudo-header; tshark only checks it when the
    # packet is whole, so send the cut form for IPv6.
    return st.builds(
        lambda s, d, i, q, b: IPv6Header(src=s, dst=d, next_header=58).encode(_echo(128, i, q, b))[
            :48
        ],
        ipv6,
        ipv6,
        u16,
        u16,
        body,
    )


@st.composite
def nhrp_packets(
    draw: st.DrawFn, realistic: bool = False, types: list[PacketType] | None = None
) -> NhrpPacket:
    ptype = draw(st.sampled_from(types or list(PacketType)))
    if realistic:
        nbma_f = draw(st.sampled_from(["4", "6"]))
        proto_f = draw(st.sampled_from(["4", "6"]))
        afn = AddressFamily.IPV4 if nbma_f == "4" else AddressFamily.IPV6
        pro = ProtocolType.IPV4 if proto_f == "4" else ProtocolType.IPV6
        nbma = family_address(nbma_f)
        proto = family_address(proto_f)
        snap = bytes(5)
        sub = b""
        e164 = sub_e164 = False
        hop = draw(st.integers(1, 255))
        version = 1
    else:
        afn, pro = draw(u16), draw(u16)
        nbma, proto = any_address(63), any_address(40)
        snap = draw(st.binary(min_size=5, max_size=5))
        sub = draw(st.binary(max_size=8))
        e164, sub_e164 = draw(st.booleans()), draw(st.booleans())
        hop, version = draw(u8), draw(u8)
    cie = cies(nbma, proto, realistic)
    fields: dict[str, object] = {}
    if ptype <= PacketType.PURGE_REPLY:
        fields = {
            "flags": draw(u16),
            "request_id": draw(u32),
            "cies": tuple(draw(st.lists(cie, max_size=4))),
        }
    elif ptype == PacketType.ERROR_INDICATION:
        if realistic:
            inner = draw(nhrp_packets(realistic=True, types=[t for t in PacketType if t <= 6]))
            contents = inner.encode()
        else:
            contents = draw(st.binary(max_size=64))
        fields = {"error_code": draw(u16), "error_offset": draw(u16), "contents": contents}
    else:
        contents = draw(_embedded_ip(proto_f)) if realistic else draw(st.binary(max_size=64))
        fields = {"traffic_code": 0 if realistic else draw(u16), "contents": contents}
    if ptype == PacketType.ERROR_INDICATION and realistic:
        exts: tuple[Extension, ...] = ()  # RFC 2332 5.2.7: no extensions in an error
    else:
        exts = draw(extensions(cie, realistic))
    return NhrpPacket(
        type=ptype,
        afn=afn,
        protocol_type=pro,
        snap=snap,
        hop_count=hop,
        version=version,
        src_nbma=draw(nbma),
        src_nbma_sub=sub,
        src_proto=draw(proto),
        dst_proto=draw(proto),
        src_nbma_e164=e164,
        src_nbma_sub_e164=sub_e164,
        extensions=exts,
        **fields,  # type: ignore[arg-type]
    )
