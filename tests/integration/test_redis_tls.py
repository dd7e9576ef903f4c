"""A node on a Redis that serves only TLS and knows only an ACL user.

A real ``redis-server`` with ``--port 0 --tls-port`` (certificates made here
with trustme) and an ACL user whose password the URL carries
(``rediss://user:password@host:port/0``); the default user is off. The node
serves a Deduct through it; a wrong password, a CA that did not sign
Redis's certificate, and a plaintext URL each stop the start with exit 2
naming ``redis_url``, never the password, and no traceback.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flashstock.client import AdminClient, ClientConfig, Outcome, StockClient
from flashstock.server.local.procs import RedisServer, ServerTlsFiles, free_port, serve_argv
from flashstock.server.store.redis import RedisTls, blocking_client
from tests.helpers.processes import QUIET, running_node
from tests.helpers.tls import Certs, make_certs

PASSWORD = "s3cret-Redis-pw"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("redis-tls"), "redis")


@pytest.fixture(scope="module")
def tls_redis(certs: Certs) -> Iterator[RedisServer]:
    """A Redis serving TLS only, with one ACL user (``flash``) and the default user off."""
    tls = ServerTlsFiles(str(certs.node_cert), str(certs.node_key), ca=str(certs.ca))
    with RedisServer(tls=tls, user=("flash", PASSWORD)) as server:
        yield server


def start_exit(redis_url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """``flashstock serve`` on ``redis_url``, run to its exit."""
    argv = serve_argv(free_port(), redis_url, *flags)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_a_node_serves_through_a_tls_redis_with_an_acl_user(tls_redis, certs, sku):
    assert tls_redis.url.startswith("rediss://flash:")
    with running_node(tls_redis.url, extra_args=("--redis-tls-ca", str(certs.ca), *QUIET)) as node:
        config = ClientConfig(addresses=node.address)
        with AdminClient(config) as admin, StockClient(config) as stock:
            admin.put_sku(sku, 2)
            assert stock.deduct(sku, "u1", 1).outcome is Outcome.OK
            assert admin.get_sku(sku).available == 1
        assert PASSWORD not in node.log()
    # The stock is in that Redis: read it back as the ACL user.
    client = blocking_client(tls_redis.url, tls=RedisTls(ca=str(certs.ca)))
    assert client.dbsize() > 0


def test_a_wrong_password_stops_the_start_naming_the_setting(tls_redis, certs):
    url = tls_redis.url.replace(PASSWORD, "not-the-password")
    done = start_exit(url, "--redis-tls-ca", str(certs.ca))
    assert done.returncode == 2, done.stderr
    assert "redis_url:" in done.stderr and "flash:***@" in done.stderr, done.stderr
    assert "invalid username-password" in done.stderr, done.stderr
    assert "not-the-password" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_redis_certificate_of_another_ca_stops_the_start(tls_redis, tmp_path: Path):
    stranger = make_certs(tmp_path, "stranger")
    done = start_exit(tls_redis.url, "--redis-tls-ca", str(stranger.ca))
    assert done.returncode == 2, done.stderr
    assert "redis_url:" in done.stderr and "certificate verify failed" in done.stderr, done.stderr
    assert PASSWORD not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_plaintext_to_the_tls_port_is_refused(tls_redis):
    plain = tls_redis.url.replace("rediss://", "redis://")
    with pytest.raises(Exception) as refused:
        blocking_client(plain).ping()
    assert PASSWORD not in str(refused.value)
    done = start_exit(plain)
    assert done.returncode == 2 and "redis_url:" in done.stderr, done.stderr
    assert PASSWORD not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_tls_files_without_a_rediss_url_are_refused_at_start(certs):
    done = start_exit("redis://127.0.0.1:1/0", "--redis-tls-ca", str(certs.ca))
    assert done.returncode == 2 and "redis_tls_ca" in done.stderr and "rediss://" in done.stderr, done.stderr


def test_a_missing_link_tls_file_stops_the_start_naming_it(tmp_path: Path):
    missing = str(tmp_path / "nope.pem")
    done = start_exit("rediss://127.0.0.1:1/0", "--redis-tls-ca", missing)
    assert done.returncode == 2 and f"redis_tls_ca: {missing!r} is not a file" in done.stderr, done.stderr
    done = start_exit("redis://127.0.0.1:1/0", "--etcd", "127.0.0.1:1", "--etcd-tls-ca", missing)
    assert done.returncode == 2 and f"etcd_tls_ca: {missing!r} is not a file" in done.stderr, done.stderr
