"""The SQL of each action on a role: pure functions from an action to its statement.

Adding an ALTER ROLE option: a plan action in plan.py, its statement here.
"""

from __future__ import annotations

from psycopg import sql

from nomad_pginit.plan import (
    Action,
    ClearValidUntil,
    CreateRole,
    DisableRole,
    GrantMembership,
    GrantRoleToAdmin,
    MarkRole,
    RestoreLogin,
    SetConnectionLimit,
    SetPassword,
    SetRoleSetting,
    setting_items,
)
from nomad_pginit.state import MANAGED_COMMENT

# The actions this module writes the SQL of.
ROLE_ACTIONS = (
    CreateRole,
    SetPassword,
    RestoreLogin,
    GrantRoleToAdmin,
    SetConnectionLimit,
    MarkRole,
    DisableRole,
    ClearValidUntil,
    GrantMembership,
    SetRoleSetting,
)


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
        case ClearValidUntil(role=role):
            return sql.SQL("ALTER ROLE {} VALID UNTIL 'infinity'").format(sql.Identifier(role))
    raise TypeError(f"not a role action without a password: {action!r}")
