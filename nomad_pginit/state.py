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
# What every new database grants PUBLIC, and isolation takes back.
PUBLIC_DATABASE_PRIVILEGES = frozenset({"CONNECT", "TEMPORARY"})
# Marks what nomad-pginit created or took over, so leftovers can be recognised.
MANAGED_COMMENT = "managed by nomad-pginit"
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
    # Roles the owner's default privileges in public let read what it creates: the
    # readers nomad-pginit set up, the ones no longer listed included.
    default_readers: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ReaderState:
    """What one reader holds in one service's database: read-only access is all of it."""

    connect: bool = False
    usage: bool = False
    # SELECT on every table (and view) and every sequence in public.
    all_tables: bool = False
    all_sequences: bool = False
    # The owner's default privileges in public grant it SELECT on new tables and sequences.
    default_tables: bool = False
    default_sequences: bool = False

    @property
    def complete(self) -> bool:
        return all(
            (
                self.connect,
                self.usage,
                self.all_tables,
                self.all_sequences,
                self.default_tables,
                self.default_sequences,
            )
        )
