"""Booleans in environment variables, read as the Go CLIs read them (nomad and vault
both use strconv.ParseBool for NOMAD_SKIP_VERIFY and VAULT_SKIP_VERIFY): the one
place nomad-pginit decides what "true" means in its environment."""

from __future__ import annotations


def parse_bool(value: str | None) -> bool | None:
    """Go's strconv.ParseBool; None when unset or invalid."""
    if value is None:
        return None
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None
