"""The management API: HTTP + JSON on a UNIX socket per node, used by
`dmvpn show`, `dmvpn clear` and `dmvpn events`, plus Prometheus metrics.

:mod:`dmvpn.api.views` builds the JSON views and metrics from engines (pure,
no sockets); :mod:`dmvpn.api.server` serves them with aiohttp. The endpoints
and JSON shapes are documented in docs/API.md.
"""

from .views import Iface

__all__ = ["Iface"]
