"""The CLI: every setting on `serve --help`, sale times parsed, an entry point that says what to install."""

import re
import subprocess
import sys
from importlib.metadata import version

import pytest
import typer
from typer.testing import CliRunner

from flashstock.server._config import setting_help
from flashstock.server.cli import what_to_install
from flashstock.server.cli.app import app
from flashstock.server.cli.common import format_duration_ms, parse_duration_ms, parse_time_ms


def test_serve_help_documents_every_setting():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    text = re.sub(r"\s+", " ", result.output)
    for name, (_default, help_text) in setting_help().items():
        assert "--" + name.replace("_", "-") in text
        assert help_text.split(".")[0][:30] in text


def test_serve_refuses_a_bad_setting_and_names_it():
    result = CliRunner().invoke(app, ["serve", "--shards", "0"], env={})
    assert result.exit_code == 2
    assert "shards" in result.output


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, 0),
        ("0", 0),
        ("1700000000000", 1700000000000),
        ("+90s", 1_000_090_000),
        ("+2m", 1_000_120_000),
        ("2026-01-01T00:00:00+00:00", 1767225600000),
    ],
)
def test_sale_times(text, expected):
    assert parse_time_ms(text, now_ms=1_000_000_000) == expected


def test_bad_sale_time():
    with pytest.raises(typer.BadParameter):
        parse_time_ms("tomorrow")


# -- the entry point, as a shell runs it ----------------------------------------------------------

SERVER_DEPENDENCIES = ("typer", "rich", "sqlalchemy", "alembic", "pydantic", "pydantic_settings", "redis", "aetcd")


def run_flashstock(*args: str, without: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``flashstock *args`` in a fresh interpreter in which the packages ``without`` cannot be imported."""
    code = (
        "import sys\n"
        f"for name in {without!r}:\n"
        "    sys.modules[name] = None  # import fails as if not installed\n"
        f"sys.argv = ['flashstock', *{args!r}]\n"
        "from flashstock.server.cli import main\n"
        "main()\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_version_is_the_installed_distributions():
    done = subprocess.run(
        [sys.executable, "-m", "flashstock.server", "--version"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"flashstock {version('flashstock')}\n", "")


def test_version_needs_no_server_extra():
    done = run_flashstock("--version", without=SERVER_DEPENDENCIES)
    assert (done.returncode, done.stdout) == (0, f"flashstock {version('flashstock')}\n")


def test_without_the_server_extra_a_command_says_what_to_install():
    done = run_flashstock("nodes", "ls", without=("typer",))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "flashstock: the command line and the node need the server extra: pip install 'flashstock[server]' "
        "(missing: typer)\n"
    )


def test_a_postgres_ledger_without_its_extra_names_the_postgres_extra():
    assert what_to_install("psycopg") == (
        "flashstock: a PostgreSQL ledger needs the postgres extra: pip install 'flashstock[postgres]' "
        "(missing: psycopg)"
    )


@pytest.mark.parametrize(
    ("text", "ms"),
    [("30s", 30_000), ("1.5m", 90_000), ("1m30s", 90_000), ("2h", 7_200_000), ("250ms", 250), ("4000", 4000), ("0", 0)],
)
def test_durations_read_like_the_sale_time_offsets(text, ms):
    assert parse_duration_ms(text) == ms
    assert parse_duration_ms(format_duration_ms(ms)) == ms


@pytest.mark.parametrize("text", ["30x", "s", "1m 30s", "-5s", "+5s"])
def test_a_duration_that_is_none_is_refused(text):
    with pytest.raises(typer.BadParameter):
        parse_duration_ms(text)


def test_sku_put_refuses_a_price_finer_than_its_currency_before_calling_a_node():
    result = CliRunner().invoke(
        app,
        ["sku", "put", "s", "--stock", "1", "--price", "19.999", "--currency", "EUR", "--addr", "127.0.0.1:1"],
        env={"NO_COLOR": "1", "COLUMNS": "200"},
    )
    assert result.exit_code == 2
    assert "at most 2 decimals" in result.output
    no_currency = CliRunner().invoke(app, ["sku", "put", "s", "--stock", "1", "--price", "5", "--addr", "127.0.0.1:1"])
    assert no_currency.exit_code == 2 and "--currency" in no_currency.output
