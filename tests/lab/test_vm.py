"""dmvpn.lab.vm: the pure parts (module order, kernel extraction, the cpio
writer, MACs) without root, and one real guest's life with root: boot on the
host's root, commands through the agent (concurrent ones too), a failing boot
script reported with its console, halt copying files out, and a `kill -9` of
the builder leaving nothing once `lab down` ran."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dmvpn.lab import Lab, LabError, Topology
from dmvpn.lab.guestkernel import _Cpio, _interpreter, extract_elf, module_order
from dmvpn.lab.netns import FRR_NBMA_TAP
from dmvpn.lab.vm import GuestSpec, Nic, VirtualMachine, _mac

DMVPN = str(Path(sys.executable).with_name("dmvpn"))

MODULES_DEP = """\
fs/9p.ko: net/9pnet.ko fs/fscache.ko fs/netfs.ko
net/9pnet.ko:
fs/fscache.ko: fs/netfs.ko
fs/netfs.ko:
drv/virtio_pci.ko: drv/virtio_ring.ko drv/virtio.ko
drv/virtio_ring.ko: drv/virtio.ko
drv/virtio.ko:
net/9pnet_virtio.ko: net/9pnet.ko drv/virtio_ring.ko drv/virtio.ko
"""


def test_module_order_loads_dependencies_first_and_once() -> None:
    order = [Path(p).name for p in module_order(MODULES_DEP, ["virtio_pci", "9pnet_virtio", "9p"])]
    assert order == [
        "virtio.ko",
        "virtio_ring.ko",
        "virtio_pci.ko",
        "9pnet.ko",
        "9pnet_virtio.ko",
        "netfs.ko",
        "fscache.ko",
        "9p.ko",
    ]
    for i, name in enumerate(order):  # every dependency before its user
        line = next(x for x in MODULES_DEP.splitlines() if x.split(":")[0].endswith("/" + name))
        deps = [Path(d).name for d in line.split(":")[1].split()]
        assert all(order.index(d) < i for d in deps), name


def test_module_order_names_a_missing_module() -> None:
    with pytest.raises(LabError, match="no module overlay"):
        module_order(MODULES_DEP, ["overlay"])


def _elf(payload: bytes) -> bytes:
    return b"\x7fELF\x02\x01\x01" + payload


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress])
def test_extract_elf_finds_the_kernel_after_the_setup_code(compress) -> None:  # type: ignore[no-untyped-def]
    kernel = _elf(os.urandom(5000))
    # A decoy first: something that decompresses, but not to an ELF.
    bzimage = (
        b"MZ setup" + os.urandom(300) + compress(b"not a kernel") + compress(kernel) + b"\0" * 64
    )
    assert extract_elf(bzimage) == kernel


def test_extract_elf_without_a_kernel_is_none() -> None:
    assert extract_elf(b"MZ" + os.urandom(4096)) is None
    assert extract_elf(lzma.compress(b"plain text")) is None


def _read_cpio(data: bytes) -> dict[str, tuple[int, bytes]]:
    """A newc reader written from the format's description, to check the writer."""
    out, pos = {}, 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body = name_start + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data[body : body + size])
        pos = body + size + (-size % 4)


def test_cpio_newc_round_trip() -> None:
    archive = _Cpio()
    archive.add("bin", stat.S_IFDIR | 0o755)
    archive.add("bin/x", stat.S_IFREG | 0o755, b"abc")  # sizes not a multiple of 4
    archive.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    archive.add("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n")
    data = archive.finish()
    assert len(data) % 4 == 0
    assert _read_cpio(data) == {
        "bin": (stat.S_IFDIR | 0o755, b""),
        "bin/x": (stat.S_IFREG | 0o755, b"abc"),
        "bin/sh": (stat.S_IFLNK | 0o777, b"busybox"),
        "init": (stat.S_IFREG | 0o755, b"#!/bin/sh\n"),
    }


def test_interpreter_tells_static_from_dynamic() -> None:
    assert _interpreter(Path(sys.executable).resolve().read_bytes())  # Python is dynamic
    static = Path("/bin/busybox")
    if static.exists() and b"static" in subprocess.run(["busybox"], capture_output=True).stdout:
        assert not _interpreter(static.read_bytes())


def test_macs_are_stable_unicast_and_locally_administered() -> None:
    macs = {_mac(node, i) for node in ("hub1", "spoke1", "spoke2") for i in range(2)}
    assert len(macs) == 6 and _mac("hub1", 1) == _mac("hub1", 1)
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert first & 1 == 0 and first & 2 == 2


# -- a real guest -----------------------------------------------------------------

TOPOLOGY = {"nodes": {"hubs": [{"name": "hub1", "kind": "frr"}], "spokes": [{"name": "spoke1"}]}}


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, taps, QEMU)")


def _alive(pid: int) -> bool:
    try:
        s = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return s[s.rindex(")") + 2] != "Z"


def test_a_guest_boots_runs_commands_and_halts(tmp_path: Path) -> None:
    _require_root()
    lab = Lab(Topology.from_data(TOPOLOGY), prefix=f"tvm{os.getpid() % 10000}-")
    lab.up()
    try:
        spec = GuestSpec(
            node="hub1",
            work=lab.run_dir / "hub1.vm",
            nics=(Nic(FRR_NBMA_TAP, "nbma0"),),
            boot="ip addr add 172.30.0.1/24 dev nbma0\nip link set nbma0 up\n",
            halt="echo bye > /run/out/halted\n",
        )
        vm = VirtualMachine(lab, spec)
        vm.start()
        took = vm.wait_ready()
        assert took < 90
        res = vm.run("uname -r; cat /proc/cmdline; ip -br addr show nbma0; echo oops >&2; exit 3")
        assert res.returncode == 3
        assert "6.1.0-" in res.output and "oops" in res.output
        assert "172.30.0.1/24" in res.output  # the NIC got the name asked for
        # The guest's kernel has what the host's lacks.
        gre = vm.run("modprobe -a ip_gre esp4 && ip tunnel add g0 mode gre key 1 && echo ok")
        assert gre.returncode == 0 and "ok" in gre.output, gre.output
        # The root is the host's, read-only below an overlay: writes stay in the guest.
        marker = f"/var/tmp-dmvpn-vm-test-{os.getpid()}"
        assert vm.run(f"touch {marker} && test -e {marker}").returncode == 0
        assert not Path(marker).exists()
        # The underlay works: the guest reaches spoke1's namespace.
        assert lab.ping("spoke1", "172.30.0.1", timeout=10)
        # Commands run concurrently: a slow one does not hold a quick one.
        slow: list[float] = []
        t = threading.Thread(target=lambda: slow.append(vm.run("sleep 3; echo slow").returncode))
        t.start()
        time.sleep(0.5)
        start = time.monotonic()
        assert vm.run("echo quick").output == "quick\n"
        assert time.monotonic() - start < 2.5
        t.join()
        assert slow == [0]
        with pytest.raises(LabError, match="did not finish in 1 s"):
            vm.run("sleep 5", timeout=1)
        assert vm.run("echo after").output == "after\n"  # the late reply was skipped
        assert vm.proc is not None
        pid = vm.proc.pid
        vm.stop()
        assert (spec.work / "halted").read_text() == "bye\n"
        assert not _alive(pid)
    finally:
        lab.down()


def test_a_failing_boot_script_is_reported_with_the_console(tmp_path: Path) -> None:
    _require_root()
    lab = Lab(Topology.from_data(TOPOLOGY), prefix=f"tvf{os.getpid() % 10000}-")
    lab.up()
    try:
        spec = GuestSpec(
            node="hub1", work=lab.run_dir / "hub1.vm", boot="echo setting up\nfalse\necho never\n"
        )
        vm = VirtualMachine(lab, spec)
        vm.start()
        with pytest.raises(LabError, match=r"boot script of hub1 failed \(status 1\)") as info:
            vm.wait_ready()
        assert "setting up" in str(info.value)  # the console's tail comes with it
        # sh -e stopped at the failure (the kernel's own lines may say anything).
        lines = (spec.work / "console.log").read_text().splitlines()
        assert "setting up" in lines and "never" not in lines
    finally:
        lab.down()


def test_lab_down_after_kill_9_of_lab_up_leaves_no_guest(tmp_path: Path) -> None:
    _require_root()
    prefix = f"tvk{os.getpid() % 10000}-"
    topo = tmp_path / "topo.json"
    topo.write_text(json.dumps(TOPOLOGY))
    lab = Lab(prefix=prefix)
    builder = subprocess.Popen(
        [DMVPN, "lab", "up", str(topo), "--prefix", prefix],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:  # QEMU and spoke1's daemon
            time.sleep(0.05)
            try:
                pids = [p["pid"] for p in json.loads(lab.state_path.read_text())["pids"]]
            except (OSError, ValueError, KeyError):
                continue
        os.kill(builder.pid, signal.SIGKILL)  # mid-boot
        builder.wait()
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        res = subprocess.run(
            [DMVPN, "lab", "down", "--prefix", prefix], capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, res.stderr
        assert not any(_alive(p) for p in pids)
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert prefix not in netns
        assert not lab.run_dir.exists() and not lab.state_path.exists()
        qemus = subprocess.run(
            ["pgrep", "-f", f"/run/dmvpn-lab/{prefix}/"], capture_output=True, text=True
        )
        assert qemus.stdout == ""
    finally:
        builder.kill()
        builder.wait()
        if lab.exists():
            lab.down()
