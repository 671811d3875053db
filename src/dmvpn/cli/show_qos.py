"""`dmvpn show nhrp group`: per interface, the NHRP group this node sends,
the groups its registered spokes named, and on a hub with per-tunnel QoS
each spoke's shaper (Cisco: `show ip nhrp group-map`, `show policy-map
multipoint`)."""

from __future__ import annotations

from typing import Any


def render_group(data: dict[str, Any]) -> str:
    out: list[str] = []
    for itf in data["interfaces"]:
        out.append(f"Interface: {itf['interface']}\n")
        if itf["group"] is not None:
            out.append(f"  NHRP group sent in registrations: {itf['group']}\n")
        qos = itf["qos"]
        if qos is not None:
            out.append("  Group policies:\n")
            for name, p in qos["policies"].items():
                line = f"    {name}: rate {p['rate']} ceil {p['ceil']}"
                if p["burst"] is not None:
                    line += f" burst {p['burst']}b"
                out.append(line + "\n")
                for c in p["classes"]:
                    dscp = ",".join(str(d) for d in c["dscp"])
                    out.append(f"      class {c['name']} dscp {dscp}: {c['rate']}..{c['ceil']}\n")
        if not itf["registered"] and (qos is None or not qos["peers"]):
            out.append("  No registered spokes\n\n")
            continue
        out.append(
            f"  {'Peer NBMA':<15} {'Tunnel':<15} {'Group':<16} {'Shaping':<22} {'Sent':>12} Drops\n"
        )
        peers = {p["nbma"]: p for p in (qos["peers"] if qos is not None else [])}
        for r in itf["registered"]:
            p = peers.get(r["nbma"])
            if p is None:
                shaping, sent, drops = "-", "", ""
            elif p["shaped"]:
                shaping = f"{p['rate']}/{p['ceil']} {p['classid']}"
                c = p.get("counters", {})
                sent, drops = str(c.get("bytes", "")), str(c.get("drops", ""))
            else:
                shaping, sent, drops = f"none ({p['why_unshaped'] or 'no group'})", "", ""
            out.append(
                f"  {r['nbma'] or '-':<15} {r['protocol']:<15} {r['group'] or '-':<16} "
                f"{shaping:<22} {sent:>12} {drops}\n"
            )
        out.append("\n")
    return "".join(out)
