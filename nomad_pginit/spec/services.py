"""The services of the services file: [defaults] and each [[service]].

A new per-service option goes here: its key and type in ``OPTION_KEYS`` (or
``SERVICE_KEYS`` when [defaults] may not set it), its check in
``check_options``, and its field on ``model.Service``.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import fields as dataclass_fields
from typing import Any, Final

from nomad_pginit.secret import Secret
from nomad_pginit.spec.checks import Problems, check_keys, name_problem, password_problem
from nomad_pginit.spec.model import (
    LOCALE_PROVIDERS,
    MAX_CONNECTION_LIMIT,
    MAX_NAME_BYTES,
    CreationOptions,
    PostgresSettings,
    Service,
    VaultSettings,
)

# CREATE DATABASE's options, each a string (model.CreationOptions).
CREATION_KEYS: Final = {
    "template": str,
    "encoding": str,
    "locale": str,
    "lc_collate": str,
    "lc_ctype": str,
    "locale_provider": str,
    "icu_locale": str,
}
OPTION_KEYS: Final = {
    "isolate": bool,
    "extensions": list,
    "connection_limit": int,
    "readers": list,
    "settings": dict,
    **CREATION_KEYS,
}
SERVICE_KEYS: Final = {
    "name": str,
    "database": str,
    "databases": list,
    "user": str,
    # Per service only, never from [defaults]: they must be said of each role.
    "allow_privileged_role": bool,
    "member_of": list,
    "allow_privileged": bool,
    **OPTION_KEYS,
}
# A setting's name as PostgreSQL spells its parameters: a word, or a custom
# parameter's prefix.word (my_extension.option).
_SETTING_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*")
# A CREATE DATABASE option's value: a locale, an encoding or a template's name.
_MAX_OPTION_BYTES: Final = 200
# How long one setting's value may be (PostgreSQL takes more; a services file needs less).
_MAX_SETTING_BYTES: Final = 1000


def _role_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name an existing role (a reader, a group), or None. It may be
    a predefined role (pg_monitor), so only PostgreSQL's own rules apply."""
    if not isinstance(name, str) or name == "":
        return "must be a non-empty string"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if not name.isprintable():
        return "must be printable"
    if name.lower() in ("public", "none", "current_user", "session_user", "current_role"):
        return "is not a role PostgreSQL can grant to (a keyword)"
    return None


def _check_role_list(
    table: Mapping[str, Any], key: str, where: str, problems: Problems
) -> tuple[str, ...] | None:
    names = table[key]
    for name in names:
        if (problem := _role_name_problem(name)) is not None:
            problems.add(where, f"'{key}' lists {name!r}, which {problem}")
            return None
    if len(set(names)) != len(names):
        problems.add(where, f"'{key}' lists a role twice")
        return None
    return tuple(names)


def _check_creation(table: Mapping[str, Any], where: str, problems: Problems) -> dict[str, str]:
    given = {key: table[key] for key in CREATION_KEYS if key in table}
    for key, value in given.items():
        size = len(value.encode("utf-8", "surrogatepass"))
        if value == "" or size > _MAX_OPTION_BYTES or not value.isprintable():
            problems.add(
                where,
                f"'{key}' must be a printable, non-empty string of at most "
                f"{_MAX_OPTION_BYTES} bytes",
            )
            return {}
    provider = given.get("locale_provider")
    if provider is not None and provider not in LOCALE_PROVIDERS:
        choices = ", ".join(f'"{name}"' for name in LOCALE_PROVIDERS)
        problems.add(where, f"'locale_provider' must be one of {choices}, not {provider!r}")
    if "locale" in given and ("lc_collate" in given or "lc_ctype" in given):
        problems.add(
            where,
            "'locale' sets both lc_collate and lc_ctype: give either 'locale', or "
            "'lc_collate' and 'lc_ctype' (PostgreSQL refuses both at once)",
        )
    if "icu_locale" in given and provider != "icu":
        problems.add(where, "'icu_locale' needs locale_provider = \"icu\"")
    if provider == "builtin" and "locale" not in given:
        problems.add(
            where,
            'locale_provider = "builtin" needs \'locale\' ("C" or "C.UTF-8", PostgreSQL 17+)',
        )
    return given


def _check_settings(table: Mapping[str, Any], where: str, problems: Problems) -> dict[str, str]:
    settings: dict[str, str] = {}
    for name, value in table["settings"].items():
        if not _SETTING_NAME.fullmatch(name) or len(name.encode()) > MAX_NAME_BYTES:
            problems.add(where, f"'settings' has {name!r}, which is not a parameter's name")
            continue
        if isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, int | float) and not isinstance(value, bool):
            text = str(value)
        elif isinstance(value, str):
            text = value
        else:
            problems.add(where, f"'settings' {name!r} must be a string, a number, or true or false")
            continue
        if "\x00" in text or len(text.encode("utf-8", "surrogatepass")) > _MAX_SETTING_BYTES:
            problems.add(
                where,
                f"'settings' {name!r} must have no NUL character and at most "
                f"{_MAX_SETTING_BYTES} bytes",
            )
            continue
        # Parameter names are case-insensitive in PostgreSQL.
        key = name.lower()
        if key in settings:
            problems.add(where, f"'settings' sets {name!r} twice")
            continue
        settings[key] = text
    return settings


def check_options(table: Mapping[str, Any], where: str, problems: Problems) -> dict[str, Any]:
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
    options.update(_check_creation(table, where, problems))
    if "readers" in table:
        readers = _check_role_list(table, "readers", where, problems)
        if readers is not None:
            options["readers"] = readers  # [] too: no readers, whatever [defaults] says
    if "settings" in table:
        options["settings"] = _check_settings(table, where, problems)
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


def _check_unique(services: list[Service], problems: Problems) -> None:
    seen: dict[str, dict[str, int]] = {"name": {}, "database": {}, "user": {}}
    for index, service in enumerate(services, start=1):
        values = [
            ("name", service.name),
            *(("database", database) for database in service.databases),
            ("user", service.user),
        ]
        for attribute, value in values:
            earlier = seen[attribute].get(value)
            if earlier is None:
                seen[attribute][value] = index
                continue
            if earlier == index:
                continue  # listed twice by this service: _databases says so
            if attribute != "name" and value == service.name and service.name in seen["name"]:
                continue  # the duplicate name is already reported, and this follows from it
            problems.add(
                f"[[service]] #{index} ({service.name!r})",
                f"{attribute} {value!r} is already used by [[service]] #{earlier}; "
                "each service needs its own",
            )


def fingerprint(services: tuple[Service, ...]) -> str:
    """A short digest of the services, with every setting, that two views of the same
    services share (the operator's file and the task's): the sidecar logs it with
    each pass, and deploy waits for the one it published. Passwords are left out."""
    entries = sorted(
        (_fingerprinted(service) for service in services), key=lambda e: str(e["name"])
    )
    canonical = json.dumps(entries, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:FINGERPRINT_LENGTH]


FINGERPRINT_LENGTH: Final = 12
# Options that came after fingerprints did: left out while unset, so that a file
# without them has the fingerprint an older sidecar logs for it.
_LATER_OPTIONS: Final = frozenset(
    {"more_databases", "creation", "readers", "settings", "member_of", "allow_privileged"}
)


def _fingerprinted(service: Service) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for item in dataclass_fields(service):
        value = getattr(service, item.name)
        if item.name == "password" or (item.name in _LATER_OPTIONS and value == item.default):
            continue
        if isinstance(value, CreationOptions):
            value = value.given()
        entry[item.name] = (
            [list(v) if isinstance(v, tuple) else v for v in value]
            if isinstance(value, tuple)
            else value
        )
    return entry


def parse_services(
    defaults_table: Mapping[str, Any],
    raw_services: list[Any],
    problems: Problems,
    service_label: str,
    *,
    inline_passwords: bool,
) -> list[Service]:
    """[defaults] and the [[service]] entries, each checked; unique names checked too."""
    defaults = check_options(
        check_keys(defaults_table, OPTION_KEYS, "[defaults]", problems), "[defaults]", problems
    )
    services: list[Service] = []
    for index, table in enumerate(raw_services, start=1):
        where = service_label.format(number=index, index=index - 1)
        if not isinstance(table, dict):
            problems.add(where, "must be a table")
            continue
        if isinstance(table.get("name"), str):
            where = f"{where} ({table['name']!r})"
        service = _parse_service(table, defaults, where, problems, inline_passwords)
        if service is not None:
            services.append(service)
    _check_unique(services, problems)
    _check_templates(services, problems)
    return services


def _check_templates(services: list[Service], problems: Problems) -> None:
    """A template that is a service's database would copy its tables and data, owned by
    that service's role, into another service's database."""
    owners = {database: service.name for service in services for database in service.databases}
    for index, service in enumerate(services, start=1):
        template = service.creation.template
        if template is not None and template in owners:
            problems.add(
                f"[[service]] #{index} ({service.name!r})",
                f"'template' {template!r} is the database of service {owners[template]!r}: "
                "its tables and data would be copied, still owned by that service's role; "
                'use "template0", "template1" or a template database of your own',
            )


def _parse_service(
    table: Mapping[str, Any],
    defaults: Mapping[str, Any],
    where: str,
    problems: Problems,
    inline_passwords: bool,
) -> Service | None:
    raw = dict(table)
    # Only config.json carries passwords inline; the TOML file keeps them in Vault.
    inline_password = raw.pop("password", None) if inline_passwords else None
    if inline_password is not None:
        problem = password_problem(inline_password)
        if problem is not None:
            problems.add(where, f"'password' {problem}")
            inline_password = None
    entry = check_keys(raw, SERVICE_KEYS, where, problems)
    if "name" not in entry:
        if "name" not in raw:
            problems.add(where, "'name' is required")
        return None
    own = check_options(entry, where, problems)
    options = {**defaults, **own}
    # The service's settings add to [defaults]' (and win over them), name by name.
    settings = {**defaults.get("settings", {}), **own.get("settings", {})}
    databases = _databases(entry, where, problems)
    member_of = (
        _check_role_list(entry, "member_of", where, problems) if "member_of" in entry else None
    )
    user = entry.get("user", entry["name"])
    readers = options.get("readers", ())
    if user in own.get("readers", ()):
        problems.add(where, f"'readers' lists {user!r}, the service's own role")
    # [defaults] readers = ["grafana"] when grafana is a service too: not its own reader.
    readers = tuple(reader for reader in readers if reader != user)
    if user in (member_of or ()):
        problems.add(where, f"'member_of' lists {user!r}, the service's own role")
    if entry.get("allow_privileged") and not member_of:
        problems.add(where, "'allow_privileged' is about 'member_of', which is not set")
    service = Service(
        name=entry["name"],
        database=databases[0],
        more_databases=databases[1:],
        user=user,
        isolate=options.get("isolate", True),
        extensions=options.get("extensions", ()),
        connection_limit=options.get("connection_limit"),
        allow_privileged_role=entry.get("allow_privileged_role", False),
        password=Secret(inline_password) if inline_password else None,
        creation=CreationOptions(**{key: options[key] for key in CREATION_KEYS if key in options}),
        readers=readers,
        settings=tuple(sorted(settings.items())),
        member_of=member_of or (),
        allow_privileged=entry.get("allow_privileged", False),
    )
    # A database or user defaulted from the name shares its problems: report them once.
    named = [("name", service.name)]
    if "database" in entry or "databases" in entry:
        named += [("database", database) for database in service.databases]
    if "user" in entry:
        named.append(("user", service.user))
    for attribute, value in named:
        problem = name_problem(value)
        if problem:
            problems.add(where, f"{attribute} {value!r} {problem}")
    return service


def _databases(entry: Mapping[str, Any], where: str, problems: Problems) -> tuple[str, ...]:
    """database = "x", or databases = ["x", "y"] (the first is the one apps are told of)."""
    if "databases" not in entry:
        return (entry.get("database", entry["name"]),)
    if "database" in entry:
        problems.add(where, "give either 'database' or 'databases', not both")
    names = entry["databases"]
    if not names or not all(isinstance(name, str) for name in names):
        problems.add(where, "'databases' must list one or more database names")
        return (entry["name"],)
    if len(set(names)) != len(names):
        problems.add(where, "'databases' lists a database twice")
    return tuple(names)


def check_admin_secret_unshared(
    services: list[Service],
    postgres: PostgresSettings,
    vault: VaultSettings,
    problems: Problems,
) -> None:
    """No service may read the admin's own secret as its password."""
    for where, problem in admin_secret_sharers(services, postgres.password_secret, vault):
        problems.add(where, problem)


def admin_secret_sharers(
    services: Sequence[Service], admin_secret: str, vault: VaultSettings
) -> list[tuple[str, str]]:
    """(where, why) for each service whose Vault secret is ``admin_secret``, the admin's
    password: its role would get that password."""
    if not admin_secret:
        return []
    return [
        (
            f"[[service]] #{index} ({service.name!r})",
            f"its Vault secret {vault.cli_path(service.name)} is the PostgreSQL superuser's "
            "password ([postgres] password_secret): its role would get that password; "
            "rename the service or change [vault] path",
        )
        for index, service in enumerate(services, start=1)
        if service.password is None and vault.secret_path(service.name) == admin_secret
    ]
