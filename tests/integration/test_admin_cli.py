"""The shard-less admin CLI against a real node: put, get, ls, adjust, pause, resume."""

import re

from typer.testing import CliRunner

from flashstock.server.cli.app import app


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def row(output: str, sku: str) -> list[str]:
    line = next(line for line in output.splitlines() if sku in line)
    return [cell.strip() for cell in re.split(r"[│┃|]", line) if cell.strip()]


def test_sku_commands_steer_a_sale(node, stock, sku):
    addr = ("--addr", node.address)
    out = run("sku", "put", sku, "--stock", "10", "--limit", "2", *addr)
    assert row(out, sku)[2:4] == ["10", "10"]
    assert stock.deduct(sku, "u1", 2).outcome.name == "OK"
    assert row(run("sku", "get", sku, *addr), sku)[2:6] == ["10", "8", "0", "2"]
    assert sku in run("sku", "ls", "--prefix", sku[:20], *addr)
    assert row(run("sku", "adjust", sku, "-3", *addr), sku)[2:4] == ["7", "5"]
    assert row(run("sku", "pause", sku, *addr), sku)[-1] == "paused"
    assert stock.deduct(sku, "u2", 1).outcome.name == "NOT_ON_SALE"
    assert row(run("sku", "resume", sku, *addr), sku)[-1] == "on sale"


def test_cli_errors_are_messages_not_tracebacks(node, sku):
    result = CliRunner().invoke(
        app, ["sku", "get", sku, "--addr", node.address], env={"NO_COLOR": "1", "COLUMNS": "250"}
    )
    assert result.exit_code == 1
    assert "not defined" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(
        app, ["sku", "adjust", sku, "0", "--addr", node.address], env={"NO_COLOR": "1", "COLUMNS": "250"}
    )
    assert result.exit_code == 1 and "delta" in result.output
