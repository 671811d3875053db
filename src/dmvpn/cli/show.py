"""`dmvpn show ...`, `dmvpn clear nhrp`, `dmvpn events`: clients of a running
node's management API (HTTP + JSON on its UNIX socket).

Which node: `--socket PATH`, else `--node NAME` (/run/dmvpn/NAME.sock), else
the only socket in /run/dmvpn. Text output follows Cisco's `show dmvpn` and
`show ip nhrp`; `--json` prints the API's JSON unchanged (docs/API.md).
A dual-stack interface shows both engines in the same tables, each row with
its family (`show dmvpn` has an "IPv4 NHRP Details" and an "IPv6 NHRP
Details" section per interface, as Cisco prints); `--family 4|6` keeps one.

Why one module of this length: every `show` renderer shares the same client,
table layout and Cisco-style formatting helpers; split per command they would
each need all of them.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import click

from .show_qos import render_group

__all__ = [
    "ApiClient",
    "DaemonUnavailable",
    "clear_group",
    "events_cmd",
    "render_dmvpn",
    "render_nhrp",
    "render_nhs",
    "render_traffic",
    "resolve_socket",
    "show_group",
]

# Kept in step with dmvpn.api.server (not imported: the client stays light).
RUN_DIR = Path("/run/dmvpn")
TIMEOUT = 10.0

F = TypeVar("F", bound=Callable[..., Any])


class DaemonUnavailable(click.ClickException):
    """No daemon answers on the socket; the message names it."""


# ---------------------------------------------------------------- the client


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    def __init__(self, path: Path, timeout: float | None = TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def _open(
        self, method: str, url: str, body: Any = None
    ) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        conn = _UnixConnection(self.path, self.timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
        except FileNotFoundError:
            conn.close()
            raise DaemonUnavailable(
                f"no dmvpn daemon: {self.path} does not exist (is `dmvpn run` running "
                "for this node?)"
            ) from None
        except ConnectionRefusedError:
            conn.close()
            raise DaemonUnavailable(
                f"no dmvpn daemon listens on {self.path} (stale socket: the daemon is not running)"
            ) from None
        except PermissionError:
            conn.close()
            raise DaemonUnavailable(f"permission denied on {self.path} (run as root)") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise DaemonUnavailable(f"the daemon on {self.path} did not answer: {exc}") from None
        return conn, resp

    def request(self, method: str, url: str, body: Any = None) -> Any:
        conn, resp = self._open(method, url, body)
        try:
            raw = resp.read()
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            raise click.ClickException(
                f"{self.path}: {method} {url} answered {resp.status} with non-JSON data"
            ) from None
        if resp.status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise click.ClickException(message or f"{method} {url}: HTTP {resp.status}")
        return data

    def text(self, url: str) -> str:
        conn, resp = self._open("GET", url)
        try:
            body = resp.read().decode()
        finally:
            conn.close()
        if resp.status >= 400:
            raise click.ClickException(f"GET {url}: HTTP {resp.status}")
        return body

    def stream(self, url: str) -> Iterator[dict[str, Any]]:
        """Objects of a newline-delimited JSON stream (keep-alive blank lines skipped)."""
        self.timeout = None  # an idle stream is not an error
        conn, resp = self._open("GET", url)
        try:
            if resp.status >= 400:
                data = json.loads(resp.read() or b"{}")
                raise click.ClickException(data.get("error") or f"GET {url}: HTTP {resp.status}")
            while True:
                try:
                    line = resp.readline()
                except (OSError, http.client.HTTPException):
                    raise DaemonUnavailable(
                        f"the daemon on {self.path} went away mid-stream"
                    ) from None
                if not line:
                    return  # the daemon stopped (and said so)
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


def resolve_socket(socket_path: Path | None, node: str | None, run_dir: Path = RUN_DIR) -> Path:
    """--socket, else --node's socket in run_dir, else the only socket there."""
    if socket_path is not None:
        return socket_path
    if node is not None:
        return run_dir / f"{node}.sock"
    found = sorted(run_dir.glob("*.sock")) if run_dir.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise DaemonUnavailable(
            f"no dmvpn daemon is running: no socket in {run_dir} "
            "(start one with `dmvpn run -c FILE`, or give --socket PATH)"
        )
    names = ", ".join(p.stem for p in found)
    raise click.UsageError(f"several nodes run here ({names}): choose one with --node NAME")


# ---------------------------------------------------------------- options


def _common(func: F) -> F:
    """--socket, --node, --interface, --family and --json, on every command."""
    func = click.option(
        "--json",
        "as_json",
        is_flag=True,
        default=None,
        help="Print the API's JSON (stable keys: docs/API.md).",
    )(func)
    func = click.option(
        "-f",
        "--family",
        type=click.Choice(["4", "6"]),
        default=None,
        help="Only the IPv4 or the IPv6 engine (default: both).",
    )(func)
    func = click.option("-i", "--interface", default=None, help="Only this DMVPN interface.")(func)
    func = click.option(
        "--node",
        default=None,
        envvar="DMVPN_NODE",
        help=f"Node name: its socket is {RUN_DIR}/NAME.sock.",
    )(func)
    func = click.option(
        "--socket",
        "socket_path",
        default=None,
        envvar="DMVPN_SOCKET",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The daemon's API socket (default: from --node, or the only one running).",
    )(func)
    return func


def _settings(ctx: click.Context, /, **given: Any) -> dict[str, Any]:
    """This command's options, falling back to its group's (so both
    `show nhrp --json nhs` and `show nhrp nhs --json` work)."""
    parent = ctx.parent.obj if ctx.parent is not None and isinstance(ctx.parent.obj, dict) else {}
    merged = {k: (v if v is not None else parent.get(k)) for k, v in given.items()}
    merged["as_json"] = bool(merged.get("as_json"))
    return merged


def _client(opts: dict[str, Any]) -> ApiClient:
    return ApiClient(resolve_socket(opts["socket_path"], opts["node"]))


def _query(opts: dict[str, Any]) -> str:
    keys = ("interface", "family", "peer", "state", "limit", "offset")
    params = {k: opts[k] for k in keys if opts.get(k) is not None and opts.get(k) != ""}
    return f"?{urlencode(params)}" if params else ""


def _filters(func: F) -> F:
    """What a hub with thousands of peers needs of a list view (api/paging.py)."""
    func = click.option("--offset", type=click.IntRange(0), default=None, help="Skip the first N.")(
        func
    )
    func = click.option(
        "--limit", type=click.IntRange(0), default=None, help="At most N peers/entries (0: counts)."
    )(func)
    func = click.option(
        "--state",
        default=None,
        help="Only this state (dmvpn: up, nhrp, down; nhrp: the entry type, e.g. dynamic).",
    )(func)
    func = click.option(
        "--peer", default=None, help="Only this peer (its tunnel or NBMA address)."
    )(func)
    return func


def _emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(render(data), nl=False)


# ---------------------------------------------------------------- rendering

_LEGEND = """\
Legend: Attrb --> S - Static, D - Dynamic, I - Incomplete
        N - NATed, L - Local
        T1 - Route Installed, T2 - Nexthop-override
        # Ent --> Number of NHRP entries with same NBMA peer
        NHS Status: E --> Expecting Replies, R --> Responding, W --> Waiting
        UpDn Time --> Up or Down Time for a Tunnel
==========================================================================
"""


def _row(n: str, nbma: str, tunnel: str, state: str, updn: str, attrb: str) -> str:
    head = ""
    if len(nbma) > 15:
        # An IPv6 NBMA address (IPv6 underlay) wider than its column: on a
        # line of its own, the entry below it, as Cisco prints them.
        head, n, nbma = f"{n:>6} {nbma}\n", "", ""
    return head + f"{n:>6} {nbma:<15} {tunnel:>15} {state:>5} {updn:>8} {attrb:>5}".rstrip() + "\n"


def render_dmvpn(data: dict[str, Any]) -> str:
    """`show dmvpn` as Cisco prints it."""
    out = [_LEGEND]
    for itf in data["interfaces"]:
        kind = "/".join(part.capitalize() for part in itf["type"].split("/"))
        family = itf.get("family", 4)
        out.append(f"\nInterface: {itf['interface']}, IPv{family} NHRP Details\n")
        if itf.get("vrf"):  # Cisco prints the tunnel's VRF the same way
            out.append(f"VRF: {itf['vrf']}\n")
        out.append(f"Type:{kind}, NHRP Peers:{itf['peer_count']},\n")
        if itf.get("count", itf["peer_count"]) != itf["peer_count"]:  # a page of them
            first = itf["offset"] + 1 if itf["count"] else itf["offset"]
            out.append(f"Showing peers {first}-{itf['offset'] + itf['count']}\n")
        out.append("\n")
        out.append(" # Ent  Peer NBMA Addr Peer Tunnel Add State  UpDn Tm Attrb\n")
        out.append(" ----- --------------- --------------- ----- -------- -----\n")
        for peer in itf["peers"]:
            for i, e in enumerate(peer["entries"]):
                first = i == 0
                out.append(
                    _row(
                        str(peer["entry_count"]) if first else "",
                        (peer["nbma"] or "UNKNOWN") if first else "",
                        e["tunnel_address"],
                        e["state"],
                        e["updn"],
                        e["attrb"],
                    )
                )
            if peer.get("qos"):
                q = peer["qos"]
                how = (
                    f"shaped {q['rate']} ceil {q['ceil']} ({q['classid']})"
                    if q["shaped"]
                    else f"unshaped ({q['why_unshaped'] or 'no group'})"
                )
                out.append(f"{'':>6} QoS: group {q['group'] or '-'}, {how}\n")
            if "path_mtu" in peer:
                pm = peer["path_mtu"]
                if pm is None:
                    text = "not learned"
                else:
                    by = f" from {pm['reporter']}" if pm["reporter"] else ""
                    text = (
                        f"{pm['mtu']} ({pm['source']}{by}, {pm['age_seconds']:.0f}s ago,"
                        f" expires in {pm['expires_seconds']:.0f}s)"
                    )
                out.append(f"{'':>6} Path MTU: {text}\n")
            if "ipsec" in peer:
                sa = peer["ipsec"]
                if sa is None:
                    text = "none"
                else:
                    text = f"{sa['state'].upper()} for {sa['for']:.0f}s"
                    if sa["last_error"]:
                        text += f" ({sa['last_error']})"
                out.append(f"{'':>6} IPsec: {text}\n")
        out.append("\n")
    return "".join(out)


def _nhrp_lines(entries: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for e in entries:
        head = e["protocol"]
        if e["type"] == "local":
            head += " (local)"
        elif e["type"] in ("incomplete", "negative"):
            head += " (incomplete)"
        else:
            head += f" via {e['next_hop'] or e['protocol'].split('/')[0]}"
        out.append(head + "\n")
        expire = "never expire" if e["expires_in"] is None else f"expire {e['expires_text']}"
        out.append(f"   {e['interface']} created {e['created_text']}, {expire}\n")
        flags = " ".join(e["cisco_flags"]) or "none"
        out.append(f"   Type: {e['type']}, Flags: {flags}\n")
        if e["nbma"] is not None:
            out.append(f"   NBMA address: {e['nbma']}\n")
            if e["claimed_nbma"] and e["claimed_nbma"] != e["nbma"]:
                out.append(f"    (Claimed NBMA address: {e['claimed_nbma']})\n")
    return "".join(out)


def render_nhrp(data: dict[str, Any]) -> str:
    """`show nhrp` (and `show nhrp shortcut`) as Cisco's `show ip nhrp`."""
    return _nhrp_lines(data["entries"])


def render_nhs(data: dict[str, Any]) -> str:
    """`show nhrp nhs` as Cisco's `show ip nhrp nhs`."""
    out = ["Legend: E=Expecting replies, R=Responding, W=Waiting, S=Standby\n"]
    current = None
    for n in data["nhs"]:
        family = n.get("family", 4)
        if (n["interface"], family) != current:
            current = (n["interface"], family)
            out.append(f"{n['interface']}:\n" if family == 4 else f"{n['interface']} (IPv6):\n")
        line = (
            f"{n['protocol']}  {n['status']:<2}  NBMA Address: {n['nbma']} "
            f"priority = {n['priority']}"
        )
        if n["state"] == "up":
            expires = f", expires {int(n['expires_in'])}s" if n["expires_in"] is not None else ""
            line += f", up {n['up_for_text']}{expires}, request id {n['request_id']}"
        else:
            line += f", {n['state']}"
            if n["retries"]:
                line += f", {n['retries']} tries"
            if n["last_error"]:
                line += f" ({n['last_error']})"
        if n["public_nbma"]:
            line += f", NATed: seen as {n['public_nbma']}"
        out.append(line + "\n")
    if current is None:
        out.append("(no NHS configured)\n")
    return "".join(out)


_TYPE_TITLES = (
    ("resolution_request", "Resolution Request"),
    ("resolution_reply", "Resolution Reply"),
    ("registration_request", "Registration Request"),
    ("registration_reply", "Registration Reply"),
    ("purge_request", "Purge Request"),
    ("purge_reply", "Purge Reply"),
    ("error_indication", "Error Indication"),
    ("traffic_indication", "Traffic Indication"),
)


def _by_type(counts: dict[str, int], extra: list[tuple[int, str]]) -> list[str]:
    cells = [f"{counts.get(key, 0):>6} {title}" for key, title in _TYPE_TITLES]
    cells += [f"{n:>6} {title}" for n, title in extra]
    return [
        "   " + "".join(f"{c:<28}" for c in cells[i : i + 3]).rstrip() + "\n"
        for i in range(0, len(cells), 3)
    ]


def render_traffic(data: dict[str, Any]) -> str:
    """`show nhrp traffic` as Cisco's `show ip nhrp traffic`."""
    out: list[str] = []
    for itf in data["interfaces"]:
        ms = itf["max_send"]
        # The IPv6 engine of a dual-stack interface (Cisco: `show ipv6 nhrp traffic`).
        name = itf["interface"] + (" (IPv6)" if itf.get("family") == 6 else "")
        out.append(f"{name}: Max-send limit:{ms['packets']}Pkts/{ms['interval']:g}Sec\n")
        out.append(f"   Sent: Total {itf['sent']['total']}\n")
        out += _by_type(itf["sent"], [(itf["redirects_suppressed"], "Redirect Suppress")])
        out.append(f"   Rcvd: Total {itf['received']['total']}\n")
        out += _by_type(itf["received"], [])
        if itf["errors"]:
            errors = ", ".join(f"{k} {v}" for k, v in itf["errors"].items())
            out.append(f"   Errors: {errors}\n")
    return "".join(out)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


def render_ipsec(data: dict[str, Any]) -> str:
    """`show ipsec`: charon, then the SA to each NBMA peer (like
    `show crypto session detail`, one block per peer)."""
    if not data.get("enabled"):
        return f"{data['node']}: IPsec is not configured (no `ipsec` section)\n"
    c = data["charon"]
    where = f"pid {c['pid']}" if c["pid"] else c["mode"]
    out = [
        f"charon: {c['version'] or '?'} ({where}), VICI {c['vici_socket']}, "
        f"{'ready' if c['ready'] else 'NOT READY'}, restarts {c['restarts']}\n",
        f"authentication: {data['authentication']}, identity "
        f"{data['identity'] or '(IKE address)'}, identity binding "
        f"{'on' if data['identity_binding'] else 'off'}\n",
    ]
    if data.get("esp"):
        # What this node proposes; each peer's child says what was agreed.
        out.append(f"ESP: {data['esp']}, {data['esp_mode']} mode proposed\n")
    if not data["peers"]:
        out.append("no IPsec peers\n")
    for p in data["peers"]:
        out.append(
            f"\nPeer {p['remote']} (from {p['local']}): {p['state'].upper()} for "
            f"{p['for']:.0f}s, {p['bindings']} binding(s), "
            f"{'initiated here' if p['initiated'] else 'initiated by the peer'}\n"
        )
        if p["last_error"]:
            retry = f", retry in {p['retry_in']:.0f}s" if p["retry_in"] is not None else ""
            out.append(f"  last error: {p['last_error']} ({p['failures']} failures{retry})\n")
        if p["idle_for"] is not None and p["bindings"] == 0:
            out.append(f"  idle for {p['idle_for']:.0f}s (torn down when idle long enough)\n")
        ike, child = p["ike"], p["child"]
        if ike:
            out.append(
                f"  IKE SA: {ike['state']}, {ike['local_id']} <-> {ike['remote_id']}, "
                f"{ike['encryption']}/{ike['prf']}/{ike['dh_group']}, age {ike['age']}s, "
                f"rekey in {ike['rekey_in']}s\n"
            )
        if child:
            ts = f"{','.join(child['local_ts'] or [])} === {','.join(child['remote_ts'] or [])}"
            out.append(
                f"  Child SA: {child['state']} {child['mode']}"
                f"{' UDP-encap' if child['encap'] else ''}, {child['encryption']}, "
                f"SPIs {child['spi_in']}_i {child['spi_out']}_o, age {child['age']}s\n"
                f"    {ts}\n"
                f"    in  {child['packets_in']} pkts {_bytes(child['bytes_in'])}, "
                f"out {child['packets_out']} pkts {_bytes(child['bytes_out'])}\n"
            )
    return "".join(out)


def render_vrrp(data: dict[str, Any]) -> str:
    """`show vrrp`: each gateway group, like Cisco's `show vrrp brief`."""
    if not data["groups"]:
        return f"{data['node']}: no VRRP groups (no `vrrp` section)\n"
    head = f"{'Interface':<10} {'Grp':>3} {'Pri':>3} {'Time':>6} {'State':<7} {'Eligible':<8}"
    out = [f"{head} Group addr\n"]
    for g in data["groups"]:
        out.append(
            f"{g['interface']:<10} {g['vrid']:>3} {g['priority']:>3} {g['interval']:>5}s "
            f"{g['role'].capitalize():<7} {'yes' if g['eligible'] else 'no':<8} {g['address']}\n"
        )
    return "".join(out)


def render_event(e: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
    where = f"{e['interface']} " if e.get("interface") else ""
    return f"{stamp} {where}{e['kind']}: {e['message']}"


# ---------------------------------------------------------------- commands


@click.group("show")
def show_group() -> None:
    """Show a running node's state: `dmvpn show dmvpn`, `dmvpn show nhrp`."""


@show_group.command("dmvpn")
@_common
@_filters
@click.pass_context
def show_dmvpn_cmd(ctx: click.Context, /, **given: Any) -> None:
    """Peers per interface: NBMA and tunnel address, state, up/down time, attributes."""
    opts = _settings(ctx, **given)
    _emit(_client(opts).request("GET", "/v1/dmvpn" + _query(opts)), opts["as_json"], render_dmvpn)


@show_group.group("nhrp", invoke_without_command=True)
@_common
@_filters
@click.pass_context
def show_nhrp_group(ctx: click.Context, /, **given: Any) -> None:
    """The NHRP cache (like `show ip nhrp`); subcommands: nhs, shortcut, traffic."""
    ctx.obj = dict(given)
    if ctx.invoked_subcommand is None:
        opts = _settings(ctx, **given)
        data = _client(opts).request("GET", "/v1/nhrp" + _query(opts))
        _emit(data, opts["as_json"], render_nhrp)


@show_nhrp_group.command("nhs")
@_common
@click.pass_context
def show_nhs_cmd(ctx: click.Context, /, **given: Any) -> None:
    """Next-hop servers: status, priority, registration (like `show ip nhrp nhs`)."""
    opts = _settings(ctx, **given)
    data = _client(opts).request("GET", "/v1/nhrp/nhs" + _query(opts))
    _emit(data, opts["as_json"], render_nhs)


@show_nhrp_group.command("shortcut")
@_common
@click.pass_context
def show_shortcut_cmd(ctx: click.Context, /, **given: Any) -> None:
    """Shortcut routes (phase 3): prefix via the peer's tunnel address."""
    opts = _settings(ctx, **given)
    data = _client(opts).request("GET", "/v1/nhrp/shortcut" + _query(opts))
    _emit(data, opts["as_json"], render_nhrp)


@show_nhrp_group.command("traffic")
@_common
@click.pass_context
def show_traffic_cmd(ctx: click.Context, /, **given: Any) -> None:
    """NHRP messages sent and received by type, and error counters."""
    opts = _settings(ctx, **given)
    data = _client(opts).request("GET", "/v1/nhrp/traffic" + _query(opts))
    _emit(data, opts["as_json"], render_traffic)


@show_nhrp_group.command("group")
@_common
@click.pass_context
def show_group_cmd(ctx: click.Context, /, **given: Any) -> None:
    """NHRP groups and per-tunnel QoS: each spoke's group and shaper."""
    opts = _settings(ctx, **given)
    data = _client(opts).request("GET", "/v1/nhrp/group" + _query(opts))
    _emit(data, opts["as_json"], render_group)


@show_group.command("ipsec")
@_common
@click.pass_context
def show_ipsec_cmd(ctx: click.Context, /, **given: Any) -> None:
    """IPsec: charon, and per NBMA peer its IKE and child SA (state,
    identities, algorithms, packets and bytes, age)."""
    opts = _settings(ctx, **given)
    _emit(_client(opts).request("GET", "/v1/ipsec"), opts["as_json"], render_ipsec)


@show_group.command("vrrp")
@_common
@click.pass_context
def show_vrrp_cmd(ctx: click.Context, /, **given: Any) -> None:
    """VRRP gateway groups (dual spoke sites): role, priority, address."""
    opts = _settings(ctx, **given)
    _emit(_client(opts).request("GET", "/v1/vrrp"), opts["as_json"], render_vrrp)


@click.group("clear")
def clear_group() -> None:
    """Clear a running node's state."""


@clear_group.group("nhrp", invoke_without_command=True)
@_common
@click.pass_context
def clear_nhrp_group(ctx: click.Context, /, **given: Any) -> None:
    """Remove every NHRP entry that was not configured (dynamic, cached,
    incomplete, negative), like Cisco's `clear ip nhrp`; `clear nhrp shortcut`
    removes only shortcut routes."""
    ctx.obj = dict(given)
    if ctx.invoked_subcommand is None:
        _clear(_settings(ctx, **given), "all")


@clear_nhrp_group.command("shortcut")
@_common
@click.pass_context
def clear_shortcut_cmd(ctx: click.Context, /, **given: Any) -> None:
    """Remove the shortcut routes only (they come back with the next redirect)."""
    _clear(_settings(ctx, **given), "shortcut")


def _clear(opts: dict[str, Any], scope: str) -> None:
    body: dict[str, Any] = {"scope": scope}
    if opts.get("interface"):
        body["interface"] = opts["interface"]
    if opts.get("family"):
        body["family"] = int(opts["family"])
    data = _client(opts).request("POST", "/v1/nhrp/clear", body)
    if opts["as_json"]:
        click.echo(json.dumps(data, indent=2))
        return
    for e in data["cleared"]:
        click.echo(f"cleared {e['protocol']} ({e['type']}) on {e['interface']}")
    n = len(data["cleared"])
    click.echo(f"{n} entr{'y' if n == 1 else 'ies'} cleared on {data['node']}")


@click.command("events")
@click.option(
    "--socket",
    "socket_path",
    default=None,
    envvar="DMVPN_SOCKET",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The daemon's API socket (default: from --node, or the only one running).",
)
@click.option(
    "--node",
    default=None,
    envvar="DMVPN_NODE",
    help=f"Node name: its socket is {RUN_DIR}/NAME.sock.",
)
@click.option("-i", "--interface", default=None, help="Only this DMVPN interface.")
@click.option(
    "-k",
    "--kind",
    "kinds",
    multiple=True,
    help="Only events of this kind (repeatable): registered, shortcut, redirect, ...",
)
@click.option(
    "-n", "--count", type=click.IntRange(min=1), default=None, help="Exit after this many events."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events_cmd(
    socket_path: Path | None,
    node: str | None,
    interface: str | None,
    kinds: tuple[str, ...],
    count: int | None,
    as_json: bool,
) -> None:
    """Follow the engine's events live (registrations, resolutions, redirects,
    shortcuts, errors) until interrupted or the daemon stops."""
    client = ApiClient(resolve_socket(socket_path, node))
    params: dict[str, str] = {}
    if kinds:
        params["kind"] = ",".join(kinds)
    if interface:
        params["interface"] = interface
    url = "/v1/events" + (f"?{urlencode(params)}" if params else "")
    seen = 0
    try:
        for event in client.stream(url):
            click.echo(json.dumps(event) if as_json else render_event(event))
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                return
    except KeyboardInterrupt:
        return
