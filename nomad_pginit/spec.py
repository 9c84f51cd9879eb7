"""The services file: parsed and validated into frozen dataclasses.

Validation collects every problem, each with where it is, and raises one
``ConfigError`` before anything is read from Vault or written to PostgreSQL.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Final

from nomad_pginit.errors import ConfigError
from nomad_pginit.secret import Secret

# PostgreSQL truncates longer identifiers silently (NAMEDATALEN - 1).
MAX_NAME_BYTES: Final = 63
# CONNECTION LIMIT is an int4.
MAX_CONNECTION_LIMIT: Final = 2**31 - 1

# Names PostgreSQL reserves, or that would collide with what every cluster has.
RESERVED_NAMES: Final = frozenset(
    {
        "postgres",
        "template0",
        "template1",
        "public",
        "none",
        "current_user",
        "session_user",
        "current_role",
        "system_user",
    }
)

ENV_CONFIG: Final = "PGINIT_CONFIG"
# The standalone provisioner's variable and default, kept for its users.
ENV_LEGACY_CONFIG: Final = "CONFIG_PATH"
LEGACY_DEFAULT_CONFIG: Final = Path("/config/config.json")


@dataclass(frozen=True)
class PostgresSettings:
    """How to reach PostgreSQL as the admin; libpq's environment fills the rest."""

    dsn: str = ""
    password_file: Path | None = None
    # The admin's password in Vault: a path in the [vault] mount, key "password".
    password_secret: str = ""


# The auth method that Nomad's workload identities log in to (the Nomad agents'
# default jwt_auth_backend_path), and the key of the admin's secret.
DEFAULT_JWT_PATH: Final = "jwt-nomad"
# The identity block that `nomad-pginit render` gives the init task (aud vault.io,
# file = true). Nomad writes its JWT to $NOMAD_SECRETS_DIR/nomad_<name>.jwt
# (client/allocrunner/taskrunner/identity_hook.go), the default [vault] jwt_file.
# Not "vault_default": Nomad reserves the vault_ prefix for the identity of a
# vault block, and warns at every register about one in a task without a vault
# block (nomad/job_endpoint_hooks.go).
IDENTITY_NAME: Final = "vault"
ADMIN_SECRET_KEY: Final = "password"  # noqa: S105 (the key's name)


@dataclass(frozen=True)
class VaultSettings:
    """Where each service's password lives in Vault KV v2, and how to log in with a JWT."""

    mount: str = "secret"
    path: str = "postgres/{service}"
    key: str = "password"
    # The role of the JWT auth method to log in as with the task's workload identity.
    jwt_role: str = ""
    # The JWT auth method's mount.
    jwt_path: str = DEFAULT_JWT_PATH
    # The JWT file; empty: the file Nomad writes for the job's identity block.
    jwt_file: str = ""

    def secret_path(self, service: str) -> str:
        """The KV v2 path of one service's secret, relative to the mount."""
        return self.path.replace("{service}", service)

    def cli_path(self, service: str) -> str:
        """The path as ``vault kv`` commands spell it (``secret/postgres/gitea``)."""
        return f"{self.mount}/{self.secret_path(service)}"


# How the job delivers the services file and runs init-databases.
ONESHOT: Final = "oneshot"  # in the job; a poststart task that provisions and exits
LIVE: Final = "live"  # in a Nomad variable; a sidecar that applies every change
MODES: Final = (ONESHOT, LIVE)
# The job's own variable: its tasks read it with no ACL policy. Their workload
# identity may read exactly nomad/jobs/<job>, .../<group> and .../<group>/<task>
# (acl/acl.go matchingVariablesCapabilitySet), nothing below them: a template that
# may not read its variable fails its task for good, and Nomad then stops
# PostgreSQL, so [job] variable is one of these.
DEFAULT_VARIABLE: Final = "nomad/jobs/postgresql"
READABLE_VARIABLES: Final = (
    DEFAULT_VARIABLE,
    "nomad/jobs/postgresql/postgresql",
    "nomad/jobs/postgresql/postgresql/init-databases",
)
# The variable's item that holds the services file.
VARIABLE_ITEM: Final = "pginit_toml"


@dataclass(frozen=True)
class JobSettings:
    """How `nomad-pginit render` shapes the init-databases task of the Nomad job."""

    mode: str = ONESHOT
    # Live mode: how often the sidecar looks at Vault for rotated passwords.
    interval: int = 10
    # Live mode: the Nomad variable that carries the services file.
    variable: str = DEFAULT_VARIABLE

    @property
    def live(self) -> bool:
        return self.mode == LIVE


@dataclass(frozen=True)
class Service:
    """One tenant: a login role, its own database, a password from Vault."""

    name: str
    database: str
    user: str
    # Revoke CONNECT and TEMPORARY from PUBLIC, so other services cannot connect.
    isolate: bool = True
    # Created inside the service's database when missing.
    extensions: tuple[str, ...] = ()
    # The role's CONNECTION LIMIT; None leaves whatever the role has.
    connection_limit: int | None = None
    # Manage an existing role that has CREATEDB, CREATEROLE, REPLICATION or BYPASSRLS,
    # or is a member of a superuser or a privileged role (refused otherwise).
    allow_privileged_role: bool = False
    # Given inline only by the JSON format; otherwise read from Vault.
    password: Secret | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Spec:
    """The whole services file."""

    source: Path
    postgres: PostgresSettings
    vault: VaultSettings
    services: tuple[Service, ...]
    job: JobSettings = JobSettings()


# --- the schema --------------------------------------------------------------

_TOP_KEYS: Final = {
    "postgres": dict,
    "vault": dict,
    "defaults": dict,
    "job": dict,
    "service": list,
}
_JOB_KEYS: Final = {"mode": str, "interval": int, "variable": str}
_POSTGRES_KEYS: Final = {"dsn": str, "password_file": str, "password_secret": str}
_VAULT_KEYS: Final = {
    "mount": str,
    "path": str,
    "key": str,
    "jwt_role": str,
    "jwt_path": str,
    "jwt_file": str,
}
_OPTION_KEYS: Final = {"isolate": bool, "extensions": list, "connection_limit": int}
_SERVICE_KEYS: Final = {
    "name": str,
    "database": str,
    "user": str,
    # Per service only, never from [defaults]: it must be said of each role.
    "allow_privileged_role": bool,
    **_OPTION_KEYS,
}
# The JSON format of the standalone provisioner (config.json).
_JSON_TOP_KEYS: Final = {
    "root_connection_string": str,
    "databases": list,
    "vault": dict,
    "defaults": dict,
}
_JSON_DATABASE_KEYS: Final = {**_SERVICE_KEYS, "password": str}

_TYPE_NAMES: Final = {
    str: "a string",
    dict: "a table",
    list: "an array",
    int: "an integer",
    bool: "true or false",
}


class _Problems:
    """Collects problems with their location, so all are reported at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def _check_keys(
    table: Mapping[str, Any], schema: Mapping[str, type], where: str, problems: _Problems
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


def _segments_problem(value: str) -> str | None:
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


def _check_vault_path(path: str, where: str, problems: _Problems) -> None:
    # A leading "/" has its own message below.
    if not path.startswith("/") and (problem := _segments_problem(path)) is not None:
        problems.add(where, f"'path' {problem}")
    if "{service}" not in path:
        problems.add(
            where, "'path' must contain {service}, or every service would share one secret"
        )
    rest = path.replace("{service}", "")
    if "{" in rest or "}" in rest:
        problems.add(where, "'path' may use only the placeholder {service}")
    if path.startswith("/") or path.startswith(("secret/data/", "data/{service}")):
        problems.add(
            where,
            "'path' is relative to the mount and without '/data/' (KV v2 adds it): "
            'for example "postgres/{service}"',
        )


def _check_admin_secret(postgres: PostgresSettings, problems: _Problems) -> None:
    secret = postgres.password_secret
    if postgres.password_file is not None:
        problems.add(
            "[postgres]",
            "set either 'password_file' or 'password_secret' (the admin's password in Vault), "
            "not both",
        )
    if secret == "":
        problems.add("[postgres]", "'password_secret' must not be empty")
    elif (problem := _segments_problem(secret)) is not None:
        problems.add("[postgres]", f"'password_secret' {problem}")
    elif secret.startswith("data/") or "{" in secret:
        problems.add(
            "[postgres]",
            "'password_secret' is a path in the [vault] mount, without '/data/' and without "
            'placeholders: for example "postgres/admin"',
        )


def parse(document: Mapping[str, Any], source: Path) -> Spec:
    """Validate a parsed TOML services document; raise ConfigError listing every problem."""
    return _parse(document, source, _Problems())


def parse_json(document: Any, source: Path) -> Spec:
    """Validate the standalone provisioner's config.json, mapped onto the TOML shape.

    ``root_connection_string`` is [postgres] dsn; each entry of ``databases`` is a
    service named after its database unless it has a name. A password given
    inline is used as it is; one left out is read from Vault as usual.
    """
    problems = _Problems()
    if not isinstance(document, dict):
        problems.add(str(source), "must be a JSON object with root_connection_string and databases")
        return _parse({}, source, problems)
    top = _check_keys(document, _JSON_TOP_KEYS, str(source), problems)
    services: list[dict[str, Any]] = []
    for index, raw in enumerate(top.get("databases", [])):
        where = f"databases[{index}]"
        if not isinstance(raw, dict):
            problems.add(where, "must be an object with database, user and password")
            continue
        entry = _check_keys(raw, _JSON_DATABASE_KEYS, where, problems)
        name = entry.get("name", entry.get("database"))
        if name is None:
            problems.add(where, "needs 'database' (or 'name')")
            continue
        services.append({**entry, "name": name})
    translated = {
        "postgres": {"dsn": top.get("root_connection_string", "")},
        "vault": top.get("vault", {}),
        "defaults": top.get("defaults", {}),
        "service": services,
    }
    return _parse(
        translated, source, problems, service_label="databases[{index}]", inline_passwords=True
    )


def _parse(
    document: Mapping[str, Any],
    source: Path,
    problems: _Problems,
    service_label: str = "[[service]] #{number}",
    *,
    inline_passwords: bool = False,
) -> Spec:
    top = _check_keys(document, _TOP_KEYS, str(source), problems)

    pg_table = _check_keys(top.get("postgres", {}), _POSTGRES_KEYS, "[postgres]", problems)
    password_file = pg_table.get("password_file")
    postgres = PostgresSettings(
        dsn=pg_table.get("dsn", ""),
        # $NOMAD_SECRETS_DIR and friends, so one file works in every task driver.
        password_file=Path(os.path.expandvars(password_file)) if password_file else None,
        password_secret=pg_table.get("password_secret", ""),
    )
    if "password_secret" in pg_table:
        _check_admin_secret(postgres, problems)

    vault_table = _check_keys(top.get("vault", {}), _VAULT_KEYS, "[vault]", problems)
    vault = VaultSettings(**vault_table)
    _check_vault_path(vault.path, "[vault]", problems)
    for key in ("mount", "key", "jwt_path"):
        if getattr(vault, key) == "":
            problems.add("[vault]", f"'{key}' must not be empty")
    for key in ("mount", "jwt_path"):
        value = getattr(vault, key)
        if value and (problem := _segments_problem(value)) is not None:
            problems.add("[vault]", f"'{key}' {problem}")
    if vault.jwt_path.startswith(("/", "auth/")) or vault.jwt_path.endswith("/"):
        problems.add(
            "[vault]",
            f"'jwt_path' is the auth method's mount, as in auth/<jwt_path>/login: "
            f'for example "{DEFAULT_JWT_PATH}", not {vault.jwt_path!r}',
        )

    raw_job = dict(top.get("job", {}))
    if "watch" in raw_job:
        raw_job.pop("watch")
        problems.add(
            "[job]",
            "'watch' is gone: write mode = \"live\" for a sidecar that applies every change "
            "(new services from a Nomad variable, rotated passwords) without restarting "
            'PostgreSQL, or mode = "oneshot" (the default) for a task that provisions and '
            "exits",
        )
    job_table = _check_keys(raw_job, _JOB_KEYS, "[job]", problems)
    job = JobSettings(**job_table)
    if job.interval < 1:
        problems.add("[job]", "'interval' must be 1 second or more")
    if job.mode not in MODES:
        problems.add("[job]", f'\'mode\' must be "oneshot" or "live", not {job.mode!r}')
    if job.variable not in READABLE_VARIABLES:
        readable = ", ".join(repr(path) for path in READABLE_VARIABLES)
        problems.add(
            "[job]",
            f"'variable' must be one of the paths the job's tasks may read without an ACL "
            f"policy ({readable}), not {job.variable!r}: a template that may not read its "
            "variable fails the init task for good, and Nomad then stops PostgreSQL",
        )

    defaults_table = _check_keys(top.get("defaults", {}), _OPTION_KEYS, "[defaults]", problems)
    defaults = _check_options(defaults_table, "[defaults]", problems)

    services: list[Service] = []
    raw_services = top.get("service", [])
    if not raw_services:
        problems.add(
            str(source), 'no [[service]] entries: add one per service, e.g. name = "gitea"'
        )
    for index, table in enumerate(raw_services, start=1):
        where = service_label.format(number=index, index=index - 1)
        if not isinstance(table, dict):
            problems.add(where, "must be a table")
            continue
        if isinstance(table.get("name"), str):
            where = f"{where} ({table['name']!r})"
        raw = dict(table)
        # Only config.json carries passwords inline; the TOML file keeps them in Vault.
        inline_password = raw.pop("password", None) if inline_passwords else None
        if inline_password is not None:
            problem = password_problem(inline_password)
            if problem is not None:
                problems.add(where, f"'password' {problem}")
                inline_password = None
        entry = _check_keys(raw, _SERVICE_KEYS, where, problems)
        if "name" not in entry:
            if "name" not in raw:
                problems.add(where, "'name' is required")
            continue
        options = {**defaults, **_check_options(entry, where, problems)}
        service = Service(
            name=entry["name"],
            database=entry.get("database", entry["name"]),
            user=entry.get("user", entry["name"]),
            isolate=options.get("isolate", True),
            extensions=options.get("extensions", ()),
            connection_limit=options.get("connection_limit"),
            allow_privileged_role=entry.get("allow_privileged_role", False),
            password=Secret(inline_password) if inline_password else None,
        )
        # A database or user defaulted from the name shares its problems: report them once.
        for attribute in ("name", *(key for key in ("database", "user") if key in entry)):
            problem = name_problem(getattr(service, attribute))
            if problem:
                problems.add(where, f"{attribute} {getattr(service, attribute)!r} {problem}")
        services.append(service)

    _check_unique(services, problems)
    if postgres.password_secret:
        for index, service in enumerate(services, start=1):
            if service.password is None and vault.secret_path(service.name) == (
                postgres.password_secret
            ):
                problems.add(
                    f"[[service]] #{index} ({service.name!r})",
                    f"its Vault secret {vault.cli_path(service.name)} is the PostgreSQL "
                    "superuser's password ([postgres] password_secret): its role would get that "
                    "password; rename the service or change [vault] path",
                )
    if problems.items:
        count = len(problems.items)
        raise ConfigError(
            f"{source}: {count} problem{'s' if count > 1 else ''} in the services file "
            "(nothing was read from Vault or written to PostgreSQL)",
            problems.items,
        )
    return Spec(source=source, postgres=postgres, vault=vault, services=tuple(services), job=job)


def _check_options(table: Mapping[str, Any], where: str, problems: _Problems) -> dict[str, Any]:
    """The per-service options of a [[service]] or [defaults] table, checked."""
    options: dict[str, Any] = {}
    if "isolate" in table:
        options["isolate"] = table["isolate"]
    if "extensions" in table:
        names = table["extensions"]
        # Extension names may start with pg_ (pg_trgm): only the identifier rules apply.
        bad = [
            name
            for name in names
            if not isinstance(name, str)
            or not name
            or len(name.encode("utf-8")) > MAX_NAME_BYTES
            or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name)
        ]
        if bad:
            problems.add(where, f"'extensions' must list extension names, not {bad!r}")
        elif len(set(names)) != len(names):
            problems.add(where, "'extensions' lists an extension twice")
        else:
            options["extensions"] = tuple(names)
    if "connection_limit" in table:
        limit = table["connection_limit"]
        if not -1 <= limit <= MAX_CONNECTION_LIMIT:
            problems.add(
                where,
                f"'connection_limit' must be -1 (no limit) to {MAX_CONNECTION_LIMIT}, not {limit}",
            )
        else:
            options["connection_limit"] = limit
    return options


def _check_unique(services: list[Service], problems: _Problems) -> None:
    seen: dict[str, dict[str, int]] = {"name": {}, "database": {}, "user": {}}
    for index, service in enumerate(services, start=1):
        for attribute in ("name", "database", "user"):
            value = getattr(service, attribute)
            earlier = seen[attribute].get(value)
            if earlier is None:
                seen[attribute][value] = index
                continue
            if attribute != "name" and value == service.name and service.name in seen["name"]:
                continue  # the duplicate name is already reported, and this follows from it
            problems.add(
                f"[[service]] #{index} ({service.name!r})",
                f"{attribute} {value!r} is already used by [[service]] #{earlier}; "
                "each service needs its own",
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


def fingerprint(services: tuple[Service, ...]) -> str:
    """A short digest of the services, with every setting, that two views of the same
    services share (the operator's file and the task's): the sidecar logs it with
    each pass, and deploy waits for the one it published. Passwords are left out."""
    entries = sorted(
        (
            {
                item.name: list(value) if isinstance(value, tuple) else value
                for item in dataclass_fields(service)
                if item.name != "password"
                for value in [getattr(service, item.name)]
            }
            for service in services
        ),
        key=lambda entry: str(entry["name"]),
    )
    canonical = json.dumps(entries, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:FINGERPRINT_LENGTH]


FINGERPRINT_LENGTH: Final = 12


def config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """--config, else $PGINIT_CONFIG, else $CONFIG_PATH, else /config/config.json.

    The last two are the standalone provisioner's, so its deployments keep working.
    """
    value = cli_value or environ.get(ENV_CONFIG) or environ.get(ENV_LEGACY_CONFIG)
    return Path(value) if value else LEGACY_DEFAULT_CONFIG
