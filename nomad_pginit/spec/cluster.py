"""The cluster's tables of the services file: [postgres], [vault] and [job]."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from nomad_pginit.spec.checks import Problems, check_keys, segments_problem
from nomad_pginit.spec.model import (
    DEFAULT_JWT_PATH,
    MODES,
    POSTGRES_PLACES,
    PRIMARY_PROVIDERS,
    JobSettings,
    PostgresSettings,
    VaultSettings,
)

_JOB_KEYS: Final = {
    "mode": str,
    "interval": int,
    "variable": str,
    "postgres": str,
    "primary_service": str,
    "primary_provider": str,
}
# consul-template's "[tag.]name" service query (dependency/catalog_service.go and
# nomad_service.go in hashicorp/consul-template: tagRe, serviceNameRe), without a
# datacenter or region: the job runs where the cluster is.
_SERVICE_QUERY: Final = re.compile(r"([\w=:.-]+\.)?[\w-]+", re.ASCII)
_POSTGRES_KEYS: Final = {"dsn": str, "password_file": str, "password_secret": str}
_VAULT_KEYS: Final = {
    "mount": str,
    "path": str,
    "key": str,
    "jwt_role": str,
    "jwt_path": str,
    "jwt_file": str,
}


def _check_vault_path(path: str, where: str, problems: Problems) -> None:
    # A leading "/" has its own message below.
    if not path.startswith("/") and (problem := segments_problem(path)) is not None:
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


def _check_admin_secret(postgres: PostgresSettings, problems: Problems) -> None:
    secret = postgres.password_secret
    if postgres.password_file is not None:
        problems.add(
            "[postgres]",
            "set either 'password_file' or 'password_secret' (the admin's password in Vault), "
            "not both",
        )
    if secret == "":
        problems.add("[postgres]", "'password_secret' must not be empty")
    elif (problem := segments_problem(secret)) is not None:
        problems.add("[postgres]", f"'password_secret' {problem}")
    elif secret.startswith("data/") or "{" in secret:
        problems.add(
            "[postgres]",
            "'password_secret' is a path in the [vault] mount, without '/data/' and without "
            'placeholders: for example "postgres/admin"',
        )


def parse_postgres(table: Mapping[str, Any], problems: Problems) -> PostgresSettings:
    """The [postgres] table: how the admin reaches PostgreSQL."""
    pg_table = check_keys(table, _POSTGRES_KEYS, "[postgres]", problems)
    password_file = pg_table.get("password_file")
    postgres = PostgresSettings(
        dsn=pg_table.get("dsn", ""),
        # $NOMAD_SECRETS_DIR and friends, so one file works in every task driver.
        password_file=Path(os.path.expandvars(password_file)) if password_file else None,
        password_secret=pg_table.get("password_secret", ""),
    )
    if "password_secret" in pg_table:
        _check_admin_secret(postgres, problems)
    return postgres


def parse_vault(table: Mapping[str, Any], problems: Problems) -> VaultSettings:
    """The [vault] table: where the passwords are, and how to log in."""
    vault = VaultSettings(**check_keys(table, _VAULT_KEYS, "[vault]", problems))
    _check_vault_path(vault.path, "[vault]", problems)
    for key in ("mount", "key", "jwt_path"):
        if getattr(vault, key) == "":
            problems.add("[vault]", f"'{key}' must not be empty")
    for key in ("mount", "jwt_path"):
        value = getattr(vault, key)
        if value and (problem := segments_problem(value)) is not None:
            problems.add("[vault]", f"'{key}' {problem}")
    if vault.jwt_path.startswith(("/", "auth/")) or vault.jwt_path.endswith("/"):
        problems.add(
            "[vault]",
            f"'jwt_path' is the auth method's mount, as in auth/<jwt_path>/login: "
            f'for example "{DEFAULT_JWT_PATH}", not {vault.jwt_path!r}',
        )
    return vault


def parse_job(table: Mapping[str, Any], problems: Problems) -> JobSettings:
    """The [job] table: how ``render`` shapes the init task."""
    raw_job = dict(table)
    if "watch" in raw_job:
        raw_job.pop("watch")
        problems.add(
            "[job]",
            "'watch' is gone: write mode = \"live\" for a sidecar that applies every change "
            "(new services from a Nomad variable, rotated passwords) without restarting "
            'PostgreSQL, or mode = "oneshot" (the default) for a task that provisions and '
            "exits",
        )
    job = JobSettings(**check_keys(raw_job, _JOB_KEYS, "[job]", problems))
    if job.interval < 1:
        problems.add("[job]", "'interval' must be 1 second or more")
    if job.mode not in MODES:
        problems.add("[job]", f'\'mode\' must be "oneshot" or "live", not {job.mode!r}')
    if job.postgres not in POSTGRES_PLACES:
        problems.add(
            "[job]",
            f"'postgres' must be \"job\" (the job runs PostgreSQL, the default) or "
            f'"external" (a cluster outside the job: Patroni, a managed service), not '
            f"{job.postgres!r}",
        )
    if job.primary_service and not job.external:
        problems.add(
            "[job]",
            "'primary_service' finds an external cluster's primary: it needs "
            'postgres = "external"',
        )
    if job.primary_service and not _SERVICE_QUERY.fullmatch(job.primary_service):
        problems.add(
            "[job]",
            "'primary_service' is a service name, or tag.name for one tag of it (Patroni "
            f'registers its primary as "master.<scope>"), not {job.primary_service!r}',
        )
    if job.primary_provider not in PRIMARY_PROVIDERS:
        problems.add(
            "[job]",
            f'\'primary_provider\' must be "consul" or "nomad" (where the primary_service '
            f"is registered), not {job.primary_provider!r}",
        )
    if job.variable not in job.readable_variables:
        readable = ", ".join(repr(path) for path in job.readable_variables)
        problems.add(
            "[job]",
            f"'variable' must be one of the paths the job's tasks may read without an ACL "
            f"policy ({readable}), not {job.variable!r}: a template that may not read its "
            "variable fails the init task for good, and Nomad then stops PostgreSQL",
        )
    return job
