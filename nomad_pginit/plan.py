"""Decide what to change: pure functions from (spec, secrets, observed state) to actions.

No I/O here. ``nomad-pginit plan`` prints these actions; ``nomad-pginit run``
hands the same actions to the PostgreSQL module, so the two cannot disagree.
An action knows how to describe itself; only the PostgreSQL module turns it
into SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nomad_pginit.scram import verifier_matches
from nomad_pginit.secret import Secret
from nomad_pginit.spec import Service
from nomad_pginit.state import (
    DATABASE_PRIVILEGES,
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


class Refusal(Exception):
    """A service that nomad-pginit must not touch; the message says why and what to do."""


def plan_cluster(service: Service, password: Secret, cluster: ClusterState) -> list[Action]:
    """The role- and database-level actions one service needs, in the order to run them.

    Raises Refusal when an existing role must not be taken over.
    """
    actions: list[Action] = []
    admin = cluster.admin
    role = cluster.roles.get(service.user)
    database = cluster.databases.get(service.database)

    if role is None:
        actions.append(CreateRole(service.name, service.user, password))
    else:
        _refuse_foreign_role(service, cluster)
        if not role.can_login:
            actions.append(RestoreLogin(service.name, service.user))
        if not admin.can_read_verifiers:
            reason = (
                f'not compared: the admin "{admin.name}" cannot read pg_authid, '
                "so it is set again on every run"
            )
            actions.append(SetPassword(service.name, service.user, password, reason))
        elif not verifier_matches(role.verifier, password.reveal()):
            actions.append(SetPassword(service.name, service.user, password, "differs from Vault"))

    needs_membership = not admin.superuser and (role is None or not role.admin_is_member)
    if (database is None or database.owner != service.user) and needs_membership:
        actions.append(GrantRoleToAdmin(service.name, service.user, admin.name))

    if database is None:
        # A new database's owner holds every privilege on it: nothing to grant.
        actions.append(CreateDatabase(service.name, service.database, service.user))
    elif database.owner != service.user:
        actions.append(
            ChangeDatabaseOwner(service.name, service.database, service.user, database.owner)
        )
        # What the new owner holds depends on the old ACL: grant rather than guess.
        actions.append(GrantDatabase(service.name, service.database, service.user))
    else:
        held = cluster.database_privileges.get((service.database, service.user), frozenset())
        if not held >= DATABASE_PRIVILEGES:
            actions.append(GrantDatabase(service.name, service.database, service.user))
    return actions


def _refuse_foreign_role(service: Service, cluster: ClusterState) -> None:
    role = cluster.roles[service.user]
    if role.superuser:
        raise Refusal(
            f'role "{service.user}" already exists and is a superuser; nomad-pginit will not '
            "manage it or change its password: give the service another user "
            f'(user = "..." under its [[service]]), or remove SUPERUSER from the role by hand'
        )
    others = [name for name in role.owned_databases if name != service.database]
    if others:
        listed = ", ".join(f'"{name}"' for name in sorted(others))
        raise Refusal(
            f'role "{service.user}" already exists and owns other databases ({listed}); '
            "nomad-pginit will not take it over: give the service another user, or change "
            "the owner of those databases by hand"
        )


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
    if schema.privileges >= SCHEMA_PRIVILEGES:
        return []
    if owner_changes and schema.owned_by_database_owner:
        return []
    return [GrantSchema(service.name, service.database, service.user)]
