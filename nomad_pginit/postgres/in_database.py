"""The admin connected to one of a service's databases: what it observes there (schema
public, the extensions, the readers) and how it runs schema.py's statements."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Final

import psycopg
import psycopg.errors
from psycopg import sql

from nomad_pginit.errors import PginitError, ServiceError
from nomad_pginit.plan import Action
from nomad_pginit.postgres.connection import _last_line
from nomad_pginit.postgres.failures import _connection_lost, _nothing_granted_fails, _service_error
from nomad_pginit.postgres.running import _IN_FLIGHT, _interrupted, _Running
from nomad_pginit.postgres.schema import schema_statements
from nomad_pginit.state import ReaderState, SchemaState

if TYPE_CHECKING:  # session.py makes DatabaseSessions: the type only, here
    from nomad_pginit.postgres.session import AdminSession

# Per reader that exists (%(readers)s), in ReaderState's order: CONNECT here, USAGE on
# public, the tables (views, ...) and sequences in public that the service's role
# (%(owner)s) owns and the reader may not SELECT, and whether the owner's default
# privileges in public grant it SELECT on new ones. Whatever way it holds them counts.
_READERS: Final = sql.SQL(
    """
    WITH owner AS (SELECT oid FROM pg_roles WHERE rolname = %(owner)s),
         owned AS (SELECT c.oid, c.relname::text AS name, c.relkind = 'S' AS is_sequence
                   FROM pg_class c
                   WHERE c.relnamespace = to_regnamespace('public')
                     AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
                     AND c.relowner = (SELECT oid FROM owner))
    SELECT r.rolname,
           has_database_privilege(r.oid, current_database(), 'CONNECT'),
           COALESCE(has_schema_privilege(r.oid, to_regnamespace('public'), 'USAGE'), false),
           ARRAY(SELECT o.name FROM owned o
                 WHERE NOT o.is_sequence AND NOT has_table_privilege(r.oid, o.oid, 'SELECT')
                 ORDER BY o.name),
           ARRAY(SELECT o.name FROM owned o
                 WHERE o.is_sequence AND NOT has_table_privilege(r.oid, o.oid, 'SELECT')
                 ORDER BY o.name),
           EXISTS (SELECT FROM pg_default_acl d, aclexplode(d.defaclacl) a
                   WHERE d.defaclrole = (SELECT oid FROM owner)
                     AND d.defaclnamespace = to_regnamespace('public')
                     AND d.defaclobjtype = 'r' AND a.grantee = r.oid
                     AND a.privilege_type = 'SELECT'),
           EXISTS (SELECT FROM pg_default_acl d, aclexplode(d.defaclacl) a
                   WHERE d.defaclrole = (SELECT oid FROM owner)
                     AND d.defaclnamespace = to_regnamespace('public')
                     AND d.defaclobjtype = 'S' AND a.grantee = r.oid
                     AND a.privilege_type = 'SELECT')
    FROM pg_roles r
    WHERE r.rolname = ANY(%(readers)s)
    """
)
# The tables (views, ...) and sequences in public that the service's role owns.
_OWNED: Final = sql.SQL(
    """
    SELECT ARRAY(SELECT c.relname::text FROM pg_class c
                 WHERE c.relnamespace = to_regnamespace('public')
                   AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                   AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = %(owner)s)
                 ORDER BY 1),
           ARRAY(SELECT c.relname::text FROM pg_class c
                 WHERE c.relnamespace = to_regnamespace('public') AND c.relkind = 'S'
                   AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = %(owner)s)
                 ORDER BY 1)
    """
)


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

    def observe_readers(
        self, schema: SchemaState, owner: str, readers: Sequence[str]
    ) -> SchemaState:
        """``schema`` with what each of ``readers`` (those that exist) may read here, and
        the service's own tables and sequences in public (``owner``: its role)."""
        params = {"readers": list(readers), "owner": owner}
        try:
            with _IN_FLIGHT.track(self._conn, self._admin._target) as running:
                held = self._conn.execute(_READERS, params).fetchall()
                owned = self._conn.execute(_OWNED, params).fetchone()
        except psycopg.Error as err:
            raise self._error("read what the readers may read", err, running) from err
        tables, sequences = owned if owned is not None else ([], [])
        return replace(
            schema,
            readers={
                str(name): ReaderState(
                    connect=bool(connect),
                    usage=bool(usage),
                    unreadable_tables=_names(unreadable_tables),
                    unreadable_sequences=_names(unreadable_sequences),
                    default_tables=bool(default_tables),
                    default_sequences=bool(default_sequences),
                )
                for (
                    name,
                    connect,
                    usage,
                    unreadable_tables,
                    unreadable_sequences,
                    default_tables,
                    default_sequences,
                ) in held
            },
            owned_tables=_names(tables),
            owned_sequences=_names(sequences),
        )

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
        try:
            query = _schema_query(role is not None, extensions=extensions, owner=owner)
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
            public_may_create,
        ) = found or (False,) + (None,) * 8
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
        )

    def apply(self, action: Action) -> bool:
        """Run one action inside this database (its SQL: schema.py)."""
        statements = schema_statements(action)
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


def _names(value: object) -> tuple[str, ...]:
    return tuple(str(name) for name in value) if isinstance(value, list) else ()


@functools.lru_cache(maxsize=16)
def _schema_query(role_known: bool, *, extensions: bool, owner: bool) -> bytes:
    """observe_schema's query, composed once per kind and kept as bytes: it runs once per
    database, and composing it again each time cost more of our CPU than running it."""
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
    held = sql.SQL(held_by_itself if role_known else "false")
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
        sql.SQL(
            "COALESCE(has_schema_privilege('public', to_regnamespace('public'), 'CREATE'), false)"
        ),
    ]
    return sql.SQL("SELECT {}").format(sql.SQL(", ").join(columns)).as_bytes(None)
