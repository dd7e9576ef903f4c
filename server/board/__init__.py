"""``flashstock board``: a sale, live, in the browser.

One :class:`Collector` per board process reads the nodes (health, metrics)
and Redis (the sale figures) once per interval; :func:`create_app` serves
the page and fans each snapshot out to every viewer over Server-Sent Events.
The arithmetic is in :mod:`.figures`, pure.
"""

from flashstock.server.board.app import create_app
from flashstock.server.board.collector import BoardSources, Collector, NodeAddress, node_addresses

__all__ = ["BoardSources", "Collector", "NodeAddress", "create_app", "node_addresses"]
