"""What ``observe`` found in the cluster: plain frozen data, no I/O.

The PostgreSQL module fills these from a few bulk catalog queries; the planner
reads them. Keeping them apart from both lets the planner be tested without a
server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# What GRANT ALL PRIVILEGES ON DATABASE gives.
DATABASE_PRIVILEGES = frozenset({"CREATE", "CONNECT", "TEMPORARY"})
# What GRANT ALL ON SCHEMA gives.
SCHEMA_PRIVILEGES = frozenset({"CREATE", "USAGE"})


@dataclass(frozen=True)
class AdminState:
    """The role nomad-pginit logs in as, and what it may do."""

    name: str
    superuser: bool
    createdb: bool
    createrole: bool
    # pg_authid is readable by superusers only: without it, passwords cannot be compared.
    can_read_verifiers: bool
    # The log_* settings we switch off around password statements are superuser-only
    # unless granted (GRANT SET ON PARAMETER, PostgreSQL 15+).
    silenceable_settings: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RoleState:
    """One existing role that a service names as its user."""

    name: str
    can_login: bool
    superuser: bool
    # The SCRAM verifier, or None when unset or when the admin cannot read pg_authid.
    verifier: str | None = field(repr=False)
    # Whether the admin is a member, which CREATE/ALTER DATABASE ... OWNER needs.
    admin_is_member: bool
    # Databases this role owns, whichever service they belong to.
    owned_databases: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatabaseState:
    """One existing database that a service names."""

    name: str
    owner: str


@dataclass(frozen=True)
class ClusterState:
    """Everything ``plan`` needs to know about the cluster, read in bulk."""

    admin: AdminState
    roles: Mapping[str, RoleState]
    databases: Mapping[str, DatabaseState]
    # (database, role) -> the database privileges that role holds there, for pairs that exist.
    database_privileges: Mapping[tuple[str, str], frozenset[str]]


@dataclass(frozen=True)
class SchemaState:
    """Schema ``public`` inside one service's database, seen from that database."""

    database: str
    exists: bool
    # The privileges the service's role holds on it.
    privileges: frozenset[str]
    # PostgreSQL 15's default: whoever owns the database owns public too.
    owned_by_database_owner: bool = False
