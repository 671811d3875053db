"""`dmvpn decode` and `dmvpn example-capture` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from dmvpn.cli import main

JSON_KEYS = {
    "frame",
    "time",
    "outer_src",
    "outer_dst",
    "gre_key",
    "gre_protocol",
    "nhrp",
    "error",
    "roundtrip",
}
NHRP_KEYS = {
    "type",
    "type_code",
    "afn",
    "protocol_type",
    "hop_count",
    "version",
    "flags",
    "flag_names",
    "request_id",
    "src_nbma",
    "src_nbma_subaddress",
    "src_proto",
    "dst_proto",
    "cies",
    "extensions",
}


def _json_lines(output: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_decode_json_of_cisco_capture(vectors: Path) -> None:
    res = CliRunner().invoke(
        main, ["decode", "--json", str(vectors / "tcpdump_NHRP_registration.pcap")]
    )
    assert res.exit_code == 0, res.output
    lines = _json_lines(res.output)
    assert [rec["frame"] for rec in lines] == [1, 2, 3, 4]
    first = lines[0]
    assert set(first) == JSON_KEYS
    assert set(first["nhrp"]) == NHRP_KEYS
    assert first["outer_src"] == "169.254.100.1" and first["gre_key"] == 2
    assert first["roundtrip"] is True and first["error"] is None
    n = first["nhrp"]
    assert (n["type"], n["type_code"], n["hop_count"]) == ("registration_request", 3, 255)
    assert n["flag_names"] == ["U", "NAT"] and n["request_id"] == 1
    assert (n["src_nbma"], n["src_proto"], n["dst_proto"]) == (
        "169.254.100.1",
        "155.1.0.1",
        "155.1.0.5",
    )
    assert n["cies"][0] == {
        "code": 0,
        "code_name": "success",
        "prefix_length": 32,
        "mtu": 17912,
        "holding_time": 7200,
        "preference": 0,
        "nbma": "",
        "nbma_subaddress": "",
        "protocol": "",
    }
    exts = {e["name"]: e for e in n["extensions"]}
    assert exts["authentication"]["text"] == "NHRPAUTH" and exts["authentication"]["compulsory"]
    assert exts["nat_address"]["compulsory"] is False
    assert exts["nat_address"]["cies"][0]["nbma"] == "169.254.100.5"
    assert [e["type"] for e in n["extensions"]] == [3, 4, 5, 7, 9, 0]


def test_decode_reports_malformed_and_exits_1(vectors: Path) -> None:
    res = CliRunner().invoke(main, ["decode", "--json", str(vectors / "tcpdump_pb_nhrp_1.pcap")])
    assert res.exit_code == 1
    (rec,) = _json_lines(res.output)
    assert rec["nhrp"] is None and rec["roundtrip"] is False
    assert rec["error"] == {
        "layer": "nhrp",
        "reason": "ar$pktsz 30547 exceeds the 40 bytes available",
        "offset": 10,
    }


def test_decode_text_reads_like_debug_nhrp(vectors: Path) -> None:
    res = CliRunner().invoke(main, ["decode", str(vectors / "tcpdump_ios_nhrp.pcap")])
    assert res.exit_code == 0, res.output
    assert "NHRP: Registration Request, packet size: 81" in res.output
    assert "prefix: 255, mtu: 1514, hd_time: 30" in res.output
    assert "Authentication Extension(7) [C]:" in res.output and "data: CISCO" in res.output


def test_decode_rejects_a_file_that_is_not_a_capture(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all")
    res = CliRunner().invoke(main, ["decode", str(junk)])
    assert res.exit_code == 2 and "not a pcap or pcapng file" in res.output


def test_example_capture_via_the_installed_command(tmp_path: Path) -> None:
    out = tmp_path / "cloud.pcap"
    exe = Path(sys.executable).with_name("dmvpn")
    subprocess.run([str(exe), "example-capture", str(out)], check=True, capture_output=True)
    res = subprocess.run(
        [str(exe), "decode", "--json", "--nhrp-only", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    recs = _json_lines(res.stdout)
    assert len(recs) == 15 and all(r["roundtrip"] for r in recs)
    types = [r["nhrp"]["type_code"] for r in recs]
    assert sorted(set(types)) == [1, 2, 3, 4, 5, 6, 7, 8]
    ti = next(r for r in recs if r["nhrp"]["type"] == "traffic_indication")
    assert ti["nhrp"]["contents"].startswith("45")  # an IPv4 header
    assert {r["outer_src"] for r in recs} >= {"2001:db8::11"}  # GRE over IPv6 too
