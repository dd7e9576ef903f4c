"""Admission tokens: the "hidden buy link" of a sale, minted by a gateway, checked by the nodes.

A SKU put with ``require_token`` takes Deduct and Hold only with a token the
operator's gateway issued to that user for that SKU, shortly before::

    v1.<kid>.<expires_ms>.<mac>

``kid`` names the key (so keys can rotate: a node holds several), ``expires_ms``
is unix ms, and ``mac`` is the unpadded base64url HMAC-SHA256, under the key,
of the JSON array ``["v1", kid, expires_ms, user_id, sku_id]`` (an encoding
no two different claims share). A key is a file of at least
:data:`MIN_KEY_BYTES` bytes of text (``flashstock admission key`` makes one);
its id is the file's name without extension.

Pure functions: :func:`admission_token` mints, :func:`token_problem` checks
(constant-time compare); no I/O but :func:`read_admission_key`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

TOKEN_VERSION = "v1"
"""The first part of every token this module mints."""
MIN_KEY_BYTES = 32
"""The shortest key accepted (HMAC-SHA256 wants 256 bits of secret)."""
MAX_TOKEN_BYTES = 512
"""The longest token a node accepts."""
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_EXPIRY = re.compile(r"[0-9]{1,16}")


@dataclass(frozen=True, repr=False)
class AdmissionKey:
    """One HMAC key of admission tokens."""

    kid: str
    """The key's id, written into every token it signs: 1-32 of ``A-Z a-z 0-9 _ -``."""
    secret: bytes
    """The key itself, at least :data:`MIN_KEY_BYTES` bytes."""

    def __post_init__(self) -> None:
        if not _KID.fullmatch(self.kid):
            raise ValueError(f"admission key id {self.kid!r} is not 1-32 characters of A-Z a-z 0-9 _ -")
        if len(self.secret) < MIN_KEY_BYTES:
            raise ValueError(f"admission key {self.kid!r} is {len(self.secret)} bytes, fewer than {MIN_KEY_BYTES}")

    def __repr__(self) -> str:
        return f"AdmissionKey(kid={self.kid!r}, secret=<{len(self.secret)} bytes>)"


def read_admission_key(path: str | Path) -> AdmissionKey:
    """The key in the file ``path`` (its text, stripped); its id is the file's name without extension.

    Raises ``ValueError`` saying what is wrong (unreadable, too short, a bad name).
    """
    p = Path(path)
    try:
        secret = p.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
    try:
        return AdmissionKey(p.stem, secret)
    except ValueError as exc:
        raise ValueError(f"{str(p)!r}: {exc}") from None


def _mac(key: bytes, kid: str, expires_ms: int, user_id: str, sku_id: str) -> str:
    claim = json.dumps([TOKEN_VERSION, kid, expires_ms, user_id, sku_id], separators=(",", ":"), ensure_ascii=False)
    digest = hmac.new(key, claim.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def admission_token(key: AdmissionKey, user_id: str, sku_id: str, ttl_s: float, *, now_ms: int | None = None) -> str:
    """A token admitting ``user_id`` to Deduct or Hold ``sku_id`` for ``ttl_s`` seconds from now.

    For the operator's gateway: it hands the token to the user it let through
    (the "hidden buy link"), and the user's Deduct or Hold carries it back.
    ``now_ms``: the clock (unix ms), for tests.
    """
    if ttl_s <= 0:
        raise ValueError(f"ttl_s: {ttl_s} is not > 0")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    expires_ms = now + int(ttl_s * 1000)
    return f"{TOKEN_VERSION}.{key.kid}.{expires_ms}.{_mac(key.secret, key.kid, expires_ms, user_id, sku_id)}"


def token_problem(
    token: str, keys: dict[str, AdmissionKey], user_id: str, sku_id: str, *, now_ms: int | None = None
) -> str:
    """What is wrong with ``token`` for ``user_id`` and ``sku_id`` now: '' when it is valid.

    ``keys``: the keys a node accepts, by id. The MAC is compared in constant
    time; a token for another user or SKU fails its MAC like a forged one.
    """
    if not token:
        return "no admission token"
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != TOKEN_VERSION or not _EXPIRY.fullmatch(parts[2]) or len(token) > MAX_TOKEN_BYTES:
        return f"not an admission token (expected {TOKEN_VERSION}.<kid>.<expires_ms>.<mac>)"
    _, kid, expires, mac = parts
    key = keys.get(kid)
    if key is None:
        return f"its key {kid[:32]!r} is not one this node holds"
    expected = _mac(key.secret, kid, int(expires), user_id, sku_id)
    if not hmac.compare_digest(expected.encode(), mac.encode()):
        return "its signature does not match (a token of another user or SKU, or not the gateway's)"
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if int(expires) <= now:
        return f"it expired {now - int(expires)} ms ago"
    return ""


__all__ = [
    "MIN_KEY_BYTES",
    "AdmissionKey",
    "admission_token",
    "read_admission_key",
    "token_problem",
]
