"""Certificates for the bench's TLS part, made with ``openssl`` at bench start.

The ``cryptography`` package is not a dependency of the ``server`` extra
(only ``trustme``, a test dependency, pulls it in), so the bench runs
Debian's ``openssl`` command instead: a throwaway CA, a node certificate for
127.0.0.1 and localhost, and a client certificate for the load processes
(mutual TLS). EC P-256 keys, valid for a day, written into the bench's
temporary folder.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MtlsFiles", "make_mtls_files"]


@dataclass(frozen=True)
class MtlsFiles:
    """PEM files of one throwaway CA and the two certificates it signed."""

    ca: Path
    """The CA's certificate: the node's ``--tls-client-ca`` and the callers' trust root."""
    node_cert: Path
    """The node's certificate (SAN IP:127.0.0.1, DNS:localhost)."""
    node_key: Path
    """The node certificate's private key."""
    client_cert: Path
    """The load processes' client certificate."""
    client_key: Path
    """The client certificate's private key."""


_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _openssl(*args: str | Path, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl not found: install Debian's package (apt-get install openssl)")
    done = subprocess.run([binary, *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()[-500:]}")


def make_mtls_files(folder: Path) -> MtlsFiles:
    """A fresh CA, a node certificate and a client certificate, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = MtlsFiles(*(folder / n for n in ("ca.pem", "node.pem", "node-key.pem", "client.pem", "client-key.pem")))
    ca_key = folder / "ca-key.pem"
    _openssl(
        "req", "-x509", *_KEY, "-keyout", ca_key, "-out", files.ca, "-days", "1",
        "-subj", "/CN=flashstock bench CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    for cert, key, cn, ext in (
        (files.node_cert, files.node_key, "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
         "extendedKeyUsage=serverAuth\n"),
        (files.client_cert, files.client_key, "flashstock-bench-load", "extendedKeyUsage=clientAuth\n"),
    ):  # fmt: skip
        csr, extfile = cert.with_suffix(".csr"), cert.with_suffix(".ext")
        extfile.write_text(ext)
        _openssl("req", "-new", *_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={cn}", cwd=folder)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", files.ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "1", "-out", cert, "-extfile", extfile,
            cwd=folder,
        )  # fmt: skip
    return files
