"""The board's web app (Starlette): the page, its live feed over Server-Sent Events, and the snapshot as JSON.

- ``/``: the page (``static/index.html``); ``/static/...``: its script, style and the vendored uPlot.
- ``/events``: ``text/event-stream``, one ``data:`` event per snapshot (every poll, at least once a
  second by default) and a comment line as heartbeat when nothing new came for :data:`HEARTBEAT_S`.
- ``/api/state``: the latest snapshot; ``/healthz``: ``ok`` and how many viewers are connected.

With an ``authorizer`` (``--auth on``) every path but ``/healthz`` needs a viewer's token
(:class:`~flashstock.server.board.access.BoardGate`).

Every viewer reads the one :class:`~flashstock.server.board.collector.Collector`'s snapshots:
opening pages costs the nodes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from flashstock.server.board.access import BoardGate
from flashstock.server.board.collector import Collector
from flashstock.server.rpc.authz import Authorizer

STATIC = Path(__file__).parent / "static"
"""The page's files, shipped as package data."""

HEARTBEAT_S = 5.0
"""An SSE comment is sent after this many seconds without a snapshot, so proxies and browsers keep the stream."""


def create_app(
    collector: Collector, *, run_collector: bool = True, authorizer: Authorizer | None = None, secure: bool = False
) -> Starlette:
    """The board app over ``collector``; with ``run_collector`` its lifespan runs the collector's loop.

    With ``authorizer`` only a viewer's token opens it; ``secure``: the page is on TLS (the token's cookie is
    then sent over TLS only)."""

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def state(_: Request) -> Response:
        return JSONResponse(collector.latest)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse(f"ok {collector.subscribers} viewers {collector.polls} polls\n")

    async def events(request: Request) -> Response:
        queue = collector.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\n\n"
                while not await request.is_disconnected():
                    try:
                        snapshot: dict[str, Any] = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                    except TimeoutError:
                        yield ": heartbeat\n\n"
                        continue
                    yield f"data: {collector.encoded(snapshot)}\n\n"
            finally:
                collector.unsubscribe(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(collector.run(), name="board collector") if run_collector else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return Starlette(
        routes=[
            Route("/", page),
            Route("/events", events),
            Route("/api/state", state),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
        middleware=[] if authorizer is None else [Middleware(BoardGate, authorizer=authorizer, secure=secure)],
    )
