"""What charon is given: a private strongswan.conf and the VICI messages for
connections and credentials. Pure functions of the node config, so they are
tested without a charon.

Data plane: kernel-libipsec (userspace ESP on a TUN device), which does
tunnel mode only and always encapsulates ESP in UDP 4500 (real-peers.md);
or, on the kernel data plane, the kernel's XFRM (kernel-netlink alone),
transport mode by default.
Only GRE between the two NBMA addresses is protected:
``local_ts = A/32[gre]``, ``remote_ts`` any GRE address, narrowed by IKE to
the peer's one address (behind NAT its inside address: natmap.py).
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from dmvpn.config import Ipsec

# Packets from charon's own IKE socket carry this mark; kernel-netlink's
# routing rule skips marked packets, so IKE never enters the ESP tunnel.
IKE_FWMARK = 0x42
# The responder template: any peer may bring up a GRE SA to us.
RESPONDER = "dmvpn-any"
CHILD = "gre"
# The responder template's remote selector (see _conn).
ANY_GRE = "0.0.0.0/0[gre]"
_CRYPTO = (
    "random nonce openssl pem x509 pubkey pkcs1 pkcs8 hmac sha1 sha2 aes gcm kdf "
    "curve25519 constraints revocation"
)
# Plugins, in load order: kernel-libipsec must come before kernel-netlink.
PLUGINS = f"{_CRYPTO} kernel-libipsec kernel-netlink socket-default vici"
# The kernel's ESP: kernel-netlink installs SAs and policies in XFRM.
KERNEL_PLUGINS = f"{_CRYPTO} kernel-netlink socket-default vici"


def strongswan_conf(
    run_dir: Path,
    vici_socket: Path,
    log: Path,
    device_mtu: int = 1400,
    kernel_esp: bool = False,
) -> str:
    """A strongswan.conf for one private charon: everything under run_dir.
    `kernel_esp`: the kernel's XFRM instead of kernel-libipsec."""
    plugins = KERNEL_PLUGINS if kernel_esp else PLUGINS
    libipsec = (
        ""
        if kernel_esp
        else f"""    kernel-libipsec {{
      allow_peer_ts = yes
      mtu = {device_mtu}
    }}
"""
    )
    return f"""# written by dmvpn for a private charon; not for editing
charon {{
  load_modular = no
  load = {plugins}
  # A peer that does not answer: give up after about 15 s, the manager retries.
  retransmit_tries = 3
  retransmit_timeout = 2.0
  install_virtual_ip = no
  filelog {{
    dmvpn {{
      path = {log}
      time_format = %F %T
      # Milliseconds, and each line written at once: charon's log is read
      # beside the daemon's JSON log (timelines of ms), and a charon that
      # is killed would otherwise lose its buffered tail.
      time_add_ms = yes
      flush_line = yes
      default = 1
      ike = 1
      cfg = 1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{vici_socket}
    }}
{libipsec}    socket-default {{
      fwmark = {IKE_FWMARK:#x}
    }}
    kernel-netlink {{
      fwmark = !{IKE_FWMARK:#x}
    }}
  }}
}}
"""


def conn_name(remote: IPv4Address) -> str:
    return f"dmvpn-{remote}"


def _auth(
    cfg: Ipsec, identity: str | None, creds: dict[str, bytes]
) -> tuple[dict[str, Any], dict[str, Any]]:
    if cfg.uses_certificates:
        local: dict[str, Any] = {"auth": "pubkey", "certs": [creds["certificate"]]}
        remote: dict[str, Any] = {"auth": "pubkey", "cacerts": [creds["ca"]], "id": "%any"}
    else:
        local = {"auth": "psk"}
        remote = {"auth": "psk", "id": "%any"}
    if identity is not None:
        local["id"] = identity
    return local, remote


def _conn(
    cfg: Ipsec,
    local_addr: IPv4Address,
    remote_addr: IPv4Address | None,
    identity: str | None,
    creds: dict[str, bytes],
) -> dict[str, Any]:
    local, remote = _auth(cfg, identity, creds)
    child = {
        "local_ts": [f"{local_addr}/32[gre]"],
        # Any GRE address of the peer, narrowed to what it proposes (as
        # responder) or answers (as initiator): its own address, or behind
        # NAT its inside one, which is not the address we reach it at and
        # which we cannot know beforehand. The manager tears down an SA
        # whose selector is another single address without NAT between us
        # (natmap.selector_problem).
        "remote_ts": [ANY_GRE],
        # Unset only outside a NodeConfig (which fills it in): tunnel, what
        # both ESPs do.
        "mode": cfg.mode or "tunnel",
        "esp_proposals": list(cfg.esp_proposals),
        "rekey_time": f"{cfg.child_lifetime}s",
        "life_time": f"{cfg.child_lifetime * 11 // 10}s",
        # A dead peer's SA goes; the manager notices and retries while NHRP
        # still needs the peer.
        "dpd_action": "clear",
        "start_action": "none",
    }
    return {
        "version": 2,
        "local_addrs": [str(local_addr)],
        "remote_addrs": [str(remote_addr) if remote_addr else "%any"],
        "proposals": list(cfg.ike_proposals),
        "rekey_time": f"{cfg.ike_lifetime}s",
        "dpd_delay": f"{cfg.dpd_delay}s",
        # A peer that restarted (new IKE SA from the same identity) replaces
        # its old SAs instead of leaving duplicates behind.
        "unique": "replace",
        "mobike": "no",
        "local": local,
        "remote": remote,
        "children": {CHILD: child},
    }


def responder_conn(
    cfg: Ipsec, local_addr: IPv4Address, identity: str | None, creds: dict[str, bytes]
) -> dict[str, Any]:
    """The template every peer's IKE_SA_INIT finds: GRE from any address."""
    return {f"{RESPONDER}-{local_addr}": _conn(cfg, local_addr, None, identity, creds)}


def peer_conn(
    cfg: Ipsec,
    local_addr: IPv4Address,
    remote_addr: IPv4Address,
    identity: str | None,
    creds: dict[str, bytes],
) -> dict[str, Any]:
    """The connection we initiate to one peer (VICI cannot initiate the
    template towards a chosen address, so each peer gets its own)."""
    return {conn_name(remote_addr): _conn(cfg, local_addr, remote_addr, identity, creds)}


def secrets(cfg: Ipsec, creds: dict[str, bytes]) -> list[tuple[str, dict[str, Any]]]:
    """VICI commands (load-shared / load-cert / load-key) with their messages."""
    if cfg.psk is not None:
        # No owners: the key is shared by every member of the cloud.
        return [("load_shared", {"id": "dmvpn-psk", "type": "IKE", "data": cfg.psk, "owners": []})]
    return [
        ("load_cert", {"type": "X509", "flag": "CA", "data": creds["ca"]}),
        ("load_cert", {"type": "X509", "flag": "NONE", "data": creds["certificate"]}),
        ("load_key", {"type": "any", "data": creds["private_key"]}),
    ]
