"""``flashstock certs make``: a development CA, a server certificate and client certificates, with ``openssl``.

For trying TLS out (a node, a local cluster, a new operator or service):
the CA's key lies in the same folder, so the CA is as safe as that folder.
Production certificates come from the operator's own CA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flashstock.server.cli.common import console, exit_error

certs_app = typer.Typer(help="Certificates for trying TLS out: a dev CA, server and client certificates.")


@certs_app.command("make")
def certs_make(
    folder: Annotated[Path, typer.Argument(help="Where the files go (made if missing; a CA there is reused).")],
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="A name or IP address the server certificate is for (repeat).", show_default=False),
    ] = None,
    client: Annotated[
        list[str] | None,
        typer.Option(
            "--client", help="Make a client certificate with this name (CN=NAME; repeat).", show_default=False
        ),
    ] = None,
    days: Annotated[int, typer.Option(help="How long the new certificates are valid.", min=1)] = 825,
) -> None:
    """Make (or reuse) FOLDER/ca.pem, then a server certificate for each --host and a client certificate for
    each --client, signed by it; print what was written."""
    from flashstock.server.local.certs import make_ca, make_client_cert, make_server_cert

    if not host and not client:
        exit_error("certs make", "give --host (a server certificate) and/or --client NAME (a client certificate)")
    folder = folder.expanduser().resolve()
    had_ca = (folder / "ca.pem").exists()
    try:
        ca = make_ca(folder)
        written = [] if had_ca else [("CA (keep ca-key.pem private)", ca.cert, ca.key)]
        if host:
            server = make_server_cert(folder, ca, list(host), days=days)
            written.append((f"server: {', '.join(host)}", server.cert, server.key))
        for name in client or []:
            pair = make_client_cert(folder, ca, name, days=days)
            written.append((f"client: CN={name}", pair.cert, pair.key))
    except (RuntimeError, ValueError, OSError) as exc:
        exit_error("certs make", str(exc))
    if had_ca:
        console.print(f"using the CA in {ca.cert}")
    for what, cert, key in written:
        console.print(f"{what}: {cert} (key {key})", soft_wrap=True, highlight=False)
    if host:
        console.print(
            f"a node: flashstock serve --tls-cert {folder / 'server.pem'} --tls-key {folder / 'server-key.pem'} "
            f"--tls-client-ca {ca.cert}",
            soft_wrap=True,
            highlight=False,
        )
    for name in client or []:
        console.print(
            f"a caller: --tls-ca {ca.cert} --tls-cert {folder / f'client-{name}.pem'} "
            f"--tls-key {folder / f'client-{name}-key.pem'}",
            soft_wrap=True,
            highlight=False,
        )
