"""Tell whether a stored SCRAM-SHA-256 verifier belongs to a password.

PostgreSQL stores ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``.
Recomputing the keys from the stored salt and iteration count (RFC 5802) is the
only way to know that a role's password equals Vault's without changing it, so
that a run with nothing to do really issues no ALTER ROLE.

The password is first prepared the way PostgreSQL's ``pg_saslprep`` does it
(src/common/saslprep.c), quirks included, so that our answer agrees with the
server's.

The same computation gives the client and server keys of a verifier: libpq 18
accepts them (``scram_client_key``, ``scram_server_key``) instead of the
password, and then skips the 4096 rounds of PBKDF2 that every SCRAM login
otherwise costs the client.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import stringprep
import unicodedata
from dataclasses import dataclass

_PREFIX = "SCRAM-SHA-256$"
MAX_ITERATIONS = 10_000_000


def _prohibited(ch: str) -> bool:
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def saslprep(password: str) -> bytes:
    """The bytes that PostgreSQL hashes for ``password``.

    Like pg_saslprep: ASCII passes unchanged; otherwise map, normalise (NFKC)
    and check; a password that SASLprep prohibits is used as it is.
    """
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    # Spaces first, as pg_saslprep does: U+200B is in both tables and becomes a space.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if stringprep.in_table_c12(ch) or not stringprep.in_table_b1(ch)
    )
    if not mapped:
        return raw
    # PostgreSQL checks the mapped input, not the normalised output.
    if any(_prohibited(ch) for ch in mapped):
        return raw
    if any(stringprep.in_table_d1(ch) for ch in mapped) and (
        any(stringprep.in_table_d2(ch) for ch in mapped)
        or not stringprep.in_table_d1(mapped[0])
        or not stringprep.in_table_d1(mapped[-1])
    ):
        return raw
    return unicodedata.normalize("NFKC", mapped).encode("utf-8")


@dataclass(frozen=True)
class ScramKeys:
    """The keys a SCRAM client derives from a password and the server's salt.

    Holding them is as good as holding the password for that verifier: they are
    only ever handed to libpq, never printed.
    """

    client_key: bytes
    server_key: bytes

    def __repr__(self) -> str:
        return "ScramKeys(***)"


def derive_keys(verifier: str | None, password: str) -> ScramKeys | None:
    """The keys for ``password`` with the salt and iteration count stored in ``verifier``
    (pg_authid.rolpassword), or None when the verifier was not made from this password."""
    if not verifier or not verifier.startswith(_PREFIX):
        # NULL, md5 or plain: not what we would store, so not "unchanged".
        return None
    try:
        params, keys = verifier[len(_PREFIX) :].split("$", 1)
        iterations_text, salt_b64 = params.split(":", 1)
        stored_key_b64, server_key_b64 = keys.split(":", 1)
        iterations = int(iterations_text)
        # The server stores whatever it is given: never let a bad count crash or stall us.
        if not 1 <= iterations <= MAX_ITERATIONS:
            return None
        salt = base64.b64decode(salt_b64, validate=True)
        stored_key = base64.b64decode(stored_key_b64, validate=True)
        server_key = base64.b64decode(server_key_b64, validate=True)
    except (ValueError, binascii.Error):
        return None
    # hashlib releases the GIL here: threads check passwords in parallel.
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    expected_stored = hashlib.sha256(client_key).digest()
    expected_server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    if hmac.compare_digest(expected_stored, stored_key) and hmac.compare_digest(
        expected_server, server_key
    ):
        return ScramKeys(client_key=client_key, server_key=expected_server)
    return None


def verifier_matches(verifier: str | None, password: str) -> bool:
    """True when ``verifier`` (from pg_authid.rolpassword) was made from ``password``."""
    return derive_keys(verifier, password) is not None
