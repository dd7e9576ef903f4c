"""Who is calling: the identity an RPC runs as, for the authorizer and the audit trail.

The authorizer (when auth is on) decides a call's :class:`Caller` before the
method runs and sets it for the call with :func:`set_caller`; the methods
and the audit trail ask :func:`current_caller`. With auth off every call is
:data:`ANONYMOUS` from its peer.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

import grpc

ROLES = ("buyer", "viewer", "operator", "admin")
"""The roles an identity can hold (what each may call: :mod:`.authz`)."""


@dataclass(frozen=True)
class Caller:
    """The identity a call runs as."""

    name: str
    """``anonymous`` when auth is off; else who the credentials name (``cert:<subject>``, ``jwt:<sub>``)."""
    roles: frozenset[str]
    """The roles the identity holds (of :data:`ROLES`); empty when auth is off."""
    peer: str
    """Where the call came from: grpc's peer string (``ipv4:127.0.0.1:50312``)."""


ANONYMOUS = "anonymous"

_caller: ContextVar[Caller | None] = ContextVar("flashstock_caller", default=None)


def set_caller(caller: Caller) -> None:
    """Make ``caller`` the identity of the call running in this task."""
    _caller.set(caller)


def current_caller(context: grpc.aio.ServicerContext) -> Caller:
    """The identity of the call ``context`` belongs to: the authorizer's, else anonymous from its peer."""
    caller = _caller.get()
    if caller is not None:
        return caller
    return Caller(ANONYMOUS, frozenset(), context.peer() or "")
