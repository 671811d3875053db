"""Text shared by `dmvpn lab` and its demo: the one-line summary of a
topology and plain column-aligned tables."""

from __future__ import annotations

from .topology import Topology

__all__ = ["summary", "table_lines"]


def summary(topo: Topology) -> str:
    hubs, spokes = len(topo.hubs), len(topo.spokes)
    return (
        f"phase {topo.phase} DMVPN, {hubs} hub{'s' * (hubs != 1)}, "
        f"{spokes} spoke{'s' * (spokes != 1)}, holdtime {topo.holdtime} s"
        + (", IPv6 underlay (GRE over IPv6)" if topo.underlay == "ipv6" else "")
    )


def table_lines(rows: list[list[str]], indent: int = 0) -> list[str]:
    """Each column as wide as its widest cell, two spaces between columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows)
    return [" " * indent + line.rstrip() for line in lines]
