"""``flashstock token``: make bearer tokens (JWT) and HS256 secrets, for development and tests.

A node with ``auth = on`` checks tokens against ``auth_jwt_keys``; these
commands make both sides: ``token key DIR`` writes a fresh HS256 secret
(mode 0600) for the node and the token maker, ``token make`` signs a token
with it (or with an RS256/ES256 private key whose public half the nodes
hold). In production the tokens come from your identity provider.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Annotated

import typer

from flashstock.server.cli.common import console, exit_error, parse_duration_ms
from flashstock.server.rpc.identity import ROLES

token_app = typer.Typer(help="Make bearer tokens (JWT) for nodes with auth on (development).", no_args_is_help=True)

SECRET_NAME = "jwt-hs256.secret"
"""The file ``token key`` (and ``cluster up --auth``) writes the secret into."""
DEV_ISSUER, DEV_AUDIENCE = "flashstock-dev", "flashstock"
"""``token make``'s default iss and aud, which ``cluster up --auth``'s nodes require."""


@token_app.command("key")
def make_key(
    folder: Annotated[Path, typer.Argument(help="Folder to write the secret into (made if missing).")],
    force: Annotated[bool, typer.Option(help="Replace a secret already there.")] = False,
) -> None:
    """Write a fresh HS256 secret (32 random bytes, hex) to FOLDER/jwt-hs256.secret, readable by you only.

    Give it to the nodes (``--auth-jwt-keys``) and to ``token make --key``."""
    path = folder / SECRET_NAME
    if path.exists() and not force:
        exit_error("token key", f"{path} exists (--force replaces it; tokens signed with it stop working)", 1)
    try:
        write_secret(path)
    except OSError as exc:
        exit_error("token key", f"cannot write {path}: {exc}")
    console.print(str(path))


def write_secret(path: Path) -> None:
    """A fresh HS256 secret (32 random bytes, hex) in ``path``, mode 0600, its folder made if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def _signing_key(path: Path) -> tuple[bytes, str]:
    """The key in ``path`` and the algorithm it signs with: an HS256 secret, or an RSA / EC P-256 private PEM."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        exit_error("token make", f"--key: cannot read {path}: {exc.strerror or exc}")
    if b"PRIVATE KEY" not in data:
        secret = data.rstrip(b"\r\n")
        if len(secret) < 32:
            exit_error("token make", f"--key: {path} is no private PEM, and too short for an HS256 secret (< 32 bytes)")
        return secret, "HS256"
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        exit_error("token make", f"--key: {path} is not an unencrypted PEM private key ({exc})")
    if isinstance(key, rsa.RSAPrivateKey):
        return data, "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return data, "ES256"
    exit_error("token make", f"--key: {path} is neither an RSA nor an EC P-256 private key")


def dev_token(secret: Path, sub: str, roles: list[str], ttl_s: int) -> str:
    """A token signed with the HS256 ``secret`` file (:func:`write_secret`), with the dev iss and aud."""
    import jwt

    now = int(time.time())
    claims = {"sub": sub, "roles": roles, "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret.read_bytes().rstrip(b"\r\n"), algorithm="HS256")


@token_app.command("make")
def make_token(
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            help="HS256 secret file (token key), or an RSA / EC P-256 private PEM (RS256 / ES256).",
            show_default=False,
        ),
    ],
    sub: Annotated[str, typer.Option("--sub", help="Who the token names (the identity jwt:<sub>).")],
    role: Annotated[
        list[str], typer.Option("--role", help=f"A role it holds (repeat): {', '.join(ROLES)}.", show_default=False)
    ],
    ttl: Annotated[str, typer.Option("--ttl", help="How long it is valid: N[s|m|h] (30s, 15m, 1h).")] = "1h",
    issuer: Annotated[
        str, typer.Option("--issuer", envvar="FLASHSTOCK_AUTH_JWT_ISSUER", help="Its iss (the nodes' auth_jwt_issuer).")
    ] = DEV_ISSUER,
    audience: Annotated[
        str,
        typer.Option(
            "--audience", envvar="FLASHSTOCK_AUTH_JWT_AUDIENCE", help="Its aud (the nodes' auth_jwt_audience)."
        ),
    ] = "flashstock",
    kid: Annotated[str, typer.Option("--kid", help="A key id for its header (to pick a key of a JWKS).")] = "",
) -> None:
    """Print a signed bearer token: ``flashstock token make --key K --sub alice --role operator``."""
    import jwt

    unknown = sorted(set(role) - set(ROLES))
    if unknown:
        exit_error("token make", f"--role: {unknown[0]!r} is not one of {', '.join(ROLES)}")
    if not sub.strip():
        exit_error("token make", "--sub: empty")
    try:
        ttl_ms = parse_duration_ms(ttl)
    except typer.BadParameter as exc:
        exit_error("token make", f"--ttl: {exc.message}")
    if ttl_ms <= 0:
        exit_error("token make", "--ttl: must be > 0")
    signing, algorithm = _signing_key(key)
    now = int(time.time())
    claims = {"sub": sub, "roles": role, "iss": issuer, "aud": audience, "iat": now, "exp": now + ttl_ms // 1000}
    token = jwt.encode(claims, signing, algorithm=algorithm, headers={"kid": kid} if kid else None)
    # Plain print: rich would wrap a long token.
    print(token)
