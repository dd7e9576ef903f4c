"""Who may do what: the one table of method -> roles, and the authorizer that applies it to every call.

With ``auth = on`` a node identifies every StockService and AdminService
call before it runs (in :func:`.servicer._rpc`), by

- a bearer token: metadata ``authorization: Bearer <JWT>``, checked with
  PyJWT against ``auth_jwt_keys`` (HS256 secret files, RS256/ES256 public
  PEMs, or a JWKS file), its ``iss``, ``aud``, ``exp`` and ``sub`` required;
  the identity ``jwt:<sub>``, its roles the token's ``roles`` claim;
- else the caller's mutual-TLS certificate: the identity
  ``cert:<subject CN, else its first SAN>``, its roles those
  ``auth_cert_roles`` maps the subject to.

A token that is sent but fails is refused even when a certificate came with
it: credentials that were meant to count never fall back to others. A call
without valid credentials is refused UNAUTHENTICATED, saying what was
missing or wrong; one whose identity holds none of the roles
:data:`METHOD_ROLES` names for the method, PERMISSION_DENIED naming the
roles needed and those held. Health and reflection stay open
(:data:`OPEN_SERVICES`): load balancers and the board call them without
credentials.

The decisions are pure (:meth:`Authorizer.identify`, :func:`refusal`); the
grpc context is read only in :meth:`Authorizer.authorize`. A verified token
is remembered (up to :data:`TOKEN_CACHE_SIZE` of them) with its expiry, so
a caller that sends the same token on every call pays for its signature
once.
"""

from __future__ import annotations

import json
import logging
import os
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from flashstock.client import PermissionDenied, Unauthenticated
from flashstock.server._log_gate import LogGate
from flashstock.server.rpc.identity import ROLES, Caller

log = logging.getLogger(__name__)

STOCK = "flashstock.v1.StockService"
ADMIN = "flashstock.v1.AdminService"

_BUY = frozenset({"buyer", "admin"})
_READ = frozenset({"buyer", "viewer", "operator", "admin"})
_ADMIN_READ = frozenset({"viewer", "operator", "admin"})
_OPERATE = frozenset({"operator", "admin"})

METHOD_ROLES: dict[tuple[str, str], frozenset[str]] = {
    (STOCK, "Deduct"): _BUY,
    (STOCK, "Hold"): _BUY,
    (STOCK, "Confirm"): _BUY,
    (STOCK, "Release"): _BUY,
    (STOCK, "BatchDeduct"): _BUY,
    (STOCK, "GetStock"): _READ,
    (ADMIN, "GetSku"): _ADMIN_READ,
    (ADMIN, "ListSkus"): _ADMIN_READ,
    (ADMIN, "PutSku"): _OPERATE,
    (ADMIN, "AdjustStock"): _OPERATE,
    (ADMIN, "PauseSku"): _OPERATE,
    (ADMIN, "ResumeSku"): _OPERATE,
}
"""Each RPC (service full name, method) and the roles that may call it; ``admin`` may call everything.

``buyer``: StockService (a buyer's gateway; GetStock too). ``viewer``: the
reads (GetStock, GetSku, ListSkus). ``operator``: AdminService, its reads
included. A method missing here is refused to everyone (a test checks that
every RPC of the .proto files is here)."""

OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
"""Services every caller may call, credentials or not: health (load balancers, the board) and
reflection (grpcurl; it tells no more than the .proto files do). They never pass the authorizer."""

TOKEN_CACHE_SIZE = 4096
"""Verified tokens a worker remembers (then it forgets them all and verifies again)."""

JWT_ALGORITHMS = ("HS256", "RS256", "ES256")
"""The signatures a token may carry (each key file says which of them it verifies)."""


def roles_for(service: str, method: str) -> frozenset[str]:
    """The roles that may call ``service/method`` (none for a method not in :data:`METHOD_ROLES`)."""
    return METHOD_ROLES.get((service, method), frozenset())


def refusal(caller: Caller, service: str, method: str) -> PermissionDenied | None:
    """Why ``caller`` may not call ``service/method``; None when it may."""
    return role_refusal(caller, roles_for(service, method), f"call {service.rpartition('.')[2]}/{method}")


def role_refusal(caller: Caller, needed: frozenset[str], what: str) -> PermissionDenied | None:
    """Why ``caller`` may not do ``what`` (it needs one of the roles ``needed``); None when it may."""
    if caller.roles & needed:
        return None
    held = ", ".join(sorted(caller.roles)) or "no role"
    return PermissionDenied(
        f"{caller.name} may not {what}: it needs the role "
        f"{' or '.join(r for r in ROLES if r in needed) or '(none: the method is not in the table)'}, "
        f"and holds {held}"
    )


BOARD_ROLES = _ADMIN_READ
"""The roles that may open the live board (``flashstock board --auth on``): viewer, operator, admin."""


# -- keys and tokens ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenKey:
    """One key that verifies tokens."""

    key: Any
    """What PyJWT verifies with: the HS256 secret's bytes, or a public key object."""
    algorithms: tuple[str, ...]
    """The signatures this key verifies."""
    kid: str | None
    """The key's id (a JWKS's ``kid``): a token naming another kid is not tried against it."""
    source: str
    """The file it came from (for messages)."""


def load_token_keys(paths: Sequence[str]) -> list[TokenKey]:
    """The keys of ``auth_jwt_keys``' files; ``ValueError`` naming the setting and the file if one is bad.

    A file is a JWKS (JSON ``{"keys": [...]}``) or one JWK, a PEM public key
    (RSA: RS256; EC P-256: ES256), or else an HS256 secret (its bytes, a
    trailing newline dropped; at least 32 of them).
    """
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys: list[TokenKey] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ValueError(f"auth_jwt_keys: cannot read {path!r}: {exc.strerror or exc}") from None
        where = f"auth_jwt_keys: {path!r}"
        if data.lstrip().startswith(b"{"):
            try:
                doc = json.loads(data)
                jwks = doc["keys"] if "keys" in doc else [doc]
                for entry in jwks:
                    jwk = jwt.PyJWK(entry)
                    alg = jwk.algorithm_name
                    if alg not in JWT_ALGORITHMS:
                        raise ValueError(f"a key for {alg}, not one of {', '.join(JWT_ALGORITHMS)}")
                    keys.append(TokenKey(jwk.key, (alg,), entry.get("kid"), path))
            except (ValueError, KeyError, TypeError, jwt.PyJWTError) as exc:
                raise ValueError(f"{where} is not a usable JWKS or JWK ({exc})") from None
        elif b"-----BEGIN" in data:
            if b"PRIVATE KEY" in data:
                raise ValueError(f"{where} holds a private key: give the nodes only its public key")
            try:
                public = load_pem_public_key(data)
            except ValueError as exc:
                raise ValueError(f"{where} is not a PEM public key ({exc})") from None
            if isinstance(public, rsa.RSAPublicKey):
                keys.append(TokenKey(public, ("RS256",), None, path))
            elif isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1":
                keys.append(TokenKey(public, ("ES256",), None, path))
            else:
                raise ValueError(f"{where} is neither an RSA (RS256) nor an EC P-256 (ES256) public key")
        else:
            secret = data.rstrip(b"\r\n")
            if len(secret) < 32:
                raise ValueError(f"{where}: an HS256 secret must be at least 32 bytes (it has {len(secret)})")
            keys.append(TokenKey(secret, ("HS256",), None, path))
    return keys


@dataclass(frozen=True)
class TokenRules:
    """What a token must say besides its signature."""

    issuer: str
    """``auth_jwt_issuer``: the ``iss`` claim every token must carry."""
    audience: str
    """``auth_jwt_audience``: a value the ``aud`` claim must hold."""
    leeway_s: float = 30.0
    """``auth_jwt_leeway_s``: clock skew allowed on ``exp`` and ``nbf``."""
    roles_claim: str = "roles"
    """The claim holding the roles: a list of names, or a string of names separated by spaces or commas."""


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class TokenCheck:
    """Verifies bearer tokens: signature, ``iss``, ``aud``, ``exp``; remembers the ones that passed."""

    def __init__(self, keys: Sequence[TokenKey], rules: TokenRules, clock: Callable[[], float] = time.time) -> None:
        self.keys = tuple(keys)
        self.rules = rules
        self._clock = clock
        self._known: dict[str, tuple[str, frozenset[str], float]] = {}

    def identity(self, token: str) -> tuple[str, frozenset[str]]:
        """The name (``jwt:<sub>``) and roles of a valid ``token``; :class:`Unauthenticated` saying why not."""
        now = self._clock()
        known = self._known.get(token)
        if known is not None:
            name, roles, exp = known
            if now <= exp + self.rules.leeway_s:
                return name, roles
            del self._known[token]
            raise Unauthenticated(f"bearer token expired at {_when(exp)}")
        name, roles, exp = self._verify(token, now)
        if len(self._known) >= TOKEN_CACHE_SIZE:
            self._known.clear()
        self._known[token] = (name, roles, exp)
        return name, roles

    def _verify(self, token: str, now: float) -> tuple[str, frozenset[str], float]:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"bearer token is not a JWT ({exc})") from None
        alg, kid = header.get("alg"), header.get("kid")
        candidates = [k for k in self.keys if alg in k.algorithms and (kid is None or k.kid in (None, kid))]
        if not candidates:
            raise Unauthenticated(
                f"bearer token signed with {alg}{f' (kid {kid})' if kid else ''}: no key of auth_jwt_keys verifies it"
            )
        rules = self.rules
        for candidate in candidates:
            try:
                # exp and nbf are checked below, against this check's clock (the one the remembered tokens use).
                claims = jwt.decode(
                    token,
                    candidate.key,
                    algorithms=[str(alg)],
                    audience=rules.audience,
                    issuer=rules.issuer,
                    leeway=rules.leeway_s,  # for iat (exp and nbf: below)
                    options={"require": ["exp", "iss", "aud", "sub"], "verify_exp": False, "verify_nbf": False},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAudienceError:
                raise Unauthenticated(
                    f"bearer token is not for this audience (auth_jwt_audience {rules.audience!r})"
                ) from None
            except jwt.InvalidIssuerError:
                raise Unauthenticated(f"bearer token has the wrong issuer (auth_jwt_issuer {rules.issuer!r})") from None
            except jwt.MissingRequiredClaimError as exc:
                raise Unauthenticated(
                    f"bearer token has no {exc.claim!r} claim (iss, aud, exp, sub are required)"
                ) from None
            except jwt.PyJWTError as exc:
                raise Unauthenticated(f"bearer token refused: {exc}") from None
            exp, nbf, sub = claims["exp"], claims.get("nbf", 0), claims["sub"]
            if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (exp, nbf)):
                raise Unauthenticated("bearer token's exp or nbf is not a number")
            if not isinstance(sub, str) or not sub:
                raise Unauthenticated("bearer token's sub is not a name")
            if now > exp + rules.leeway_s:
                raise Unauthenticated(f"bearer token expired at {_when(exp)}")
            if now < nbf - rules.leeway_s:
                raise Unauthenticated(f"bearer token is not valid yet (nbf {_when(nbf)})")
            return f"jwt:{sub}", token_roles(claims.get(rules.roles_claim)), float(exp)
        raise Unauthenticated("bearer token has a bad signature: no key of auth_jwt_keys verifies it")


def token_roles(claim: Any) -> frozenset[str]:
    """The known roles a token's roles claim names (a list, or names separated by spaces or commas)."""
    if isinstance(claim, str):
        claim = claim.replace(",", " ").split()
    if not isinstance(claim, list):
        return frozenset()
    return frozenset(r for r in claim if r in ROLES)


# -- certificates -------------------------------------------------------------------------------


def cert_subject(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The subject of a caller's verified certificate: its CN, else its first SAN; None without one."""
    for prop in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth_context.get(prop) or ():
            if value:  # a certificate without a CN has an empty one here
                return value.decode("utf-8", "replace")
    return None


def load_cert_roles(path: str) -> dict[str, frozenset[str]]:
    """``auth_cert_roles``: certificate subject -> roles, from a TOML or JSON file (``"subject" = ["role", ...]``).

    ``ValueError`` naming the setting when the file cannot be read, is not a
    table of lists of roles, or names a role that is not one of :data:`ROLES`.
    """
    where = f"auth_cert_roles: {path!r}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"auth_cert_roles: cannot read {path!r}: {exc.strerror or exc}") from None
    try:
        doc = json.loads(data) if path.endswith(".json") else tomllib.loads(data.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} is not valid {'JSON' if path.endswith('.json') else 'TOML'} ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where} is not a table of subject = [roles]")
    out: dict[str, frozenset[str]] = {}
    for subject, roles in doc.items():
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ValueError(f"{where}: {subject!r} must map to a list of roles")
        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            raise ValueError(f"{where}: {subject!r} has unknown role {unknown[0]!r} (roles: {', '.join(ROLES)})")
        out[subject.removeprefix("cert:")] = frozenset(roles)
    return out


# -- the authorizer -----------------------------------------------------------------------------


class Authorizer:
    """Decides every call's :class:`Caller` (bearer token, else mTLS certificate) and whether it may call."""

    def __init__(self, tokens: TokenCheck | None, cert_roles: Mapping[str, frozenset[str]] | None) -> None:
        self.tokens = tokens
        """Checks bearer tokens; None: tokens are not taken."""
        self.cert_roles = cert_roles
        """Certificate subject -> roles; None: certificates identify no one."""
        ways = (["an 'authorization: Bearer <JWT>' metadata"] if tokens else []) + (
            ["a client certificate"] if cert_roles is not None else []
        )
        self._no_credentials = f"no credentials: this node takes {' or '.join(ways)}"

    def identify(self, authorization: str | None, subject: str | None, peer: str) -> Caller:
        """The caller of a call with this ``authorization`` metadata and certificate ``subject``; pure."""
        if authorization is not None and self.tokens is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization metadata is not 'Bearer <JWT>'")
            name, roles = self.tokens.identity(token.strip())
            return Caller(name, roles, peer)
        if subject is not None and self.cert_roles is not None:
            return Caller(f"cert:{subject}", self.cert_roles.get(subject, frozenset()), peer)
        if authorization is not None:
            raise Unauthenticated(f"bearer tokens are not taken here ({self._no_credentials.partition(': ')[2]})")
        if self.cert_roles is not None and self.tokens is None:
            raise Unauthenticated("no client certificate: this node identifies callers by their certificate")
        raise Unauthenticated(self._no_credentials)

    def authorize(self, context: grpc.aio.ServicerContext, service: str, method: str) -> Caller:
        """The caller of the call ``context`` belongs to, if it may call ``service/method``; else raise
        :class:`Unauthenticated` or :class:`PermissionDenied`."""
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode("latin-1")
                break
        subject = None
        if self.cert_roles is not None and (authorization is None or self.tokens is None):
            subject = cert_subject(context.auth_context())
        peer = context.peer() or ""
        try:
            caller = self.identify(authorization, subject, peer)
        except Unauthenticated as exc:
            _note_refusal(exc.message, method, peer)
            raise
        denied = refusal(caller, service, method)
        if denied is not None:
            _note_refusal(denied.message, method, peer)
            raise denied
        return caller


_refusal_log = LogGate(interval_s=60.0)


def _note_refusal(message: str, method: str, peer: str) -> None:
    # Anyone can send bad credentials: one line per kind of refusal a minute, not one per call.
    held_back = _refusal_log.admit((" ".join(message.split()[:3]), method))
    if held_back is not None:
        log.warning(
            "refused %s from %s: %s (%d more like it since the last such line)", method, peer, message, held_back
        )


@dataclass(frozen=True)
class AuthSettings:
    """The node's auth settings (``auth*`` in :class:`~flashstock.server._config.NodeConfig`)."""

    auth: str = "off"
    """``auth``: on or off."""
    jwt_keys: tuple[str, ...] = ()
    """``auth_jwt_keys``: the key files (:func:`load_token_keys`)."""
    jwt_issuer: str = ""
    """``auth_jwt_issuer``."""
    jwt_audience: str = ""
    """``auth_jwt_audience``."""
    jwt_leeway_s: float = 30.0
    """``auth_jwt_leeway_s``."""
    jwt_roles_claim: str = "roles"
    """``auth_jwt_roles_claim``."""
    cert_roles: str = ""
    """``auth_cert_roles``: the subject -> roles file (:func:`load_cert_roles`); empty: none."""
    mutual_tls: bool = False
    """True when the node asks callers for certificates (``tls_client_ca``)."""

    def shape_problems(self) -> list[str]:
        """What is wrong with which settings are given (no file is read)."""
        if self.auth not in ("off", "on"):
            return [f"auth: {self.auth!r} is not off or on"]
        if self.auth == "off":
            return []
        out = []
        if not self.jwt_keys and not self.cert_roles:
            out.append("auth: on, but neither auth_jwt_keys nor auth_cert_roles is set: no caller could authenticate")
        if self.jwt_keys and not (self.jwt_issuer and self.jwt_audience):
            out.append("auth_jwt_issuer, auth_jwt_audience: tokens are checked against both; set them")
        if self.cert_roles and not self.mutual_tls:
            out.append("auth_cert_roles: callers present certificates only with mutual TLS (set tls_client_ca)")
        if not 0 <= self.jwt_leeway_s <= 3600:
            out.append(f"auth_jwt_leeway_s: {self.jwt_leeway_s} is not 0-3600")
        return out

    def authorizer(self) -> Authorizer | None:
        """The authorizer of these settings (their files read now); None when auth is off.

        ``ValueError`` naming each bad setting."""
        problems = self.shape_problems()
        if problems:
            raise ValueError("; ".join(problems))
        if self.auth == "off":
            return None
        tokens = None
        if self.jwt_keys:
            rules = TokenRules(self.jwt_issuer, self.jwt_audience, self.jwt_leeway_s, self.jwt_roles_claim)
            tokens = TokenCheck(load_token_keys(self.jwt_keys), rules)
        cert_roles = load_cert_roles(self.cert_roles) if self.cert_roles else None
        return Authorizer(tokens, cert_roles)


def split_paths(value: str) -> tuple[str, ...]:
    """Comma-separated file paths, ``~`` expanded."""
    return tuple(os.path.expanduser(p.strip()) for p in value.split(",") if p.strip())


def rpcs_of(files: Iterable[Any]) -> list[tuple[str, str]]:
    """Every (service full name, method) of the proto file descriptors ``files``."""
    return [(s.full_name, m.name) for f in files for s in f.services_by_name.values() for m in s.methods]


__all__ = [
    "METHOD_ROLES",
    "OPEN_SERVICES",
    "BOARD_ROLES",
    "AuthSettings",
    "Authorizer",
    "TokenCheck",
    "TokenKey",
    "TokenRules",
    "cert_subject",
    "load_cert_roles",
    "load_token_keys",
    "refusal",
    "role_refusal",
    "roles_for",
    "rpcs_of",
    "split_paths",
]
