"""TLS on the node's ports: the files checked at start, and reloaded when they change.

With ``tls_cert`` and ``tls_key`` the gRPC port (and with it health and
reflection) and the metrics port serve TLS; with ``tls_client_ca`` too,
mutual TLS: a caller must present a certificate that CA signed.

The gRPC port reloads the files when they change (rotation without
restart): grpc asks :meth:`ServerTls.fetch` before every new connection's
handshake, and it re-reads the files only when one's mtime changed. A new
set that does not load (a cert half written, a key that does not match)
is ignored with a warning, and the old one served until the files are
whole again. Connections already open keep the certificate they started
with. The metrics port loads the files once, at start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import threading
from dataclasses import dataclass

import grpc

log = logging.getLogger(__name__)

_SETTINGS = ("tls_cert", "tls_key", "tls_client_ca")


@dataclass(frozen=True)
class TlsFiles:
    """The node's TLS files (PEM paths); empty strings are unset."""

    cert: str = ""
    """``tls_cert``: the node's certificate chain."""
    key: str = ""
    """``tls_key``: the private key of ``cert``."""
    client_ca: str = ""
    """``tls_client_ca``: the CA(s) whose certificates callers must present (mutual TLS); empty = any caller."""

    @property
    def on(self) -> bool:
        """True when the ports serve TLS."""
        return bool(self.cert)

    def shape_problems(self) -> list[str]:
        """What is wrong with which settings are given (no file is read)."""
        if bool(self.cert) != bool(self.key):
            return ["tls_cert, tls_key: give both (a certificate and its key) or neither"]
        if self.client_ca and not self.cert:
            return ["tls_client_ca: mutual TLS needs tls_cert and tls_key too"]
        return []

    def problems(self) -> list[str]:
        """What is wrong with the files, each naming its setting: missing, unreadable, or a cert not of the key."""
        out = self.shape_problems()
        if out or not self.on:
            return out
        for name, path in zip(_SETTINGS, (self.cert, self.key, self.client_ca), strict=True):
            if path and not os.path.isfile(path):
                out.append(f"{name}: {path!r} is not a file")
        if out:
            return out
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            out.append(f"tls_cert, tls_key: {self.cert!r} is not a PEM certificate of the PEM key {self.key!r} ({exc})")
        except OSError as exc:
            out.append(f"tls_cert, tls_key: cannot read {self.cert!r} or {self.key!r}: {exc}")
        if self.client_ca:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (ssl.SSLError, OSError) as exc:
                out.append(f"tls_client_ca: {self.client_ca!r} is not a PEM certificate ({exc})")
        return out

    def _mtimes(self) -> tuple[int, ...]:
        return tuple(os.stat(p).st_mtime_ns if p else 0 for p in (self.cert, self.key, self.client_ca))

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        with open(self.cert, "rb") as f:
            cert = f.read()
        with open(self.key, "rb") as f:
            key = f.read()
        client_ca = None
        if self.client_ca:
            with open(self.client_ca, "rb") as f:
                client_ca = f.read()
        return cert, key, client_ca


class ServerTls:
    """The gRPC port's credentials, re-read from ``files`` when they change."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._mtimes = files._mtimes()
        self._initial = self._configuration()
        self.reloads = 0
        """How many times a changed set of files was loaded."""

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        cert, key, client_ca = self.files._read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``add_secure_port``: TLS, mutual when ``client_ca`` is set, reloading on change."""
        # grpc-stubs type the fetcher's result without None, which grpc documents as "keep the current one".
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self.fetch,  # type: ignore[arg-type]
            require_client_authentication=bool(self.files.client_ca),
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed since the last one loaded, else None (keep it).

        grpc calls this before each new connection's handshake, from its own threads.
        """
        with self._lock:
            try:
                mtimes = self.files._mtimes()
            except OSError as exc:
                log.warning("TLS files: %s; serving the certificate loaded before", exc)
                return None
            if mtimes == self._mtimes:
                return None
            problems = self.files.problems()
            if problems:
                log.warning("TLS files changed but do not load (%s); serving the ones loaded before", problems[0])
                return None
            try:
                configuration = self._configuration()
            except OSError as exc:
                log.warning("TLS files: %s; serving the certificate loaded before", exc)
                return None
            self._mtimes = mtimes
            self.reloads += 1
            log.info("TLS: the changed certificate files are served from now on")
            return configuration


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
