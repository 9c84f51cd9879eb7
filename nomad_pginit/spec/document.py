"""The services file as a whole: the TOML document, or the standalone provisioner's JSON."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from nomad_pginit.errors import ConfigError
from nomad_pginit.spec import cluster, services
from nomad_pginit.spec.checks import Problems, check_keys
from nomad_pginit.spec.model import Spec

_TOP_KEYS: Final = {
    "postgres": dict,
    "vault": dict,
    "defaults": dict,
    "job": dict,
    "service": list,
}
# The JSON format of the standalone provisioner (config.json).
_JSON_TOP_KEYS: Final = {
    "root_connection_string": str,
    "databases": list,
    "vault": dict,
    "defaults": dict,
}
_JSON_DATABASE_KEYS: Final = {**services.SERVICE_KEYS, "password": str}


def parse(document: Mapping[str, Any], source: Path) -> Spec:
    """Validate a parsed TOML services document; raise ConfigError listing every problem."""
    return _parse(document, source, Problems())


def parse_json(document: Any, source: Path) -> Spec:
    """Validate the standalone provisioner's config.json, mapped onto the TOML shape.

    ``root_connection_string`` is [postgres] dsn; each entry of ``databases`` is a
    service named after its database unless it has a name. A password given
    inline is used as it is; one left out is read from Vault as usual.
    """
    problems = Problems()
    if not isinstance(document, dict):
        problems.add(str(source), "must be a JSON object with root_connection_string and databases")
        return _parse({}, source, problems)
    top = check_keys(document, _JSON_TOP_KEYS, str(source), problems)
    entries: list[dict[str, Any]] = []
    for index, raw in enumerate(top.get("databases", [])):
        where = f"databases[{index}]"
        if not isinstance(raw, dict):
            problems.add(where, "must be an object with database, user and password")
            continue
        entry = check_keys(raw, _JSON_DATABASE_KEYS, where, problems)
        name = entry.get("name", entry.get("database"))
        if name is None:
            problems.add(where, "needs 'database' (or 'name')")
            continue
        entries.append({**entry, "name": name})
    translated = {
        "postgres": {"dsn": top.get("root_connection_string", "")},
        "vault": top.get("vault", {}),
        "defaults": top.get("defaults", {}),
        "service": entries,
    }
    return _parse(
        translated, source, problems, service_label="databases[{index}]", inline_passwords=True
    )


def _parse(
    document: Mapping[str, Any],
    source: Path,
    problems: Problems,
    service_label: str = "[[service]] #{number}",
    *,
    inline_passwords: bool = False,
) -> Spec:
    top = check_keys(document, _TOP_KEYS, str(source), problems)
    postgres = cluster.parse_postgres(top.get("postgres", {}), problems)
    vault = cluster.parse_vault(top.get("vault", {}), problems)
    job = cluster.parse_job(top.get("job", {}), problems)
    raw_services = top.get("service", [])
    if not raw_services:
        problems.add(
            str(source), 'no [[service]] entries: add one per service, e.g. name = "gitea"'
        )
    parsed = services.parse_services(
        top.get("defaults", {}),
        raw_services,
        problems,
        service_label,
        inline_passwords=inline_passwords,
    )
    services.check_admin_secret_unshared(parsed, postgres, vault, problems)
    if problems.items:
        count = len(problems.items)
        raise ConfigError(
            f"{source}: {count} problem{'s' if count > 1 else ''} in the services file "
            "(nothing was read from Vault or written to PostgreSQL)",
            problems.items,
        )
    return Spec(source=source, postgres=postgres, vault=vault, services=tuple(parsed), job=job)
