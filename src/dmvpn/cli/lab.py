"""`dmvpn lab`: a whole DMVPN cloud in network namespaces on this machine.

    dmvpn lab up [TOPOLOGY.yaml]    build it, start one daemon per router, wait for registration
    dmvpn lab status [--json]       every node: role, addresses, daemon
    dmvpn lab exec NODE -- CMD...   run a command inside a node (hub1, spoke2, host3, inet;
                                    on an frr node, inside its QEMU guest; `--vrf K`:
                                    in VRF K of a `vrf_clouds` router or host)
    dmvpn lab show NODE ARGS...     `dmvpn show ARGS` against that node's daemon
    dmvpn lab down                  remove everything the lab created (also after a crash)
    dmvpn lab demo [--keep]         build the default cloud, show a shortcut forming, tear down

Every subcommand takes `--prefix` (default "dmvpn-"): the namespaces are
PREFIX + node, so labs with different prefixes live side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from dmvpn.cli.show import ApiClient, DaemonUnavailable
from dmvpn.lab import DEFAULT_PREFIX, INET, Lab, LabError, Topology, TopologyError, access, nat
from dmvpn.lab.demo import Demo, missing_tools
from dmvpn.lab.frrconf import vtysh_command
from dmvpn.lab.frrnode import FrrNodes, wait_registered
from dmvpn.lab.routingd import RoutingDaemons
from dmvpn.lab.runner import REGISTRATION_TIMEOUT, Runner, dmvpn_command
from dmvpn.lab.text import summary, table_lines
from dmvpn.lab.topology import VRF_CLOUDS
from dmvpn.lab.vmnode import GUEST_SOCKET, DmvpnGuests

__all__ = ["lab_group"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_NO_OPTIONS = {"ignore_unknown_options": True, "allow_interspersed_args": False}


class _Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived while the lab was being built or shown."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _prefix_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--prefix",
        default=DEFAULT_PREFIX,
        show_default=True,
        help="Namespace prefix: labs with different prefixes are independent.",
    )(f)


@click.group("lab")
def lab_group() -> None:
    """A DMVPN cloud in network namespaces: an underlay "internet" bridge, hubs,
    spokes and a LAN host behind each spoke, one `dmvpn run` per hub and spoke.

    Needs root. Nothing outside the lab's own namespaces is touched.
    """


# -- up ------------------------------------------------------------------------


@lab_group.command("up")
@click.argument(
    "topology",
    required=False,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="[TOPOLOGY]",
)
@_prefix_option
@click.option(
    "--timeout",
    default=REGISTRATION_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for every spoke to register.",
)
def up_cmd(topology: Path | None, prefix: str, timeout: float) -> None:
    """Build the lab in TOPOLOGY (a YAML file; default: one hub, three spokes,
    phase 3) and wait until every spoke has registered."""
    _need_root()
    topo = _load_topology(topology)
    lab = _lab(topo, prefix)
    with _cleanup_on_failure(lab) as built:
        lab.up()
        built.set()
        click.echo(f"built lab {prefix!r}: {summary(topo)}, {len(lab.namespaces)} namespaces")
        runner, frr = Runner(lab), FrrNodes(lab)
        vms = DmvpnGuests(lab, [p.name for p in topo.vm_routers])
        if frr.nodes:
            # Booted first and in parallel: a guest takes seconds, a daemon less.
            click.echo(f"booting QEMU guests with FRR nhrpd on {', '.join(frr.nodes)}")
            frr.start()
        # With vm nodes: the namespaces' hubs first, the guests meanwhile, the
        # namespaces' spokes once the guests run (a spoke whose hub still starts
        # under emulation would back off its registrations).
        first = [p.name for p in topo.hubs if p.name in runner.routers] if vms.nodes else []
        if vms.nodes:
            runner.start(first)
            click.echo(f"booting QEMU guests with dmvpn on {', '.join(vms.nodes)}")
            vms.start()
            took = vms.wait_ready(timeout=300)
            click.echo(f"dmvpn running in guests on {', '.join(vms.nodes)} in {took:.1f} s")
        if runner.routers:
            click.echo(f"starting dmvpn on {', '.join(runner.routers)} (logs in {lab.run_dir}/)")
            runner.start([r for r in runner.routers if r not in first])
        if frr.nodes:
            click.echo(f"nhrpd running on {', '.join(frr.nodes)} in {frr.wait_ready():.1f} s")
        took = wait_registered(runner, frr, timeout)
        spokes = [p.name for p in topo.spokes if p.kind == "vm"]
        took += runner.wait_for(
            "every vm spoke to register",
            lambda: all(vms.events(s, "nhs-up") for s in spokes),
            timeout,
        )
        if topo.routing.dynamic:
            # Routing daemons beside dmvpn (docs/ROUTING.md): over the tunnel, once it is up.
            RoutingDaemons(lab).start()
            click.echo(
                f"FRR {topo.routing.protocol} running beside dmvpn (configs in "
                f"{lab.run_dir}/<node>.routing/)"
            )
    click.echo(f"every spoke registered in {took:.1f} s\n")
    _print_status(lab)
    hosts = topo.hosts
    px = "" if prefix == DEFAULT_PREFIX else f" --prefix {prefix}"
    click.echo("\ntry:")
    if len(hosts) >= 2 and hosts[1].lan is not None:
        click.echo(f"  dmvpn lab exec{px} {hosts[0].name} -- ping -c 3 {hosts[1].lan.ip}")
        if topo.vrf_clouds:  # the same addresses in VRF 2
            click.echo(
                f"  dmvpn lab exec{px} --vrf 2 {hosts[0].name} -- ping -c 3 {hosts[1].lan.ip}"
            )
    if topo.spokes:
        click.echo(f"  dmvpn lab show{px} {topo.spokes[0].name} dmvpn")
    click.echo(f"  dmvpn lab down{px}")


# -- down ----------------------------------------------------------------------


@lab_group.command("down")
@_prefix_option
def down_cmd(prefix: str) -> None:
    """Stop the lab's daemons and delete its namespaces, configs, logs and state.

    Works from what is left after a crash: without a state file, the lab's
    namespaces are found by their prefix.
    """
    _need_root()
    lab = _lab(None, prefix)
    try:
        daemons = sum(len(s["pids"]) for s in Lab.attach(prefix).status())
    except LabError:
        daemons = 0  # no (usable) state file: down() still finds the namespaces
    if not lab.exists():
        click.echo(f"no lab with prefix {prefix!r}: nothing to take down")
        return
    removed = _down(lab)
    click.echo(
        f"lab {prefix!r} is down: stopped {daemons} daemon(s), deleted {len(removed)} "
        "namespace(s) and the lab's files"
    )


# -- status --------------------------------------------------------------------


@lab_group.command("status")
@_prefix_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object (keys are stable).")
def status_cmd(prefix: str, as_json: bool) -> None:
    """Every node with its role, namespace, addresses and daemon."""
    lab = _attach(prefix)
    if as_json:
        click.echo(json.dumps(_status_data(lab), indent=2))
    else:
        _print_status(lab)


def _status_data(lab: Lab) -> dict[str, Any]:
    topo = lab.topology
    runner, frr = Runner(lab), FrrNodes(lab)
    nodes = []
    for row in lab.status():
        node: dict[str, Any] = dict(row)
        # The post-NAT underlay address peers see (dmvpn.lab.nat).
        public = None if row["role"] == "host" else topo.public_address(row["name"])
        node["public"] = None if public is None else str(public)
        node["nat"] = topo.plan(row["name"]).nat
        if row["role"] == "host":
            node["daemon"] = None
        elif row["kind"] == "frr":
            # FRR zebra + nhrpd in a QEMU guest.
            node["daemon"] = "running" if row["pids"] else "stopped"
            node["config"] = str(frr.dir(row["name"]) / "nhrpd.conf")
            node["log"] = str(frr.dir(row["name"]) / "logs" / "nhrpd.log")
            node["console"] = str(frr.dir(row["name"]) / "console.log")
            node["socket"] = None
        elif row["kind"] == "vm":
            # Our daemon in a QEMU guest: its files on the guest's share.
            work = DmvpnGuests(lab, [row["name"]]).dir(row["name"])
            node["daemon"] = "running" if row["pids"] else "stopped"
            node["config"] = str(work / "node.yaml")
            node["log"] = str(work / "dmvpn.log")
            node["console"] = str(work / "console.log")
            node["socket"] = None  # in the guest: `lab show` reaches it
        else:
            name = row["name"]
            node["daemon"] = "running" if row["pids"] else "stopped"
            node["config"] = str(runner.config_path(name))
            node["log"] = str(runner.log_path(name))
            node["socket"] = str(runner.socket_path(name))
        node["vrfs"] = topo.vrfs(row["name"], lab.prefix)  # vrf_clouds only
        nodes.append(node)
    return {
        "prefix": lab.prefix,
        "phase": topo.phase,
        "holdtime": topo.holdtime,
        "key": topo.key,
        "underlay": topo.underlay,
        "state_file": str(lab.state_path),
        "run_dir": str(lab.run_dir),
        "nodes": nodes,
        "vrf_clouds": topo.vrf_clouds,
        "nat_routers": nat.status(lab, set(lab.existing_namespaces())),
        "access_routers": access.status(lab, set(lab.existing_namespaces())),
        "sites": _sites(lab, nodes),
    }


def _sites(lab: Lab, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dual spoke sites: each site's spokes and which one holds the VRRP
    gateway now, asked of each running spoke's daemon (`/v1/vrrp`)."""
    topo = lab.topology
    running = {n["name"]: n for n in nodes if n["daemon"] == "running"}
    out = []
    for site in dict.fromkeys(p.site for p in topo.spokes if p.site is not None):
        spokes = [p.name for p in topo.spokes if p.site == site]
        roles: dict[str, str | None] = {}
        priorities: dict[str, int | None] = {}
        for name in spokes:
            roles[name], priorities[name] = None, None  # daemon stopped or not answering
            if name not in running:
                continue
            try:
                data = ApiClient(Path(running[name]["socket"]), timeout=2.0).request(
                    "GET", "/v1/vrrp"
                )
            except (DaemonUnavailable, click.ClickException):
                continue
            for g in data.get("groups", []):
                roles[name], priorities[name] = g["role"], g["priority"]
        masters = [n for n in spokes if roles[n] == "master"]
        gateway = topo.site_gateway(spokes[0])
        out.append(
            {
                "site": site,
                "gateway": None if gateway is None else str(gateway),
                "spokes": spokes,
                "master": masters[0] if len(masters) == 1 else None,
                "roles": roles,
                "priorities": priorities,
            }
        )
    return out


def _print_status(lab: Lab) -> None:
    data = _status_data(lab)
    click.echo(f"lab {lab.prefix!r}: {summary(lab.topology)}")
    rows = [["NODE", "ROLE", "KIND", "NAMESPACE", "UNDERLAY", "TUNNEL", "LAN", "STATE"]]
    for n in data["nodes"]:
        if not n["up"]:
            state = "namespace missing"
        elif n["daemon"] is None:
            state = "up"
        else:
            what = "FRR nhrpd in QEMU" if n["kind"] == "frr" else "dmvpn"
            running = f"running (pid {n['pids'][0]})" if n["pids"] else "stopped"
            state = f"{what} {running}"
        kind = "-" if n["role"] == "host" else n["kind"]
        rows.append(
            [
                n["name"],
                n["role"],
                kind,
                n["namespace"],
                (n["underlay"] or "-")
                + (f" (behind {n['nat']}: {n['public']})" if n["nat"] else ""),
                n["tunnel"] or "-",
                n["lan"] or "-",
                state,
            ]
        )
    for line in table_lines(rows):
        click.echo(line)
    _print_vrfs(lab, data)
    if data["nat_routers"]:
        rows = [["NAT ROUTER", "NAMESPACE", "PUBLIC", "INSIDE", "SPOKES", "STATE"]]
        for r in data["nat_routers"]:
            state = "up (nftables masquerade)" if r["up"] else "namespace missing"
            rows.append(
                [r["name"], r["namespace"], r["public"], r["inside"], ", ".join(r["spokes"]), state]
            )
        click.echo("")
        for line in table_lines(rows):
            click.echo(line)
    if data["sites"]:
        rows = [["SITE", "GATEWAY", "SPOKES (VRRP role, priority)", "GATEWAY HELD BY"]]
        for site in data["sites"]:
            members = ", ".join(
                f"{n} ({site['roles'][n] or 'no answer'}"
                + (f", {site['priorities'][n]})" if site["priorities"][n] is not None else ")")
                for n in site["spokes"]
            )
            masters = [n for n in site["spokes"] if site["roles"][n] == "master"]
            held = site["master"] or ("none" if not masters else "several: " + ", ".join(masters))
            rows.append([site["site"], site["gateway"] or "-", members, held])
        click.echo("")
        for line in table_lines(rows):
            click.echo(line)
    if data["access_routers"]:
        rows = [["ACCESS ROUTER", "NAMESPACE", "SPOKE", "ADDRESS", "MTU", "ICMP", "FIREWALL"]]
        for a in data["access_routers"]:
            rows.append(
                [
                    a["name"],
                    a["namespace"] + ("" if a["up"] else " (missing)"),
                    a["spoke"],
                    a["address"],
                    str(a["mtu"] or "-"),
                    "dropped (frag-needed)" if a["drop_icmp"] else "passed",
                    "GRE, ESP, IKE, frag-needed" if a["firewall"] else "none",
                ]
            )
        click.echo("")
        for line in table_lines(rows):
            click.echo(line)


def _print_vrfs(lab: Lab, data: dict[str, Any]) -> None:
    """vrf_clouds: each router's VRFs (its interface, GRE key, network-id, the
    spoke's host there), as `lab exec --vrf K NODE` reaches them."""
    vrfs = [(n["name"], v) for n in data["nodes"] for v in n["vrfs"]]
    if not vrfs:
        return
    existing = set(lab.existing_namespaces())
    rows = [["ROUTER", "VRF", "NAMESPACE", "INTERFACE", "KEY", "NETWORK-ID", "HOST"]]
    for name, v in vrfs:
        host = "-" if v["host"] is None else f"{v['host']} (in {v['host_namespace']})"
        rows.append(
            [
                name,
                str(v["vrf"]),
                v["namespace"] + ("" if v["namespace"] in existing else " (missing)"),
                v["interface"],
                str(v["key"]),
                str(v["network_id"]),
                host,
            ]
        )
    click.echo("")
    for line in table_lines(rows):
        click.echo(line)


# -- exec and show -------------------------------------------------------------


@lab_group.command("exec", context_settings=_NO_OPTIONS)
@_prefix_option
@click.option(
    "--vrf",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="In a vrf_clouds lab: run in VRF K of NODE (a router's dmvpnK side, or a host's).",
)
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(prefix: str, vrf: int | None, node: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside NODE's namespace (a hub, spoke, host, or "inet" for the
    underlay bridge); exits with COMMAND's status. Options go before NODE:

        dmvpn lab exec host1 -- ping -c 3 192.168.2.10
        dmvpn lab exec --vrf 2 spoke1 -- ip route    # vrf_clouds: spoke1's VRF 2
    """
    argv = _after_dashes(command)
    if not argv:
        raise click.UsageError("no COMMAND to run (dmvpn lab exec NODE -- COMMAND...)")
    _need_root()
    lab = _attach(prefix)
    namespace = _namespace(lab, node)
    if vrf is not None:
        sys.exit(_run_inside(lab, _vrf_namespace(lab, node, vrf), argv))
    nats = {n.name for n in lab.topology.nat_routers}
    nats |= {a.name for a in lab.topology.access_routers}
    if node != INET and node not in nats and lab.topology.plan(node).kind != "dmvpn":
        # The namespace only bridges: the router is the guest.
        sys.exit(_run_in_guest(lab, node, shlex.join(argv)))
    sys.exit(_run_inside(lab, namespace, argv))


def _run_in_guest(lab: Lab, node: str, script: str) -> int:
    guests = DmvpnGuests(lab, [node]) if lab.topology.plan(node).kind == "vm" else FrrNodes(lab)
    try:
        res = guests.run(node, script, timeout=120)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(res.output, nl=False)
    return res.returncode


@lab_group.command("show", context_settings=_NO_OPTIONS)
@_prefix_option
@click.argument("node")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def show_cmd(prefix: str, node: str, args: tuple[str, ...]) -> None:
    """`dmvpn show ARGS` against the daemon of NODE (a hub or spoke), run inside
    its namespace:

        dmvpn lab show spoke1 dmvpn

    On an frr node, the matching vtysh command runs in its guest: `nhrp` is
    `show ip nhrp cache`, `nhrp nhs`, `nhrp shortcut`, `dmvpn` likewise,
    `--json` adds `json`; nhrpd's own (`ip nhrp cache`) pass through.
    """
    _need_root()
    lab = _attach(prefix)
    namespace = _namespace(lab, node)
    if node == INET or lab.topology.role(node) == "host":
        raise click.ClickException(f"{node} runs no dmvpn daemon: show works on hubs and spokes")
    if lab.topology.plan(node).kind == "frr":
        # nhrpd's own words for the same views (`show ip nhrp cache` for `nhrp`...).
        try:
            command = vtysh_command(tuple(_after_dashes(args)))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        sys.exit(_run_in_guest(lab, node, f"vtysh --vty_socket /run/frr -c {shlex.quote(command)}"))
    if lab.topology.plan(node).kind == "vm":
        # The same CLI in the guest (Python starts slowly there: seconds).
        argv = [*dmvpn_command(), "show", *_after_dashes(args), "--socket", GUEST_SOCKET]
        sys.exit(_run_in_guest(lab, node, shlex.join(argv)))
    if not _show_available():
        raise click.ClickException(
            "this dmvpn has no `show` command yet; try "
            f"`dmvpn lab exec {node} -- ip neigh show dev dmvpn0` for the NHRP bindings"
        )
    args = tuple(_after_dashes(args))
    socket = Runner(lab).socket_path(node)
    sys.exit(
        _run_inside(lab, namespace, [*dmvpn_command(), "show", *args, "--socket", str(socket)])
    )


def _after_dashes(args: Sequence[str]) -> list[str]:
    # Click passes a "--" that follows NODE through (interspersed args are off).
    return list(args[1:] if args[:1] == ("--",) or args[:1] == ["--"] else args)


def _show_available() -> bool:
    from dmvpn.cli import main  # here: dmvpn.cli imports this module

    return isinstance(main, click.Group) and "show" in main.commands


def _run_inside(lab: Lab, namespace: str, argv: list[str]) -> int:
    """Run argv in the namespace with this terminal; its exit status (128+N if killed by N)."""
    proc = subprocess.Popen([lab.ip, "netns", "exec", namespace, *argv])
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:
            continue  # the command got the Ctrl-C too: let it decide, then report it
    return 128 - code if code < 0 else code


# -- demo ----------------------------------------------------------------------


@lab_group.command("demo")
@_prefix_option
@click.option("--keep", is_flag=True, help="Leave the lab up at the end (then `dmvpn lab down`).")
def demo_cmd(prefix: str, keep: bool) -> None:
    """Build the default cloud, send traffic from host1 to host2, and watch the
    first packets go through the hub and the shortcut form (phase 3); then take
    everything down again. Takes a few seconds."""
    _need_root()
    missing = missing_tools()
    if missing:
        raise click.ClickException(f"the demo needs {missing[0]} (apt-get install {missing[0]})")
    lab = _lab(Topology.default(), prefix)
    demo = Demo(lab, click.echo, show_available=_show_available(), keep=keep)
    with _cleanup_on_failure(lab) as built:
        demo.run(built.set)
    demo.finish(lambda: _down(lab))


# -- helpers -------------------------------------------------------------------


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("dmvpn lab needs root (network namespaces, veth, bridge)")


def _lab(topology: Topology | None, prefix: str) -> Lab:
    try:
        return Lab(topology, prefix=prefix)
    except LabError as exc:
        raise click.UsageError(str(exc)) from None


def _attach(prefix: str) -> Lab:
    _lab(None, prefix)  # a bad prefix is a usage error
    try:
        return Lab.attach(prefix)
    except LabError as exc:
        leftovers = Lab(prefix=prefix).existing_namespaces()
        hint = (
            f" (left over: {', '.join(leftovers)}; `dmvpn lab down` removes them)"
            if leftovers
            else " (`dmvpn lab up` builds one)"
        )
        raise click.ClickException(f"{exc}{hint}") from None


def _namespace(lab: Lab, node: str) -> str:
    try:
        return lab.namespace(node)
    except KeyError:
        raise click.ClickException(
            f"no node {node!r} in lab {lab.prefix!r} "
            f"(nodes: {', '.join([*lab.topology.names, INET])})"
        ) from None


def _vrf_namespace(lab: Lab, node: str, k: int) -> str:
    """VRF k of a router or host of a vrf_clouds lab, or why there is none."""
    topo = lab.topology
    if not topo.vrf_clouds:
        raise click.ClickException(
            f"lab {lab.prefix!r} has no VRFs (its topology has no vrf_clouds)"
        )
    if node == INET or node not in topo.names:
        raise click.ClickException(f"{node} has no VRFs (routers and hosts have)")
    if k > VRF_CLOUDS:
        raise click.ClickException(f"no VRF {k}: the lab's VRFs are 1 to {VRF_CLOUDS}")
    return lab.vrf_namespace(node, k)


def _load_topology(path: Path | None) -> Topology:
    try:
        return Topology.load(path)
    except TopologyError as exc:
        for problem in exc.problems:
            click.echo(f"{path}: {problem}", err=True)
        raise click.ClickException(f"{path}: not a usable topology; nothing was built") from None


def _down(lab: Lab) -> list[str]:
    with _shielded():
        try:
            return lab.down()
        except LabError as exc:
            raise click.ClickException(str(exc)) from None


class _Flag:
    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        self.value = True


@contextlib.contextmanager
def _cleanup_on_failure(lab: Lab) -> Iterator[_Flag]:
    """Signals become exceptions; on any error after the lab was built, take it down.

    The caller sets the flag once `lab.up()` succeeded: a refused `up()` (a lab
    with this prefix exists) must not take the existing lab down.
    """
    built = _Flag()

    def interrupt(signum: int, frame: FrameType | None) -> NoReturn:
        raise _Interrupted(signum)

    # A signal the caller ignores (nohup, a background job) stays ignored.
    watched = [s for s in _SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
    old = {s: signal.signal(s, interrupt) for s in watched}
    try:
        yield built
    except BaseException as exc:
        with _shielded():
            for s, handler in old.items():
                signal.signal(s, handler)
            if built.value:
                what = "interrupted" if isinstance(exc, _Interrupted) else "failed"
                click.echo(f"\n{what}: taking lab {lab.prefix!r} down", err=True)
                try:
                    lab.down()
                except LabError as down_exc:
                    click.echo(f"could not take the lab down: {down_exc}", err=True)
        if isinstance(exc, _Interrupted):
            sys.exit(128 + exc.signum)
        if isinstance(exc, LabError):
            raise click.ClickException(str(exc)) from None
        raise
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Hold Ctrl-C and friends while the lab is being taken down (it takes
    seconds): the teardown finishes, then the command still ends as
    interrupted (128 + signal), as the user asked, rather than with success."""
    caught: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    # A signal the caller ignores (nohup, a background job) stays ignored.
    watched = [s for s in _SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
    old = {s: signal.signal(s, hold) for s in watched}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if caught:
        sys.exit(128 + caught[0])
