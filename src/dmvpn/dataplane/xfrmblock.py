"""Cleartext GRE kept off the wire where IPsec uses the kernel's ESP.

With kernel-libipsec the GRE socket is bound to libipsec's device, so GRE
without an SA has nowhere to go. With the kernel's XFRM (the kernel plane,
or the userspace plane on a host with ESP) GRE leaves through the IP stack,
and would leave in clear to a peer whose SA is still being negotiated. Two
block policies of the lowest precedence stop GRE from and to our NBMA
address either way; charon's per-SA policies, of higher precedence, let
the protected GRE through.
"""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address

from .plane import DataPlaneError

__all__ = ["BLOCK_PRIORITY", "XfrmBlock", "block_policy_commands"]

# Lowest precedence (highest number); charon's own policies for an SA
# (priorities near 2^18 for host selectors) win over them.
BLOCK_PRIORITY = 0x7FFFFFFF


def block_policy_commands(
    local: IPv4Address, add: bool = True, namespace: str | None = None
) -> list[list[str]]:
    """`ip xfrm policy` commands: no GRE from or to ``local`` in clear text
    (in the underlay's ``namespace``, a front-door VRF, if given)."""
    out = []
    where = ["-n", namespace] if namespace is not None else []
    for direction, sel in (("out", "src"), ("in", "dst")):
        argv = ["ip", *where, "xfrm", "policy", "add" if add else "delete"]
        argv += [sel, f"{local}/32", "proto", "gre", "dir", direction]
        if add:
            argv += ["action", "block", "priority", str(BLOCK_PRIORITY)]
        out.append(argv)
    return out


class XfrmBlock:
    """The block policies for one NBMA address, placed once, removed on close."""

    def __init__(self, local: IPv4Address, namespace: str | None = None) -> None:
        self.local, self.namespace = local, namespace
        self.placed = False

    def place(self) -> None:
        if self.placed:
            return
        for argv in block_policy_commands(self.local, namespace=self.namespace):
            res = subprocess.run(argv, capture_output=True, text=True, check=False)
            # Another interface on the same source already placed them.
            if res.returncode != 0 and "File exists" not in res.stderr:
                self.remove()
                raise DataPlaneError(f"`{' '.join(argv)}` failed: {res.stderr.strip()}")
        self.placed = True

    def remove(self) -> None:
        for argv in block_policy_commands(self.local, add=False, namespace=self.namespace):
            subprocess.run(argv, capture_output=True, check=False)
        self.placed = False
