"""A PostgreSQL ledger reached with ``sslmode=verify-full``.

A real PostgreSQL (Debian's) started here with ``ssl=on`` and a server
certificate for 127.0.0.1 made with trustme. The ledger URL's
``?sslmode=verify-full&sslrootcert=...`` reaches psycopg unchanged: the
ledger's connection is TLS, and a CA that did not sign the server's
certificate is refused with a message naming the ledger, at start too.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from flashstock.server.ledger import Ledger, LedgerError
from flashstock.server.ledger.reports import operator_url
from flashstock.server.local.procs import PostgresServer, RedisServer, ServerTlsFiles, free_port, serve_argv
from tests.helpers.tls import Certs, make_certs

pytestmark = pytest.mark.slow  # its own PostgreSQL: initdb and a start


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pg-tls"), "pg")


@pytest.fixture(scope="module")
def ssl_postgres(certs: Certs) -> Iterator[PostgresServer]:
    with PostgresServer(tls=ServerTlsFiles(str(certs.node_cert), str(certs.node_key), ca=str(certs.ca))) as server:
        yield server


def verify_full(url: str, ca: object) -> str:
    return f"{url}?sslmode=verify-full&sslrootcert={ca}"


def test_the_ledger_connects_with_verify_full_over_tls(ssl_postgres, certs):
    url = verify_full(ssl_postgres.create_database(), certs.ca)
    ledger = Ledger(operator_url(url))
    ledger.open()
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar() is True
    assert ledger.sku_states() == [] and ledger.identity()
    ledger.close()


def test_a_ca_that_did_not_sign_the_server_is_refused(ssl_postgres, tmp_path):
    stranger = make_certs(tmp_path, "stranger")
    url = verify_full(ssl_postgres.create_database(), stranger.ca)
    with pytest.raises(LedgerError, match="certificate verify failed"):
        Ledger(operator_url(url)).open()
    with RedisServer() as redis_server:
        argv = serve_argv(free_port(), redis_server.url, "--ledger", url)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 2, done.stderr
    assert "ledger" in done.stderr and "certificate verify failed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_operator_url_keeps_the_ssl_parameters():
    url = operator_url("postgresql+psycopg://u:pw@db.example/ledger?sslmode=verify-full&sslrootcert=/ca.pem")
    query = sa.engine.make_url(url).query
    assert query["sslmode"] == "verify-full" and query["sslrootcert"] == "/ca.pem" and "connect_timeout" in query
