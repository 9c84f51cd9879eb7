"""The services file: parsed and validated into frozen dataclasses.

Validation collects every problem, each with where it is, and raises one
``ConfigError`` before anything is read from Vault or written to PostgreSQL.

- ``model``: the dataclasses (``Spec``, ``Service``, the cluster's settings) and constants.
- ``checks``: what every table shares (keys and types, names, passwords).
- ``cluster``: the [postgres], [vault] and [job] tables.
- ``services``: [defaults] and [[service]]: where a per-service option is added.
- ``document``: the whole TOML document, or the standalone provisioner's config.json.
- ``files``: reading it from disk, and live mode's two parts.
"""

from nomad_pginit.spec.checks import name_problem, password_problem
from nomad_pginit.spec.document import parse, parse_json
from nomad_pginit.spec.files import (
    SERVICES_PART_KEYS,
    config_path,
    load,
    load_parts,
    loads,
    loads_parts,
)
from nomad_pginit.spec.model import (
    ADMIN_SECRET_KEY,
    DEFAULT_JWT_PATH,
    DEFAULT_VARIABLE,
    ENV_CONFIG,
    ENV_LEGACY_CONFIG,
    EXTERNAL,
    IDENTITY_NAME,
    IN_JOB,
    LEGACY_DEFAULT_CONFIG,
    LIVE,
    MAX_CONNECTION_LIMIT,
    MAX_NAME_BYTES,
    MODES,
    ONESHOT,
    READABLE_VARIABLES,
    RESERVED_NAMES,
    VARIABLE_ITEM,
    CreationOptions,
    JobSettings,
    PostgresSettings,
    Service,
    Spec,
    VaultSettings,
)
from nomad_pginit.spec.services import FINGERPRINT_LENGTH, fingerprint

__all__ = [
    "ADMIN_SECRET_KEY",
    "DEFAULT_JWT_PATH",
    "DEFAULT_VARIABLE",
    "ENV_CONFIG",
    "ENV_LEGACY_CONFIG",
    "EXTERNAL",
    "FINGERPRINT_LENGTH",
    "IDENTITY_NAME",
    "IN_JOB",
    "LEGACY_DEFAULT_CONFIG",
    "LIVE",
    "MAX_CONNECTION_LIMIT",
    "MAX_NAME_BYTES",
    "MODES",
    "ONESHOT",
    "READABLE_VARIABLES",
    "RESERVED_NAMES",
    "SERVICES_PART_KEYS",
    "VARIABLE_ITEM",
    "CreationOptions",
    "JobSettings",
    "PostgresSettings",
    "Service",
    "Spec",
    "VaultSettings",
    "config_path",
    "fingerprint",
    "load",
    "load_parts",
    "loads",
    "loads_parts",
    "name_problem",
    "parse",
    "parse_json",
    "password_problem",
]
