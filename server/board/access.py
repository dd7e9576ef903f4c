"""Who may open the board: the bearer-token gate of ``flashstock board --auth on``.

Every path but ``/healthz`` (load balancers and probes keep it) needs a
token whose roles include one of :data:`~flashstock.server.rpc.authz.BOARD_ROLES`
(viewer, operator, admin; a buyer may not), taken from

- the ``Authorization: Bearer <JWT>`` header (curl, scripts);
- a ``?token=<JWT>`` on the address (a browser): checked, then turned into
  the cookie :data:`COOKIE` (HttpOnly, SameSite=Strict, Secure when the page
  is on TLS) and answered with a redirect to the same address without it,
  so the token leaves the address bar and the history;
- the cookie, on every request after that (the page's script and its feed).

The token is checked by the node's own :class:`~flashstock.server.rpc.authz.Authorizer`
(signature, ``iss``, ``aud``, ``exp``). Without a valid one: 401 with the
reason in plain text; with one of the wrong role: 403.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from flashstock.client import PermissionDenied, Unauthenticated
from flashstock.server.rpc.authz import BOARD_ROLES, Authorizer, role_refusal

COOKIE = "flashstock_board_token"
"""The cookie a ``?token=`` becomes."""

OPEN_PATHS = frozenset({"/healthz"})
"""Paths every caller may read, token or not."""

NO_CREDENTIALS = (
    "no credentials: the board takes an 'Authorization: Bearer <JWT>' header, "
    "or a ?token=<JWT> on the page's address (a token of the role viewer, operator or admin)"
)


class BoardGate:
    """ASGI middleware: lets a request through to ``app`` only with a token that may open the board."""

    def __init__(self, app: ASGIApp, authorizer: Authorizer, *, secure: bool) -> None:
        self.app = app
        self.authorizer = authorizer
        self.secure = secure
        """True when the page is on TLS: the cookie is then sent over TLS only."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        refused = self.answer(Request(scope))
        if refused is None:
            await self.app(scope, receive, send)
        else:
            await refused(scope, receive, send)

    def answer(self, request: Request) -> Response | None:
        """What the gate answers ``request`` itself (a refusal, or the redirect of a ``?token=``); None: let it in."""
        peer = f"{request.client.host}:{request.client.port}" if request.client else ""
        token = request.query_params.get("token")
        if token is not None:
            refused = self._refusal(f"Bearer {token}", peer)
            if refused is not None:
                return refused
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            response = RedirectResponse(request.url.path + (f"?{urlencode(rest)}" if rest else ""), status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, secure=self.secure, samesite="strict", path="/")
            response.headers["Cache-Control"] = "no-store"
            return response
        authorization = request.headers.get("authorization")
        if authorization is None and COOKIE in request.cookies:
            authorization = f"Bearer {request.cookies[COOKIE]}"
        if authorization is None:
            return _refused(401, NO_CREDENTIALS)
        return self._refusal(authorization, peer)

    def _refusal(self, authorization: str, peer: str) -> Response | None:
        try:
            caller = self.authorizer.identify(authorization, None, peer)
        except Unauthenticated as exc:
            return _refused(401, exc.message)
        denied: PermissionDenied | None = role_refusal(caller, BOARD_ROLES, "open the board")
        return None if denied is None else _refused(403, denied.message)


def _refused(status: int, reason: str) -> Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="flashstock board"'
    return PlainTextResponse(f"{reason}\n", status_code=status, headers=headers)
