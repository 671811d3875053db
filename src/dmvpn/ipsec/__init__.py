"""IPsec proxy instantiation: dmvpn drives strongSwan's charon over VICI (it
does no IKE or ESP itself). `settings` renders what charon is given,
`charon` runs a private charon per node, `manager` turns the engine's
ProtectPeer/UnprotectPeer into child SAs and reports their state."""

from .manager import IpsecManager, PeerSa
from .settings import conn_name, peer_conn, responder_conn, strongswan_conf

__all__ = ["IpsecManager", "PeerSa", "conn_name", "peer_conn", "responder_conn", "strongswan_conf"]
