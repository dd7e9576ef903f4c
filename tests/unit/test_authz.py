"""The one table of method -> roles covers every RPC, and the authorizer's decisions on every input (no sockets).

Tokens are signed here with PyJWT (HS256, RS256, ES256, a JWKS); time is an
injected clock.
"""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from flashstock.client import ClientConfig, PermissionDenied, Unauthenticated
from flashstock.client._transport import call_metadata
from flashstock.server._config import NodeConfig, auth_settings
from flashstock.server.rpc.authz import (
    BOARD_ROLES,
    METHOD_ROLES,
    OPEN_SERVICES,
    Authorizer,
    AuthSettings,
    TokenCheck,
    TokenRules,
    cert_subject,
    load_cert_roles,
    load_token_keys,
    refusal,
    role_refusal,
    rpcs_of,
)
from flashstock.server.rpc.identity import ROLES, Caller
from flashstock.server.rpc.servicer import SERVICE_NAMES
from flashstock.v1 import admin_pb2, stock_pb2

NOW = 1_800_000_000.0
RULES = TokenRules(issuer="iss-1", audience="aud-1", leeway_s=10)
SECRET = b"k" * 32


def sign(key: object = SECRET, algorithm: str = "HS256", kid: str | None = None, **claims: object) -> str:
    body = {"sub": "alice", "roles": ["operator"], "iss": "iss-1", "aud": "aud-1", "exp": int(NOW) + 60}
    body.update(claims)
    return jwt.encode(
        {k: v for k, v in body.items() if v is not None},
        key,
        algorithm=algorithm,
        headers={"kid": kid} if kid else None,
    )  # type: ignore[arg-type]


def check(tmp_path: Path, *files: tuple[str, bytes], clock: list[float] | None = None) -> TokenCheck:
    paths = []
    for name, data in files or (("hs.secret", SECRET + b"\n"),):
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    now = clock if clock is not None else [NOW]
    return TokenCheck(load_token_keys(paths), RULES, clock=lambda: now[0])


# -- the table -------------------------------------------------------------------------------


def test_every_rpc_of_the_protos_is_in_the_table_and_nothing_else():
    rpcs = rpcs_of([stock_pb2.DESCRIPTOR, admin_pb2.DESCRIPTOR])
    assert len(rpcs) == 12
    assert sorted(rpcs) == sorted(METHOD_ROLES)
    assert {service for service, _ in rpcs} == set(SERVICE_NAMES)


def test_health_and_reflection_are_decided_open():
    assert health.SERVICE_NAME in OPEN_SERVICES
    assert reflection.SERVICE_NAME in OPEN_SERVICES
    assert not OPEN_SERVICES & set(SERVICE_NAMES)


def test_the_roles_of_the_table():
    assert all(roles <= set(ROLES) and "admin" in roles for roles in METHOD_ROLES.values())
    allowed = {role: {m for (_, m), roles in METHOD_ROLES.items() if role in roles} for role in ROLES}
    assert allowed["buyer"] == {"Deduct", "Hold", "Confirm", "Release", "BatchDeduct", "GetStock"}
    assert allowed["viewer"] == {"GetStock", "GetSku", "ListSkus"}
    assert allowed["operator"] == {"GetStock", "GetSku", "ListSkus", "PutSku", "AdjustStock", "PauseSku", "ResumeSku"}
    assert allowed["admin"] == {m for _, m in METHOD_ROLES}


def test_a_refusal_names_the_roles_needed_and_held():
    buyer = Caller("jwt:shop", frozenset({"buyer"}), "ipv4:127.0.0.1:1")
    denied = refusal(buyer, "flashstock.v1.AdminService", "PutSku")
    assert isinstance(denied, PermissionDenied)
    assert denied.message == (
        "jwt:shop may not call AdminService/PutSku: it needs the role operator or admin, and holds buyer"
    )
    assert refusal(buyer, "flashstock.v1.StockService", "Deduct") is None
    nobody = Caller("cert:x", frozenset(), "")
    assert "holds no role" in refusal(nobody, "flashstock.v1.StockService", "GetStock").message  # type: ignore[union-attr]
    unknown = refusal(Caller("jwt:root", frozenset({"admin"}), ""), "flashstock.v1.AdminService", "DropAll")
    assert unknown is not None and "not in the table" in unknown.message


def test_the_board_opens_to_the_readers_of_admin_not_to_a_buyer():
    assert frozenset({"viewer", "operator", "admin"}) == BOARD_ROLES
    assert role_refusal(Caller("jwt:v", frozenset({"viewer"}), ""), BOARD_ROLES, "open the board") is None
    denied = role_refusal(Caller("jwt:shop", frozenset({"buyer"}), ""), BOARD_ROLES, "open the board")
    assert denied is not None and denied.message == (
        "jwt:shop may not open the board: it needs the role viewer or operator or admin, and holds buyer"
    )


# -- tokens ------------------------------------------------------------------------------------


def test_a_good_token_names_its_subject_and_known_roles(tmp_path):
    tokens = check(tmp_path)
    assert tokens.identity(sign(roles=["buyer", "king"])) == ("jwt:alice", frozenset({"buyer"}))
    assert tokens.identity(sign(roles="viewer operator")) == ("jwt:alice", frozenset({"viewer", "operator"}))
    assert tokens.identity(sign(roles=None)) == ("jwt:alice", frozenset())


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (sign(exp=int(NOW) - 11), "expired at"),
        (sign(key=b"x" * 32), "bad signature"),
        (sign(aud="aud-2"), "not for this audience"),
        (sign(iss="iss-2"), "wrong issuer"),
        (sign(exp=None), "no 'exp' claim"),
        (sign(sub=None), "no 'sub' claim"),
        (sign(nbf=int(NOW) + 100), "not valid yet"),
        ("a.b", "not a JWT"),
        (sign(key=b"x" * 48, algorithm="HS384"), "signed with HS384"),
    ],
    ids=["expired", "signature", "audience", "issuer", "no-exp", "no-sub", "nbf", "garbage", "alg"],
)
def test_a_bad_token_is_refused_saying_why(tmp_path, token, reason):
    with pytest.raises(Unauthenticated) as refused:
        check(tmp_path).identity(token)
    assert reason in refused.value.message


def test_a_token_within_the_leeway_passes_and_a_remembered_one_still_expires(tmp_path):
    clock = [NOW]
    tokens = check(tmp_path, clock=clock)
    token = sign(exp=int(NOW) - 5)  # 5 s late, 10 s of leeway
    assert tokens.identity(token)[0] == "jwt:alice"
    clock[0] = NOW + 6  # past exp + leeway: the remembered token is refused too
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.identity(token)


def test_an_iat_a_little_ahead_of_the_node_clock_is_within_the_leeway(tmp_path):
    import time

    tokens = TokenCheck(check(tmp_path).keys, RULES)  # the wall clock: PyJWT checks iat against it
    ahead = int(time.time()) + 5
    assert tokens.identity(sign(iat=ahead, exp=ahead + 60))[0] == "jwt:alice"


def test_rs256_es256_and_jwks_keys(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())

    def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwks = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256"}]}).encode()
    tokens = check(tmp_path, ("rsa.pem", public_pem(rsa_key)), ("ec.pem", public_pem(ec_key)))
    assert tokens.identity(sign(rsa_key, "RS256", sub="r"))[0] == "jwt:r"
    assert tokens.identity(sign(ec_key, "ES256", sub="e"))[0] == "jwt:e"
    with pytest.raises(Unauthenticated, match="signed with HS256"):
        tokens.identity(sign())  # no HS256 key configured
    by_kid = check(tmp_path, ("jwks.json", jwks))
    assert by_kid.identity(sign(rsa_key, "RS256", kid="k1", sub="j"))[0] == "jwt:j"
    with pytest.raises(Unauthenticated, match="kid k2"):
        by_kid.identity(sign(rsa_key, "RS256", kid="k2"))


def test_bad_key_files_name_the_setting(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(b"tooshort\n")
    private = tmp_path / "private.pem"
    private.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    bad_json = tmp_path / "bad.json"
    bad_json.write_bytes(b'{"keys": [{"kty": "nope"}]}')
    for path, reason in (
        (tmp_path / "missing", "cannot read"),
        (short, "at least 32 bytes"),
        (private, "private key"),
        (bad_json, "not a usable JWKS"),
    ):
        with pytest.raises(ValueError, match="auth_jwt_keys") as exc:
            load_token_keys([str(path)])
        assert reason in str(exc.value)


# -- certificates and the authorizer -------------------------------------------------------------


def test_a_certificate_is_named_by_its_cn_else_its_first_san():
    assert cert_subject({"x509_common_name": [b"gw"], "x509_subject_alternative_name": [b"a.example"]}) == "gw"
    assert cert_subject({"x509_common_name": [b""], "x509_subject_alternative_name": [b"a.example", b"b"]}) == (
        "a.example"
    )
    assert cert_subject({"transport_security_type": [b"ssl"]}) is None


def test_the_cert_roles_file(tmp_path):
    toml = tmp_path / "roles.toml"
    toml.write_text('"gw" = ["buyer"]\n"cert:ops" = ["operator", "viewer"]\nroot = "admin"\n')
    assert load_cert_roles(str(toml)) == {
        "gw": frozenset({"buyer"}),
        "ops": frozenset({"operator", "viewer"}),
        "root": frozenset({"admin"}),
    }
    as_json = tmp_path / "roles.json"
    as_json.write_text('{"gw": ["buyer"]}')
    assert load_cert_roles(str(as_json)) == {"gw": frozenset({"buyer"})}
    toml.write_text('"gw" = ["king"]\n')
    with pytest.raises(ValueError, match="auth_cert_roles: .*unknown role 'king'"):
        load_cert_roles(str(toml))
    toml.write_text('"gw" = [1]\n')
    with pytest.raises(ValueError, match="list of roles"):
        load_cert_roles(str(toml))


def test_the_authorizer_identifies_by_token_else_certificate(tmp_path):
    both = Authorizer(check(tmp_path), {"gw": frozenset({"buyer"})})
    assert both.identify(f"Bearer {sign()}", "gw", "p") == Caller("jwt:alice", frozenset({"operator"}), "p")
    assert both.identify(None, "gw", "p") == Caller("cert:gw", frozenset({"buyer"}), "p")
    assert both.identify(None, "other", "p").roles == frozenset()
    with pytest.raises(Unauthenticated, match="bad signature"):
        both.identify(f"Bearer {sign(key=b'x' * 32)}", "gw", "p")  # a failed token never falls back
    with pytest.raises(Unauthenticated, match="not 'Bearer <JWT>'"):
        both.identify("Basic abc", None, "p")
    with pytest.raises(Unauthenticated, match="no credentials: .*Bearer.* or a client certificate"):
        both.identify(None, None, "p")
    certs_only = Authorizer(None, {"gw": frozenset({"buyer"})})
    with pytest.raises(Unauthenticated, match="no client certificate"):
        certs_only.identify(None, None, "p")
    with pytest.raises(Unauthenticated, match="bearer tokens are not taken here"):
        certs_only.identify(f"Bearer {sign()}", None, "p")


def test_auth_settings_are_checked_naming_the_setting(tmp_path):
    assert AuthSettings().authorizer() is None
    assert "auth: 'yes' is not off or on" in AuthSettings(auth="yes").shape_problems()
    assert "neither auth_jwt_keys nor auth_cert_roles" in AuthSettings(auth="on").shape_problems()[0]
    assert "auth_jwt_audience" in AuthSettings(auth="on", jwt_keys=("k",), jwt_issuer="i").shape_problems()[0]
    assert "tls_client_ca" in AuthSettings(auth="on", cert_roles="r.toml").shape_problems()[0]
    with pytest.raises(ValueError, match="auth: 'maybe'"):
        NodeConfig(auth="maybe")
    secret = tmp_path / "s"
    secret.write_bytes(SECRET)
    config = NodeConfig(auth="on", auth_jwt_keys=f"{secret}, ", auth_jwt_issuer="i", auth_jwt_audience="a")
    assert auth_settings(config).jwt_keys == (str(secret),)
    assert isinstance(auth_settings(config).authorizer(), Authorizer)


# -- the client's side -------------------------------------------------------------------------


def test_the_client_sends_its_token_as_bearer_metadata(tmp_path):
    assert call_metadata(ClientConfig()) == ()
    assert call_metadata(ClientConfig(token="t1", metadata=[("x-a", "b")])) == (
        ("x-a", "b"),
        ("authorization", "Bearer t1"),
    )
    path = tmp_path / "token"
    path.write_text("t2\n")
    assert call_metadata(ClientConfig(token_file=str(path))) == (("authorization", "Bearer t2"),)
    assert "t1" not in repr(ClientConfig(token="t1"))
    with pytest.raises(ValueError, match="token, token_file"):
        ClientConfig(token="t", token_file=str(path))
    with pytest.raises(ValueError, match="token_file: cannot read"):
        call_metadata(ClientConfig(token_file=str(tmp_path / "missing")))
