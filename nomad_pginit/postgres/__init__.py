"""PostgreSQL, the only place that imports psycopg: one module per concern, as pglift
keeps one per object kind and Patroni splits its PostgreSQL adapter.

- ``connection``: targets, logging in, the session's options and deadlines
- ``readiness``: waiting for a writable primary
- ``running``: statements in flight, cancelled on a stop, frozen ones noticed
- ``failures``: psycopg's errors as ours
- ``logsettings``: what is switched off while a password statement runs
- ``catalog``: reading roles, databases, settings, groups and the admin's rights
- ``session``: the admin's connections (the coordinator, and a worker per thread)
- ``in_database``: the admin connected to one service's database (observing, running)
- ``roles``, ``databases``, ``schema``: the SQL of each action, by object kind (pure)
- ``logins``: logging in as a service
- ``replicas``: standbys, for check --replicas (are they, have they replayed)
"""

from nomad_pginit.postgres.catalog import PRIVILEGED_ROLES
from nomad_pginit.postgres.connection import (
    ADVISORY_LOCK_KEY,
    APPLICATION_NAME,
    CONNECT_TIMEOUT_SECONDS,
    ENV_STATEMENT_TIMEOUT,
    LOCK_TIMEOUT_SECONDS,
    PROBE_DEADLINE_SECONDS,
    STATEMENT_TIMEOUT_SECONDS,
    TEMPLATE_DATABASE,
    Target,
    check_address,
    dsn_password,
    hostless,
    target,
)
from nomad_pginit.postgres.in_database import DatabaseSession
from nomad_pginit.postgres.logins import LoginCheck, password_works, try_service_login
from nomad_pginit.postgres.readiness import (
    NEWEST_TESTED_MAJOR,
    OLDEST_MAJOR,
    Readiness,
    primary_identity,
    wait_until_ready,
)
from nomad_pginit.postgres.replicas import in_recovery, wait_for_replay, wal_position
from nomad_pginit.postgres.running import cancel_running, on_frozen
from nomad_pginit.postgres.session import AdminSession, Coordinator, Worker, WorkerPool

__all__ = [
    "ADVISORY_LOCK_KEY",
    "APPLICATION_NAME",
    "CONNECT_TIMEOUT_SECONDS",
    "ENV_STATEMENT_TIMEOUT",
    "LOCK_TIMEOUT_SECONDS",
    "NEWEST_TESTED_MAJOR",
    "OLDEST_MAJOR",
    "PRIVILEGED_ROLES",
    "PROBE_DEADLINE_SECONDS",
    "STATEMENT_TIMEOUT_SECONDS",
    "TEMPLATE_DATABASE",
    "AdminSession",
    "Coordinator",
    "DatabaseSession",
    "LoginCheck",
    "Readiness",
    "Target",
    "Worker",
    "WorkerPool",
    "cancel_running",
    "check_address",
    "dsn_password",
    "hostless",
    "in_recovery",
    "on_frozen",
    "password_works",
    "primary_identity",
    "target",
    "try_service_login",
    "wait_for_replay",
    "wait_until_ready",
    "wal_position",
]
