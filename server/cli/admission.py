"""``flashstock admission``: the keys and tokens of a sale's "hidden buy link".

``key DIR`` makes a new HMAC key file (the nodes' ``admission_keys`` setting
lists such files; the gateway signs with one); ``token`` mints a token as a
gateway would (:func:`flashstock.client.admission_token`), for trying a SKU
put with ``--require-token`` by hand.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from flashstock.client import admission_token, read_admission_key
from flashstock.server.cli.common import exit_error, parse_duration_ms

admission_app = typer.Typer(help="Admission tokens (a sale's hidden buy link): keys and tokens.", no_args_is_help=True)


@admission_app.command("key")
def admission_key(
    folder: Annotated[Path, typer.Argument(help="Folder to write the key file <kid>.key into (made if missing).")],
    kid: Annotated[
        str, typer.Option(help="The key's id (its file name): 1-32 of A-Z a-z 0-9 _ -; default key-<random>.")
    ] = "",
) -> None:
    """Make a new admission key (32 random bytes, base64url text, readable by its owner only); print its path.

    Give the path to every node (``--admission-keys``, comma-separated with the
    key it replaces while tokens of the old one are still out) and to the
    gateway that mints the tokens.
    """
    kid = kid or f"key-{secrets.token_hex(4)}"
    path = folder / f"{kid}.key"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        exit_error("admission key", f"{path} exists already: choose another --kid")
    except OSError as exc:
        exit_error("admission key", f"cannot write {path}: {exc.strerror or exc}")
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    try:
        read_admission_key(path)
    except ValueError as exc:
        path.unlink()
        exit_error("admission key", str(exc))
    print(path)


@admission_app.command("token")
def admission_token_command(
    key: Annotated[Path, typer.Option(help="The key file to sign with (flashstock admission key).")],
    user: Annotated[str, typer.Option(help="The user the token admits.")],
    sku: Annotated[str, typer.Option(help="The SKU the token admits to.")],
    ttl: Annotated[str, typer.Option(help="How long the token is valid: N[ms|s|m|h] (30s, 5m).")] = "30s",
) -> None:
    """Print a token admitting --user to Deduct or Hold --sku for --ttl, as the operator's gateway would mint it."""
    try:
        ttl_ms = parse_duration_ms(ttl)
    except typer.BadParameter as exc:
        raise typer.BadParameter(exc.message, param_hint="--ttl") from None
    if ttl_ms <= 0:
        raise typer.BadParameter("must be more than 0", param_hint="--ttl")
    try:
        signing_key = read_admission_key(key)
    except ValueError as exc:
        exit_error("admission token", f"--key: {exc}")
    print(admission_token(signing_key, user, sku, ttl_ms / 1000))


__all__ = ["admission_app"]
