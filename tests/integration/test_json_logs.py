"""The node's log, read as an operator's log pipeline reads it: from the file its stderr went to.

- ``--log-format json``: every line the node writes (its serving worker's
  and its duties process's) is a JSON object with time, level, logger,
  message, process and the node's id; an admin change's line carries its
  request id, SKU and shard.
- A bad ``--log-format`` (flag or ``FLASHSTOCK_LOG_FORMAT``) stops the node
  at start, non-zero, naming the setting.
- A first start installs every shard and says so in one line; when Redis
  loses everything mid-run, each shard rebuilt is logged on its own again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator

import grpc
import pytest
import redis as redis_py

from flashstock.server.local.procs import NodeProcess, RedisServer, free_port, serve_argv
from flashstock.v1 import admin_pb2, admin_pb2_grpc, stock_pb2, stock_pb2_grpc
from tests.helpers import eventually
from tests.helpers.processes import QUIET, running_node

SHARDS = 8
"""Few shards: the lines of each are counted."""

BASE_FIELDS = {"time", "level", "logger", "message", "process", "node"}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """An empty Redis of the test's own: the node's first start installs every shard into it."""
    with RedisServer() as server:
        yield server


def _json_lines(node: NodeProcess) -> list[dict]:
    assert node.log_path is not None
    # Whole lines only: the last one may be half written as we read.
    lines = [line for line in node.log_path.read_text().split("\n")[:-1] if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line is no JSON: {line!r}")
    return parsed


def _put(address: str, sku: str, request_id: str) -> admin_pb2.Sku:
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        reply = admin.PutSku(admin_pb2.PutSkuRequest(sku_id=sku, stock=5, request_id=request_id), timeout=10)
        stock = stock_pb2_grpc.StockServiceStub(channel)
        stock.Deduct(stock_pb2.DeductRequest(sku_id=sku, user_id="u1", qty=1, request_id=f"{request_id}-d"), timeout=10)
        return reply.sku


def test_every_json_line_has_its_fields_and_an_admin_change_its_context(redis_server):
    sku = f"json-{uuid.uuid4().hex[:8]}"
    args = (*QUIET, "--log-format", "json")
    with running_node(redis_server.url, shards=SHARDS, extra_args=args) as node:
        put = _put(node.address, sku, "put-json-1")

        def change_line() -> dict:
            return next(line for line in _json_lines(node) if line.get("sku") == sku)

        line = eventually(change_line, retry_on=(StopIteration,))
        lines = _json_lines(node)

    assert line["request_id"] == "put-json-1"
    assert line["shard"] == put.shard
    assert line["message"] == f"SKU {sku}: put on sale, 5 units (fast)"  # the text format's message
    assert line["level"] == "INFO" and line["logger"] == "flashstock.server.rpc.servicer"
    assert "epoch" not in line  # a standalone node's shards have none
    for each in lines:
        assert BASE_FIELDS <= set(each), each
        assert each["node"] == node.address  # no node_id, no advertise: host:port
    # Both of the node's processes (worker 0, the duties process) wrote lines.
    assert len({each["process"] for each in lines}) >= 2, lines


def test_a_bad_log_format_stops_the_node_naming_the_setting():
    unreachable = f"redis://127.0.0.1:{free_port()}/0"  # refused before any connection
    for flags, env in ((("--log-format", "xml"), {}), ((), {"FLASHSTOCK_LOG_FORMAT": "xml"})):
        done = subprocess.run(
            serve_argv(free_port(), unreachable, *flags),
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert "log_format" in done.stderr and "'xml'" in done.stderr, done.stderr


def test_a_first_start_sums_up_its_shards_and_a_loss_is_logged_per_shard(redis_server):
    summary = re.compile(rf"rebuilt {SHARDS} shards from the ledger \(0-{SHARDS - 1}\) in \d+\.\d\d s")
    one_shard = re.compile(r"shard (\d+) rebuilt from the ledger: generation (\d+)")
    with running_node(redis_server.url, shards=SHARDS, extra_args=QUIET) as node:
        assert node.log_path is not None
        log_path = node.log_path
        started = eventually(lambda: log_path.read_text(), until=lambda text: summary.search(text) is not None)
        assert len(summary.findall(started)) == 1, started
        assert not one_shard.search(started), started

        redis_py.Redis.from_url(redis_server.url).flushall()  # Redis loses everything mid-run

        def rebuilt_again() -> set[int]:
            return {int(s) for s, gen in one_shard.findall(log_path.read_text()) if int(gen) == 2}

        eventually(rebuilt_again, timeout=30, until=lambda shards: shards == set(range(SHARDS)))
