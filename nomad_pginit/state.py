"""What ``observe`` found in the cluster: plain frozen data, no I/O.

The PostgreSQL module fills these from a few bulk catalog queries; the planner
reads them. Keeping them apart from both lets the planner be tested without a
server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# What GRANT ALL PRIVILEGES ON DATABASE gives.
DATABASE_PRIVILEGES = frozenset({"CREATE", "CONNECT", "TEMPORARY"})
# What every new database grants PUBLIC, and isolation takes back.
PUBLIC_DATABASE_PRIVILEGES = frozenset({"CONNECT", "TEMPORARY"})
# Marks what nomad-pginit created or took over, so leftovers can be recognised.
MANAGED_COMMENT = "managed by nomad-pginit"
# What it granted and must be able to take back, recorded after the mark as JSON:
# "managed by nomad-pginit; {"readers": ["grafana"]}" on a database, member_of on a role.
_RECORD_SEPARATOR = "; "
READERS_KEY = "readers"
MEMBER_OF_KEY = "member_of"


def managed_comment(record: Mapping[str, Iterable[str]] | None = None) -> str:
    """The comment that marks an object as ours, with what we granted (sorted, stable)."""
    kept = {key: sorted(set(values)) for key, values in (record or {}).items() if values}
    if not kept:
        return MANAGED_COMMENT
    return MANAGED_COMMENT + _RECORD_SEPARATOR + json.dumps(kept, sort_keys=True)


def read_managed_comment(comment: object) -> tuple[bool, dict[str, frozenset[str]]]:
    """Whether a comment marks the object as ours, and the record it carries. A record
    that is not ours to read (edited by hand) counts as none: nothing is taken back."""
    if not isinstance(comment, str):
        return False, {}
    if comment == MANAGED_COMMENT:
        return True, {}
    if not comment.startswith(MANAGED_COMMENT + _RECORD_SEPARATOR):
        return False, {}
    try:
        record = json.loads(comment[len(MANAGED_COMMENT + _RECORD_SEPARATOR) :])
    except ValueError:
        return True, {}
    if not isinstance(record, dict):
        return True, {}
    return True, {
        str(key): frozenset(str(item) for item in values)
        for key, values in record.items()
        if isinstance(values, list)
    }


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
    # Whether the admin is a member, which CREATE/ALTER DATABASE ... OWNER needs (from
    # PostgreSQL 16 on, with the SET and INHERIT options).
    admin_is_member: bool
    # Databases this role owns, whichever service they belong to.
    owned_databases: tuple[str, ...] = ()
    connection_limit: int = -1
    # Carries MANAGED_COMMENT.
    managed: bool = False
    # The groups nomad-pginit made it a member of (member_of), from its comment.
    recorded_member_of: frozenset[str] = frozenset()
    # Its VALID UNTIL, when one is set (not 'infinity'): its password stops working then.
    valid_until: str | None = None
    # Whether that moment has passed: the role cannot log in with any password.
    expired: bool = False
    # What makes it more than a service's login: CREATEDB, CREATEROLE, REPLICATION,
    # BYPASSRLS, or membership (direct or not) in a superuser, in a role with those
    # attributes, or in a predefined role that reads or writes beyond its database.
    elevated: tuple[str, ...] = ()
    # Databases in which it owns objects (tables, schemas, ...), whichever they are.
    owns_objects_in: tuple[str, ...] = ()
    # Whether the admin may alter, comment on and grant it: from PostgreSQL 16 on, a
    # CREATEROLE admin needs ADMIN OPTION on it (it has it on the roles it created).
    admin_may_alter: bool = True


@dataclass(frozen=True)
class DatabaseState:
    """One existing database that a service names."""

    name: str
    owner: str
    # What PUBLIC (every role) holds on it: CONNECT and TEMPORARY unless revoked.
    public_privileges: frozenset[str] = PUBLIC_DATABASE_PRIVILEGES
    # Carries MANAGED_COMMENT.
    managed: bool = False
    # The readers nomad-pginit gave read access to it, from its comment.
    recorded_readers: frozenset[str] = frozenset()
    # How it was created, which cannot change: pg_encoding_to_char(encoding), datcollate,
    # datctype, the locale provider (libc, icu, builtin) and its ICU or builtin locale.
    encoding: str = ""
    lc_collate: str = ""
    lc_ctype: str = ""
    locale_provider: str = "libc"
    provider_locale: str | None = None


@dataclass(frozen=True)
class GroupState:
    """A role that a service asks its role to be a member of (member_of)."""

    name: str
    # Why membership in it reaches beyond the service's databases ("" when it does not):
    # it is, or inherits from, a superuser, a role with CREATEROLE and the like, a
    # superuser-equivalent predefined role, or another service's role.
    privileged: str = ""


@dataclass(frozen=True)
class ClusterState:
    """Everything ``plan`` needs to know about the cluster, read in bulk."""

    admin: AdminState
    roles: Mapping[str, RoleState]
    databases: Mapping[str, DatabaseState]
    # (database, role) -> the database privileges that role holds there, for pairs that exist.
    database_privileges: Mapping[tuple[str, str], frozenset[str]]
    # Extensions this server can install (pg_available_extensions).
    available_extensions: frozenset[str] = frozenset()
    # Every role carrying MANAGED_COMMENT -> whether it can log in, services or not.
    managed_roles: Mapping[str, bool] = field(default_factory=dict)
    # Roles carrying it that must never be disabled, and why: a superuser, the admin
    # itself, a role the admin is a member of (the comment alone proves nothing).
    protected_roles: Mapping[str, str] = field(default_factory=dict)
    # Every database carrying MANAGED_COMMENT.
    managed_databases: frozenset[str] = frozenset()
    # Every role carrying MANAGED_COMMENT -> how many sessions it has open.
    leftover_sessions: Mapping[str, int] = field(default_factory=dict)
    # server_version_num: which CREATE DATABASE options the server has.
    server_version: int = 0
    # (database, role) -> its ALTER ROLE ... IN DATABASE settings, lower-cased name -> value.
    role_settings: Mapping[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)
    # The context (pg_settings.context) of each parameter the services set, by lower-cased
    # name; a parameter the server does not know is missing.
    setting_contexts: Mapping[str, str] = field(default_factory=dict)
    # The roles named by member_of that exist.
    groups: Mapping[str, GroupState] = field(default_factory=dict)
    # (role, group) for each service's role that already is a direct member of a group.
    memberships: frozenset[tuple[str, str]] = frozenset()
    # The roles named by readers that exist.
    existing_readers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SchemaState:
    """Inside one service's database, seen from it: schema ``public`` and the extensions."""

    database: str
    exists: bool
    # The privileges the service's role holds on it by itself (PUBLIC's not counted).
    privileges: frozenset[str]
    # What the role may do there, PUBLIC's privileges included.
    privileges_with_public: frozenset[str] = frozenset()
    # Whether the admin may grant on it (see plan_schema).
    admin_may_grant: bool = True
    # PostgreSQL 15's default: whoever owns the database owns public too.
    owned_by_database_owner: bool = False
    # PostgreSQL 14's default: every role may create in public (readers would write).
    public_may_create: bool = False
    extensions: frozenset[str] = frozenset()
    # What each reader the service names (that exists) may do here.
    readers: Mapping[str, ReaderState] = field(default_factory=dict)
    # The readers nomad-pginit gave access here (the database's comment): the ones no
    # longer listed lose it.
    recorded_readers: frozenset[str] = frozenset()
    # The tables (views, ...) and sequences in public that the service's role owns: what
    # a reader may read, and what it loses.
    owned_tables: tuple[str, ...] = ()
    owned_sequences: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReaderState:
    """What one reader holds in one service's database: read-only access is all of it."""

    connect: bool = False
    usage: bool = False
    # The service's tables (views, ...) and sequences in public it may not SELECT.
    unreadable_tables: tuple[str, ...] = ()
    unreadable_sequences: tuple[str, ...] = ()
    # The owner's default privileges in public grant it SELECT on new tables and sequences.
    default_tables: bool = False
    default_sequences: bool = False

    @property
    def complete(self) -> bool:
        return (
            self.connect
            and self.usage
            and not self.unreadable_tables
            and not self.unreadable_sequences
            and self.default_tables
            and self.default_sequences
        )
