"""IPsec proxy instantiation end to end: real charons (one private charon per
node, kernel-libipsec), real GRE and NHRP in network namespaces, and a
capture of the underlay."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dmvpn.ipsec.charon import CHARON
from dmvpn.ipsec.settings import strongswan_conf
from dmvpn.lab.netns import Lab
from dmvpn.lab.topology import Topology

from ..ipsec.certs import make_ca, make_cert
from .test_cloud import DMVPN, Cloud

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root for network namespaces (CI runs as root)"
)

PSK = "lab-psk-0123456789abcdef"


class IpsecCloud(Cloud):
    def __init__(self, lab: Lab, topo: Topology, logs: Path,
                 ipsec: dict[str, dict[str, Any]]) -> None:  # fmt: skip
        super().__init__(lab, topo, logs)
        self.ipsec = ipsec  # node -> its `ipsec` section
        self.interface_overrides: dict[str, dict[str, Any]] = {}
        self.capture: subprocess.Popen[bytes] | None = None

    def start(self, node: str) -> None:
        config = json.loads(json.dumps(self.topo.node_config(node), default=str))
        for key, value in self.interface_overrides.get(node, {}).items():
            config["interfaces"][0][key] = value
        config["ipsec"] = dict(self.ipsec[node])
        if config["ipsec"].get("charon") != "external":
            config["ipsec"]["run_dir"] = str(self.logs / f"{node}-charon")
        config["socket"] = str(self.logs / f"{node}.sock")
        cfg = self.logs / f"{node}.yaml"
        cfg.write_text(yaml.safe_dump(config))
        log = (self.logs / f"{node}.log").open("a")
        self.procs[node] = self.lab.popen(node, [DMVPN, "run", "-c", str(cfg)], stdout=log,
                                          stderr=log)  # fmt: skip

    def show(self, node: str, *what: str) -> Any:
        out = self.sh(node, DMVPN, "show", *what, "--json", "--socket",
                      str(self.logs / f"{node}.sock"))  # fmt: skip
        return json.loads(out)

    def ipsec_peers(self, node: str) -> dict[str, dict[str, Any]]:
        return {p["remote"]: p for p in self.show(node, "ipsec")["peers"]}

    def ipsec_failures(self, node: str) -> list[str]:
        return [e["reason"] for e in self.events(node, "ipsec-failed")]

    def assert_ike_met_configured_charons(self) -> None:
        """No peer met a charon whose connections were not loaded yet: each
        managed charon held IKE until its daemon had loaded it (hold.py), no
        charon answered "no IKE config found" (NO_PROPOSAL_CHOSEN), and no
        daemon saw that answer."""
        for plan in self.topo.routers:
            node = plan.name
            if self.ipsec[node].get("charon") == "external":
                continue
            assert not self.events(node, "ipsec-hold-unavailable"), node
            ready = self.events(node, "ipsec-ready")
            assert ready and all("ike_held_ms" in e for e in ready), (node, ready)
            log = (self.logs / f"{node}-charon" / "charon.log").read_text()
            unconfigured = [line for line in log.splitlines() if "no IKE config found" in line]
            assert not unconfigured, (node, unconfigured)
            refused = [r for r in self.ipsec_failures(node) if "NO_PROPOSAL_CHOSEN" in r]
            assert not refused, (node, refused)


@pytest.fixture
def ipsec_factory(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    labs: list[Lab] = []

    def make(phase: int, holdtime: int = 60, ipsec: dict[str, Any] | None = None,
             per_node: dict[str, dict[str, Any]] | None = None, wait: bool = True,
             spokes: int = 3, overrides: dict[str, dict[str, Any]] | None = None,
             external: tuple[str, ...] = (),
             capture: Path | None = None) -> IpsecCloud:  # fmt: skip
        nodes = {"spokes": [{"name": f"spoke{n}"} for n in range(1, spokes + 1)]}
        topo = Topology.from_data({"phase": phase, "holdtime": holdtime, "nodes": nodes})
        lab = Lab(topo, prefix=f"dmi{os.getpid() % 100000}-",
                  state_path=tmp_path / "lab.json")  # fmt: skip
        labs.append(lab)
        lab.up()
        base = ipsec or {"psk": PSK, "idle_timeout": 2}
        sections = {p.name: dict(base, **(per_node or {}).get(p.name, {})) for p in topo.routers}
        for node in external:
            sock = _external_charon(lab, node, tmp_path)
            sections[node].update(charon="external", vici_socket=str(sock))
        cloud = IpsecCloud(lab, topo, tmp_path, sections)
        cloud.interface_overrides = overrides or {}
        if capture is not None:
            cloud.capture = _capture(cloud, capture)
        for plan in topo.routers:
            cloud.start(plan.name)
        if wait:
            spokes = [p.name for p in topo.spokes]
            cloud.wait("every spoke to register",
                       lambda: all(cloud.events(s, "nhs-up") for s in spokes))  # fmt: skip
        return cloud

    try:
        yield make
    finally:
        for lab in labs:
            lab.down()


def _external_charon(lab: Lab, node: str, tmp: Path) -> Path:
    """A charon the operator runs (not the daemon): in the node's namespace,
    with its own /run, configured for kernel-libipsec."""
    work = tmp / f"{node}-external"
    (work / "run").mkdir(parents=True)
    sock = work / "charon.vici"
    (work / "strongswan.conf").write_text(strongswan_conf(work, sock, work / "charon.log"))
    script = f"mount --make-rprivate / && mount --bind {work / 'run'} /run && exec {CHARON}"
    out = (work / "charon.out").open("w")
    lab.popen(node, ["unshare", "--mount", "sh", "-c", script], stdout=out, stderr=out,
              env=dict(os.environ, STRONGSWAN_CONF=str(work / "strongswan.conf")))  # fmt: skip
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert time.monotonic() < deadline, (work / "charon.out").read_text()
        time.sleep(0.05)
    time.sleep(0.2)
    return sock


def _only_ike_and_esp(cloud: Cloud, pcap: Path) -> list[tuple[str, str, str, str]]:
    """The capture's IPv4 packets, checked: IKE and ESP in UDP between NBMA
    addresses, no GRE, NHRP or plain ESP."""
    rows = _protocols(pcap)
    nbma = {str(p.nbma.ip) for p in cloud.topo.routers}  # type: ignore[union-attr]
    assert rows
    for src, dst, proto, port in rows:
        if proto == "2" and dst.startswith("224."):
            continue  # IGMP from the lab's bridge ports joining groups: not ours
        if proto == "1,17":
            # An ICMP error quoting IKE: a spoke's first IKE_SA_INIT reached
            # the hub before the hub's charon listened (port unreachable).
            src, dst = src.split(",")[0], dst.split(",")[0]
            assert port in {"500", "4500"}, (src, dst, proto, port)
            continue
        assert src in nbma and dst in nbma, (src, dst, proto)
        # IKE (UDP 500, then 4500) and ESP in UDP 4500: nothing else.
        assert proto == "17" and port in {"500", "4500"}, (src, dst, proto, port)
    assert not [r for r in rows if r[2] in {"47", "54", "50"}]
    return rows


def _capture(cloud: Cloud, pcap: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    assert shutil.which("tshark"), "tshark is installed by ./run.sh test"
    errors = (pcap.parent / "tshark.err").open("w")
    proc = cloud.lab.popen("inet", ["tshark", "-q", "-i", "br0", "-w", str(pcap)],
                           stdout=errors, stderr=errors)  # fmt: skip
    time.sleep(1.5)  # tshark needs a moment before it captures
    return proc


def _protocols(pcap: Path) -> list[tuple[str, str, str, str]]:
    """(source, destination, IP protocol, UDP destination port) per IPv4 packet."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "ip", "-T", "fields", "-e", "ip.src", "-e", "ip.dst",
         "-e", "ip.proto", "-e", "udp.dstport"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [tuple(line.split("\t")) for line in out.splitlines() if line.strip()]
    return [(r + ("",) * 4)[:4] for r in rows]  # type: ignore[misc]


def test_phase3_sas_on_demand_and_no_cleartext(ipsec_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pcap = tmp_path / "underlay.pcap"
    cloud: IpsecCloud = ipsec_factory(3, holdtime=10, wait=False)
    tshark = _capture(cloud, pcap)
    try:
        spokes = [p.name for p in cloud.topo.spokes]
        cloud.wait("every spoke to register over IPsec",
                   lambda: all(cloud.events(s, "nhs-up") for s in spokes), timeout=30)  # fmt: skip
        hub_nbma = str(cloud.topo.plan("hub1").nbma.ip)  # type: ignore[union-attr]
        s1_nbma = str(cloud.topo.plan("spoke1").nbma.ip)  # type: ignore[union-attr]
        s2_nbma = str(cloud.topo.plan("spoke2").nbma.ip)  # type: ignore[union-attr]
        # Registration went over an SA the spoke initiated at start.
        peers = cloud.ipsec_peers("spoke1")
        assert set(peers) == {hub_nbma}, peers
        assert peers[hub_nbma]["state"] == "up" and peers[hub_nbma]["initiated"]
        assert peers[hub_nbma]["child"]["mode"] == "TUNNEL"
        assert peers[hub_nbma]["child"]["encryption"] == "AES_GCM_16-256"
        assert peers[hub_nbma]["ike"]["dh_group"] == "CURVE_25519"
        assert peers[hub_nbma]["child"]["local_ts"] == [f"{s1_nbma}/32[gre]"]
        # No spoke-to-spoke SA before traffic between the spokes.
        assert s2_nbma not in cloud.ipsec_peers("spoke1")

        host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
        spoke2 = str(cloud.topo.plan("spoke2").tunnel.ip)  # type: ignore[union-attr]
        hub = str(cloud.topo.plan("hub1").tunnel.ip)  # type: ignore[union-attr]
        first = cloud.hops("host1", host2)
        assert first[1] == hub and first[-1] == host2, first
        cloud.wait(
            "the spoke-to-spoke SA",
            lambda: cloud.ipsec_peers("spoke1").get(s2_nbma, {}).get("state") == "up",
        )
        cloud.wait("the shortcut route",
                   lambda: "proto 177" in cloud.sh("spoke1", "ip", "route"))  # fmt: skip
        later = cloud.hops("host1", host2)
        assert later[1] == spoke2 and hub not in later, later
        shown = cloud.sh("spoke1", DMVPN, "show", "dmvpn", "--socket",
                         str(cloud.logs / "spoke1.sock"))  # fmt: skip
        assert shown.count("IPsec: UP") == 2, shown  # the hub and spoke2
        text = cloud.sh("spoke1", DMVPN, "show", "ipsec", "--socket",
                        str(cloud.logs / "spoke1.sock"))  # fmt: skip
        assert f"Peer {s2_nbma} (from {s1_nbma}): UP" in text, text
        assert cloud.lab.exec("host1", ["ping", "-c", "3", "-i", "0.2", "-W", "1",
                                        host2]).returncode == 0  # fmt: skip

        # Counters come from charon (read every 2 s): pings go over the SA.
        # One more ping per look: when both spokes initiated, the SA that
        # carried the first pings may be the duplicate one side drops (its
        # replacement starts at zero; issue 18), and the test is about the
        # direct SA carrying the traffic, not about which of the two.
        def esp_out() -> int:
            cloud.lab.exec("host1", ["ping", "-c", "1", "-W", "1", host2], capture_output=True)
            return int((cloud.ipsec_peers("spoke1")[s2_nbma]["child"] or {}).get("packets_out", 0))

        cloud.wait("ESP counters on the direct SA", lambda: esp_out() >= 3)
        # Both spokes may have initiated at once (each answered the other's
        # resolution): one IKE SA per pair remains.
        vici = f"unix://{cloud.logs / 'spoke1-charon' / 'charon.vici'}"

        def ike_sas_to_spoke2() -> int:
            out = subprocess.run(["swanctl", "--list-sas", "--uri", vici], capture_output=True,
                                 text=True, check=True).stdout  # fmt: skip
            return sum(1 for line in out.splitlines() if f"@ {s2_nbma}[" in line)

        cloud.wait("a single IKE SA between the spokes", lambda: ike_sas_to_spoke2() == 1)
        assert cloud.lab.exec("host1", ["ping", "-c", "2", "-W", "1", host2]).returncode == 0
        # The shortcut expires without traffic (holding time 10 s), then the
        # SA goes after its idle time (2 s).
        cloud.wait("the spoke-to-spoke SA to be torn down",
                   lambda: s2_nbma not in cloud.ipsec_peers("spoke1")
                   and s1_nbma not in cloud.ipsec_peers("spoke2"), timeout=40)  # fmt: skip
        assert "proto 177" not in cloud.sh("spoke1", "ip", "route")
        assert cloud.ipsec_peers("spoke1")[hub_nbma]["state"] == "up"
    finally:
        tshark.terminate()
        tshark.wait(timeout=10)
    rows = _only_ike_and_esp(cloud, pcap)
    assert {(s1_nbma, s2_nbma), (s2_nbma, s1_nbma)} & {(r[0], r[1]) for r in rows}


@pytest.mark.parametrize("phase", [1, 2])
def test_phases_1_and_2_over_ipsec(ipsec_factory, phase: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pcap = tmp_path / "underlay.pcap"
    cloud: IpsecCloud = ipsec_factory(phase, capture=pcap)
    hub = str(cloud.topo.plan("hub1").tunnel.ip)  # type: ignore[union-attr]
    spoke2 = str(cloud.topo.plan("spoke2").tunnel.ip)  # type: ignore[union-attr]
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    hub_nbma = str(cloud.topo.plan("hub1").nbma.ip)  # type: ignore[union-attr]
    s2_nbma = str(cloud.topo.plan("spoke2").nbma.ip)  # type: ignore[union-attr]
    first = cloud.hops("host1", host2)
    assert first[1] == hub and first[-1] == host2, first
    if phase == 1:
        time.sleep(1.0)
        later = cloud.hops("host1", host2)
        assert later[1] == hub, later  # never direct
        assert set(cloud.ipsec_peers("spoke1")) == {hub_nbma}
    else:
        cloud.wait(
            "the spoke-to-spoke SA",
            lambda: cloud.ipsec_peers("spoke1").get(s2_nbma, {}).get("state") == "up",
        )
        cloud.wait("the direct path", lambda: cloud.hops("host1", host2)[1] == spoke2)
    ping = ["ping", "-c", "3", "-i", "0.2", "-W", "1", host2]
    assert cloud.lab.exec("host1", ping).returncode == 0
    assert cloud.capture is not None
    cloud.capture.terminate()
    cloud.capture.wait(timeout=10)
    rows = _only_ike_and_esp(cloud, pcap)
    s1_nbma = str(cloud.topo.plan("spoke1").nbma.ip)  # type: ignore[union-attr]
    direct = {(r[0], r[1]) for r in rows} & {(s1_nbma, s2_nbma)}
    assert bool(direct) == (phase == 2)  # spoke to spoke only in phase 2


def test_wrong_psk_is_refused_and_disturbs_nothing(ipsec_factory) -> None:  # type: ignore[no-untyped-def]
    cloud: IpsecCloud = ipsec_factory(3, per_node={"spoke3": {"psk": "not-the-cloud-secret"}},
                                      wait=False)  # fmt: skip
    cloud.wait(
        "spoke1 and spoke2 to register",
        lambda: all(cloud.events(s, "nhs-up") for s in ("spoke1", "spoke2")),
    )

    # What spoke3 must report is the authentication failure; wait for it
    # rather than take its first attempt. Every attempt fails the same way:
    # the hub's charon holds IKE until its connections are loaded, so none
    # meets an unconfigured charon (NO_PROPOSAL_CHOSEN).
    def auth_failures() -> list[dict]:  # type: ignore[type-arg]
        failed = cloud.events("spoke3", "ipsec-failed")
        return [e for e in failed if "AUTHENTICATION_FAILED" in e["reason"]]

    cloud.wait("spoke3's IPsec authentication failure", auth_failures, timeout=30)
    hub_nbma = str(cloud.topo.plan("hub1").nbma.ip)  # type: ignore[union-attr]
    assert {e["remote"] for e in auth_failures()} == {hub_nbma}
    failures = cloud.ipsec_failures("spoke3")
    assert all("AUTHENTICATION_FAILED" in r for r in failures), failures
    time.sleep(2)
    assert not cloud.events("spoke3", "nhs-up")
    registered = {e["protocol"] for e in cloud.events("hub1", "registered")}
    assert str(cloud.topo.plan("spoke3").tunnel.ip) not in registered  # type: ignore[union-attr]
    peer = cloud.ipsec_peers("spoke3")[hub_nbma]
    assert peer["state"] == "failed" and "AUTHENTICATION_FAILED" in peer["last_error"]
    # Without an SA, spoke3 tries cleartext: a real Registration Request in
    # GRE straight to the hub's NBMA address. The hub's GRE socket only
    # listens on kernel-libipsec's device: nothing is registered.
    inject = (
        "import socket; from ipaddress import IPv4Address as A;"
        "from dmvpn.nhrp import Engine, EngineConfig, NhsConfig, SendPacket;"
        "from dmvpn.wire import GrePacket;"
        "e = Engine(EngineConfig(protocol_address=A('10.0.0.13'), nbma_address=A('172.30.0.13'),"
        " nhs=(NhsConfig(A('10.0.0.1'), A('172.30.0.1')),), registration_unique=False));"
        "e.start(0.0); (reg,) = [o for o in e.pop_outputs() if isinstance(o, SendPacket)];"
        "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47);"
        "[s.sendto(GrePacket(0x2001, reg.data, key=42).encode(), ('172.30.0.1', 0))"
        " for _ in range(5)]"
    )  # fmt: skip
    sent = cloud.lab.exec("spoke3", [sys.executable, "-c", inject], capture_output=True,
                          text=True)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    time.sleep(1.0)
    registered = {e["protocol"] for e in cloud.events("hub1", "registered")}
    assert "10.0.0.13" not in registered
    # The rest of the cloud works.
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    assert cloud.lab.exec("host1", ["ping", "-c", "2", "-W", "1", host2]).returncode == 0
    cloud.assert_ike_met_configured_charons()


def test_killed_charon_is_restarted_and_the_spoke_comes_back(ipsec_factory) -> None:  # type: ignore[no-untyped-def]
    cloud: IpsecCloud = ipsec_factory(3, holdtime=15)
    pid = cloud.show("spoke1", "ipsec")["charon"]["pid"]
    assert pid
    os.kill(pid, signal.SIGKILL)  # the charon the spoke1 daemon started
    cloud.wait("spoke1 to notice", lambda: cloud.events("spoke1", "ipsec-charon-died"))
    cloud.wait("charon restarted", lambda: len(cloud.events("spoke1", "ipsec-ready")) >= 2)
    new = cloud.show("spoke1", "ipsec")["charon"]
    assert new["pid"] != pid and new["restarts"] == 1
    hub_nbma = str(cloud.topo.plan("hub1").nbma.ip)  # type: ignore[union-attr]
    cloud.wait(
        "the SA to the hub again",
        lambda: cloud.ipsec_peers("spoke1").get(hub_nbma, {}).get("state") == "up",
    )

    def nhs() -> dict[str, Any]:
        (entry,) = cloud.show("spoke1", "nhrp", "nhs")["nhs"]
        return entry  # type: ignore[no-any-return]

    before = nhs()["request_id"]
    # The next refresh (holding time / 3) goes over the new SA and is answered.
    cloud.wait(
        "spoke1 to refresh its registration",
        lambda: nhs()["request_id"] > before and nhs()["expires_in"] > 12,
        timeout=15,
    )
    assert nhs()["state"] == "up" and not cloud.events("spoke1", "nhs-down")
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    assert cloud.lab.exec("host1", ["ping", "-c", "3", "-W", "1", host2]).returncode == 0


def test_certificates_identity_binding_and_an_untrusted_ca(ipsec_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """spoke1 and spoke2: good certificates (phase 3 works, the direct answer
    passes identity binding). spoke3: a valid certificate for 10.0.0.13 but
    configured with spoke2's address 10.0.0.12: refused, spoke2 keeps it.
    spoke4: a certificate from a CA nobody trusts: no SA, no registration."""
    ca = make_ca(tmp_path / "pki")
    rogue = make_ca(tmp_path / "rogue", "rogue")
    per_node: dict[str, dict[str, Any]] = {}
    for name, ip, issuer in (("hub1", "10.0.0.1", ca), ("spoke1", "10.0.0.11", ca),
                             ("spoke2", "10.0.0.12", ca), ("spoke3", "10.0.0.13", ca),
                             ("spoke4", "10.0.0.14", rogue)):  # fmt: skip
        cert, key = make_cert(issuer, name, ip)
        per_node[name] = {"ca": str(ca.cert), "certificate": str(cert), "private_key": str(key),
                          "identity": ip}  # fmt: skip
    cloud: IpsecCloud = ipsec_factory(
        3, ipsec={"idle_timeout": 2}, per_node=per_node, wait=False, spokes=4,
        overrides={"spoke3": {"address": "10.0.0.12/24"}},
    )  # fmt: skip
    cloud.wait(
        "spoke1 and spoke2 to register",
        lambda: all(cloud.events(s, "nhs-up") for s in ("spoke1", "spoke2")),
    )
    cloud.wait(
        "the hub to refuse spoke3's claim",
        lambda: cloud.events("hub1", "identity-refused"),
        timeout=20,
    )
    (refusal, *_) = cloud.events("hub1", "identity-refused")
    assert refusal["message"] == ("registration for 10.0.0.12 from 172.30.0.13 refused: its IPsec "
                                  "identity may claim 10.0.0.13/32")  # fmt: skip
    # spoke4's certificate is refused: wait for that failure (not merely a
    # first one), and every attempt fails so (none met an unconfigured hub).
    cloud.wait(
        "spoke4's IPsec authentication failure",
        lambda: any("AUTHENTICATION_FAILED" in r for r in cloud.ipsec_failures("spoke4")),
    )
    failures = cloud.ipsec_failures("spoke4")
    assert all("AUTHENTICATION_FAILED" in r for r in failures), failures
    time.sleep(1)
    assert not cloud.events("spoke3", "nhs-up") and not cloud.events("spoke4", "nhs-up")
    # spoke2 keeps its address at the hub; nothing is bound to spoke3 or spoke4.
    hub_cache = {e["protocol"]: e for e in cloud.show("hub1", "nhrp")["entries"]}
    assert hub_cache["10.0.0.12/32"]["nbma"] == "172.30.0.12"
    assert "10.0.0.14/32" not in hub_cache
    traffic = cloud.show("hub1", "ipsec")
    assert traffic["identity_binding"] and traffic["authentication"] == "certificate"
    hub_peers = {p["remote"]: p for p in traffic["peers"]}
    assert hub_peers["172.30.0.11"]["ike"]["remote_id"] == "10.0.0.11"
    # Phase 3 between the good spokes, over a certificate-authenticated SA.
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    spoke2 = str(cloud.topo.plan("spoke2").tunnel.ip)  # type: ignore[union-attr]
    cloud.hops("host1", host2)
    cloud.wait("the direct path", lambda: cloud.hops("host1", host2)[1] == spoke2)
    assert cloud.ipsec_peers("spoke1")["172.30.0.12"]["ike"]["remote_id"] == "10.0.0.12"
    assert not cloud.events("spoke1", "identity-refused")
    cloud.assert_ike_met_configured_charons()


def test_external_charon(ipsec_factory) -> None:  # type: ignore[no-untyped-def]
    """spoke1 uses a charon it did not start (`charon: external`): the daemon
    loads its connections into it, brings SAs up and leaves it running."""
    cloud: IpsecCloud = ipsec_factory(2, spokes=2, external=("spoke1",))
    view = cloud.show("spoke1", "ipsec")
    assert view["charon"]["mode"] == "external" and view["charon"]["pid"] is None
    hub_nbma = str(cloud.topo.plan("hub1").nbma.ip)  # type: ignore[union-attr]
    s2_nbma = str(cloud.topo.plan("spoke2").nbma.ip)  # type: ignore[union-attr]
    assert cloud.ipsec_peers("spoke1")[hub_nbma]["state"] == "up"
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    cloud.hops("host1", host2)
    cloud.wait(
        "the spoke-to-spoke SA",
        lambda: cloud.ipsec_peers("spoke1").get(s2_nbma, {}).get("state") == "up",
    )
    assert cloud.lab.exec("host1", ["ping", "-c", "2", "-W", "1", host2]).returncode == 0
    # Stopping the daemon takes down what it brought up, not the charon.
    cloud.stop("spoke1")
    vici = f"unix://{cloud.logs / 'spoke1-external' / 'charon.vici'}"
    out = subprocess.run(["swanctl", "--list-sas", "--uri", vici], capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr  # still running
    assert "ESTABLISHED" not in out.stdout, out.stdout


def test_hub_restart_brings_every_spoke_back_over_new_sas(ipsec_factory) -> None:  # type: ignore[no-untyped-def]
    cloud: IpsecCloud = ipsec_factory(3, holdtime=12)
    hub_nbma = str(cloud.topo.plan("hub1").nbma.ip)  # type: ignore[union-attr]
    cloud.stop("hub1")  # its charon says DELETE to every spoke on the way out
    cloud.wait("spoke1 to see its SA go", lambda: cloud.events("spoke1", "ipsec-down"))
    before = len(cloud.events("hub1", "registered"))
    cloud.start("hub1")
    cloud.wait(
        "every spoke to register again",
        lambda: len(cloud.events("hub1", "registered")) >= before + 3,
        timeout=30,
    )
    for spoke in ("spoke1", "spoke2", "spoke3"):
        cloud.wait(
            f"{spoke}'s SA to the hub",
            lambda s=spoke: cloud.ipsec_peers(s).get(hub_nbma, {}).get("state") == "up",
        )
    host2 = str(cloud.topo.plan("host2").lan.ip)  # type: ignore[union-attr]
    assert cloud.lab.exec("host1", ["ping", "-c", "3", "-W", "1", host2]).returncode == 0
    # The spokes retried while the hub was away; none met its new charon
    # before the restarted daemon had loaded it.
    assert len(cloud.events("hub1", "ipsec-ready")) == 2
    cloud.assert_ike_met_configured_charons()
