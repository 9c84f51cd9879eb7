"""The services of the services file: [defaults] and each [[service]].

A new per-service option goes here: its key and type in ``OPTION_KEYS`` (or
``SERVICE_KEYS`` when [defaults] may not set it), its check in
``check_options``, and its field on ``model.Service``.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping
from dataclasses import fields as dataclass_fields
from typing import Any, Final

from nomad_pginit.secret import Secret
from nomad_pginit.spec.checks import Problems, check_keys, name_problem, password_problem
from nomad_pginit.spec.model import (
    MAX_CONNECTION_LIMIT,
    MAX_NAME_BYTES,
    PostgresSettings,
    Service,
    VaultSettings,
)

OPTION_KEYS: Final = {"isolate": bool, "extensions": list, "connection_limit": int}
SERVICE_KEYS: Final = {
    "name": str,
    "database": str,
    "user": str,
    # Per service only, never from [defaults]: it must be said of each role.
    "allow_privileged_role": bool,
    **OPTION_KEYS,
}
# The JSON format of the standalone provisioner (config.json).


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
    return services


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
    options = {**defaults, **check_options(entry, where, problems)}
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
    return service


def check_admin_secret_unshared(
    services: list[Service],
    postgres: PostgresSettings,
    vault: VaultSettings,
    problems: Problems,
) -> None:
    """No service may read the admin's own secret as its password."""
    if not postgres.password_secret:
        return
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
