"""The SQL of each action on a database: pure functions from an action to its statements.

Adding a database option: a plan action in plan.py, its statements here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from psycopg import sql

from nomad_pginit.plan import (
    Action,
    ChangeDatabaseOwner,
    CreateDatabase,
    GrantDatabase,
    IsolateDatabase,
    MarkDatabase,
)
from nomad_pginit.state import MANAGED_COMMENT

# The actions this module writes the SQL of, each with what an admin that is not a
# superuser needs to run it (said when PostgreSQL answers "permission denied").
DATABASE_ACTIONS: Final[Mapping[type[Action], str]] = {
    CreateDatabase: "CREATEDB and membership in the owning role",
    ChangeDatabaseOwner: "CREATEDB, membership in the new owner and ownership of the database",
    GrantDatabase: "ownership of the database or a grant option on it",
    MarkDatabase: "ownership of the database (membership in its owner)",
    IsolateDatabase: "ownership of the database (membership in its owner)",
}

# Who granted PUBLIC CONNECT or TEMPORARY on a database (%s: its name).
PUBLIC_GRANTORS = sql.SQL(
    "SELECT DISTINCT pg_get_userbyid(a.grantor) "
    "FROM pg_database d, aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba))) a "
    "WHERE d.datname = %s AND a.grantee = 0 "
    "AND a.privilege_type IN ('CONNECT', 'TEMPORARY') ORDER BY 1"
)


def comment_on_database(database: str) -> sql.Composed:
    """The mark of a database nomad-pginit manages."""
    return sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(database), sql.Literal(MANAGED_COMMENT)
    )


def revoke_from_public(database: str) -> sql.Composed:
    return sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
        sql.Identifier(database)
    )


def revoke_from_public_as(grantor: str, database: str) -> list[sql.Composed]:
    """One transaction: what ``grantor`` gave PUBLIC, taken back as ``grantor`` (the
    owner's REVOKE takes back only the owner's grants, silently)."""
    return [
        sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(grantor)),
        revoke_from_public(database),
    ]


def database_statements(action: Action) -> list[sql.Composed]:
    """The statements of a database action, each run on its own (CREATE DATABASE
    cannot run in a transaction block), except IsolateDatabase's, run together."""
    match action:
        case CreateDatabase(database=database, owner=owner, options=options):
            return [
                sql.SQL("CREATE DATABASE {} OWNER {}{}").format(
                    sql.Identifier(database),
                    sql.Identifier(owner),
                    sql.Composed([_creation_option(key, value) for key, value in options]),
                ),
                comment_on_database(database),
            ]
        case ChangeDatabaseOwner(database=database, owner=owner):
            return [
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(database), sql.Identifier(owner)
                )
            ]
        case GrantDatabase(database=database, role=role):
            return [
                sql.SQL("GRANT ALL PRIVILEGES ON DATABASE {} TO {}").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
            ]
        case MarkDatabase(database=database):
            return [comment_on_database(database)]
        case IsolateDatabase(database=database, role=role):
            return [
                revoke_from_public(database),
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(database), sql.Identifier(role)
                ),
            ]
    raise TypeError(f"not a database action: {action!r}")


def _creation_option(key: str, value: str) -> sql.Composed:
    """`` TEMPLATE "template0"``, `` LOCALE 'C'``: the template is a database's name, the
    others are strings (CREATE DATABASE takes every option's value as one)."""
    name = sql.SQL(key.upper())
    if key == "template":
        return sql.SQL(" {} {}").format(name, sql.Identifier(value))
    return sql.SQL(" {} {}").format(name, sql.Literal(value))
