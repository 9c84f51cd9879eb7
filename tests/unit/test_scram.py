"""SCRAM-SHA-256 verifiers and SASLprep, against an independent implementation.

The verifiers here are computed by ``scram_verifier`` below (RFC 5802/7677),
which is itself checked against the RFC 7677 test vector, so that a mistake in
``nomad_pginit.scram`` cannot hide behind the same mistake in the test.
The round trip through a real server is tested elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nomad_pginit.scram import derive_keys, saslprep, verifier_matches

SALT = b"0123456789abcdef"


def scram_verifier(prepared: bytes, salt: bytes = SALT, iterations: int = 4096) -> str:
    """A PostgreSQL SCRAM-SHA-256 verifier for an already SASLprep'd password."""
    salted = hashlib.pbkdf2_hmac("sha256", prepared, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


# --- the helper itself, against RFC 7677 section 3 ------------------------------

RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_AUTH_MESSAGE = (
    b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
)


def test_helper_reproduces_rfc7677_client_proof_and_server_signature() -> None:
    verifier = scram_verifier(b"pencil", RFC_SALT, 4096)
    _, keys = verifier.split("$", 2)[1:]
    stored_key, server_key = (base64.b64decode(part) for part in keys.split(":"))
    # ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage); recover ClientKey from the RFC.
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    signature = hmac.new(stored_key, RFC_AUTH_MESSAGE, hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    server_signature = hmac.new(server_key, RFC_AUTH_MESSAGE, hashlib.sha256).digest()
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_rfc7677_verifier_matches_pencil() -> None:
    verifier = scram_verifier(b"pencil", RFC_SALT, 4096)
    assert verifier_matches(verifier, "pencil") is True
    assert verifier_matches(verifier, "Pencil") is False


def test_derive_keys_gives_rfc7677_client_key_and_server_key() -> None:
    verifier = scram_verifier(b"pencil", RFC_SALT, 4096)
    keys = derive_keys(verifier, "pencil")
    assert keys is not None
    # The RFC's ClientProof is ClientKey XOR ClientSignature: these keys must give it.
    stored_key = hashlib.sha256(keys.client_key).digest()
    signature = hmac.new(stored_key, RFC_AUTH_MESSAGE, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(keys.client_key, signature, strict=True))
    assert base64.b64encode(proof) == b"dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    server_signature = hmac.new(keys.server_key, RFC_AUTH_MESSAGE, hashlib.sha256).digest()
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_derive_keys_refuses_another_password_and_never_shows_the_keys() -> None:
    verifier = scram_verifier(b"pencil", RFC_SALT, 4096)
    assert derive_keys(verifier, "Pencil") is None
    assert derive_keys(None, "pencil") is None
    keys = derive_keys(verifier, "pencil")
    assert keys is not None
    shown = repr(keys) + str(keys)
    assert keys.client_key.hex() not in shown
    assert base64.b64encode(keys.client_key).decode() not in shown


# --- verifier_matches ---------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "correct horse battery staple",
        "pw-marker-!@#$%^&*()_+{}|:<>?`~",
        "",  # ASCII, so not prepared: PostgreSQL hashes the empty string as it is
        "p\u00e4ssw\u00f6rd",
        "\u65e5\u672c\u8a9e\u306e\u30d1\u30b9\u30ef\u30fc\u30c9",
        "emoji-\U0001f511",
    ],
)
def test_matches_own_verifier(password: str) -> None:
    # These passwords are already in NFKC with nothing to map: SASLprep leaves them alone.
    verifier = scram_verifier(password.encode("utf-8"))
    assert verifier_matches(verifier, password) is True


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        ("\u2178-caf\u00e9", "ix-caf\u00e9".encode()),  # small roman numeral nine -> "ix"
        ("cafe\u0301", "caf\u00e9".encode()),  # combining acute composes
        ("a\u00a0b\u00e9", "a b\u00e9".encode()),  # no-break space -> space
        ("soft\u00adhyph\u00e9n", "softhyph\u00e9n".encode()),  # soft hyphen dropped
        ("\ufb01le-\u00e9", "file-\u00e9".encode()),  # ligature fi -> "fi"
    ],
)
def test_matches_verifier_of_prepared_password(password: str, prepared: bytes) -> None:
    verifier = scram_verifier(prepared)
    assert verifier_matches(verifier, password) is True
    # ... and not the verifier of the unprepared bytes, which PostgreSQL never stores.
    assert verifier_matches(scram_verifier(password.encode("utf-8")), password) is False


@pytest.mark.parametrize("iterations", [1, 4096, 10000])
def test_uses_stored_salt_and_iterations(iterations: int) -> None:
    verifier = scram_verifier(b"s3cret", b"another salt", iterations)
    assert verifier_matches(verifier, "s3cret") is True


@pytest.mark.parametrize(
    ("stored", "given"),
    [
        ("s3cret", "s3cret "),
        ("s3cret", "S3cret"),
        ("s3cret", ""),
        ("p\u00e4ssw\u00f6rd", "passwort"),
    ],
)
def test_wrong_password_does_not_match(stored: str, given: str) -> None:
    assert verifier_matches(scram_verifier(stored.encode("utf-8")), given) is False


def test_swapped_keys_do_not_match() -> None:
    verifier = scram_verifier(b"s3cret")
    prefix, keys = verifier.rsplit("$", 1)
    stored_key, server_key = keys.split(":")
    assert verifier_matches(f"{prefix}${server_key}:{stored_key}", "s3cret") is False


@pytest.mark.parametrize(
    "verifier",
    [
        None,
        "",
        "md5" + hashlib.md5(b"s3cretgitea").hexdigest(),  # noqa: S324 - PostgreSQL's md5 format
        "s3cret",  # a plain-text password
        "SCRAM-SHA-256$",
        "SCRAM-SHA-256$garbage",
        "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==",
        "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$AAAA",
        "SCRAM-SHA-256$many:MDEyMzQ1Njc4OWFiY2RlZg==$AAAA:AAAA",
        "SCRAM-SHA-256$4096:not base64!$AAAA:AAAA",
        "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$AAAA:AAAA",
        "scram-sha-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$AAAA:AAAA",
    ],
)
def test_missing_md5_or_garbage_verifier_is_false(verifier: str | None) -> None:
    assert verifier_matches(verifier, "s3cret") is False


@pytest.mark.parametrize("iterations", ["0", "-1", "99999999999999999999"])
def test_out_of_range_iteration_count_is_false_not_an_exception(iterations: str) -> None:
    # PostgreSQL's parse_scram_secret accepts any strtol() result, so such a
    # verifier can sit in pg_authid (ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$0:...').
    # Comparing against it must say "differs", not crash the whole run.
    valid = scram_verifier(b"s3cret")
    rest = valid.split(":", 1)[1]
    verifier = f"SCRAM-SHA-256${iterations}:{rest}"
    assert verifier_matches(verifier, "s3cret") is False


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=string.printable, max_size=40), st.binary(min_size=1, max_size=24))
def test_property_any_ascii_password_matches_its_own_verifier(password: str, salt: bytes) -> None:
    verifier = scram_verifier(password.encode("ascii"), salt, 16)
    assert verifier_matches(verifier, password) is True
    assert verifier_matches(verifier, password + "x") is False


# --- saslprep -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    ["plain", "", "with space", "ctrl\x07\x00\x1f\x7fchars", "\t\n", "ix", "A" * 200],
)
def test_saslprep_ascii_is_unchanged(password: str) -> None:
    # pg_saslprep returns pure ASCII as it is, control characters included.
    assert saslprep(password) == password.encode("ascii")


def test_saslprep_maps_non_ascii_space_to_space() -> None:
    assert saslprep("a\u00a0b") == b"a b"
    assert saslprep("\u3000x\u2003") == b" x "


def test_saslprep_removes_commonly_mapped_to_nothing() -> None:
    assert saslprep("soft\u00adhyphen") == b"softhyphen"
    assert saslprep("word\u2060joiner") == b"wordjoiner"


def test_saslprep_maps_zero_width_space_to_a_space_like_postgresql() -> None:
    # U+200B is both a non-ASCII space (C.1.2) and "mapped to nothing" (B.1):
    # pg_saslprep tests the space table first, and libpq hashes "zero width".
    assert saslprep("zero\u200bwidth") == b"zero width"
    assert saslprep("\u00ad\u200b") == b" "


def test_saslprep_nfkc_normalises() -> None:
    assert saslprep("\u2178") == b"ix"
    assert saslprep("\ufb01") == b"fi"
    assert saslprep("cafe\u0301") == "caf\u00e9".encode()


def test_saslprep_keeps_nfkc_text_as_utf8() -> None:
    assert saslprep("p\u00e4ssw\u00f6rd") == "p\u00e4ssw\u00f6rd".encode()


@pytest.mark.parametrize(
    "password",
    [
        "\u00e9\x07",  # ASCII control character inside a non-ASCII string
        "\ue000x",  # private use
        "x\u2168\ufffe",  # non-character
        "\u0221\u2168",  # unassigned in Unicode 3.2 (SASLprep's table A.1)
        "\u05d0a\u05d1",  # RandALCat mixed with LCat
        "\u05d0\u2168\u05d1",  # same, and NFKC would have changed U+2168
        "\u05d0\u00a0",  # RandALCat first but (mapped) space last
        "\u00ad",  # maps to nothing at all: PostgreSQL refuses an empty result
    ],
)
def test_saslprep_prohibited_leaves_raw_utf8(password: str) -> None:
    assert saslprep(password) == password.encode("utf-8")


def test_saslprep_right_to_left_only_is_normalised() -> None:
    # All RandALCat: allowed, and NFKC applies (U+FB2A decomposes to shin + shin dot).
    assert saslprep("\u05d0\u05d1") == "\u05d0\u05d1".encode()
    assert saslprep("\u05d0\ufb2a\u05d1") == "\u05d0\u05e9\u05c1\u05d1".encode()


def test_prohibited_password_matches_verifier_of_raw_bytes() -> None:
    password = "\u00e9\x07\u00a0"
    assert verifier_matches(scram_verifier(password.encode("utf-8")), password) is True
