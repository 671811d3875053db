"""Data planes: how frames of the DMVPN interface meet GRE on the NBMA network."""
