"""``flashstock certs make``: a dev CA reused across runs, server certificates for the hosts given, client
certificates for a name; a mutual TLS handshake works with what it printed."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashstock.server.cli.app import app
from flashstock.server.local.certs import MtlsFiles
from tests.unit.test_bench_tls import _contexts, _handshake


def make(*args: str) -> str:
    result = CliRunner().invoke(app, ["certs", "make", *args], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def test_a_server_and_a_new_client_of_one_ca_shake_hands(tmp_path: Path) -> None:
    first = make(str(tmp_path), "--host", "127.0.0.1", "--host", "localhost")
    assert f"CA (keep ca-key.pem private): {tmp_path / 'ca.pem'}" in first
    second = make(str(tmp_path), "--client", "alice")  # a new user later: the same CA
    assert f"using the CA in {tmp_path / 'ca.pem'}" in second and "client: CN=alice" in second
    files = MtlsFiles(
        tmp_path / "ca.pem",
        tmp_path / "server.pem",
        tmp_path / "server-key.pem",
        tmp_path / "client-alice.pem",
        tmp_path / "client-alice-key.pem",
    )
    peer = _handshake(*_contexts(files)).getpeercert()
    assert peer is not None and dict(x[0] for x in peer["subject"])["commonName"] == "alice"
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o077 == 0


def test_a_client_of_another_ca_is_refused(tmp_path: Path) -> None:
    make(str(tmp_path / "a"), "--host", "127.0.0.1")
    make(str(tmp_path / "b"), "--client", "mallory")
    files = MtlsFiles(
        tmp_path / "a" / "ca.pem",
        tmp_path / "a" / "server.pem",
        tmp_path / "a" / "server-key.pem",
        tmp_path / "b" / "client-mallory.pem",
        tmp_path / "b" / "client-mallory-key.pem",
    )
    server, client = _contexts(files)  # the client trusts the server; the server does not trust the client
    with pytest.raises(ssl.SSLError):
        _handshake(server, client)


def test_nothing_to_make_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["certs", "make", str(tmp_path)])
    assert result.exit_code == 2 and "--host" in result.output
