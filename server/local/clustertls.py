"""The certificates, users and passwords of a local cluster on TLS (``cluster up --tls``).

Everything lives in the cluster folder's ``tls/`` (made once, kept when the
cluster is started again)::

    ca.pem, ca-key.pem                 the cluster's own development CA
    server.pem, server-key.pem         127.0.0.1 / localhost: etcd, Redis, PostgreSQL, the nodes, the board's page
    client-node.pem, -key.pem          the nodes' and the board's client certificate (etcd, Redis, the nodes)
    client-operator.pem, -key.pem      the operator's: the CLI, ``cluster status``, tests
    etcd-<user>.password               etcd users root, node (the nodes, the board) and operator
    redis.password                     the Redis ACL user ``flashstock`` (the default user is off)

Passwords are random, in files only their owner may read; they are passed
to processes as file paths or environment variables, never as arguments.
etcd's users ``node`` and ``operator`` hold the role ``<cluster>-rw``:
readwrite on the cluster's prefix, nothing else.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from flashstock.lockmgr import ClusterKeys, EtcdAccess
from flashstock.server.local.certs import CertPair, make_ca, make_client_cert, make_server_cert
from flashstock.server.local.etcd import add_etcd_user, enable_etcd_auth, grant_role
from flashstock.server.local.procs import ServerTlsFiles

__all__ = ["REDIS_USER", "ClusterTls"]

REDIS_USER = "flashstock"
"""The Redis ACL user of a local cluster on TLS."""

ETCD_USERS = ("root", "node", "operator")


def _password(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_urlsafe(18) + "\n")
        os.chmod(path, 0o600)
    return path.read_text().strip()


@dataclass(frozen=True)
class ClusterTls:
    """The files of ``folder``/tls (made by :meth:`make`)."""

    folder: Path

    @classmethod
    def make(cls, cluster_folder: Path) -> ClusterTls:
        """Make whatever of the CA, certificates and passwords is missing; keep what is there."""
        tls = cls(cluster_folder / "tls")
        tls.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(tls.folder, 0o700)
        ca = make_ca(tls.folder, "flashstock local cluster CA")
        if not tls.server.cert.exists():
            make_server_cert(tls.folder, ca, ["127.0.0.1", "localhost"])
        for name in ("node", "operator"):
            if not tls.client(name).cert.exists():
                make_client_cert(tls.folder, ca, name)
        for user in ETCD_USERS:
            _password(tls.etcd_password_file(user))
        _password(tls.folder / "redis.password")
        return tls

    @property
    def ca(self) -> Path:
        """The CA every server and client trusts."""
        return self.folder / "ca.pem"

    @property
    def server(self) -> CertPair:
        """The servers' certificate (127.0.0.1, localhost)."""
        return CertPair(self.folder / "server.pem", self.folder / "server-key.pem")

    def client(self, name: str) -> CertPair:
        """The client certificate of ``name`` (``node``, ``operator``)."""
        return CertPair(self.folder / f"client-{name}.pem", self.folder / f"client-{name}-key.pem")

    def etcd_password_file(self, user: str) -> Path:
        """The file of etcd user ``user``'s password."""
        return self.folder / f"etcd-{user}.password"

    def etcd_password(self, user: str) -> str:
        """etcd user ``user``'s password."""
        return self.etcd_password_file(user).read_text().strip()

    @property
    def redis_password(self) -> str:
        """The Redis ACL user's password."""
        return (self.folder / "redis.password").read_text().strip()

    def server_files(self, client: str = "operator") -> ServerTlsFiles:
        """A server's files, mutual TLS (clients of the CA), checked with ``client``'s certificate."""
        pair = self.client(client)
        return ServerTlsFiles(
            str(self.server.cert),
            str(self.server.key),
            ca=str(self.ca),
            client_ca=str(self.ca),
            client_cert=str(pair.cert),
            client_key=str(pair.key),
        )

    def etcd_access(self, user: str) -> EtcdAccess:
        """Mutual TLS to etcd as ``user`` (the client certificate of ``operator`` for root)."""
        pair = self.client("node" if user == "node" else "operator")
        return EtcdAccess(str(self.ca), str(pair.cert), str(pair.key), user, self.etcd_password(user))

    def client_flags(self, who: str) -> list[str]:
        """Flags of ``flashstock serve`` / ``board`` to reach the nodes, Redis and etcd as ``who``."""
        pair = self.client(who)
        files = (str(self.ca), str(pair.cert), str(pair.key))
        out = ["--redis-tls-ca", files[0], "--redis-tls-cert", files[1], "--redis-tls-key", files[2]]
        out += ["--etcd-tls-ca", files[0], "--etcd-tls-cert", files[1], "--etcd-tls-key", files[2]]
        out += ["--etcd-user", who, "--etcd-password-file", str(self.etcd_password_file(who))]
        return out

    def node_flags(self) -> list[str]:
        """A node's flags: mutual TLS on its ports, and TLS to Redis and etcd as ``node``."""
        server = ["--tls-cert", str(self.server.cert), "--tls-key", str(self.server.key)]
        return [*server, "--tls-client-ca", str(self.ca), *self.client_flags("node")]

    def board_flags(self) -> list[str]:
        """The board's flags: the nodes over mutual TLS, Redis and etcd as ``node`` (it only reads)."""
        pair = self.client("node")
        nodes = ["--tls-ca", str(self.ca), "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)]
        return [*nodes, *self.client_flags("node")]

    def page_flags(self) -> list[str]:
        """The board's own page on TLS with the cluster's server certificate (no client certificate asked:
        a browser opens it trusting the cluster's CA)."""
        return ["--page-tls-cert", str(self.server.cert), "--page-tls-key", str(self.server.key)]

    def operator_env(self) -> dict[str, str]:
        """``FLASHSTOCK_*`` variables that point the CLI at the cluster as ``operator``."""
        pair = self.client("operator")
        return {
            "FLASHSTOCK_TLS_CA": str(self.ca),
            "FLASHSTOCK_TLS_CERT": str(pair.cert),
            "FLASHSTOCK_TLS_KEY": str(pair.key),
            "FLASHSTOCK_ETCD_TLS_CA": str(self.ca),
            "FLASHSTOCK_ETCD_TLS_CERT": str(pair.cert),
            "FLASHSTOCK_ETCD_TLS_KEY": str(pair.key),
            "FLASHSTOCK_ETCD_USER": "operator",
            "FLASHSTOCK_ETCD_PASSWORD_FILE": str(self.etcd_password_file("operator")),
        }

    async def set_up_etcd_users(self, client: object, cluster: str) -> None:
        """Add etcd's users root, node and operator (roles on ``cluster``'s prefix) and enable auth."""
        prefix = ClusterKeys(cluster).prefix
        await add_etcd_user(client, "root", self.etcd_password("root"))
        await add_etcd_user(client, "node", self.etcd_password("node"), prefix=prefix, role=f"{cluster}-rw")
        await add_etcd_user(client, "operator", self.etcd_password("operator"))
        await grant_role(client, "operator", f"{cluster}-rw")
        await enable_etcd_auth(client)
