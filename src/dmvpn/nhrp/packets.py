"""Building the NHRP packets the engine sends (pure functions of config and input)."""

from __future__ import annotations

from ipaddress import IPv4Address

from dmvpn.wire import (
    Address,
    AddressFamily,
    AuthenticationExtension,
    Cie,
    EndExtension,
    Extension,
    ForwardTransitNhsExtension,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    ProtocolType,
    ResponderAddressExtension,
    ReverseTransitNhsExtension,
    UnknownExtension,
    group_extension,
)

from .cache import host_length
from .config import EngineConfig


def afn_of(nbma: Address) -> int:
    return AddressFamily.IPV4 if isinstance(nbma, IPv4Address | bytes) else AddressFamily.IPV6


def protocol_type_of(addr: Address) -> int:
    return ProtocolType.IPV4 if isinstance(addr, IPv4Address) else ProtocolType.IPV6


# Values every reply of a hub carries, made once: the same objects each time,
# so the codec encodes them once too (wire/extensions.py). All immutable.
_END = EndExtension()
# (config, its authentication extensions), for the last config asked about.
_auth_made: list[tuple[EngineConfig, tuple[Extension, ...]]] = []
# (responder CIE, compulsory) -> (that CIE, its Responder Address extension).
_responders: dict[tuple[int, bool], tuple[Cie, ResponderAddressExtension]] = {}
_RESPONDERS_MAX = 64


def auth_extensions(config: EngineConfig) -> tuple[Extension, ...]:
    # Cisco regenerates authentication at every hop, never copies it (frr
    # issues 16371, 16466): always our own password, or none.
    if _auth_made and _auth_made[0][0] is config:
        return _auth_made[0][1]
    made: tuple[Extension, ...] = ()
    if config.authentication is not None:
        made = (AuthenticationExtension(data=config.authentication),)
    _auth_made[:] = [(config, made)]
    return made


def _responder_extension(responder: Cie, compulsory: bool) -> ResponderAddressExtension:
    """``ResponderAddressExtension(cies=(responder,), compulsory=...)``, the
    same object for the same responder CIE object (a hub's is made once per
    config, nhrp/server.py)."""
    key = (id(responder), compulsory)
    made = _responders.get(key)
    if made is None or made[0] is not responder:
        if len(_responders) >= _RESPONDERS_MAX:
            _responders.clear()
        made = (responder, ResponderAddressExtension(cies=(responder,), compulsory=compulsory))
        _responders[key] = made
    return made[1]


def self_cie(
    config: EngineConfig,
    nbma: Address,
    prefix_length: int | None = None,
    holding: int | None = None,
) -> Cie:
    """A CIE describing this node (responder address, transit record, answers)."""
    return Cie(
        prefix_length=host_length(config.protocol_address)
        if prefix_length is None
        else prefix_length,
        mtu=config.mtu,
        holding_time=config.holding_time if holding is None else holding,
        nbma=nbma,
        protocol=config.protocol_address,
    )


def base(config: EngineConfig, nbma: Address, type: PacketType, **fields: object) -> NhrpPacket:
    return NhrpPacket(
        type=type,
        afn=afn_of(nbma),
        protocol_type=protocol_type_of(config.protocol_address),
        **fields,  # type: ignore[arg-type]
    )


def originate(
    config: EngineConfig, nbma: Address, type: PacketType, **fields: object
) -> NhrpPacket:
    """A packet this node starts: we are its source (NBMA and protocol)."""
    return base(config, nbma, type, src_nbma=nbma, src_proto=config.protocol_address, **fields)


def request_cie(config: EngineConfig) -> Cie:
    """The CIE of our own requests: host prefix, our MTU and holding time."""
    return Cie(
        prefix_length=host_length(config.protocol_address),
        mtu=config.mtu,
        holding_time=config.holding_time,
    )


def request_extensions(
    config: EngineConfig, nat_cies: tuple[Cie, ...] | None = None, *, group: bool = False
) -> tuple[Extension, ...]:
    """Cisco's order: responder address, forward and reverse transit NHS
    records, authentication, Cisco NAT, End (as in the IOS captures). With
    ``group`` (Registration Requests) and `nhrp.group` set, the NHRP group
    goes in a Vendor Private Extension (8) between authentication (7) and
    NAT (9), keeping Cisco's ascending order (wire/nhrp_group.py)."""
    exts: list[Extension] = [
        ResponderAddressExtension(),
        ForwardTransitNhsExtension(),
        ReverseTransitNhsExtension(),
        *auth_extensions(config),
    ]
    if group and config.group is not None:
        exts.append(group_extension(config.group))
    if nat_cies is not None and config.nat_extension:
        exts.append(NatAddressExtension(cies=nat_cies))
    exts.append(EndExtension())
    return tuple(exts)


# (request extensions, responder, NAT CIEs, config) by identity -> those four
# and the reply's extensions: every spoke of a cloud sends the same extension
# bytes, decoded once into one tuple (wire/nhrp.py), so a hub answers them
# with one tuple too, which the codec encodes once. All immutable.
_replies: dict[
    tuple[int, int, int, int],
    tuple[tuple[Extension, ...], Cie, tuple[Cie, ...] | None, EngineConfig, tuple[Extension, ...]],
] = {}
_REPLIES_MAX = 256


def reply_extensions(
    config: EngineConfig,
    request: NhrpPacket,
    responder: Cie,
    *,
    nat_cies: tuple[Cie, ...] | None = None,
) -> tuple[Extension, ...]:
    """The request's extensions, answered (RFC 2332 5.3): the responder
    address filled in, transit records kept, authentication rebuilt, unknown
    non-compulsory ones returned as they came."""
    exts = request.extensions
    key = (id(exts), id(responder), id(nat_cies), id(config))
    made = _replies.get(key)
    if (
        made is not None
        and made[0] is exts
        and made[1] is responder
        and made[2] is nat_cies
        and made[3] is config
    ):
        return made[4]
    reply = _reply_extensions(config, exts, responder, nat_cies)
    if len(_replies) >= _REPLIES_MAX:
        _replies.clear()
    _replies[key] = (exts, responder, nat_cies, config, reply)
    return reply


def _reply_extensions(
    config: EngineConfig,
    extensions: tuple[Extension, ...],
    responder: Cie,
    nat_cies: tuple[Cie, ...] | None,
) -> tuple[Extension, ...]:
    out: list[Extension] = []
    seen_nat = False
    for ext in extensions:
        if isinstance(ext, ResponderAddressExtension):
            out.append(_responder_extension(responder, ext.compulsory))
        elif isinstance(ext, AuthenticationExtension | EndExtension):
            continue
        elif isinstance(ext, NatAddressExtension):
            seen_nat = True
            cies = ext.cies if nat_cies is None else nat_cies
            out.append(NatAddressExtension(cies=cies, compulsory=ext.compulsory))
        elif isinstance(ext, UnknownExtension) and ext.compulsory:
            continue  # refused earlier with error 1; never reached
        else:
            out.append(ext)
    if nat_cies is not None and not seen_nat and config.nat_extension:
        out.append(NatAddressExtension(cies=nat_cies))
    out.extend(auth_extensions(config))
    out.append(_END)
    return tuple(out)


def forwarded_extensions(
    config: EngineConfig, request: NhrpPacket, me: Cie, extra_nat: Cie | None = None
) -> tuple[Extension, ...]:
    """A transit NHS appends itself to the Forward Transit NHS Record (RFC
    2332 5.3.2) and rebuilds authentication."""
    out: list[Extension] = []
    recorded = False
    for ext in request.extensions:
        if isinstance(ext, ForwardTransitNhsExtension):
            out.append(ForwardTransitNhsExtension(cies=(*ext.cies, me), compulsory=ext.compulsory))
            recorded = True
        elif isinstance(ext, AuthenticationExtension | EndExtension):
            continue
        elif isinstance(ext, NatAddressExtension) and extra_nat is not None:
            out.append(NatAddressExtension(cies=(*ext.cies, extra_nat), compulsory=ext.compulsory))
            extra_nat = None
        else:
            out.append(ext)
    if not recorded:
        out.append(ForwardTransitNhsExtension(cies=(me,)))
    if extra_nat is not None and config.nat_extension:
        out.append(NatAddressExtension(cies=(extra_nat,)))
    out.extend(auth_extensions(config))
    out.append(EndExtension())
    return tuple(out)
