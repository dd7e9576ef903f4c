"""``flashstock bench``'s TLS and auth parts: their plan checks, their arithmetic and the TLS certificates.

No sockets: the certificates are checked by a mutual-TLS handshake between
two in-memory ``ssl`` objects.
"""

import ssl
from pathlib import Path

import pytest

from flashstock.server.bench.node import BenchPlan, auth_difference, tls_difference
from flashstock.server.local.certs import MtlsFiles, make_mtls_files


def test_plan_takes_zero_tls_rounds_as_leaving_the_part_out() -> None:
    assert BenchPlan(tls_rounds=0).problems() == []
    assert BenchPlan().tls_rounds == 2


def test_plan_refuses_negative_tls_rounds_naming_the_option() -> None:
    assert BenchPlan(tls_rounds=-1).problems() == ["--tls-rounds must be >= 0 (0 leaves the TLS part out)"]


def _means(ok: float, p50: float, p99: float, cpu: float | None) -> dict[str, float | None]:
    return {"ok_per_s": ok, "p50_ms": p50, "p99_ms": p99, "node_cpu_us_per_call": cpu}


def test_tls_difference_is_tls_minus_plaintext_with_ratios_against_echo() -> None:
    out = tls_difference(_means(8000, 7.5, 12.0, 100.0), _means(6000, 10.0, 15.5, 130.5), 10_000)
    assert out["ratio_plain"] == 0.8
    assert out["ratio_tls"] == 0.6
    assert out["difference"] == {
        "ok_per_s": -2000,
        "ok_per_s_percent": -25.0,
        "ratio": -0.2,
        "p50_ms": 2.5,
        "p99_ms": 3.5,
        "node_cpu_us_per_call": 30.5,
    }


def test_tls_difference_leaves_unknown_figures_unknown() -> None:
    out = tls_difference(_means(0, 0, 0, None), _means(5000, 1, 2, 90.0), 0)
    assert out["ratio_plain"] is None and out["ratio_tls"] is None
    assert out["difference"]["ok_per_s_percent"] is None
    assert out["difference"]["ratio"] is None
    assert out["difference"]["node_cpu_us_per_call"] is None
    assert out["difference"]["ok_per_s"] == 5000


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """A TLS handshake between two in-memory ends; returns the server's end."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    done = {"srv": False, "cli": False}
    for _ in range(10):
        for name, end, out, peer_in in (("cli", cli, c_out, s_in), ("srv", srv, s_out, c_in)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return srv
    raise AssertionError("handshake did not finish")


def _contexts(files: MtlsFiles, *, client_cert: bool = True) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.node_cert, files.node_key)
    server.load_verify_locations(files.ca)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=str(files.ca))
    if client_cert:
        client.load_cert_chain(files.client_cert, files.client_key)
    return server, client


def test_bench_certificates_make_a_mutual_tls_handshake_for_127_0_0_1(tmp_path: Path) -> None:
    files = make_mtls_files(tmp_path)
    srv = _handshake(*_contexts(files))
    peer = srv.getpeercert()
    assert peer is not None
    assert dict(x[0] for x in peer["subject"])["commonName"] == "flashstock-bench-load"


def test_bench_node_certificate_demands_a_client_certificate(tmp_path: Path) -> None:
    files = make_mtls_files(tmp_path)
    with pytest.raises(ssl.SSLError):
        _handshake(*_contexts(files, client_cert=False))


def test_another_bench_run_has_another_ca(tmp_path: Path) -> None:
    first, second = make_mtls_files(tmp_path / "a"), make_mtls_files(tmp_path / "b")
    server, _ = _contexts(first)
    _, client = _contexts(second)
    with pytest.raises(ssl.SSLError):
        _handshake(server, client)


def test_plan_checks_the_auth_rounds_naming_the_option() -> None:
    assert BenchPlan(auth_rounds=0).problems() == [] and BenchPlan().auth_rounds == 2
    assert BenchPlan(auth_rounds=-1).problems() == ["--auth-rounds must be >= 0 (0 leaves the auth part out)"]


def test_auth_difference_is_auth_on_minus_off() -> None:
    out = auth_difference(_means(8000, 7.5, 12.0, 100.0), _means(7600, 7.9, 12.5, 104.0), 10_000)
    assert out["ratio_plain"] == 0.8 and out["ratio_auth"] == 0.76 and "ratio_tls" not in out
    assert out["difference"]["node_cpu_us_per_call"] == 4.0 and out["difference"]["ok_per_s_percent"] == -5.0
