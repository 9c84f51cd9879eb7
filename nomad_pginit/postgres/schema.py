"""Inside one service's database: schema public, its privileges, and the extensions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Literal

import psycopg
import psycopg.errors
from psycopg import sql

from nomad_pginit.errors import PginitError, ServiceError
from nomad_pginit.plan import (
    Action,
    CreateExtension,
    GrantReader,
    GrantSchema,
    RevokeCreateFromPublic,
    RevokeReader,
)
from nomad_pginit.postgres.connection import Query, _last_line
from nomad_pginit.postgres.failures import _connection_lost, _nothing_granted_fails, _service_error
from nomad_pginit.postgres.running import _IN_FLIGHT, _interrupted, _Running
from nomad_pginit.state import ReaderState, SchemaState

if TYPE_CHECKING:  # session.py makes DatabaseSessions: the type only, here
    from nomad_pginit.postgres.session import AdminSession


# Per reader that exists (%(readers)s): CONNECT here, USAGE on public, SELECT on every
# table, view and sequence in public, and the owner's default privileges for both
# kinds, in ReaderState's order. Whatever way it holds them counts (PUBLIC, a group).
_READERS: Final = sql.SQL(
    """
    SELECT r.rolname,
           has_database_privilege(r.oid, current_database(), 'CONNECT'),
           COALESCE(has_schema_privilege(r.oid, to_regnamespace('public'), 'USAGE'), false),
           NOT EXISTS (SELECT FROM pg_class c
                       WHERE c.relnamespace = to_regnamespace('public')
                         AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                         AND NOT has_table_privilege(r.oid, c.oid, 'SELECT')),
           NOT EXISTS (SELECT FROM pg_class c
                       WHERE c.relnamespace = to_regnamespace('public') AND c.relkind = 'S'
                         AND NOT has_table_privilege(r.oid, c.oid, 'SELECT')),
           EXISTS (SELECT FROM pg_default_acl d, aclexplode(d.defaclacl) a
                   WHERE d.defaclrole = owner_role.oid
                     AND d.defaclnamespace = to_regnamespace('public')
                     AND d.defaclobjtype = 'r' AND a.grantee = r.oid
                     AND a.privilege_type = 'SELECT'),
           EXISTS (SELECT FROM pg_default_acl d, aclexplode(d.defaclacl) a
                   WHERE d.defaclrole = owner_role.oid
                     AND d.defaclnamespace = to_regnamespace('public')
                     AND d.defaclobjtype = 'S' AND a.grantee = r.oid
                     AND a.privilege_type = 'SELECT')
    FROM pg_roles r
    LEFT JOIN (SELECT datdba AS oid FROM pg_database WHERE datname = current_database())
         AS owner_role ON true
    WHERE r.rolname = ANY(%(readers)s)
    """
)
# The roles that the owner's default privileges in public let read both its new tables
# and its new sequences: what GrantReader sets up, so the readers it set up.
_DEFAULT_READERS: Final = sql.SQL(
    """
    SELECT pg_get_userbyid(a.grantee)::text
    FROM pg_default_acl d, aclexplode(d.defaclacl) a
    WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = %(role)s)
      AND d.defaclnamespace = to_regnamespace('public')
      AND d.defaclobjtype IN ('r', 'S') AND a.privilege_type = 'SELECT'
      AND a.grantee NOT IN (0, d.defaclrole)
    GROUP BY a.grantee
    HAVING count(DISTINCT d.defaclobjtype) = 2
    """
)


def reader_statements(
    verb: Literal["GRANT", "REVOKE"],
    database: str,
    owner: str,
    reader: str,
    *,
    schema_usage: bool = True,
) -> list[Query]:
    """Read-only access for ``reader``, given or taken back as one transaction: CONNECT,
    USAGE on public, SELECT on what is there, and SELECT on what ``owner`` creates later
    (ALTER DEFAULT PRIVILEGES FOR ROLE the owner: the objects are the owner's, not the
    admin's, so default privileges for the admin would never apply)."""
    to = sql.SQL("TO" if verb == "GRANT" else "FROM")
    grantee = sql.Identifier(reader)
    statements: list[Query] = [
        sql.SQL("{} SELECT ON ALL TABLES IN SCHEMA public {} {}").format(
            sql.SQL(verb), to, grantee
        ),
        sql.SQL("{} SELECT ON ALL SEQUENCES IN SCHEMA public {} {}").format(
            sql.SQL(verb), to, grantee
        ),
        *(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public {} SELECT ON {} {} {}"
            ).format(sql.Identifier(owner), sql.SQL(verb), sql.SQL(kind), to, grantee)
            for kind in ("TABLES", "SEQUENCES")
        ),
        *(
            [sql.SQL("{} USAGE ON SCHEMA public {} {}").format(sql.SQL(verb), to, grantee)]
            if schema_usage
            else []
        ),
        sql.SQL("{} CONNECT ON DATABASE {} {} {}").format(
            sql.SQL(verb), sql.Identifier(database), to, grantee
        ),
    ]
    return statements if verb == "REVOKE" else statements[::-1]


class DatabaseSession:
    """The admin connected to one service's database, for schema-level work."""

    def __init__(
        self, conn: psycopg.Connection[tuple[object, ...]], name: str, admin: AdminSession
    ) -> None:
        self._conn = conn
        self.name = name
        self._admin = admin

    def _error(self, doing: str, err: psycopg.Error, running: _Running) -> PginitError:
        """This database's trouble fails its service; a server gone fails the run."""
        interrupted = _interrupted(err, running, f'{doing} in database "{self.name}"')
        if interrupted is not None:
            return interrupted
        if isinstance(err, psycopg.OperationalError) and not self._admin._alive():
            return _connection_lost(self._admin._target, err)
        reason = err.diag.message_primary or _last_line(str(err))
        where = "" if f'database "{self.name}"' in doing else f' in database "{self.name}"'
        return ServiceError(f"cannot {doing}{where}: {reason}")

    def observe_readers(self, readers: Sequence[str]) -> dict[str, ReaderState]:
        """What each of ``readers`` (those that exist) may read here."""
        try:
            with _IN_FLIGHT.track(self._conn, self._admin._target) as running:
                held = self._conn.execute(_READERS, {"readers": list(readers)}).fetchall()
        except psycopg.Error as err:
            raise self._error("read what the readers may read", err, running) from err
        return {
            str(name): ReaderState(*(bool(value) for value in values)) for name, *values in held
        }

    def observe_schema(
        self, role: str | None, *, extensions: bool = True, owner: bool = True
    ) -> SchemaState:
        """Schema public in this database, and what ``role`` holds on it (None: no role yet).

        The installed extensions and public's owner are read only when asked for:
        this runs once per database on a brand-new backend, where every catalog
        the query touches for the first time costs a lookup, and a query with no
        FROM clause costs no planning. The privilege functions alone are what a
        run with nothing to do needs.
        """
        # A privilege the role holds only through PUBLIC does not count: on
        # PostgreSQL 14 and earlier, PUBLIC has CREATE on public by default (owned
        # by the bootstrap superuser, not pg_database_owner), and the first
        # REVOKE CREATE ON SCHEMA public FROM PUBLIC, which hardening guides
        # recommend, would take it from the service. The role holds it by itself
        # when it is a member of the owner or of a grantee other than PUBLIC.
        held_by_itself = (
            "has_schema_privilege(%(role)s, to_regnamespace('public'), {privilege}) "
            "AND (NOT has_schema_privilege('public', to_regnamespace('public'), {privilege}) "
            "OR (SELECT pg_has_role(%(role)s, nspowner, 'USAGE') "
            "OR EXISTS (SELECT FROM aclexplode(COALESCE(nspacl, acldefault('n', nspowner))) "
            "AS granted WHERE granted.privilege_type = {privilege} AND granted.grantee <> 0 "
            "AND pg_has_role(%(role)s, granted.grantee, 'USAGE')) "
            "FROM pg_namespace WHERE oid = to_regnamespace('public')))"
        )
        held = sql.SQL(held_by_itself if role is not None else "false")
        # What the role may do, PUBLIC's included (a role not there yet: PUBLIC's).
        may = "has_schema_privilege(%(role)s, to_regnamespace('public'), {privilege})"
        # Whether the admin may grant on public: its owner (a member of), a superuser,
        # or a holder of the grant option. Not so on PostgreSQL 14 for an admin that
        # is no superuser: public is the bootstrap superuser's there.
        grantable = (
            "has_schema_privilege(current_user, to_regnamespace('public'), "
            "'USAGE WITH GRANT OPTION') AND has_schema_privilege(current_user, "
            "to_regnamespace('public'), 'CREATE WITH GRANT OPTION')"
        )
        # to_regnamespace() is NULL when public is gone, and so are the functions given it.
        columns = [
            sql.SQL("to_regnamespace('public') IS NOT NULL"),
            held.format(privilege=sql.Literal("USAGE")),
            held.format(privilege=sql.Literal("CREATE")),
            sql.SQL(may).format(privilege=sql.Literal("USAGE")),
            sql.SQL(may).format(privilege=sql.Literal("CREATE")),
            sql.SQL(grantable),
            sql.SQL(
                "(SELECT nspowner = 'pg_database_owner'::regrole "
                "FROM pg_namespace WHERE nspname = 'public')"
                if owner
                else "NULL"
            ),
            sql.SQL("ARRAY(SELECT extname::text FROM pg_extension)" if extensions else "NULL"),
            sql.SQL("ARRAY({})").format(_DEFAULT_READERS) if role is not None else sql.SQL("NULL"),
            sql.SQL(
                "COALESCE(has_schema_privilege('public', to_regnamespace('public'), 'CREATE'), "
                "false)"
            ),
        ]
        try:
            query = sql.SQL("SELECT {}").format(sql.SQL(", ").join(columns))
            with _IN_FLIGHT.track(self._conn, self._admin._target) as running:
                # has_schema_privilege() fails for a role that does not exist: PUBLIC's then.
                found = self._conn.execute(query, {"role": role or "public"}).fetchone()
        except psycopg.Error as err:
            doing = "read schema public and the extensions"
            raise self._error(doing, err, running) from err
        # The query always returns its one row.
        (
            exists,
            usage,
            create,
            may_use,
            may_create,
            admin_may_grant,
            owned_by_database_owner,
            installed,
            default_readers,
            public_may_create,
        ) = found or (False,) + (None,) * 9
        installed_names = frozenset(
            str(name) for name in (installed if isinstance(installed, list) else ())
        )
        if not exists:
            return SchemaState(
                database=self.name,
                exists=False,
                privileges=frozenset(),
                extensions=installed_names,
            )

        def names(use: object, create: object) -> frozenset[str]:
            return frozenset(name for name, has in (("USAGE", use), ("CREATE", create)) if has)

        return SchemaState(
            database=self.name,
            exists=True,
            privileges=names(usage, create),
            privileges_with_public=names(may_use, may_create),
            admin_may_grant=bool(admin_may_grant),
            owned_by_database_owner=bool(owned_by_database_owner),
            extensions=installed_names,
            public_may_create=bool(public_may_create),
            default_readers=frozenset(
                str(name) for name in (default_readers if isinstance(default_readers, list) else ())
            ),
        )

    def apply(self, action: Action) -> bool:
        """Run one action inside this database."""
        match action:
            case GrantSchema(role=role):
                statements: list[Query] = [
                    sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(role))
                ]
            case RevokeCreateFromPublic():
                statements = [sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC")]
            case GrantReader(database=database, owner=owner, reader=reader):
                statements = reader_statements(
                    "GRANT", database, owner, reader, schema_usage=action.schema_usage
                )
            case RevokeReader(database=database, owner=owner, reader=reader):
                statements = reader_statements(
                    "REVOKE", database, owner, reader, schema_usage=action.schema_usage
                )
            case CreateExtension(extension=extension):
                # Our sessions' search_path is pg_catalog alone, where a superuser's
                # CREATE EXTENSION would put the extension; in public it goes, as it
                # would for anyone, for this transaction only.
                statements = [
                    sql.SQL("SET LOCAL search_path = public"),
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)),
                ]
            case _:
                raise TypeError(f"not a database-level action: {action!r}")
        try:
            with (
                _IN_FLIGHT.track(self._conn, self._admin._target) as running,
                self._conn.transaction(),
                _nothing_granted_fails(self._conn, action),
            ):
                for statement in statements:
                    self._conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege as err:
            raise _service_error(action, err, self._conn, running) from err
        except psycopg.Error as err:
            raise self._error(action.describe(), err, running) from err
        return True
