"""The admission token's format, minting and checking: pure, with an injected clock."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from flashstock.client import AdmissionKey, admission_token, read_admission_key, token_problem

KEY = AdmissionKey("k1", b"0123456789abcdef0123456789abcdef")
OTHER = AdmissionKey("k2", b"fedcba9876543210fedcba9876543210")
KEYS = {KEY.kid: KEY, OTHER.kid: OTHER}
NOW = 1_700_000_000_000


def test_a_token_is_version_key_id_expiry_and_an_hmac_over_the_claim():
    token = admission_token(KEY, "u-7", "hot", 30, now_ms=NOW)
    version, kid, expires, mac = token.split(".")
    assert (version, kid, expires) == ("v1", "k1", str(NOW + 30_000))
    claim = b'["v1","k1",1700000030000,"u-7","hot"]'
    expected = base64.urlsafe_b64encode(hmac.new(KEY.secret, claim, hashlib.sha256).digest()).rstrip(b"=")
    assert mac == expected.decode() and len(mac) == 43


def test_a_valid_token_has_no_problem_until_it_expires():
    token = admission_token(KEY, "u-7", "hot", 30, now_ms=NOW)
    assert token_problem(token, KEYS, "u-7", "hot", now_ms=NOW + 29_999) == ""
    assert "expired" in token_problem(token, KEYS, "u-7", "hot", now_ms=NOW + 30_000)


@pytest.mark.parametrize(
    "token, problem",
    [
        ("", "no admission token"),
        ("v1.k1.123", "not an admission token"),
        ("v2.k1.123.abc", "not an admission token"),
        ("v1.k1.12x.abc", "not an admission token"),
        ("v1.k1.²³.abc", "not an admission token"),
        ("v1.k9.1800000000000.abc", "its key 'k9' is not one this node holds"),
        ("v1.k1.1800000000000." + "A" * 43, "signature does not match"),
        ("v1.k1.1800000000000." + "A" * 600, "not an admission token"),
    ],
)
def test_a_malformed_or_forged_token_says_what_is_wrong(token, problem):
    assert problem in token_problem(token, KEYS, "u-7", "hot", now_ms=NOW)


def test_a_token_binds_its_user_sku_expiry_and_key():
    token = admission_token(KEY, "u-7", "hot", 30, now_ms=NOW)
    assert "signature" in token_problem(token, KEYS, "u-8", "hot", now_ms=NOW)
    assert "signature" in token_problem(token, KEYS, "u-7", "cold", now_ms=NOW)
    version, kid, expires, mac = token.split(".")
    assert "signature" in token_problem(f"{version}.{kid}.{int(expires) + 1}.{mac}", KEYS, "u-7", "hot", now_ms=NOW)
    assert "signature" in token_problem(f"{version}.k2.{expires}.{mac}", KEYS, "u-7", "hot", now_ms=NOW)
    # Ids that would run together in a plain concatenation stay apart.
    assert "signature" in token_problem(admission_token(KEY, "u", "-7hot", 30, now_ms=NOW), KEYS, "u-7", "hot")


def test_either_key_of_a_rotation_is_accepted():
    for key in (KEY, OTHER):
        assert token_problem(admission_token(key, "u", "s", 5, now_ms=NOW), KEYS, "u", "s", now_ms=NOW) == ""
    assert "not one this node holds" in token_problem(
        admission_token(OTHER, "u", "s", 5, now_ms=NOW), {KEY.kid: KEY}, "u", "s", now_ms=NOW
    )


def test_keys_are_long_enough_and_named_plainly(tmp_path):
    with pytest.raises(ValueError, match="fewer than 32"):
        AdmissionKey("k", b"short")
    with pytest.raises(ValueError, match="key id"):
        AdmissionKey("a.b", KEY.secret)
    assert "0123" not in repr(KEY)  # a key never shows in a log line
    path = tmp_path / "gw-2026.key"
    path.write_text(KEY.secret.decode() + "\n")
    assert read_admission_key(path) == AdmissionKey("gw-2026", KEY.secret)
    with pytest.raises(ValueError, match="cannot read"):
        read_admission_key(tmp_path / "missing.key")
    with pytest.raises(ValueError, match="ttl_s"):
        admission_token(KEY, "u", "s", 0)
