"""The SQL of each action on a role: pure functions from an action to its statement.

Adding an ALTER ROLE option: its action in plan/actions.py, when it is needed in
plan/cluster.py (_plan_role), and here its statement (role_statement) and what
the admin needs for it (ROLE_ACTIONS). CONTRIBUTING.md has the whole checklist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from psycopg import sql

from nomad_pginit.plan import (
    Action,
    ClearValidUntil,
    CreateRole,
    DisableRole,
    EndSessions,
    GrantMembership,
    GrantRoleToAdmin,
    MarkRole,
    RecordMemberOf,
    RestoreLogin,
    RevokeMembership,
    SetConnectionLimit,
    SetPassword,
    SetRoleSetting,
    setting_items,
)
from nomad_pginit.state import MANAGED_COMMENT, MEMBER_OF_KEY, managed_comment

# The actions this module writes the SQL of, each with what an admin that is not a
# superuser needs to run it (said when PostgreSQL answers "permission denied").
ROLE_ACTIONS: Final[Mapping[type[Action], str]] = {
    CreateRole: "CREATEROLE",
    SetPassword: "CREATEROLE (and the role must not be a superuser)",
    RestoreLogin: "CREATEROLE",
    GrantRoleToAdmin: "CREATEROLE",
    SetConnectionLimit: "CREATEROLE",
    MarkRole: "CREATEROLE",
    DisableRole: "CREATEROLE",
    ClearValidUntil: "CREATEROLE",
    GrantMembership: "CREATEROLE, and from PostgreSQL 16 on ADMIN OPTION on the granted role",
    RevokeMembership: "CREATEROLE, and from PostgreSQL 16 on ADMIN OPTION on the group",
    RecordMemberOf: "CREATEROLE",
    EndSessions: "pg_signal_backend, or membership in the role",
    SetRoleSetting: "CREATEROLE",
}


def password_template(action: CreateRole | SetPassword) -> sql.SQL:
    """The statement that sets the password, with {} for the role and {} for the
    verifier libpq computes on our side (the server never sees the password)."""
    if isinstance(action, CreateRole):
        return sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
    return sql.SQL("ALTER ROLE {} PASSWORD {}")


def comment_on_role(role: str) -> sql.Composed:
    """The mark of a role nomad-pginit manages."""
    return sql.SQL("COMMENT ON ROLE {} IS {}").format(
        sql.Identifier(role), sql.Literal(MANAGED_COMMENT)
    )


def role_statement(action: Action, server_version: int) -> sql.Composed:
    """The one statement of a role action that sets no password."""
    match action:
        case RestoreLogin(role=role):
            return sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role))
        case GrantRoleToAdmin(role=role, admin=admin):
            # From 16 on, the membership must let the admin SET ROLE (to hand the
            # role a database) and inherit (to act as the database's owner).
            options = sql.SQL(" WITH INHERIT TRUE, SET TRUE" if server_version >= 160000 else "")
            return sql.SQL("GRANT {} TO {}{}").format(
                sql.Identifier(role), sql.Identifier(admin), options
            )
        case SetConnectionLimit(role=role, limit=limit):
            return sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                sql.Identifier(role), sql.Literal(limit)
            )
        case MarkRole(role=role):
            return comment_on_role(role)
        case DisableRole(role=role):
            return sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role))
        case GrantMembership(role=role, group=group):
            return sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(role))
        case SetRoleSetting(role=role, database=database, setting=setting, value=value):
            # A list parameter (search_path) takes its items as separate literals: one
            # literal "app,public" would be a single schema of that name.
            items = sql.SQL(", ").join(sql.Literal(item) for item in setting_items(setting, value))
            return sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
                sql.Identifier(role),
                sql.Identifier(database),
                sql.SQL(".").join(sql.Identifier(part) for part in setting.split(".")),
                items,
            )
        case RevokeMembership(role=role, group=group):
            return sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(group), sql.Identifier(role))
        case RecordMemberOf(role=role, groups=groups):
            return sql.SQL("COMMENT ON ROLE {} IS {}").format(
                sql.Identifier(role), sql.Literal(managed_comment({MEMBER_OF_KEY: groups}))
            )
        case ClearValidUntil(role=role):
            return sql.SQL("ALTER ROLE {} VALID UNTIL 'infinity'").format(sql.Identifier(role))
    raise TypeError(f"not a role action without a password: {action!r}")
