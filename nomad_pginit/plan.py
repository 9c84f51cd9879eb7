"""Decide what to change: pure functions from (spec, secrets, observed state) to actions.

No I/O here. ``nomad-pginit plan`` prints these actions; ``nomad-pginit run``
hands the same actions to the PostgreSQL module, so the two cannot disagree.
An action knows how to describe itself; only the PostgreSQL module turns it
into SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nomad_pginit.scram import verifier_matches
from nomad_pginit.secret import Secret
from nomad_pginit.spec import Service
from nomad_pginit.state import (
    DATABASE_PRIVILEGES,
    PUBLIC_DATABASE_PRIVILEGES,
    SCHEMA_PRIVILEGES,
    ClusterState,
    SchemaState,
)


@dataclass(frozen=True)
class Action:
    """One change to the cluster, on behalf of one service."""

    service: str

    @property
    def verb(self) -> str:
        """created, updated or granted: what the log line says happened."""
        return "updated"

    def describe(self) -> str:
        """What the action will do, for plans: "create role ..."."""
        raise NotImplementedError

    def done(self) -> str:
        """What the action did, for the log: "role ... created"."""
        raise NotImplementedError


@dataclass(frozen=True)
class CreateRole(Action):
    """The role is created with LOGIN and marked as managed."""

    role: str
    password: Secret = field(repr=False)

    @property
    def verb(self) -> str:
        return "created"

    def describe(self) -> str:
        return f'create role "{self.role}" with LOGIN and its password from Vault'

    def done(self) -> str:
        return f'role "{self.role}" created'


@dataclass(frozen=True)
class SetPassword(Action):
    role: str
    password: Secret = field(repr=False)
    reason: str

    def describe(self) -> str:
        return f'set the password of role "{self.role}" ({self.reason})'

    def done(self) -> str:
        return f'password of role "{self.role}" updated ({self.reason})'


@dataclass(frozen=True)
class RestoreLogin(Action):
    role: str

    def describe(self) -> str:
        return f'restore LOGIN on role "{self.role}"'

    def done(self) -> str:
        return f'LOGIN restored on role "{self.role}"'


@dataclass(frozen=True)
class ClearValidUntil(Action):
    """A VALID UNTIL makes the role's password stop working then, or already."""

    role: str
    valid_until: str
    expired: bool

    def describe(self) -> str:
        when = "expired" if self.expired else "expires"
        return (
            f'remove the VALID UNTIL of role "{self.role}" (its password {when} at '
            f"{self.valid_until}): VALID UNTIL 'infinity'"
        )

    def done(self) -> str:
        return f'VALID UNTIL of role "{self.role}" removed (was {self.valid_until})'


@dataclass(frozen=True)
class GrantRoleToAdmin(Action):
    """A non-superuser admin must be a member of a role to give it a database."""

    role: str
    admin: str

    @property
    def verb(self) -> str:
        return "granted"

    def describe(self) -> str:
        return f'grant role "{self.role}" to the admin "{self.admin}" (to hand it a database)'

    def done(self) -> str:
        return f'role "{self.role}" granted to the admin "{self.admin}"'


@dataclass(frozen=True)
class CreateDatabase(Action):
    """The database is created owned by the role and marked as managed."""

    database: str
    owner: str

    @property
    def verb(self) -> str:
        return "created"

    def describe(self) -> str:
        return f'create database "{self.database}" owned by "{self.owner}"'

    def done(self) -> str:
        return f'database "{self.database}" created, owned by "{self.owner}"'


@dataclass(frozen=True)
class ChangeDatabaseOwner(Action):
    database: str
    owner: str
    previous_owner: str

    def describe(self) -> str:
        return (
            f'change the owner of database "{self.database}" '
            f'from "{self.previous_owner}" to "{self.owner}"'
        )

    def done(self) -> str:
        return (
            f'owner of database "{self.database}" updated '
            f'from "{self.previous_owner}" to "{self.owner}"'
        )


@dataclass(frozen=True)
class GrantDatabase(Action):
    database: str
    role: str

    @property
    def verb(self) -> str:
        return "granted"

    def describe(self) -> str:
        return f'grant ALL PRIVILEGES on database "{self.database}" to "{self.role}"'

    def done(self) -> str:
        return f'ALL PRIVILEGES on database "{self.database}" granted to "{self.role}"'


@dataclass(frozen=True)
class GrantSchema(Action):
    """Run connected to ``database``: since PostgreSQL 15, PUBLIC has no CREATE on public."""

    database: str
    role: str

    @property
    def verb(self) -> str:
        return "granted"

    def describe(self) -> str:
        return f'grant ALL on schema public in database "{self.database}" to "{self.role}"'

    def done(self) -> str:
        return f'ALL on schema public in database "{self.database}" granted to "{self.role}"'


@dataclass(frozen=True)
class SetConnectionLimit(Action):
    role: str
    limit: int

    def describe(self) -> str:
        return f'set CONNECTION LIMIT {self.limit} on role "{self.role}"'

    def done(self) -> str:
        return f'CONNECTION LIMIT of role "{self.role}" updated to {self.limit}'


@dataclass(frozen=True)
class MarkRole(Action):
    """Comment the role as managed, so that it is recognised once its service is gone."""

    role: str

    def describe(self) -> str:
        return f'mark role "{self.role}" as managed by nomad-pginit (COMMENT ON ROLE)'

    def done(self) -> str:
        return f'role "{self.role}" marked as managed by nomad-pginit'


@dataclass(frozen=True)
class MarkDatabase(Action):
    database: str

    def describe(self) -> str:
        return f'mark database "{self.database}" as managed by nomad-pginit (COMMENT ON DATABASE)'

    def done(self) -> str:
        return f'database "{self.database}" marked as managed by nomad-pginit'


@dataclass(frozen=True)
class IsolateDatabase(Action):
    """Only the owning role may connect: every new database lets PUBLIC connect."""

    database: str
    role: str

    def describe(self) -> str:
        return (
            f'revoke CONNECT and TEMPORARY on database "{self.database}" from PUBLIC, '
            f'grant CONNECT to "{self.role}"'
        )

    def done(self) -> str:
        return f'database "{self.database}" isolated: only "{self.role}" may connect'


@dataclass(frozen=True)
class CreateExtension(Action):
    """Run connected to ``database``."""

    database: str
    extension: str

    @property
    def verb(self) -> str:
        return "created"

    def describe(self) -> str:
        return f'create extension "{self.extension}" in database "{self.database}"'

    def done(self) -> str:
        return f'extension "{self.extension}" created in database "{self.database}"'


@dataclass(frozen=True)
class DisableRole(Action):
    """A leftover: a role we created whose service left the services file."""

    role: str

    def describe(self) -> str:
        return f'set leftover role "{self.role}" NOLOGIN (its service is no longer listed)'

    def done(self) -> str:
        return f'leftover role "{self.role}" set NOLOGIN'


class Refusal(Exception):
    """A service that nomad-pginit must not touch; the message says why and what to do."""


def plan_cluster(
    service: Service,
    password: Secret,
    cluster: ClusterState,
    *,
    password_verified: bool | None = None,
    service_databases: frozenset[str] = frozenset(),
) -> list[Action]:
    """The role- and database-level actions one service needs, in the order to run them.

    ``password_verified`` says whether the role's password already equals
    Vault's, when observe found out (from the stored verifier, or by logging in
    as the role); None lets the planner compare the verifier itself, where it
    can. ``service_databases`` are every service's databases in this run: a role
    that owns one of them is not foreign because of it, as the run hands it to
    its own service. Raises Refusal when the service must not be touched.
    """
    missing = [name for name in service.extensions if name not in cluster.available_extensions]
    if missing:
        listed = ", ".join(f'"{name}"' for name in missing)
        raise Refusal(
            f"extension {listed} is not available on this server (pg_available_extensions): "
            "install the package that provides it on the PostgreSQL host, or remove it from "
            "the service's extensions"
        )
    actions: list[Action] = []
    actions += _plan_role(service, password, cluster, password_verified, service_databases)
    actions += _plan_database(service, cluster)
    return actions


def _plan_role(
    service: Service,
    password: Secret,
    cluster: ClusterState,
    password_verified: bool | None,
    service_databases: frozenset[str],
) -> list[Action]:
    actions: list[Action] = []
    admin = cluster.admin
    role = cluster.roles.get(service.user)
    if role is None:
        actions.append(CreateRole(service.name, service.user, password))
        if service.connection_limit not in (None, -1):
            actions.append(SetConnectionLimit(service.name, service.user, service.connection_limit))
        return actions
    _refuse_foreign_role(service, cluster, service_databases)
    if not role.can_login:
        actions.append(RestoreLogin(service.name, service.user))
    if role.valid_until is not None:
        actions.append(ClearValidUntil(service.name, service.user, role.valid_until, role.expired))
    matches = password_verified
    if matches is None and admin.can_read_verifiers:
        matches = verifier_matches(role.verifier, password.reveal())
    if matches is False:
        actions.append(SetPassword(service.name, service.user, password, "differs from Vault"))
    elif matches is None:
        reason = (
            f'not compared: the admin "{admin.name}" cannot read pg_authid and could not '
            "log in as the role to check it, so it is set again"
        )
        actions.append(SetPassword(service.name, service.user, password, reason))
    limit = service.connection_limit
    if limit is not None and limit != role.connection_limit:
        actions.append(SetConnectionLimit(service.name, service.user, limit))
    if not role.managed:
        actions.append(MarkRole(service.name, service.user))
    needs_membership = not admin.superuser and not role.admin_is_member
    if (actions or needs_membership) and not admin.superuser and not role.admin_may_alter:
        # PostgreSQL 16+: CREATEROLE is no longer enough for a role someone else made.
        raise Refusal(
            f'the admin "{admin.name}" may not alter role "{service.user}": from PostgreSQL '
            "16 on, a CREATEROLE admin needs ADMIN OPTION on a role it did not create; "
            f"as a superuser, GRANT {sql_name(service.user)} TO {sql_name(admin.name)} "
            "WITH ADMIN OPTION, then run again"
        )
    return actions


def _plan_database(service: Service, cluster: ClusterState) -> list[Action]:
    actions: list[Action] = []
    admin = cluster.admin
    role = cluster.roles.get(service.user)
    database = cluster.databases.get(service.database)

    needs_membership = not admin.superuser and (role is None or not role.admin_is_member)
    if needs_membership:
        # A non-superuser admin must be a member of the role to hand it a database,
        # and to act on that database afterwards as its owner.
        actions.append(GrantRoleToAdmin(service.name, service.user, admin.name))

    if database is None:
        # A new database's owner holds every privilege on it: nothing to grant.
        actions.append(CreateDatabase(service.name, service.database, service.user))
        if service.isolate:
            actions.append(IsolateDatabase(service.name, service.database, service.user))
        return actions

    if database.owner != service.user:
        actions.append(
            ChangeDatabaseOwner(service.name, service.database, service.user, database.owner)
        )
        # What the new owner holds depends on the old ACL: grant rather than guess.
        actions.append(GrantDatabase(service.name, service.database, service.user))
    else:
        held = cluster.database_privileges.get((service.database, service.user), frozenset())
        if not held >= DATABASE_PRIVILEGES:
            actions.append(GrantDatabase(service.name, service.database, service.user))
    if not database.managed:
        actions.append(MarkDatabase(service.name, service.database))
    if service.isolate and database.public_privileges & PUBLIC_DATABASE_PRIVILEGES:
        actions.append(IsolateDatabase(service.name, service.database, service.user))
    return actions


def plan_leftovers(
    services: Sequence[Service], cluster: ClusterState, *, disable: bool
) -> tuple[list[str], list[Action]]:
    """Roles and databases we manage whose service left the file: never dropped.

    Returns what to report, and (with ``disable``) the roles to set NOLOGIN.
    """
    users = {service.user for service in services}
    databases = {service.database for service in services}
    notes: list[str] = []
    actions: list[Action] = []
    for role, can_login in sorted(cluster.managed_roles.items()):
        if role in users:
            continue
        note = f'leftover role "{role}": no longer in the services file, kept'
        protected = cluster.protected_roles.get(role)
        if not can_login:
            note += " (NOLOGIN)"
        elif protected is not None:
            # It carries our comment, but so could anything: never lock out the admin.
            note += f"; never set NOLOGIN by nomad-pginit: {protected}"
        elif disable:
            actions.append(DisableRole(role, role))
        else:
            note += "; it can still log in: run --disable-removed to set it NOLOGIN"
        notes.append(note)
    notes.extend(
        f'leftover database "{name}": no longer in the services file, kept'
        for name in sorted(cluster.managed_databases - databases)
    )
    return notes, actions


def _refuse_foreign_role(
    service: Service, cluster: ClusterState, service_databases: frozenset[str]
) -> None:
    role = cluster.roles[service.user]
    if role.superuser:
        raise Refusal(
            f'role "{service.user}" already exists and is a superuser; nomad-pginit will not '
            "manage it or change its password: give the service another user "
            f'(user = "..." under its [[service]]), or remove SUPERUSER from the role by hand'
        )
    if role.elevated and not service.allow_privileged_role:
        raise Refusal(
            f'role "{service.user}" already exists and {", ".join(role.elevated)}: a '
            "service's password and database would hand those powers to whoever has the "
            "password, so nomad-pginit leaves the role untouched: give the service another "
            "user, take them away by hand, or set allow_privileged_role = true under its "
            "[[service]] if that is intended"
        )
    # A database of another service in this run is handed to that service's own role.
    others = [
        name
        for name in role.owned_databases
        if name != service.database and name not in service_databases
    ]
    if others:
        listed = ", ".join(f'"{name}"' for name in sorted(others))
        raise Refusal(
            f'role "{service.user}" already exists and owns other databases ({listed}); '
            "nomad-pginit will not take it over: give the service another user, or change "
            "the owner of those databases by hand"
        )
    elsewhere = [name for name in role.owns_objects_in if name != service.database]
    if elsewhere:
        listed = ", ".join(f'"{name}"' for name in sorted(elsewhere))
        raise Refusal(
            f'role "{service.user}" already exists and owns objects in other databases '
            f"({listed}): whoever has the service's password would own them; nomad-pginit "
            "will not take it over: give the service another user, or hand those objects to "
            f'their owner by hand (REASSIGN OWNED BY "{service.user}" TO ..., in each)'
        )


def sql_name(name: str) -> str:
    """``name`` as an SQL identifier in a message the operator may paste into psql."""
    return '"' + name.replace('"', '""') + '"'


def plan_schema(service: Service, schema: SchemaState, *, owner_changes: bool) -> list[Action]:
    """The actions needed inside the service's own database.

    ``owner_changes`` says that the cluster-level plan hands the database to the
    service's role, which then holds public through pg_database_owner: a dry run
    must predict that, as ``run`` observes it after the change.
    """
    if not schema.exists:
        raise Refusal(
            f'database "{service.database}" has no schema public: create it there '
            f"(CREATE SCHEMA public AUTHORIZATION pg_database_owner), then run again"
        )
    actions: list[Action] = [
        CreateExtension(service.name, service.database, name)
        for name in service.extensions
        if name not in schema.extensions
    ]
    held = schema.privileges >= SCHEMA_PRIVILEGES
    if held or (owner_changes and schema.owned_by_database_owner):
        return actions
    if schema.admin_may_grant:
        actions.append(GrantSchema(service.name, service.database, service.user))
    elif schema.privileges_with_public < SCHEMA_PRIVILEGES:
        raise Refusal(
            f'the admin may not grant on schema public in database "{service.database}" '
            f'(only its owner, or a superuser), and "{service.user}" may not use it: '
            f"GRANT ALL ON SCHEMA public TO {sql_name(service.user)} there as its owner, or "
            "provision with a superuser admin"
        )
    # Else PostgreSQL 14's default, public the bootstrap superuser's with CREATE for
    # PUBLIC, and an admin that is no superuser: the service works through PUBLIC,
    # which only the owner can change. Granting would do nothing (a warning).
    return actions
