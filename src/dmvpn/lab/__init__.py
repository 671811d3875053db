"""`dmvpn lab`: a DMVPN cloud in network namespaces on one machine.

`Topology` says what to build (hubs, spokes, LAN hosts, addresses, the node
config each router runs); `Lab` builds it with iproute2 and takes it down.
"""

from __future__ import annotations

from .netns import STATE_DIR, CommandError, Lab, LabError, NodeStatus
from .topology import (
    DEFAULT_PREFIX,
    INET,
    HubSpec,
    NodeDescription,
    NodePlan,
    Nodes,
    Role,
    SpokeSpec,
    Topology,
    TopologyError,
    VrfDescription,
    namespace_name,
)

__all__ = [
    "DEFAULT_PREFIX",
    "INET",
    "STATE_DIR",
    "CommandError",
    "HubSpec",
    "Lab",
    "LabError",
    "NodeDescription",
    "NodePlan",
    "NodeStatus",
    "Nodes",
    "Role",
    "SpokeSpec",
    "Topology",
    "TopologyError",
    "VrfDescription",
    "namespace_name",
]
