"""Node config files: good ones load, bad ones name every field and reason."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dmvpn.cli import main
from dmvpn.config import ConfigError, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_load_and_map_to_engine_configs() -> None:
    hub = load_config(EXAMPLES / "hub.yaml").interfaces[0]
    spoke = load_config(EXAMPLES / "spoke.yaml").interfaces[0]
    assert hub.is_hub and not spoke.is_hub
    h, s = hub.engine_config(), spoke.engine_config()
    assert h.server and h.redirect and h.authentication == b"dmvpn42"
    assert not s.server and s.shortcut and not s.registration_unique
    assert s.nhs[0].nbma == IPv4Address("192.0.2.1") and s.holding_time == 600
    assert spoke.tunnel.key == 42


BAD = """\
node: spoke9
interfaces:
  - name: this-name-is-far-too-long
    address: 10.0.0.11/24
    tunnel: {source: 198.51.100.300, key: -1}
    nhrp:
      network_id: 1
      holdtme: 60
      authentication: much-too-long
      nhs:
        - {address: 10.9.0.1, nbma: 192.0.2.1}
"""


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_every_error_is_reported_with_its_path(tmp_path: Path) -> None:
    problems = _problems(tmp_path, BAD)
    text = "\n".join(problems)
    assert "interfaces.0.name: String should match pattern" in text
    assert "interfaces.0.tunnel.source:" in text
    assert "interfaces.0.tunnel.key: Input should be greater than or equal to 0" in text
    assert "interfaces.0.nhrp.holdtme: Extra inputs are not permitted" in text
    assert "interfaces.0.nhrp.authentication: String should have at most 8 characters" in text


def test_cross_field_errors(tmp_path: Path) -> None:
    text = BAD.replace("this-name-is-far-too-long", "dmvpn0").replace(".300", ".3")
    text = text.replace("key: -1", "key: 1").replace("holdtme", "holdtime")
    text = text.replace("much-too-long", "ok")
    (problem,) = _problems(tmp_path, text)
    assert problem == "interfaces.0: nhrp.nhs.0.address 10.9.0.1 is outside 10.0.0.0/24"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node: [unclosed", "line 1, column 16: not valid YAML"),
        ("- a list", "(top level): expected a mapping of settings"),
        ("node: x\n", "interfaces: Field required"),
    ],
)
def test_unusable_files(tmp_path: Path, text: str, expected: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(expected in p for p in problems), problems


def test_dmvpn_check(tmp_path: Path) -> None:
    ok = CliRunner().invoke(main, ["check", str(EXAMPLES / "spoke.yaml")])
    assert ok.exit_code == 0 and "ok: node spoke1, dmvpn0 10.0.0.11/24" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    res = CliRunner().invoke(main, ["check", str(bad)])
    assert res.exit_code == 1
    assert f"{bad}: interfaces.0.nhrp.holdtme: Extra inputs are not permitted" in res.output
    missing = CliRunner().invoke(main, ["check", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1 and "cannot read: No such file or directory" in missing.output


IPSEC_BASE = """\
node: spoke1
interfaces:
  - name: dmvpn0
    address: 10.0.0.11/24
    tunnel: {source: 198.51.100.11}
    nhrp:
      network_id: 1
      nhs:
        - {address: 10.0.0.1, nbma: 192.0.2.1}
"""


def test_check_names_the_dataplane_only_when_not_the_default(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(IPSEC_BASE)
    default = load_config(path).interfaces[0].dataplane
    assert default == "userspace"  # issue 14 wants auto: see docs/ARCHITECTURE.md "Default."
    res = CliRunner().invoke(main, ["check", str(path)])
    assert res.exit_code == 0 and ", dataplane" not in res.output, res.output
    path.write_text(IPSEC_BASE.replace("    address:", "    dataplane: auto\n    address:"))
    res = CliRunner().invoke(main, ["check", str(path)])
    assert res.exit_code == 0 and ", dataplane auto" in res.output, res.output


def test_ipsec_psk_defaults_are_strong(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(IPSEC_BASE + "ipsec:\n  psk: a-long-shared-secret\n  idle_timeout: 2m\n")
    sec = load_config(path).ipsec
    assert sec is not None and not sec.uses_certificates
    assert sec.ike_proposals == ["aes256gcm16-prfsha384-x25519"]
    assert sec.esp_proposals == ["aes256gcm16-x25519"]
    # ESP and with it the mode are the daemon's to decide on its host.
    assert (sec.esp, sec.mode, sec.charon, sec.idle_timeout, sec.binding_on) == (
        "auto",
        None,
        "managed",
        120,
        False,
    )
    res = CliRunner().invoke(main, ["check", str(path)])
    assert res.exit_code == 0, res.output
    assert (
        "ipsec pre-shared key, charon managed, transport mode with the kernel's ESP" in res.output
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{}", "ipsec: needs authentication: psk, or ca + certificate + private_key"),
        ("{psk: short}", "ipsec.psk: String should have at least 16 characters"),
        (
            "{psk: a-long-shared-secret, ca: ca.pem}",
            "ipsec: choose one authentication: psk, or ca + certificate + private_key",
        ),
        ("{ca: ca.pem}", "ipsec: certificate authentication also needs certificate, private_key"),
        (
            "{psk: a-long-shared-secret, mode: transport, esp: libipsec}",
            "(top level): ipsec.mode: transport needs the kernel's ESP; kernel-libipsec "
            "(ipsec.esp: libipsec) does tunnel mode only",
        ),
        ("{psk: a-long-shared-secret, esp: xfrm}", "ipsec.esp: Input should be 'auto'"),
        (
            "{psk: a-long-shared-secret, charon: external}",
            "ipsec: charon: external needs vici_socket (the running charon's socket)",
        ),
        (
            "{psk: a-long-shared-secret, dpd_delay: 10q}",
            "ipsec.dpd_delay: '10q' is not a duration (a number of seconds, or 30s/10m/4h/1d)",
        ),
        (
            "{psk: a-long-shared-secret, ike_proposals: ['aes256 gcm']}",
            "ipsec.ike_proposals.0: String should match pattern",
        ),
        (
            "{psk: a-long-shared-secret, ike_lifetime: 1h, child_lifetime: 2h}",
            "ipsec: ike_lifetime must be longer than child_lifetime",
        ),
        ("{psk: a-long-shared-secret, pks: x}", "ipsec.pks: Extra inputs are not permitted"),
        (
            "{psk: a-long-shared-secret, run_dir: /run/dmvpn/x}",
            "ipsec: run_dir must not be under /run (charon's own /run hides it)",
        ),
    ],
)
def test_bad_ipsec_sections_name_field_and_reason(
    tmp_path: Path, section: str, expected: str
) -> None:
    problems = _problems(tmp_path, IPSEC_BASE + f"ipsec: {section}\n")
    assert any(p.startswith(expected) for p in problems), problems


def test_ipsec_on_the_kernel_plane_takes_transport_mode(tmp_path: Path) -> None:
    """On the kernel data plane charon uses the kernel's XFRM, and the mode
    defaults to transport (what Cisco spokes propose); tunnel stays possible."""
    path = tmp_path / "node.yaml"
    kernel = IPSEC_BASE.replace("    tunnel:", "    dataplane: kernel\n    tunnel:", 1)
    assert kernel != IPSEC_BASE
    path.write_text(kernel + "ipsec:\n  psk: a-long-shared-secret\n")
    config = load_config(path)
    assert config.ipsec is not None and config.ipsec.mode == "transport"
    assert config.kernel_esp
    path.write_text(kernel + "ipsec:\n  psk: a-long-shared-secret\n  mode: tunnel\n")
    config = load_config(path)
    assert config.ipsec is not None and config.ipsec.mode == "tunnel" and config.kernel_esp
    path.write_text(IPSEC_BASE + "ipsec:\n  psk: a-long-shared-secret\n")
    assert not load_config(path).kernel_esp


def test_ipsec_certificates_are_read_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("CA")
    (tmp_path / "node.pem").write_text("CERT")
    section = "ipsec: {ca: ca.pem, certificate: node.pem, private_key: node.key}\n"
    problems = _problems(tmp_path, IPSEC_BASE + section)
    assert problems == [
        f"ipsec.private_key: cannot read {tmp_path / 'node.key'}: No such file or directory"
    ]
    (tmp_path / "node.key").write_text("KEY")
    path = tmp_path / "node.yaml"
    config = load_config(path)
    assert config.ipsec is not None and config.ipsec.binding_on  # default with certificates
    assert config.ipsec.read_credentials() == {
        "ca": b"CA",
        "certificate": b"CERT",
        "private_key": b"KEY",
    }
    assert config.ipsec_identity() == "10.0.0.11"  # the tunnel address, from the cert's SAN


def test_ipsec_interfaces_share_a_tunnel_source_by_key() -> None:
    """With ipsec, two interfaces on one source share each peer's SA: allowed
    with different GRE keys, refused (by the key) without."""
    from dmvpn.config import parse_config

    def data(key_a: int | None, key_b: int | None) -> dict[str, Any]:
        def itf(name: str, address: str, key: int | None, nid: int) -> dict[str, Any]:
            tunnel: dict[str, Any] = {"source": "198.51.100.11"}
            if key is not None:
                tunnel["key"] = key
            return {"name": name, "address": address, "tunnel": tunnel, "nhrp": {"network_id": nid}}

        return {
            "node": "n",
            "ipsec": {"psk": "a-long-shared-secret"},
            "interfaces": [itf("a", "10.0.0.11/24", key_a, 1), itf("b", "10.0.1.11/24", key_b, 2)],
        }

    assert len(parse_config(data(1, 2)).interfaces) == 2
    with pytest.raises(ConfigError) as info:
        parse_config(data(None, None))
    assert info.value.problems == [
        "(top level): interfaces.1.tunnel.key: no key is already used by interfaces.0 on the "
        "same underlay (198.51.100.11): each cloud on one underlay needs its own tunnel.key"
    ]


def test_ipsec_example_names_its_missing_pki(tmp_path: Path) -> None:
    import shutil

    shutil.copy(EXAMPLES / "spoke-ipsec.yaml", tmp_path / "spoke.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "spoke.yaml")
    assert f"ipsec.ca: cannot read {tmp_path / 'pki' / 'ca.pem'}: No such file or directory" in (
        info.value.problems
    )
    (tmp_path / "pki").mkdir()
    for name in ("ca.pem", "spoke1.pem", "spoke1.key"):
        (tmp_path / "pki" / name).write_text("PEM")
    config = load_config(tmp_path / "spoke.yaml")
    assert config.ipsec is not None and config.ipsec.binding_on
    assert config.ipsec.idle_timeout == 10 and config.ipsec.ike_lifetime == 14400


def test_dual_stack_example_gives_one_engine_config_per_family() -> None:
    spoke = load_config(EXAMPLES / "spoke-dual-stack.yaml")
    hub = load_config(EXAMPLES / "hub-dual-stack.yaml").interfaces[0]
    itf = spoke.interfaces[0]
    v4, v6 = itf.engine_config(4), itf.engine_config(6)
    assert v4.protocol_address == IPv4Address("10.0.0.11")
    assert [n.protocol for n in v4.nhs] == [IPv4Address("10.0.0.1")]
    assert v6.protocol_address == IPv6Address("fd00::11")
    assert [(n.protocol, n.nbma) for n in v6.nhs] == [
        (IPv6Address("fd00::1"), IPv4Address("192.0.2.1"))
    ]
    assert v6.nbma_address == v4.nbma_address and v6.shortcut and not v6.server
    assert hub.engine_config(6).server and hub.engine_config(6).redirect
    assert [r.prefix.version for r in spoke.routes] == [4, 6]
    # An IPv4-only interface has no IPv6 engine.
    with pytest.raises(ValueError, match="no ipv6_address"):
        load_config(EXAMPLES / "spoke.yaml").interfaces[0].engine_config(6)


DUAL = """\
node: spoke1
interfaces:
  - name: dmvpn0
    address: 10.0.0.11/24
    ipv6_address: IPV6
    tunnel: {source: 198.51.100.11}
    nhrp:
      network_id: 1
      nhs:
        - {address: NHS, nbma: 192.0.2.1}
      map:
        - {address: MAP, nbma: 192.0.2.7}
routes:
  - {prefix: PREFIX, via: VIA}
"""


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"IPV6": "null"},
            "interfaces.0: nhrp.nhs.0.address fd00::1 is IPv6 but the interface "
            "has no ipv6_address",
        ),
        ({"NHS": "fd01::1"}, "interfaces.0: nhrp.nhs.0.address fd01::1 is outside fd00::/64"),
        ({"NHS": "fd00::11"}, "interfaces.0: nhrp.nhs.0.address is this interface's own address"),
        ({"MAP": "fd01::7"}, "interfaces.0: nhrp.map.0.address fd01::7 is outside fd00::/64"),
        ({"IPV6": "fe80::11/64"}, "interfaces.0: ipv6_address fe80::11/64 must be a unicast"),
        ({"IPV6": "fd00::11/128"}, "with a prefix of at most /126"),
        ({"    tunnel:": "    mtu: 1000\n    tunnel:"}, "mtu 1000 is below IPv6's minimum"),
        ({"VIA": "10.0.0.1"}, "routes.0: via 10.0.0.1 is not of the family of prefix fd00::/16"),
        ({"IPV6": "10.0.0.12/24"}, "interfaces.0.ipv6_address:"),
    ],
)
def test_dual_stack_errors_name_field_and_reason(
    tmp_path: Path, changes: dict[str, str], expected: str
) -> None:
    values = {
        "IPV6": "fd00::11/64",
        "NHS": "fd00::1",
        "MAP": "fd00::7",
        "PREFIX": "fd00::/16",
        "VIA": "fd00::1",
        **changes,
    }
    text = DUAL
    for key, value in values.items():
        text = text.replace(key, value)
    problems = _problems(tmp_path, text)
    assert any(expected in p for p in problems), problems


def test_ipv6_routes_need_an_ipv6_interface(tmp_path: Path) -> None:
    text = (EXAMPLES / "spoke.yaml").read_text() + '  - {prefix: "fd00::/16", via: "fd00::1"}\n'
    problems = _problems(tmp_path, text)
    assert problems == ["(top level): IPv6 routes need an interface with an ipv6_address"], problems


def test_dual_stack_lab_gives_valid_node_configs() -> None:
    from dmvpn.config import parse_config
    from dmvpn.lab.topology import Topology

    topo = Topology.from_data({"ipv6": True})
    spoke = parse_config(topo.node_config("spoke2"))
    itf = spoke.interfaces[0]
    assert str(itf.ipv6_address) == "fd00::12/64"
    assert [str(n.protocol) for n in itf.engine_config(6).nhs] == ["fd00::1"]
    assert [str(r.prefix) for r in spoke.routes] == ["192.168.0.0/16", "fd00::/16"]
    hub = parse_config(topo.node_config("hub1"))
    assert ("fd00:2::/64", "fd00::12") in {(str(r.prefix), str(r.via)) for r in hub.routes}
    assert str(topo.plan("host2").lan6) == "fd00:2::10/64"
    assert str(topo.plan("spoke2").lan6) == "fd00:2::1/64"
    # Without the switch nothing IPv6 appears (IPv4-only labs as before).
    plain = Topology.from_data({})
    assert "ipv6_address" not in plain.node_config("spoke2")["interfaces"][0]
    assert plain.plan("host2").lan6 is None


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (
            "tcp_adjust_mss: 1380",
            "interfaces.0: tcp_adjust_mss 1380 does not fit the tunnel: mtu 1400 leaves "
            "1360 for TCP payload after the IPv4 and TCP headers",
        ),
        ("tcp_adjust_mss: 400", "interfaces.0.tcp_adjust_mss: Input should be greater than"),
    ],
)
def test_tcp_adjust_mss_must_fit_the_tunnel(tmp_path: Path, setting: str, expected: str) -> None:
    text = IPSEC_BASE.replace("    tunnel:", f"    {setting}\n    tunnel:")
    problems = _problems(tmp_path, text)
    assert any(p.startswith(expected) for p in problems), problems
    ok = tmp_path / "ok.yaml"
    ok.write_text(IPSEC_BASE.replace("    tunnel:", "    tcp_adjust_mss: 1360\n    tunnel:"))
    assert load_config(ok).interfaces[0].tcp_adjust_mss == 1360
    res = CliRunner().invoke(main, ["check", str(ok)])
    assert res.exit_code == 0 and ", tcp adjust-mss 1360" in res.output, res.output


def test_ipsec_esp_and_auto_planes_are_resolved_by_the_node(tmp_path: Path) -> None:
    """`ipsec.esp: auto` (the default): the daemon picks the kernel's ESP
    where the host has it (transport by default) or kernel-libipsec (tunnel);
    `dataplane: auto` interfaces go on the kernel plane only with the
    kernel's ESP."""
    path = tmp_path / "node.yaml"
    auto = IPSEC_BASE.replace("    tunnel:", "    dataplane: auto\n    tunnel:", 1)
    path.write_text(auto + "ipsec:\n  psk: a-long-shared-secret\n")
    config = load_config(path)
    assert config.ipsec is not None and config.ipsec.mode is None and not config.kernel_esp
    res = CliRunner().invoke(main, ["check", str(path)])
    assert (
        res.exit_code == 0
        and "transport mode with the kernel's ESP where the host has it, else tunnel" in res.output
    )
    kernel = config.resolved(kernel_esp=True, kernel_plane=True)
    assert [i.dataplane for i in kernel.interfaces] == ["kernel"] and kernel.kernel_esp
    assert kernel.ipsec is not None and (kernel.ipsec.esp, kernel.ipsec.mode) == (
        "kernel",
        "transport",
    )
    # The kernel's ESP on the userspace plane (no ip_gre, say).
    userspace_esp = config.resolved(kernel_esp=True, kernel_plane=False)
    assert [i.dataplane for i in userspace_esp.interfaces] == ["auto"]
    assert userspace_esp.kernel_esp and userspace_esp.ipsec.mode == "transport"  # type: ignore[union-attr]
    libipsec = config.resolved(kernel_esp=False, kernel_plane=False)
    assert [i.dataplane for i in libipsec.interfaces] == ["auto"] and not libipsec.kernel_esp
    assert libipsec.ipsec is not None and (libipsec.ipsec.esp, libipsec.ipsec.mode) == (
        "libipsec",
        "tunnel",
    )
    # An explicit mode is kept; transport without the kernel's ESP is refused, named.
    path.write_text(auto + "ipsec:\n  psk: a-long-shared-secret\n  mode: transport\n")
    config = load_config(path)
    assert config.resolved(True, True).ipsec.mode == "transport"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"ipsec\.mode: transport needs the kernel's ESP"):
        config.resolved(kernel_esp=False, kernel_plane=False)
    # esp: libipsec decides in the config: tunnel; and cannot serve the kernel plane.
    path.write_text(IPSEC_BASE + "ipsec:\n  psk: a-long-shared-secret\n  esp: libipsec\n")
    assert load_config(path).ipsec.mode == "tunnel"  # type: ignore[union-attr]
    kernel_plane = IPSEC_BASE.replace("    tunnel:", "    dataplane: kernel\n    tunnel:", 1)
    problems = _problems(
        tmp_path, kernel_plane + "ipsec: {psk: a-long-shared-secret, esp: libipsec}\n"
    )
    assert any("ipsec.esp: libipsec cannot protect dataplane: kernel" in p for p in problems)
    # Without ipsec nothing is resolved.
    path.write_text(auto)
    plain = load_config(path)
    assert plain.resolved(True, True) is plain
