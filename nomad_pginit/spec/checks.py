"""The checks every part of the services file shares: keys and types, names, passwords.

Problems are collected with where they are (``Problems``), so a file with
many mistakes is reported once, whole.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

from nomad_pginit.spec.model import MAX_NAME_BYTES, RESERVED_NAMES

_TYPE_NAMES: Final = {
    str: "a string",
    dict: "a table",
    list: "an array",
    int: "an integer",
    bool: "true or false",
}


class Problems:
    """Collects problems with their location, so all are reported at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def check_keys(
    table: Mapping[str, Any], schema: Mapping[str, type], where: str, problems: Problems
) -> dict[str, Any]:
    """Keep the keys of ``table`` that ``schema`` knows and whose type is right."""
    good: dict[str, Any] = {}
    for key, value in table.items():
        if key not in schema:
            hint = difflib.get_close_matches(key, list(schema), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            known = ", ".join(sorted(schema))
            problems.add(where, f"unknown key '{key}'{suggestion}; known keys: {known}")
            continue
        expected = schema[key]
        # bool is an int in Python; TOML keeps them apart and so do we.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            problems.add(where, f"'{key}' must be {_TYPE_NAMES[expected]}")
            continue
        good[key] = value
    return good


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a service, role or database name, or None.

    PostgreSQL must hold it exactly, and as a service name it becomes one
    segment of a Vault path: "../admin" must not reach another secret.
    """
    if name == "":
        return "must not be empty"
    if "/" in name or name in (".", ".."):
        return "must not contain '/' or be '.' or '..': a service's name is part of its Vault path"
    if "\x00" in name:
        return "must not contain a NUL character"
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        return "must not contain control characters"
    if not name.isprintable():
        # Vault refuses such paths, and a log line could hide them.
        return "must be printable: no control, format or non-ASCII space characters"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return (
            f"is {size} bytes long; PostgreSQL would silently truncate it to "
            f"{MAX_NAME_BYTES} bytes: choose a shorter name"
        )
    if name.lower() in RESERVED_NAMES:
        return "is reserved by PostgreSQL: choose another name"
    if name.lower().startswith("pg_"):
        return "starts with 'pg_', which PostgreSQL reserves for its own roles: choose another name"
    return None


def segments_problem(value: str) -> str | None:
    """Why a Vault path cannot be used as it is written, or None.

    Vault (and the HTTP client before it) folds "a//b", "./" and "../", so such a
    path would name another secret than it seems to, or one outside the mount.
    """
    if value.startswith("/") or value.endswith("/"):
        return "must not start or end with '/'"
    if any(segment in ("", ".", "..") for segment in value.split("/")):
        return "must not contain empty, '.' or '..' segments"
    return None


def password_problem(password: object) -> str | None:
    """Why PostgreSQL cannot hold this password, or None. It must be a non-empty
    string without a NUL byte: libpq stops at the NUL, so what it stored would never
    equal the password, and every run would set it again."""
    if not isinstance(password, str) or password == "":
        return "must be a non-empty string (leave it out to read the password from Vault)"
    if "\x00" in password:
        return "contains a NUL character, which PostgreSQL cannot store: choose another"
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON's "\ud800"): not text. Never say where: it is a password.
        return "is not valid Unicode text (a lone surrogate escape?): choose another"
    return None
