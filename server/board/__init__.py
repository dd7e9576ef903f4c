"""``flashstock board``: a sale, live, in the browser.

One :class:`Collector` per board process reads the nodes (health, metrics)
and Redis (the sale figures) once per interval; :func:`create_app` serves
the page and fans each snapshot out to every viewer over Server-Sent Events.
The arithmetic is in :mod:`.figures`, pure.
"""

from flashstock.server.board.app import create_app
from flashstock.server.board.collector import BoardSources, Collector, NodeAddress, NodeTls, node_addresses

__all__ = ["BoardSources", "Collector", "NodeAddress", "NodeTls", "create_app", "node_addresses"]
