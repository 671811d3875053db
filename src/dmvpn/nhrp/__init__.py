"""The sans-IO NHRP engine (NHC and NHS) and its virtual-time simulator.

Nothing here does I/O, reads a clock or starts a task: the caller feeds
packets, data-plane events and ``now``, and drains outputs (see
:mod:`dmvpn.nhrp.outputs`) and the next timer.
"""

from .cache import CacheEntry, EntryFlag, EntryType
from .client import NhsState, NhsStatus
from .config import EngineConfig, NhsConfig, StaticMap
from .engine import CLEAR_SCOPES, ClearScope, Engine
from .outputs import (
    BindingAdded,
    BindingRemoved,
    Event,
    EventKind,
    Output,
    PeerGroup,
    ProtectPeer,
    SendPacket,
    ShortcutAdded,
    ShortcutRemoved,
    UnprotectPeer,
)
from .routing import RoutingView, StaticRouting

__all__ = [
    "CLEAR_SCOPES",
    "BindingAdded",
    "BindingRemoved",
    "CacheEntry",
    "ClearScope",
    "Engine",
    "EngineConfig",
    "EntryFlag",
    "EntryType",
    "Event",
    "EventKind",
    "NhsConfig",
    "NhsState",
    "NhsStatus",
    "Output",
    "PeerGroup",
    "ProtectPeer",
    "RoutingView",
    "SendPacket",
    "ShortcutAdded",
    "ShortcutRemoved",
    "StaticMap",
    "StaticRouting",
    "UnprotectPeer",
]
