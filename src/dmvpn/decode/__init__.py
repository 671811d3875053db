"""`dmvpn decode`: find GRE and NHRP in captures and show them."""
