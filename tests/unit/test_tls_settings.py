"""The TLS settings: which go together, the files checked, loopback told apart, the client's side."""

from __future__ import annotations

from dataclasses import replace

import pytest

from flashstock.client import ClientConfig, StockClient
from flashstock.client._config import CHANNEL_OPTIONS, channel_options
from flashstock.server._config import load_config, tls_files
from flashstock.server._tls import TlsFiles, is_loopback
from tests.helpers.tls import make_certs


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"tls_cert": "c.pem"}, "tls_cert, tls_key"),
        ({"tls_key": "k.pem"}, "tls_cert, tls_key"),
        ({"tls_client_ca": "ca.pem"}, "tls_client_ca"),
    ],
)
def test_tls_settings_that_do_not_go_together_are_refused(flags, named):
    with pytest.raises(ValueError, match=named):
        load_config(flags, env={})


def test_tls_settings_come_from_the_environment_too():
    env = {"FLASHSTOCK_TLS_CERT": "c.pem", "FLASHSTOCK_TLS_KEY": "k.pem", "FLASHSTOCK_TLS_CLIENT_CA": "ca.pem"}
    assert tls_files(load_config({}, env=env)) == TlsFiles("c.pem", "k.pem", "ca.pem")
    assert not tls_files(load_config({}, env={})).on


def test_the_files_are_checked_each_naming_its_setting(tmp_path):
    good, other = make_certs(tmp_path, "good"), make_certs(tmp_path, "other")
    assert TlsFiles(str(good.node_cert), str(good.node_key), str(good.ca)).problems() == []
    assert TlsFiles().problems() == []
    [missing] = TlsFiles(str(tmp_path / "no.pem"), str(good.node_key)).problems()
    assert missing.startswith("tls_cert: ")
    [mismatch] = TlsFiles(str(good.node_cert), str(other.node_key)).problems()
    assert mismatch.startswith("tls_cert, tls_key: ")
    (tmp_path / "junk.pem").write_text("junk")
    [bad_ca] = TlsFiles(str(good.node_cert), str(good.node_key), str(tmp_path / "junk.pem")).problems()
    assert bad_ca.startswith("tls_client_ca: ")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True)]
    + [("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("node.example", False)],
)
def test_loopback_hosts_are_told_apart(host, loopback):
    assert is_loopback(host) is loopback


def test_a_client_config_needs_a_key_with_its_certificate():
    with pytest.raises(ValueError, match="tls_cert, tls_key"):
        ClientConfig(tls_cert="client.pem")
    with pytest.raises(ValueError, match="tls_server_name"):
        ClientConfig(tls_server_name="node.example")
    assert not ClientConfig().tls and ClientConfig(tls_ca=b"pem").tls


def test_a_client_with_an_unreadable_tls_file_is_refused_naming_it():
    with pytest.raises(ValueError, match="tls_ca: cannot read"):
        StockClient(replace(ClientConfig(), tls_ca="/nonexistent/ca.pem"))


def test_the_server_name_override_is_a_channel_option():
    assert channel_options(ClientConfig()) == CHANNEL_OPTIONS
    options = channel_options(ClientConfig(tls_ca=b"pem", tls_server_name="node.example"))
    assert ("grpc.ssl_target_name_override", "node.example") in options
