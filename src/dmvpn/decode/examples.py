"""A small DMVPN conversation built with dmvpn's own encoder.

`dmvpn example-capture` writes it to a pcap so a newcomer can decode a
realistic cloud without routers; the tests give it to tshark. Addresses are
from the documentation ranges (RFC 5737, RFC 3849).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

from dmvpn.wire import (
    AddressFamily,
    AuthenticationExtension,
    Cie,
    EndExtension,
    ErrorCode,
    EthernetFrame,
    EtherType,
    ForwardTransitNhsExtension,
    GrePacket,
    IPv4Header,
    IPv6Header,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    ProtocolType,
    PurgeFlag,
    RegistrationFlag,
    ResolutionFlag,
    ResponderAddressExtension,
    ReverseTransitNhsExtension,
    UnknownExtension,
    VendorPrivateExtension,
    internet_checksum,
)
from dmvpn.wire.ip import PROTO_GRE, PROTO_ICMP

KEY = 100
HUB_NBMA = IPv4Address("192.0.2.1")
HUB_TUN = IPv4Address("10.0.0.1")
S1_NBMA, S1_TUN = IPv4Address("198.51.100.11"), IPv4Address("10.0.0.11")
S2_NBMA, S2_TUN = IPv4Address("198.51.100.12"), IPv4Address("10.0.0.12")
S1_NAT_INSIDE = IPv4Address("203.0.113.11")  # spoke 1 sits behind NAT: this is its own idea
HOST1, HOST2 = IPv4Address("192.168.11.10"), IPv4Address("192.168.12.10")
AUTH = AuthenticationExtension(data=b"dmvpn")
HOLD = 7200
MTU = 1400


def _mac(addr: IPv4Address | IPv6Address) -> bytes:
    """Locally administered MAC derived from an NBMA address (as the TAP does)."""
    return b"\x02\x00" + addr.packed[-4:]


def _gre_frame(
    src: IPv4Address | IPv6Address,
    dst: IPv4Address | IPv6Address,
    protocol: int,
    payload: bytes,
    key: int | None = KEY,
) -> bytes:
    gre = GrePacket(protocol, payload, key=key).encode()
    if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
        ip = IPv4Header(src=src, dst=dst, protocol=PROTO_GRE, ttl=64).encode(gre)
        etype = EtherType.IPV4
    else:
        assert isinstance(src, IPv6Address) and isinstance(dst, IPv6Address)
        ip = IPv6Header(src=src, dst=dst, next_header=PROTO_GRE).encode(gre)
        etype = EtherType.IPV6
    return EthernetFrame(_mac(dst), _mac(src), etype, ip).encode()


def _ping(src: IPv4Address, dst: IPv4Address, ttl: int = 63) -> bytes:
    body = bytes([0, 1, 0, 1]) + b"dmvpn-example-payload"
    csum = internet_checksum(bytes([8, 0, 0, 0]) + body)
    icmp = bytes([8, 0]) + csum.to_bytes(2, "big") + body
    return IPv4Header(src=src, dst=dst, protocol=PROTO_ICMP, ttl=ttl).encode(icmp)


def _ends(*exts: object) -> tuple:  # type: ignore[type-arg]
    return (*exts, EndExtension())


def conversation() -> list[tuple[str, bytes]]:
    """(description, Ethernet frame) for each step of a phase 3 exchange."""
    steps: list[tuple[str, bytes]] = []

    def nhrp(
        desc: str, src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, pkt: NhrpPacket
    ) -> None:
        steps.append((desc, _gre_frame(src, dst, EtherType.NHRP, pkt.encode())))

    hub_cie = Cie(prefix_length=32, mtu=MTU, holding_time=HOLD, nbma=HUB_NBMA, protocol=HUB_TUN)
    # 1-2: spoke 1, behind NAT, registers uniquely (Cisco layout: ext 3,4,5,7,9,End).
    reg1 = NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        src_nbma=S1_NAT_INSIDE,
        src_proto=S1_TUN,
        dst_proto=HUB_TUN,
        flags=RegistrationFlag.U | RegistrationFlag.NAT,
        request_id=1,
        cies=(Cie(prefix_length=32, mtu=MTU, holding_time=HOLD),),
        extensions=_ends(
            ResponderAddressExtension(),
            ForwardTransitNhsExtension(),
            ReverseTransitNhsExtension(),
            AUTH,
            NatAddressExtension(cies=(Cie(prefix_length=32, nbma=HUB_NBMA, protocol=HUB_TUN),)),
        ),
    )
    nhrp("spoke1 registers with the hub (unique, NAT-capable)", S1_NBMA, HUB_NBMA, reg1)
    rep1 = NhrpPacket(
        type=PacketType.REGISTRATION_REPLY,
        src_nbma=S1_NAT_INSIDE,
        src_proto=S1_TUN,
        dst_proto=HUB_TUN,
        flags=reg1.flags,
        request_id=1,
        cies=reg1.cies,
        extensions=_ends(
            ResponderAddressExtension(cies=(hub_cie,)),
            ForwardTransitNhsExtension(),
            ReverseTransitNhsExtension(),
            AUTH,
            NatAddressExtension(
                cies=(
                    Cie(prefix_length=32, nbma=HUB_NBMA, protocol=HUB_TUN),
                    Cie(prefix_length=32, nbma=S1_NBMA, protocol=S1_TUN),
                )
            ),
        ),
    )
    nhrp("hub accepts; the NAT extension tells spoke1 its public address", HUB_NBMA, S1_NBMA, rep1)
    # 3-4: spoke 2 registers without the unique flag (dynamic NBMA address).
    reg2 = NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        src_nbma=S2_NBMA,
        src_proto=S2_TUN,
        dst_proto=HUB_TUN,
        flags=RegistrationFlag.NAT,
        request_id=7,
        cies=(Cie(prefix_length=32, mtu=MTU, holding_time=HOLD),),
        extensions=_ends(ResponderAddressExtension(), AUTH),
    )
    nhrp("spoke2 registers with the hub (no-unique)", S2_NBMA, HUB_NBMA, reg2)
    rep2 = NhrpPacket(
        type=PacketType.REGISTRATION_REPLY,
        src_nbma=S2_NBMA,
        src_proto=S2_TUN,
        dst_proto=HUB_TUN,
        flags=reg2.flags,
        request_id=7,
        cies=reg2.cies,
        extensions=_ends(ResponderAddressExtension(cies=(hub_cie,)), AUTH),
    )
    nhrp("hub accepts spoke2", HUB_NBMA, S2_NBMA, rep2)
    # 5-7: first data packet goes through the hub, which redirects the sender.
    ping = _ping(HOST1, HOST2)
    steps.append(
        (
            "host1 pings host2: spoke1 sends it to the hub",
            _gre_frame(S1_NBMA, HUB_NBMA, EtherType.IPV4, ping),
        )
    )
    steps.append(
        (
            "the hub forwards it to spoke2",
            _gre_frame(HUB_NBMA, S2_NBMA, EtherType.IPV4, _ping(HOST1, HOST2, 62)),
        )
    )
    redirect = NhrpPacket(
        type=PacketType.TRAFFIC_INDICATION,
        src_nbma=HUB_NBMA,
        src_proto=HUB_TUN,
        dst_proto=S1_TUN,
        contents=ping[:28],
        extensions=_ends(AUTH),
    )
    nhrp(
        "hub -> spoke1: Traffic Indication (redirect), IP header + 8 bytes",
        HUB_NBMA,
        S1_NBMA,
        redirect,
    )
    # 8-10: resolution, forwarded by the hub to the owner, answered directly.
    resq = NhrpPacket(
        type=PacketType.RESOLUTION_REQUEST,
        src_nbma=S1_NBMA,
        src_proto=S1_TUN,
        dst_proto=HOST2,
        request_id=2,
        flags=ResolutionFlag.Q | ResolutionFlag.A | ResolutionFlag.S | ResolutionFlag.NAT,
        cies=(Cie(prefix_length=32, mtu=MTU, holding_time=HOLD),),
        extensions=_ends(
            ResponderAddressExtension(),
            ForwardTransitNhsExtension(),
            ReverseTransitNhsExtension(),
            AUTH,
        ),
    )
    nhrp("spoke1 asks for host2's next hop", S1_NBMA, HUB_NBMA, resq)
    fwd = NhrpPacket(
        type=PacketType.RESOLUTION_REQUEST,
        src_nbma=S1_NBMA,
        src_proto=S1_TUN,
        dst_proto=HOST2,
        request_id=2,
        flags=resq.flags,
        cies=resq.cies,
        hop_count=254,
        extensions=_ends(
            ResponderAddressExtension(),
            ForwardTransitNhsExtension(cies=(hub_cie,)),
            ReverseTransitNhsExtension(),
            AUTH,
        ),
    )
    nhrp("the hub forwards the request to spoke2, recording itself", HUB_NBMA, S2_NBMA, fwd)
    s2_cie = Cie(prefix_length=24, mtu=MTU, holding_time=HOLD, nbma=S2_NBMA, protocol=S2_TUN)
    resp = NhrpPacket(
        type=PacketType.RESOLUTION_REPLY,
        src_nbma=S1_NBMA,
        src_proto=S1_TUN,
        dst_proto=HOST2,
        request_id=2,
        flags=resq.flags | ResolutionFlag.D | ResolutionFlag.U,
        cies=(Cie(prefix_length=24, mtu=MTU, holding_time=HOLD, nbma=S2_NBMA, protocol=HOST2),),
        extensions=_ends(
            ResponderAddressExtension(cies=(s2_cie,)),
            ForwardTransitNhsExtension(cies=(hub_cie,)),
            ReverseTransitNhsExtension(),
            AUTH,
        ),
    )
    nhrp("spoke2 answers spoke1 directly with its /24", S2_NBMA, S1_NBMA, resp)
    steps.append(
        (
            "data now flows spoke to spoke",
            _gre_frame(S1_NBMA, S2_NBMA, EtherType.IPV4, _ping(HOST1, HOST2)),
        )
    )
    # 12-13: spoke2 withdraws the binding it handed out.
    purge = NhrpPacket(
        type=PacketType.PURGE_REQUEST,
        src_nbma=S2_NBMA,
        src_proto=S2_TUN,
        dst_proto=S1_TUN,
        request_id=9,
        cies=(Cie(prefix_length=24, protocol=HOST2),),
        extensions=_ends(AUTH),
    )
    nhrp("spoke2 purges the binding for its LAN", S2_NBMA, S1_NBMA, purge)
    nhrp(
        "spoke1 confirms",
        S1_NBMA,
        S2_NBMA,
        NhrpPacket(
            type=PacketType.PURGE_REPLY,
            src_nbma=S2_NBMA,
            src_proto=S2_TUN,
            dst_proto=S1_TUN,
            request_id=9,
            cies=purge.cies,
            extensions=_ends(AUTH),
        ),
    )
    # 14: an error, embedding the offending packet.
    bad = NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        src_nbma=IPv4Address("198.51.100.66"),
        src_proto=IPv4Address("10.0.0.66"),
        dst_proto=HUB_TUN,
        request_id=66,
        flags=RegistrationFlag.U,
        cies=(Cie(prefix_length=32, holding_time=HOLD),),
        extensions=_ends(AuthenticationExtension(data=b"wrong")),
    )
    nhrp("a registration with the wrong password...", IPv4Address("198.51.100.66"), HUB_NBMA, bad)
    nhrp(
        "...is refused with an Error Indication",
        HUB_NBMA,
        IPv4Address("198.51.100.66"),
        NhrpPacket(
            type=PacketType.ERROR_INDICATION,
            src_nbma=HUB_NBMA,
            src_proto=HUB_TUN,
            dst_proto=IPv4Address("10.0.0.66"),
            error_code=ErrorCode.AUTHENTICATION_FAILURE,
            error_offset=0,
            contents=bad.encode(),
        ),
    )
    # 16-17: IPv6 overlay over IPv4, and an IPv6 underlay; extensions of every kind.
    v6 = NhrpPacket(
        type=PacketType.RESOLUTION_REQUEST,
        protocol_type=ProtocolType.IPV6,
        src_nbma=S1_NBMA,
        src_proto=IPv6Address("2001:db8:0:100::11"),
        dst_proto=IPv6Address("2001:db8:12::10"),
        flags=ResolutionFlag.Q | ResolutionFlag.NAT,
        request_id=3,
        cies=(Cie(prefix_length=128, mtu=MTU, holding_time=HOLD),),
        extensions=_ends(
            ResponderAddressExtension(),
            VendorPrivateExtension(oui=b"\x00\x00\x0c", data=b"\x01\x02"),
            UnknownExtension(type=0x1234, data=b"keep me", compulsory=False),
        ),
    )
    nhrp("an IPv6 overlay resolution, with vendor and unknown extensions", S1_NBMA, HUB_NBMA, v6)
    hub6, s16 = ip_address("2001:db8::1"), ip_address("2001:db8::11")
    assert isinstance(hub6, IPv6Address) and isinstance(s16, IPv6Address)
    reg6 = NhrpPacket(
        type=PacketType.REGISTRATION_REQUEST,
        afn=AddressFamily.IPV6,
        src_nbma=s16,
        src_proto=S1_TUN,
        dst_proto=HUB_TUN,
        flags=RegistrationFlag.U,
        request_id=4,
        cies=(Cie(prefix_length=32, mtu=MTU, holding_time=HOLD),),
        extensions=_ends(ResponderAddressExtension()),
    )
    nhrp("a registration over an IPv6 underlay", s16, hub6, reg6)
    nhrp(
        "and a purge without reply (N), OpenNHRP's zero-CIE form",
        S1_NBMA,
        HUB_NBMA,
        NhrpPacket(
            type=PacketType.PURGE_REQUEST,
            src_nbma=S1_NBMA,
            src_proto=S1_TUN,
            dst_proto=HUB_TUN,
            flags=PurgeFlag.N,
            request_id=1,
        ),
    )
    return steps
