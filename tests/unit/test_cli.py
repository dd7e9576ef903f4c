"""The CLI: every setting documented on `serve --help`, and sale times parsed."""

import re

import pytest
import typer
from typer.testing import CliRunner

from flashstock.server._config import setting_help
from flashstock.server.cli.app import app
from flashstock.server.cli.common import parse_time_ms


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
    [(None, 0), ("0", 0), ("1700000000000", 1700000000000), ("+90s", 1_000_090_000), ("+2m", 1_000_120_000),
     ("2026-01-01T00:00:00+00:00", 1767225600000)],
)
def test_sale_times(text, expected):
    assert parse_time_ms(text, now_ms=1_000_000_000) == expected


def test_bad_sale_time():
    with pytest.raises(typer.BadParameter):
        parse_time_ms("tomorrow")
