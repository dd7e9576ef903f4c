"""A cluster whose etcd serves only mutual TLS and asks every caller for a user.

A real etcd (``--cert-file --key-file --trusted-ca-file --client-cert-auth``,
certificates made here with trustme) with ``auth enable`` and four users:
``root``; ``node`` and ``ops`` with a role of readwrite on the cluster's
prefix; ``viewer`` with no role. Two real nodes register there as ``node``; a
client finds them there and deducts; the shard CLI moves a shard as ``ops``,
and is refused, with a message and no traceback, as ``viewer``, with a wrong
password, and without a user. A token etcd forgot is fetched again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from typer.testing import CliRunner, Result

from flashstock.client import AsyncAdminClient, AsyncStockClient, ClientConfig, Outcome, Unavailable
from flashstock.lockmgr import ClusterKeys, EtcdAccess, etcd_client, owners
from flashstock.server.cli.app import app
from flashstock.server.ledger import Ledger
from flashstock.server.local.etcd import EtcdServer, add_etcd_user, enable_etcd_auth
from flashstock.server.local.procs import NodeProcess, RedisServer, ServerTlsFiles, free_port, serve_argv
from tests.helpers import aeventually
from tests.helpers.processes import QUIET
from tests.helpers.tls import Certs, make_certs

CLUSTER = "tls-auth"
PASSWORDS = {"root": "root-pw", "node": "node-pw", "ops": "ops-pw", "viewer": "viewer-pw"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("etcd-tls"), "etcd")


def server_tls(certs: Certs) -> ServerTlsFiles:
    return ServerTlsFiles(
        str(certs.node_cert),
        str(certs.node_key),
        ca=str(certs.ca),
        client_ca=str(certs.ca),
        client_cert=str(certs.client_cert),
        client_key=str(certs.client_key),
    )


def access(certs: Certs, user: str = "", password: str | None = None) -> EtcdAccess:
    """Mutual TLS to the module's etcd, as ``user``."""
    pw = PASSWORDS.get(user, "") if password is None else password
    return EtcdAccess(str(certs.ca), str(certs.client_cert), str(certs.client_key), user, pw)


async def set_up_users(endpoint: str, certs: Certs) -> None:
    admin = etcd_client(endpoint, access=access(certs))
    try:
        prefix = ClusterKeys(CLUSTER).prefix
        await add_etcd_user(admin, "root", PASSWORDS["root"])
        await add_etcd_user(admin, "node", PASSWORDS["node"], prefix=prefix)
        await add_etcd_user(admin, "ops", PASSWORDS["ops"], prefix=prefix, role="operator")
        await add_etcd_user(admin, "viewer", PASSWORDS["viewer"])
        await enable_etcd_auth(admin)
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def secure_etcd(certs: Certs) -> Iterator[EtcdServer]:
    with EtcdServer(tls=server_tls(certs)) as server:
        asyncio.run(set_up_users(server.endpoint, certs))
        yield server


@pytest.fixture(scope="module")
def nodes(secure_etcd: EtcdServer, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list]:
    """Two nodes of the cluster, reaching etcd as ``node`` (its password in a file)."""
    password_file = tmp_path_factory.mktemp("secrets") / "etcd-password"
    password_file.write_text(PASSWORDS["node"] + "\n")
    flags = (
        *("--etcd", secure_etcd.endpoint, "--cluster", CLUSTER, "--shards", "8"),
        *("--etcd-tls-ca", str(certs.ca), "--etcd-tls-cert", str(certs.client_cert)),
        *("--etcd-tls-key", str(certs.client_key), "--etcd-user", "node"),
        *("--etcd-password-file", str(password_file), *QUIET),
    )
    with RedisServer() as redis_server:
        a = NodeProcess(redis_server.url, shards=8, extra_args=(*flags, "--node-id", "node-a")).start()
        try:
            b = NodeProcess(
                redis_server.url, shards=8, extra_args=(*flags, "--node-id", "node-b"), ledger=a.ledger_url
            ).start()
            try:
                yield [a, b]
            finally:
                b.stop()
                b.remove_data()
        finally:
            a.stop()
            a.remove_data()


@pytest_asyncio.fixture(loop_scope="session")
async def ops_client(secure_etcd: EtcdServer, certs: Certs) -> AsyncIterator:
    client = etcd_client(secure_etcd.endpoint, access=access(certs, "ops"))
    try:
        yield client
    finally:
        await client.close()


def cli(certs: Certs, etcd: str, *args: str, user: str = "", password: str = "") -> Result:
    tls = ("--etcd-tls-ca", str(certs.ca), "--etcd-tls-cert", str(certs.client_cert))
    tls += ("--etcd-tls-key", str(certs.client_key))
    env = {"COLUMNS": "250", "NO_COLOR": "1", "FLASHSTOCK_ETCD_PASSWORD": password}
    who = ("--etcd-user", user) if user else ()
    return CliRunner().invoke(app, [*args, "--etcd", etcd, "--cluster", CLUSTER, *tls, *who], env=env)


async def test_nodes_register_and_a_client_finds_them_through_tls_and_auth(secure_etcd, certs, nodes, sku):
    base = ClientConfig(etcd=secure_etcd.endpoint, cluster=CLUSTER, discovery_timeout_s=10)
    config = dataclasses.replace(
        base,
        etcd_tls_ca=str(certs.ca),
        etcd_tls_cert=str(certs.client_cert),
        etcd_tls_key=str(certs.client_key),
        etcd_user="viewer",
        etcd_password=PASSWORDS["viewer"],
    )
    ops = dataclasses.replace(config, etcd_user="ops", etcd_password=PASSWORDS["ops"])
    async with AsyncAdminClient(ops) as admin, AsyncStockClient(ops) as stock:
        assert sorted(admin.addresses) == sorted(n.address for n in nodes)
        await admin.put_sku(sku, 2)
        assert (await stock.deduct(sku, "u1", 1)).outcome is Outcome.OK
    # viewer has no role: etcd refuses it the node list, and the client says so.
    with pytest.raises(Unavailable, match="permission denied"):
        async with AsyncStockClient(dataclasses.replace(config, discovery_timeout_s=2)):
            pass
    result = await asyncio.to_thread(cli, certs, secure_etcd.endpoint, "nodes", "ls", user="ops", password="ops-pw")
    assert result.exit_code == 0 and "node-a" in result.output and "node-b" in result.output, result.output
    assert "ops-pw" not in result.output


async def test_an_operator_with_the_role_moves_a_shard_and_others_are_refused(secure_etcd, certs, nodes, ops_client):
    held = await aeventually(lambda: owners(ops_client, CLUSTER), until=lambda o: len(o) == 8)
    shard = next(s for s, o in sorted(held.items()) if o.node == "node-a")
    move = ("shards", "move", str(shard), "node-b")

    viewer = await asyncio.to_thread(cli, certs, secure_etcd.endpoint, *move, user="viewer", password="viewer-pw")
    assert viewer.exit_code == 1, viewer.output
    assert "etcd refused the etcd user 'viewer': permission denied" in viewer.output
    assert f"readwrite on the prefix /flashstock/{CLUSTER}/" in viewer.output
    wrong = await asyncio.to_thread(cli, certs, secure_etcd.endpoint, *move, user="ops", password="nope")
    assert wrong.exit_code == 2 and "wrong user or password" in wrong.output, wrong.output
    # Without a user etcd takes the client certificate's name as the user (--client-cert-auth): it has no role.
    nobody = await asyncio.to_thread(cli, certs, secure_etcd.endpoint, *move)
    assert nobody.exit_code == 1 and "a caller without an etcd user (--etcd-user)" in nobody.output, nobody.output
    for result in (viewer, wrong, nobody):
        assert "Traceback" not in result.output and "ops-pw" not in result.output
    assert (await owners(ops_client, CLUSTER))[shard].node == "node-a"

    moved = await asyncio.to_thread(
        cli, certs, secure_etcd.endpoint, *move, "--wait", "20", user="ops", password="ops-pw"
    )
    assert moved.exit_code == 0, moved.output + nodes[0].log() + nodes[1].log()
    assert f"shard {shard}: owned by node-b" in moved.output
    assert (await owners(ops_client, CLUSTER))[shard].node == "node-b"
    # The audit trail names the etcd user etcd vouched for (a node copies the record into the ledger).
    ledger = Ledger(nodes[0].ledger_url)
    try:
        records = await aeventually(
            lambda: [r for r in ledger.audit(limit=50) if r.method == "shards.move" and r.args.get("shard") == shard],
            until=bool,
            timeout=20,
        )
    finally:
        ledger.close()
    assert [r.identity for r in records] == ["etcd:ops"]


async def test_a_token_etcd_forgot_is_fetched_again_for_calls_and_watches(certs):
    with EtcdServer(tls=server_tls(certs), extra_args=("--auth-token-ttl", "1")) as server:
        await set_up_users(server.endpoint, certs)
        client = etcd_client(server.endpoint, access=access(certs, "ops"))
        prefix = ClusterKeys(CLUSTER).prefix.encode()
        try:
            first = await client.watch_prefix(prefix)  # opens the watch stream under the first token
            await client.put(prefix + b"k", b"1")
            await asyncio.sleep(3)  # not a timing assertion: outlive the token's 1 s TTL
            await client.put(prefix + b"k", b"2")  # refused for the token, fetched again, done
            assert (await client.get(prefix + b"k")).value == b"2"
            # A watch added now must not ride the stream of the forgotten token (etcd would cancel it unseen).
            second = await client.watch_prefix(prefix)
            await client.put(prefix + b"k", b"3")
            event = await asyncio.wait_for(anext(aiter(second)), 10)
            assert event.kv.value == b"3"
            with pytest.raises(ConnectionError):  # the old stream's watch ended, to be set up again
                async for _ in first:
                    pass
        finally:
            await client.close()
        wrong = etcd_client(server.endpoint, access=access(certs, "ops", "nope"))
        with pytest.raises(Exception, match="authentication failed"):
            await wrong.get(b"x")
        await wrong.close()


def test_a_node_refused_by_etcd_stops_the_start_naming_the_setting(secure_etcd, certs):
    flags = (
        *("--etcd", secure_etcd.endpoint, "--cluster", CLUSTER, "--shards", "8"),
        *("--etcd-tls-ca", str(certs.ca), "--etcd-tls-cert", str(certs.client_cert)),
        *("--etcd-tls-key", str(certs.client_key)),
    )
    with RedisServer() as redis_server:

        def start(user: str, password: str) -> subprocess.CompletedProcess[str]:
            argv = serve_argv(free_port(), redis_server.url, *flags, "--etcd-user", user)
            env = {**os.environ, "FLASHSTOCK_ETCD_PASSWORD": password}
            return subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False, env=env)

        wrong = start("node", "not-the-password")
        assert wrong.returncode == 2, wrong.stderr
        assert "etcd_user: etcd refused the user 'node': wrong user or password" in wrong.stderr, wrong.stderr
        viewer = start("viewer", PASSWORDS["viewer"])
        assert viewer.returncode == 2, viewer.stderr
        assert "etcd_user: etcd refused the etcd user 'viewer': permission denied" in viewer.stderr, viewer.stderr
        for done in (wrong, viewer):
            assert "Traceback" not in done.stderr and "not-the-password" not in done.stderr
