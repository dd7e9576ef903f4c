"""Real certificates for TLS tests, made with trustme: a CA, a node's certificate and a caller's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["Certs", "make_certs"]


@dataclass(frozen=True)
class Certs:
    """PEM files of one CA: a node's certificate for 127.0.0.1, and a caller's."""

    ca: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path


def make_certs(folder: Path, name: str) -> Certs:
    """A fresh CA named ``name`` and the certificates it signed, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name=name)
    node = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert(f"caller@{name}.example")
    certs = Certs(*(folder / f"{name}-{part}.pem" for part in ("ca", "node", "node-key", "client", "client-key")))
    ca.cert_pem.write_to_path(str(certs.ca))
    node.cert_chain_pems[0].write_to_path(str(certs.node_cert))
    node.private_key_pem.write_to_path(str(certs.node_key))
    client.cert_chain_pems[0].write_to_path(str(certs.client_cert))
    client.private_key_pem.write_to_path(str(certs.client_key))
    return certs
