"""The SQL of each action inside one of a service's databases: pure functions from an
action to its statements (schema public, the extensions, the readers). Each action's
statements run in one transaction, connected to that database (in_database.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from psycopg import sql

from nomad_pginit.plan import (
    Action,
    CreateExtension,
    GrantReader,
    GrantSchema,
    RecordReaders,
    RevokeCreateFromPublic,
    RevokeReader,
)
from nomad_pginit.postgres.connection import Query
from nomad_pginit.state import READERS_KEY, managed_comment

# The actions this module writes the SQL of, each with what an admin that is not a
# superuser needs to run it (said when PostgreSQL answers "permission denied").
SCHEMA_ACTIONS: Final[Mapping[type[Action], str]] = {
    GrantSchema: "ownership of schema public (membership in the database owner)",
    CreateExtension: "superuser, or a trusted extension and CREATE on the database",
    GrantReader: "membership in the database owner (who owns its tables)",
    RevokeReader: "membership in the database owner (who owns its tables)",
    RevokeCreateFromPublic: "ownership of schema public",
    RecordReaders: "ownership of the database (membership in its owner)",
}


def schema_statements(action: Action) -> list[Query]:
    """The statements of one action inside a database, run in one transaction."""
    match action:
        case GrantSchema(role=role):
            return [sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(role))]
        case RevokeCreateFromPublic():
            return [sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC")]
        case GrantReader() | RevokeReader():
            return reader_statements(action)
        case RecordReaders(database=database, readers=readers):
            return [
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(database), sql.Literal(managed_comment({READERS_KEY: readers}))
                )
            ]
        case CreateExtension(extension=extension):
            # Our sessions' search_path is pg_catalog alone, where a superuser's
            # CREATE EXTENSION would put the extension; in public it goes, as it
            # would for anyone, for this transaction only.
            return [
                sql.SQL("SET LOCAL search_path = public"),
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)),
            ]
        case _:
            raise TypeError(f"not a database-level action: {action!r}")


def reader_statements(action: GrantReader | RevokeReader) -> list[Query]:
    """Read-only access for a reader, given or taken back as one transaction: CONNECT,
    USAGE on public, SELECT on the service's own tables and sequences there (named: a
    table someone else put in public is not the service's to share), and SELECT on what
    the owner creates later (ALTER DEFAULT PRIVILEGES FOR ROLE the owner: the objects
    are the owner's, not the admin's, so default privileges for the admin would never
    apply)."""
    granting = isinstance(action, GrantReader)
    verb = sql.SQL("GRANT" if granting else "REVOKE")
    to = sql.SQL("TO" if granting else "FROM")
    grantee = sql.Identifier(action.reader)

    def on(kind: str, names: tuple[str, ...]) -> list[Query]:
        if not names:
            return []
        objects = sql.SQL(", ").join(sql.Identifier("public", name) for name in names)
        return [
            sql.SQL("{} SELECT ON {} {} {} {}").format(verb, sql.SQL(kind), objects, to, grantee)
        ]

    statements: list[Query] = [
        *on("TABLE", action.tables),
        *on("SEQUENCE", action.sequences),
        *(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public {} SELECT ON {} {} {}"
            ).format(sql.Identifier(action.owner), verb, sql.SQL(kind), to, grantee)
            for kind in ("TABLES", "SEQUENCES")
        ),
        *(
            [sql.SQL("{} USAGE ON SCHEMA public {} {}").format(verb, to, grantee)]
            if action.schema_usage
            else []
        ),
        sql.SQL("{} CONNECT ON DATABASE {} {} {}").format(
            verb, sql.Identifier(action.database), to, grantee
        ),
    ]
    return statements[::-1] if granting else statements
