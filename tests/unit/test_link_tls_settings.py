"""The settings of TLS to Redis and etcd: what each accepts, what it refuses by name, and no password shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from flashstock.client import ClientConfig
from flashstock.lockmgr import EtcdAccess, auth_refusal
from flashstock.server._config import NodeConfig, etcd_access, load_config
from flashstock.server.store.redis import RedisTls, masked_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rediss://flash:s3cret@10.0.0.9:6380/0", "rediss://flash:***@10.0.0.9:6380/0"),
        ("redis://:s3cret@h:1/0", "redis://:***@h:1/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("rediss://user@h:1/0", "rediss://user@h:1/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_masked_url_hides_only_the_password(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_redis_tls_files_go_to_redis_py_for_rediss_only() -> None:
    tls = RedisTls(ca="ca.pem", cert="c.pem", key="k.pem")
    assert tls.kwargs("redis://h:1/0") == {}
    assert tls.kwargs("rediss://h:1/0") == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": "ca.pem",
        "ssl_certfile": "c.pem",
        "ssl_keyfile": "k.pem",
    }
    assert RedisTls().kwargs("rediss://h:1/0") == {"ssl_cert_reqs": "required", "ssl_check_hostname": True}


def test_bad_link_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="redis_tls_ca.*need a rediss:// redis_url"):
        NodeConfig(redis_tls_ca="ca.pem")
    with pytest.raises(ValueError, match="redis_tls_cert, redis_tls_key: give both"):
        NodeConfig(redis_url="rediss://h:1/0", redis_tls_cert="c.pem")
    with pytest.raises(ValueError, match="etcd_tls_cert, etcd_tls_key: give both"):
        NodeConfig(etcd_tls_cert="c.pem")
    with pytest.raises(ValueError, match="etcd_password: needs etcd_user"):
        NodeConfig(etcd_password="pw")
    with pytest.raises(ValueError, match="etcd_password: etcd_user needs a password"):
        NodeConfig(etcd_user="node")
    with pytest.raises(ValueError, match="etcd_password, etcd_password_file: give one"):
        NodeConfig(etcd_user="node", etcd_password="pw", etcd_password_file="/f")
    with pytest.raises(ValueError, match="etcd_user, etcd_password: give both"):
        ClientConfig(etcd="127.0.0.1:2379", etcd_user="ops")


def test_a_bad_redis_url_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError) as refused:
        NodeConfig(redis_url="http://flash:s3cret@h:1/0")
    assert "s3cret" not in str(refused.value) and "flash:***@" in str(refused.value)


def test_passwords_stay_out_of_reprs() -> None:
    config = NodeConfig(redis_url="rediss://flash:s3cret@h:1/0", etcd_user="node", etcd_password="etcd-pw")
    assert "s3cret" not in repr(config) and "etcd-pw" not in repr(config)
    assert "etcd-pw" not in repr(EtcdAccess(user="node", password="etcd-pw"))
    client = ClientConfig(etcd="127.0.0.1:2379", etcd_user="ops", etcd_password="ops-pw")
    assert "ops-pw" not in repr(client)


def test_the_etcd_password_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    from_env = load_config(env={"FLASHSTOCK_ETCD_USER": "node", "FLASHSTOCK_ETCD_PASSWORD": "env-pw"})
    assert etcd_access(from_env) == EtcdAccess(user="node", password="env-pw")
    secret = tmp_path / "etcd-password"
    secret.write_text("file-pw\n")
    from_file = load_config(
        env={
            "FLASHSTOCK_ETCD_USER": "node",
            "FLASHSTOCK_ETCD_PASSWORD_FILE": str(secret),
            "FLASHSTOCK_ETCD_TLS_CA": "ca",
        }
    )
    access = etcd_access(from_file)
    assert access.password == "file-pw" and access.tls
    missing = load_config(env={"FLASHSTOCK_ETCD_USER": "n", "FLASHSTOCK_ETCD_PASSWORD_FILE": str(tmp_path / "no")})
    with pytest.raises(ValueError, match="etcd_password_file: cannot read"):
        etcd_access(missing)


def test_etcds_refusals_are_told_apart_from_other_failures() -> None:
    prefix = "/flashstock/prod/"
    wrong = auth_refusal(Exception("etcdserver: authentication failed, invalid user ID or password"), "ops", prefix)
    assert wrong is not None and wrong[0] == "password" and "'ops': wrong user or password" in wrong[1]
    denied = auth_refusal(Exception("etcdserver: permission denied"), "bob", prefix)
    assert denied == (
        "permission",
        "etcd refused the etcd user 'bob': permission denied; it needs a role with readwrite on the prefix "
        "/flashstock/prod/",
    )
    nobody = auth_refusal(Exception("etcdserver: user name is empty"), "", prefix)
    assert nobody is not None and nobody[0] == "no user"
    assert auth_refusal(Exception("Deadline Exceeded"), "ops", prefix) is None
