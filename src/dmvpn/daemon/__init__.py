"""The node daemon: config -> interfaces -> engine + data plane (+ IPsec later)."""
