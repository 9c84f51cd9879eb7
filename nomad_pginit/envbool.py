"""Booleans in environment variables: the one place nomad-pginit decides what "true"
means in its environment. NOMAD_* and VAULT_* as the Go CLIs read them (nomad and
vault both use strconv.ParseBool for NOMAD_SKIP_VERIFY and VAULT_SKIP_VERIFY); the
standalone provisioner's WATCH_MODE as it read it (yes/no and on/off too)."""

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


def parse_switch(value: str) -> bool | None:
    """true/false, 1/0, yes/no, on/off in any case; "" is false; None when invalid."""
    raw = value.strip().lower()
    if raw in ("", "false", "0", "no", "off", "f"):
        return False
    if raw in ("true", "1", "yes", "on", "t"):
        return True
    return None
