"""``flashstock serve --check-config``: every setting checked as a start would, nothing touched; 0 or 2.

And the same checks at a real start: a data folder the node cannot write
stops it with status 2 naming ``data_dir``; an unknown ``FLASHSTOCK_*``
variable is a warning there and an error under ``--check-config``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flashstock.server._config import folder_problems, read_config, unknown_env_vars, writable_folder_problem
from flashstock.server.cli.app import app
from tests.helpers.tls import make_certs


@pytest.fixture(autouse=True)
def no_flashstock_env(monkeypatch):
    """The checks read os.environ: none of the caller's FLASHSTOCK_* settings."""
    for name in list(os.environ):
        if name.upper().startswith("FLASHSTOCK_"):
            monkeypatch.delenv(name)


def check(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, ["serve", "--check-config", *args], env={"COLUMNS": "400", **(env or {})})
    return result.exit_code, result.stdout, result.stderr


def test_a_good_config_is_ok_and_nothing_is_touched(tmp_path):
    data = tmp_path / "data" / "deeper"
    certs = make_certs(tmp_path / "certs", "node")
    code, out, err = check(
        "--port", "50077",
        "--workers", "0",
        "--tls-cert", str(certs.node_cert),
        "--tls-key", str(certs.node_key),
        env={
            "FLASHSTOCK_DATA_DIR": str(data),
            "FLASHSTOCK_METRICS_PORT": "9100",
            "FLASHSTOCK_REDIS_URL": "rediss://fs:secret@redis.example:6380/0",
            "FLASHSTOCK_ETCD": "etcd-0:2379,etcd-1:2379",
            "FLASHSTOCK_NODE_ID": "node-a",
        },
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith("config ok: node node-a on 127.0.0.1:50077, metrics on 9100, workers 0 = ")
    assert "etcd etcd-0:2379,etcd-1:2379 cluster flashstock" in out and "TLS" in out
    assert "secret" not in out  # the Redis password masked
    assert not (tmp_path / "data").exists()  # no folder made


@pytest.mark.parametrize(
    "args, env, named",
    [
        (["--shards", "0"], {}, "shards: 0 is not 1-16384"),
        (["--port", "70000"], {}, "port: 70000"),
        ([], {"FLASHSTOCK_LEASE_TTL_S": "0"}, "lease_ttl_s: 0 is not 1-600"),
        ([], {"FLASHSTOCK_WORKERS": "two"}, "workers: Input should be a valid integer"),
        ([], {"FLASHSTOCK_REDIS_URL": "redis://redis:63x9/0"}, "redis_url: 'redis://redis:63x9/0'"),
        ([], {"FLASHSTOCK_REDIS_URL": "redis://redis:6379/zero"}, "redis_url: 'redis://redis:6379/zero'"),
        ([], {"FLASHSTOCK_ETCD": "etcd-0:2379,etcd-1"}, "etcd: 'etcd-1' is not host:port"),
        ([], {"FLASHSTOCK_ETCD": "etcd-0:99999"}, "etcd: 'etcd-0:99999' is not host:port"),
        ([], {"FLASHSTOCK_LOG_LEVEL": "LOUD"}, "log_level: 'LOUD'"),
        (["--health-port", "70000"], {}, "health_port: 70000 is not 0-65535"),
        (["--port", "50071"], {"FLASHSTOCK_HEALTH_PORT": "50071"}, "health_port: 50071 is also port"),
        (["--metrics-port", "9100", "--health-port", "9100"], {}, "health_port: 9100 is also metrics_port"),
        ([], {"FLASHSTOCK_REDIS_URLL": "redis://redis:6379/0"}, "FLASHSTOCK_REDIS_URLL: no setting has this name"),
        (["--tls-cert", "/nonexistent/node.pem", "--tls-key", "/nonexistent/node-key.pem"], {}, "tls_cert: "),
        ([], {"FLASHSTOCK_ADMISSION_KEYS": "/nonexistent/gateway.key"}, "admission_keys: "),
        ([], {"FLASHSTOCK_ETCD_PASSWORD_FILE": "/nonexistent/pw"}, "etcd_password_file: cannot read"),
        ([], {"FLASHSTOCK_REDIS_TLS_CA": "/nonexistent/ca.pem"}, "redis_tls_ca: '/nonexistent/ca.pem' is not a file"),
        ([], {"FLASHSTOCK_AUTH": "on"}, "auth"),
    ],
)
def test_each_kind_of_mistake_is_named_with_status_2(args, env, named):
    code, out, err = check(*args, env=env)
    assert code == 2, out
    assert out == ""
    assert named in err


def test_every_mistake_is_named_at_once(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("[flashstock]\nshards = 8\nmax_in_fligth = 10\n")
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    code, _, err = check(
        "--config", str(path),
        "--port", "-1",
        env={"FLASHSTOCK_GRACE_S": "-5", "FLASHSTOCK_DEGRADE": "perhaps", "FLASHSTOCK_DATADIR": "/data",
             "FLASHSTOCK_DATA_DIR": str(not_a_folder / "sub")},
    )  # fmt: skip
    assert code == 2
    assert "6 bad setting(s)" in err
    for named in (
        "max_in_fligth",
        "port: -1 is not 0-65535",
        "grace_s: -5.0 is not 0-3600",
        "degrade: Input should be a valid boolean",
        "FLASHSTOCK_DATADIR: no setting has this name",
        "data_dir: cannot make",
    ):
        assert named in err, named


def test_a_misspelt_flag_is_refused_with_status_2():
    result = CliRunner().invoke(app, ["serve", "--check-config", "--shard", "8"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "--shard" in result.stderr


def test_an_unknown_setting_in_the_config_file_is_refused(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("redis = 'redis://x:6379/0'\n")
    code, _, err = check("--config", str(path))
    assert code == 2
    assert f"config: {path} has unknown settings: redis" in err


def test_other_commands_variables_are_not_unknown():
    env = {
        "FLASHSTOCK_ADDR": "node:50051",
        "FLASHSTOCK_TOKEN_FILE": "/t",
        "FLASHSTOCK_CONFIG": "/c.toml",
        "FLASHSTOCK_FAILPOINT_KEEP_DUTIES_ON_LOSS": "1",
        "FLASHSTOCK_SHARDS": "8",
        "flashstock_port": "1",
        "FLASHSTOCK_SHARDZ": "8",
        "PATH": "/bin",
    }
    assert unknown_env_vars(env) == ["FLASHSTOCK_SHARDZ"]


def test_read_config_keeps_going_past_a_value_it_cannot_read():
    config, problems = read_config(env={"FLASHSTOCK_PORT": "x", "FLASHSTOCK_SHARDS": "0", "FLASHSTOCK_WORKERS": "3"})
    assert config.workers == 3 and config.shards == 0 and config.port == 50051  # the unreadable one: its default
    assert [p.partition(":")[0] for p in problems] == ["port", "shards"]


def test_a_folder_under_a_file_cannot_be_written(tmp_path):
    # A path under a file fails for root too (chmod does not stop root).
    (tmp_path / "file").write_text("")
    problem = writable_folder_problem("data_dir", tmp_path / "file" / "sub", "the embedded SQLite ledger")
    assert problem is not None and problem.startswith("data_dir: cannot make")
    assert writable_folder_problem("data_dir", tmp_path / "new" / "deeper", "x") is None
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root, whom a 0500 folder does not stop from writing")
def test_a_read_only_folder_cannot_be_written(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        assert writable_folder_problem("data_dir", folder, "x") is not None
        assert writable_folder_problem("data_dir", folder / "sub", "x") is not None
    finally:
        folder.chmod(0o700)


def test_data_dir_is_checked_only_when_the_node_writes_there(tmp_path):
    (tmp_path / "file").write_text("")
    bad = str(tmp_path / "file" / "sub")
    config, problems = read_config(env={"FLASHSTOCK_DATA_DIR": bad})
    assert [p.partition(":")[0] for p in folder_problems(config)] == ["data_dir"]
    pg = "postgresql+psycopg://fs@db/fs"
    config, _ = read_config(env={"FLASHSTOCK_DATA_DIR": bad, "FLASHSTOCK_LEDGER": pg})
    assert folder_problems(config) == []  # nothing written there
    config, _ = read_config(
        env={"FLASHSTOCK_DATA_DIR": bad, "FLASHSTOCK_LEDGER": pg, "FLASHSTOCK_METRICS_PORT": "9100"}
    )
    assert "serving metrics" in folder_problems(config)[0]
    config, _ = read_config(env={"FLASHSTOCK_LEDGER": f"sqlite:///{bad}/ledger.sqlite3"})
    assert [p.partition(":")[0] for p in folder_problems(config)] == ["ledger"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_node_that_cannot_write_its_data_folder_exits_2_naming_it(tmp_path, workers):
    (tmp_path / "file").write_text("")
    env = {
        **{k: v for k, v in os.environ.items() if not k.upper().startswith("FLASHSTOCK_")},
        "FLASHSTOCK_DATA_DIR": str(tmp_path / "file" / "data"),
        "FLASHSTOCK_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: the start stops before
        "FLASHSTOCK_WORKERS": workers,
        "FLASHSTOCK_DUTIES_PROCES": "false",
    }
    done = subprocess.run(
        [sys.executable, "-m", "flashstock.server", "serve", "--port", "0"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "FLASHSTOCK_DUTIES_PROCES is set but is no setting" in done.stderr  # a warning at a start
    assert f"flashstock: cannot start: data_dir: cannot make '{tmp_path / 'file' / 'data'}'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not Path(tmp_path / "flashstock-data").exists()


def test_every_variable_the_commands_read_is_a_setting_or_known_as_another_commands():
    # A FLASHSTOCK_* variable read anywhere in the package but unknown here would make
    # --check-config refuse a correct environment.
    import re

    root = Path(__file__).resolve().parents[2]
    read = set()
    for folder in ("server", "client", "lockmgr"):
        for path in (root / folder).rglob("*.py"):
            read.update(re.findall(r"\bFLASHSTOCK_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8")))
    assert read, "the scan found nothing"
    assert unknown_env_vars(dict.fromkeys(read, "")) == []
