"""dmvpn: Dynamic Multipoint VPN for Linux (mGRE + NHRP + IPsec on demand)."""

__version__ = "0.1.0"
