"""Showing decoded packets: `debug nhrp packet`-style text and stable JSON.

The JSON keys are documented in the README ("dmvpn decode --json"); add keys,
never rename or remove them.
"""

from __future__ import annotations

from typing import Any

from dmvpn.wire import (
    AuthenticationExtension,
    Cie,
    CieCode,
    DecodeError,
    EndExtension,
    ErrorCode,
    Extension,
    ExtensionType,
    ForwardTransitNhsExtension,
    NatAddressExtension,
    NhrpPacket,
    PacketType,
    ResponderAddressExtension,
    ReverseTransitNhsExtension,
    TrafficCode,
    UnknownExtension,
    VendorPrivateExtension,
    address_text,
    group_of,
)
from dmvpn.wire.nhrp_types import FLAG_TYPES, code_name

from .dissect import GreRecord

_CIE_EXT = (
    ResponderAddressExtension,
    ForwardTransitNhsExtension,
    ReverseTransitNhsExtension,
    NatAddressExtension,
)

_TYPE_TITLE = {
    PacketType.RESOLUTION_REQUEST: "Resolution Request",
    PacketType.RESOLUTION_REPLY: "Resolution Reply",
    PacketType.REGISTRATION_REQUEST: "Registration Request",
    PacketType.REGISTRATION_REPLY: "Registration Reply",
    PacketType.PURGE_REQUEST: "Purge Request",
    PacketType.PURGE_REPLY: "Purge Reply",
    PacketType.ERROR_INDICATION: "Error Indication",
    PacketType.TRAFFIC_INDICATION: "Traffic Indication",
}

_EXT_TITLE = {
    ExtensionType.END: "End",
    ExtensionType.RESPONDER_ADDRESS: "Responder Address",
    ExtensionType.FORWARD_TRANSIT_NHS: "Forward Transit NHS Record",
    ExtensionType.REVERSE_TRANSIT_NHS: "Reverse Transit NHS Record",
    ExtensionType.AUTHENTICATION: "Authentication",
    ExtensionType.VENDOR_PRIVATE: "Vendor Private",
    ExtensionType.NAT_ADDRESS: "Cisco NAT Address",
}


def flag_names(pkt: NhrpPacket) -> list[str]:
    flag_type = FLAG_TYPES.get(pkt.type)
    if flag_type is None:
        return []
    names: list[str] = []
    rest = pkt.flags
    for member in flag_type:
        if pkt.flags & member.value:
            names.append(str(member.name))
            rest &= ~member.value
    if rest:
        names.append(f"0x{rest:04x}")
    return names


def _text_or_hex(data: bytes) -> str:
    if data and all(32 <= b < 127 for b in data):
        return data.decode("ascii")
    return "0x" + data.hex()


# ---------------------------------------------------------------- JSON


def cie_json(cie: Cie) -> dict[str, Any]:
    return {
        "code": int(cie.code),
        "code_name": code_name(CieCode, cie.code).lower(),
        "prefix_length": cie.prefix_length,
        "mtu": cie.mtu,
        "holding_time": cie.holding_time,
        "preference": cie.preference,
        "nbma": address_text(cie.nbma),
        "nbma_subaddress": cie.nbma_sub.hex(),
        "protocol": address_text(cie.protocol),
    }


def extension_json(ext: Extension) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": int(ext.TYPE),
        "name": code_name(ExtensionType, ext.TYPE).lower(),
        "compulsory": ext.compulsory,
    }
    if isinstance(ext, UnknownExtension):
        out["name"] = "unknown" if ext.TYPE != ExtensionType.NAT_ADDRESS else "nat_address_raw"
        out["data"] = ext.data.hex()
    elif isinstance(ext, _CIE_EXT):
        out["cies"] = [cie_json(c) for c in ext.cies]
    elif isinstance(ext, AuthenticationExtension):
        out["auth_type"] = ext.auth_type
        out["data"] = ext.data.hex()
        out["text"] = _text_or_hex(ext.data)
    elif isinstance(ext, VendorPrivateExtension):
        out["oui"] = ext.oui.hex()
        out["data"] = ext.data.hex()
        group = _nhrp_group(ext)
        if group is not None:
            out["nhrp_group"] = group
    return out


def _nhrp_group(ext: VendorPrivateExtension) -> str | None:
    """The Cisco NHRP group this extension carries (per-tunnel QoS), if any."""
    try:
        return group_of((ext,))
    except DecodeError:
        return None  # Cisco vendor data that is not a group: shown as hex only


def nhrp_json(pkt: NhrpPacket) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": pkt.type.name.lower(),
        "type_code": int(pkt.type),
        "afn": pkt.afn,
        "protocol_type": pkt.protocol_type,
        "hop_count": pkt.hop_count,
        "version": pkt.version,
        "flags": pkt.flags,
        "flag_names": flag_names(pkt),
        "request_id": pkt.request_id,
        "src_nbma": address_text(pkt.src_nbma),
        "src_nbma_subaddress": pkt.src_nbma_sub.hex(),
        "src_proto": address_text(pkt.src_proto),
        "dst_proto": address_text(pkt.dst_proto),
        "cies": [cie_json(c) for c in pkt.cies],
        "extensions": [extension_json(e) for e in pkt.extensions],
    }
    if pkt.type == PacketType.ERROR_INDICATION:
        out["error_code"] = pkt.error_code
        out["error_name"] = code_name(ErrorCode, pkt.error_code).lower()
        out["error_offset"] = pkt.error_offset
    if pkt.type == PacketType.TRAFFIC_INDICATION:
        out["traffic_code"] = pkt.traffic_code
    if pkt.is_indication:
        out["contents"] = pkt.contents.hex()
    return out


def record_json(rec: GreRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "frame": rec.frame,
        "time": rec.timestamp,
        "outer_src": rec.outer_src,
        "outer_dst": rec.outer_dst,
        "gre_key": rec.gre.key if rec.gre else None,
        "gre_protocol": rec.gre.protocol if rec.gre else None,
        "nhrp": nhrp_json(rec.nhrp) if rec.nhrp else None,
        "error": None,
        "roundtrip": rec.roundtrip,
    }
    if rec.error is not None:
        out["error"] = {
            "layer": rec.error_layer,
            "reason": rec.error.reason,
            "offset": rec.error.offset,
        }
    return out


# ---------------------------------------------------------------- text


def _cie_lines(cie: Cie, index: int, indent: str) -> list[str]:
    return [
        f"{indent}(C-{index}) code: {code_name(CieCode, cie.code).lower()}({cie.code})",
        f"{indent}      prefix: {cie.prefix_length}, mtu: {cie.mtu}, "
        f"hd_time: {cie.holding_time}, pref: {cie.preference}",
        f"{indent}      client NBMA: {address_text(cie.nbma) or '-'}"
        + (f" sub {cie.nbma_sub.hex()}" if cie.nbma_sub else ""),
        f"{indent}      client protocol: {address_text(cie.protocol) or '-'}",
    ]


def nhrp_text(pkt: NhrpPacket, size: int) -> list[str]:
    lines = [
        f" (F) afn: {pkt.afn}, type: 0x{pkt.protocol_type:04x}, hop: {pkt.hop_count}, "
        f"ver: {pkt.version}, pktsz: {size}",
    ]
    if pkt.is_indication:
        if pkt.type == PacketType.ERROR_INDICATION:
            lines.append(
                f" (M) error: {code_name(ErrorCode, pkt.error_code).lower()}"
                f"({pkt.error_code}), offset: {pkt.error_offset}"
            )
        else:
            lines.append(
                f" (M) traffic code: {code_name(TrafficCode, pkt.traffic_code).lower()}"
                f"({pkt.traffic_code})"
            )
    else:
        flags = " ".join(flag_names(pkt)) or "none"
        lines.append(f' (M) flags: "{flags}" (0x{pkt.flags:04x}), reqid: {pkt.request_id}')
    lines.append(f"     src NBMA: {address_text(pkt.src_nbma) or '-'}")
    lines.append(
        f"     src protocol: {address_text(pkt.src_proto) or '-'}, "
        f"dst protocol: {address_text(pkt.dst_proto) or '-'}"
    )
    for i, cie in enumerate(pkt.cies, 1):
        lines += _cie_lines(cie, i, " ")
    if pkt.is_indication and pkt.contents:
        lines.append(f"     contents: {len(pkt.contents)} bytes: {pkt.contents[:48].hex()}")
    for ext in pkt.extensions:
        title = _EXT_TITLE.get(ext.TYPE, "Unknown")  # type: ignore[call-overload]
        mark = "C" if ext.compulsory else "-"
        if isinstance(ext, EndExtension):
            continue
        lines.append(f" {title} Extension({ext.TYPE}) [{mark}]:")
        if isinstance(ext, _CIE_EXT):
            for i, cie in enumerate(ext.cies, 1):
                lines += _cie_lines(cie, i, "  ")
        elif isinstance(ext, AuthenticationExtension):
            lines.append(f"   type: {ext.auth_type}, data: {_text_or_hex(ext.data)}")
        elif isinstance(ext, VendorPrivateExtension):
            lines.append(f"   oui: {ext.oui.hex()}, data: 0x{ext.data.hex()}")
            group = _nhrp_group(ext)
            if group is not None:
                lines.append(f"   NHRP group: {group}")
        elif isinstance(ext, UnknownExtension):
            lines.append(f"   data: 0x{ext.data.hex()}")
    return lines


def record_text(rec: GreRecord) -> str:
    head = f"#{rec.frame} {rec.outer_src} -> {rec.outer_dst}"
    if rec.gre is not None:
        key = f" key {rec.gre.key}" if rec.gre.key is not None else ""
        head += f" GRE{key} proto 0x{rec.gre.protocol:04x}"
    elif rec.error_layer != "gre":
        head += " IP proto 54 (NHRP over IP)"
    if rec.error is not None:
        layer = (rec.error_layer or "").upper()
        return f"{head}\n  {layer} decode error: {rec.error}"
    if rec.nhrp is None:
        return head
    size = len(rec.nhrp.encode())
    rt = "" if rec.roundtrip else "  (re-encoding differs from the captured bytes)"
    lines = [f"{head}", f"NHRP: {_TYPE_TITLE[rec.nhrp.type]}, packet size: {size}{rt}"]
    lines += nhrp_text(rec.nhrp, size)
    return "\n".join(lines)
