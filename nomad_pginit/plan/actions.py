"""The actions a plan is made of: each one change, on behalf of one service.

An action knows how to describe itself; only the PostgreSQL package turns it
into SQL (postgres/roles.py, databases.py, schema.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nomad_pginit.secret import Secret


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
    # CREATE DATABASE's options from the services file: (key, value), e.g. ("locale", "C").
    options: tuple[tuple[str, str], ...] = ()

    @property
    def verb(self) -> str:
        return "created"

    def describe(self) -> str:
        given = "".join(f" {key.upper()} '{value}'" for key, value in self.options)
        return f'create database "{self.database}" owned by "{self.owner}"{given}'

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
        return (
            f'set leftover role "{self.role}" NOLOGIN and end its open sessions (its service '
            "is no longer listed)"
        )

    def done(self) -> str:
        return f'leftover role "{self.role}" set NOLOGIN'


@dataclass(frozen=True)
class GrantMembership(Action):
    """member_of: the service's role becomes a member of a group (pg_monitor, say)."""

    role: str
    group: str

    @property
    def verb(self) -> str:
        return "granted"

    def describe(self) -> str:
        return f'grant role "{self.group}" to "{self.role}" (member_of)'

    def done(self) -> str:
        return f'role "{self.group}" granted to "{self.role}"'


@dataclass(frozen=True)
class SetRoleSetting(Action):
    """settings: ALTER ROLE role IN DATABASE database SET setting = value."""

    database: str
    role: str
    setting: str
    value: str
    # What it is now, or None when the role has no such setting in that database.
    previous: str | None = None

    def describe(self) -> str:
        was = f" (now {self.previous!r})" if self.previous is not None else ""
        return (
            f'set {self.setting} = {self.value!r} for role "{self.role}" in database '
            f'"{self.database}"{was}'
        )

    def done(self) -> str:
        return (
            f'{self.setting} = {self.value!r} set for role "{self.role}" in database '
            f'"{self.database}"'
        )


@dataclass(frozen=True)
class GrantReader(Action):
    """readers: read-only access to the database for a role: CONNECT, USAGE on public,
    SELECT on the service's tables and sequences there, and the owner's default
    privileges for the ones it creates later. Run connected to ``database``."""

    database: str
    owner: str
    reader: str
    # The service's tables and sequences in public the reader may not read yet.
    tables: tuple[str, ...] = ()
    sequences: tuple[str, ...] = ()
    # Grant USAGE on public too; not when the reader has it already and the admin may not
    # grant it (PostgreSQL 14: PUBLIC's, on the bootstrap superuser's schema).
    schema_usage: bool = True

    @property
    def verb(self) -> str:
        return "granted"

    def describe(self) -> str:
        return f'grant read-only access to database "{self.database}" to reader "{self.reader}"'

    def done(self) -> str:
        return f'read-only access to database "{self.database}" granted to "{self.reader}"'


@dataclass(frozen=True)
class RevokeCreateFromPublic(Action):
    """PostgreSQL 14 lets every role create in schema public: a reader could write.
    Run connected to ``database``; what PostgreSQL 15 does by default."""

    database: str

    def describe(self) -> str:
        return (
            f'revoke CREATE on schema public from PUBLIC in database "{self.database}" '
            "(its readers must not write)"
        )

    def done(self) -> str:
        return f'CREATE on schema public revoked from PUBLIC in database "{self.database}"'


@dataclass(frozen=True)
class RevokeReader(Action):
    """A reader nomad-pginit set up, no longer listed, loses what GrantReader gave it."""

    database: str
    owner: str
    reader: str
    # The service's tables and sequences in public.
    tables: tuple[str, ...] = ()
    sequences: tuple[str, ...] = ()
    # Revoke USAGE on public too: not where the admin may not (it never granted it there).
    schema_usage: bool = True

    def describe(self) -> str:
        return (
            f'revoke read access to database "{self.database}" from "{self.reader}" '
            "(no longer among its readers)"
        )

    def done(self) -> str:
        return f'read access to database "{self.database}" revoked from "{self.reader}"'


@dataclass(frozen=True)
class RecordReaders(Action):
    """Which readers nomad-pginit gave access to the database, in its comment: the ones
    it may take back later, and no others."""

    database: str
    readers: tuple[str, ...]

    def describe(self) -> str:
        return f'record the readers of database "{self.database}" (COMMENT ON DATABASE)'

    def done(self) -> str:
        return f'readers of database "{self.database}" recorded'


@dataclass(frozen=True)
class RevokeMembership(Action):
    """A group nomad-pginit made the role a member of, no longer in member_of."""

    role: str
    group: str

    def describe(self) -> str:
        return f'revoke role "{self.group}" from "{self.role}" (no longer in member_of)'

    def done(self) -> str:
        return f'role "{self.group}" revoked from "{self.role}"'


@dataclass(frozen=True)
class RecordMemberOf(Action):
    """Which groups nomad-pginit made the role a member of, in its comment."""

    role: str
    groups: tuple[str, ...]

    def describe(self) -> str:
        return f'record the member_of of role "{self.role}" (COMMENT ON ROLE)'

    def done(self) -> str:
        return f'member_of of role "{self.role}" recorded'


@dataclass(frozen=True)
class EndSessions(Action):
    """A leftover role already NOLOGIN that still has sessions open: they end."""

    role: str
    sessions: int

    def describe(self) -> str:
        return f'end the {self.sessions} open session(s) of leftover role "{self.role}" (NOLOGIN)'

    def done(self) -> str:
        return f'open sessions of leftover role "{self.role}" ended'


class Refusal(Exception):
    """A service that nomad-pginit must not touch; the message says why and what to do."""


def sql_name(name: str) -> str:
    """``name`` as an SQL identifier in a message the operator may paste into psql."""
    return '"' + name.replace('"', '""') + '"'
