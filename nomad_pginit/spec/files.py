"""Reading the services file: from disk, from text, and live mode's two parts."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from nomad_pginit.errors import ConfigError
from nomad_pginit.spec.document import parse, parse_json
from nomad_pginit.spec.model import (
    ENV_CONFIG,
    ENV_LEGACY_CONFIG,
    LEGACY_DEFAULT_CONFIG,
    VARIABLE_ITEM,
    Spec,
)


def load(path: Path) -> Spec:
    """Read and validate the services file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(
            f"services file {path} does not exist: pass --config PATH or set ${ENV_CONFIG}"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read services file {path}: {err}") from err
    return loads(text, path)


def loads(text: str, path: Path) -> Spec:
    """Validate a services file's text: JSON when it is named *.json or starts with '{'."""
    if not text.strip():
        raise ConfigError(_empty_message(path))
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
            ) from err
        return parse_json(document, path)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err
    return parse(document, path)


# Live mode's split: what the job carries, and what the Nomad variable may carry.
SERVICES_PART_KEYS: Final = frozenset({"defaults", "service"})


def load_parts(config: Path, services: Path) -> Spec:
    """The task's view in live mode: the job's own file (``config``: [postgres],
    [vault]) and the services from the Nomad variable (``services``: [defaults] and
    [[service]] entries only)."""
    return loads_parts(_read_text(config), config, _read_text(services), services)


def loads_parts(config_text: str, config: Path, services_text: str, services: Path) -> Spec:
    """Validate the two parts of live mode's view together.

    Whoever may write the variable decides which services exist, never where
    nomad-pginit connects or how it reads secrets: a [postgres] or [vault] table
    there (a dsn pointing elsewhere, say) is refused, not merged.
    """
    if not services_text.strip():
        raise ConfigError(_empty_message(services))
    services_document = _toml(services_text, services)
    extra = sorted(set(services_document) - SERVICES_PART_KEYS)
    if extra:
        tables = ", ".join(f"[{name}]" for name in extra)
        raise ConfigError(
            f"{services} holds {tables}: the services from the Nomad variable may hold only "
            f"[defaults] and [[service]] entries; where PostgreSQL and Vault are comes from "
            f"{config}, which the job carries (nothing was applied)"
        )
    config_document = _toml(config_text, config)
    mixed = sorted(set(config_document) & SERVICES_PART_KEYS)
    if mixed:
        tables = ", ".join(f"[{name}]" for name in mixed)
        raise ConfigError(
            f"{config} holds {tables}, but with a separate services file ({services}) the "
            "services come from that file only"
        )
    return parse({**config_document, **services_document}, services)


def _toml(text: str, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"{path} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err


def _empty_message(path: Path) -> str:
    # In live mode the file is what Nomad's template made of the variable: empty
    # while the variable has no services item.
    return (
        f"{path} is empty: write one [[service]] per service in it; in live mode Nomad "
        f"writes it from the item {VARIABLE_ITEM!r} of the job's Nomad variable, which "
        "nomad-pginit publish (or deploy) fills in"
    )


def config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """--config, else $PGINIT_CONFIG, else $CONFIG_PATH, else /config/config.json.

    The last two are the standalone provisioner's, so its deployments keep working.
    """
    value = cli_value or environ.get(ENV_CONFIG) or environ.get(ENV_LEGACY_CONFIG)
    return Path(value) if value else LEGACY_DEFAULT_CONFIG
