"""Certificates for development and tests, made with Debian's ``openssl`` command.

The ``cryptography`` package is not a dependency of the ``server`` extra
(only ``trustme``, a test dependency, pulls it in), so this runs ``openssl``:
a CA (:func:`make_ca`), server certificates for some hosts
(:func:`make_server_cert`) and client certificates for a name
(:func:`make_client_cert`), EC P-256 keys, PEM files in one folder. Used by
``flashstock certs make``, by ``flashstock cluster up --tls`` and by the
bench's TLS part (:func:`make_mtls_files`: a throwaway CA valid for a day).

These are a developer's certificates: the CA's key lies beside them, and
nothing is revoked. Production certificates come from the operator's own CA.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertPair", "MtlsFiles", "make_ca", "make_client_cert", "make_mtls_files", "make_server_cert"]


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


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


def _san(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host}"
    return f"IP:{host}"


def make_ca(folder: Path, name: str = "flashstock dev CA", days: int = 825) -> CertPair:
    """``ca.pem`` and ``ca-key.pem`` in ``folder``: a new CA, or the one already there."""
    folder.mkdir(parents=True, exist_ok=True)
    pair = CertPair(folder / "ca.pem", folder / "ca-key.pem")
    if pair.cert.exists() and pair.key.exists():
        return pair
    _openssl(
        "req", "-x509", *_KEY, "-keyout", pair.key, "-out", pair.cert, "-days", str(days),
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    os.chmod(pair.key, 0o600)
    return pair


def _sign(folder: Path, ca: CertPair, stem: str, cn: str, ext: str, days: int) -> CertPair:
    pair = CertPair(folder / f"{stem}.pem", folder / f"{stem}-key.pem")
    csr, extfile = folder / f"{stem}.csr", folder / f"{stem}.ext"
    extfile.write_text(ext)
    try:
        _openssl("req", "-new", *_KEY, "-keyout", pair.key, "-out", csr, "-subj", f"/CN={cn}", cwd=folder)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
            "-days", str(days), "-out", pair.cert, "-extfile", extfile,
            cwd=folder,
        )  # fmt: skip
    finally:
        csr.unlink(missing_ok=True)
        extfile.unlink(missing_ok=True)
    os.chmod(pair.key, 0o600)
    return pair


def make_server_cert(folder: Path, ca: CertPair, hosts: list[str], stem: str = "server", days: int = 825) -> CertPair:
    """``<stem>.pem`` and its key: a server certificate for ``hosts`` (IP addresses or DNS names)."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host")
    ext = f"subjectAltName={','.join(_san(h) for h in hosts)}\nextendedKeyUsage=serverAuth,clientAuth\n"
    return _sign(folder, ca, stem, hosts[0], ext, days)


def make_client_cert(folder: Path, ca: CertPair, name: str, days: int = 825) -> CertPair:
    """``client-<name>.pem`` and its key: a client certificate whose subject is ``CN=<name>``."""
    if not name or "/" in name or name != name.strip():
        raise ValueError(f"a client name is 1+ characters without '/' or spaces at its ends, not {name!r}")
    return _sign(folder, ca, f"client-{name}", name, "extendedKeyUsage=clientAuth\n", days)


def make_mtls_files(folder: Path) -> MtlsFiles:
    """A fresh CA valid for a day, a node certificate and a client certificate, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca(folder, "flashstock bench CA", days=1)
    node = make_server_cert(folder, ca, ["127.0.0.1", "localhost"], stem="node", days=1)
    client = make_client_cert(folder, ca, "flashstock-bench-load", days=1)
    return MtlsFiles(ca.cert, node.cert, node.key, client.cert, client.key)
