"""The admin's connections: the coordinator's (lock, catalog reads, template) and the
workers' (one per thread, applying actions).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Final, Self

import psycopg
import psycopg.errors
from psycopg import pq, sql

from nomad_pginit.errors import ConnectionLost, PostgresUnavailable, ServiceError
from nomad_pginit.plan import (
    Action,
    CreateDatabase,
    CreateRole,
    DisableRole,
    EndSessions,
    IsolateDatabase,
    SetPassword,
    sql_name,
)
from nomad_pginit.postgres.catalog import (
    observe_admin,
    observe_cluster,
)
from nomad_pginit.postgres.connection import (
    _ALREADY_EXISTS,
    _LOGIN_FAILURES,
    ADVISORY_LOCK_KEY,
    Query,
    Target,
    _authentication_failed,
    _connect,
    _last_line,
    _libpq_takes_scram_keys,
    address,
)
from nomad_pginit.postgres.databases import (
    DATABASE_ACTIONS,
    PUBLIC_GRANTORS,
    database_statements,
    revoke_from_public_as,
)
from nomad_pginit.postgres.failures import (
    _connection_lost,
    _fatal,
    _nothing_granted_fails,
    _service_error,
)
from nomad_pginit.postgres.in_database import DatabaseSession
from nomad_pginit.postgres.logsettings import (
    _SESSION_LOG_SETTINGS,
    _STATEMENT_LOG_SETTINGS,
)
from nomad_pginit.postgres.roles import (
    ROLE_ACTIONS,
    comment_on_role,
    password_template,
    role_statement,
)
from nomad_pginit.postgres.running import _IN_FLIGHT
from nomad_pginit.scram import derive_keys
from nomad_pginit.secret import Secret
from nomad_pginit.spec import Service
from nomad_pginit.state import (
    AdminState,
    ClusterState,
    SchemaState,
)

log = logging.getLogger("nomad_pginit")


# Ends every session of a role (%s) but this one; the count of those it ended.
_END_SESSIONS: Final = sql.SQL(
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE usename = %s AND pid <> pg_backend_pid()"
)


# What the server says when max_connections (or the slots reserved beyond it), or a
# role's or database's CONNECTION LIMIT, is reached (SQLSTATE 53300, which a failed
# connection does not carry).
_NO_CONNECTION_SLOTS: Final = (
    "too many clients",
    "too many connections for",
    "remaining connection slots are reserved",
)


# When the server started: with its address, which server a run worked on.
_STARTED_AT: Final = sql.SQL("SELECT pg_catalog.pg_postmaster_start_time()::text")


class AdminSession:
    """One connection as the admin: reads the catalogs, applies actions, and opens
    connections to the services' databases. A run has one Coordinator and one
    Worker per thread; both are this."""

    def __init__(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        target: Target,
        state: AdminState | None = None,
        *,
        pool: WorkerPool | None = None,
    ) -> None:
        self._conn = conn
        self._target = target
        self._admin = state
        # host:port of the server libpq chose (a DSN may list several hosts): kept, for
        # a connection that breaks can no longer say.
        self.address = address(conn.info.host, conn.info.port)
        # Whether the session-level settings (_SESSION_LOG_SETTINGS) are off already.
        self._session_silenced = False
        # A worker's connection: the pool connects to the databases too, keys and all.
        self._pool = pool

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def target(self) -> Target:
        """Where this session connected: with a multi-host DSN, its one server."""
        return self._target

    def identity(self) -> str:
        """Which server this is, as 'host:port (up since ...)': another after a failover,
        a later start time after a restart (watch mode compares them between passes)."""
        return f"{self.address} (up since {self.scalar(_STARTED_AT)})"

    @property
    def server_version(self) -> int:
        return self._conn.info.server_version

    @property
    def state(self) -> AdminState:
        """Who the admin is and what it may do (read once per run)."""
        return self._observe_admin()

    def _observe_admin(self) -> AdminState:
        if self._admin is None:
            self._admin = observe_admin(self)
        return self._admin

    @contextmanager
    def database(self, name: str) -> Iterator[DatabaseSession]:
        """A connection to one service's database, as the admin."""
        try:
            conn = self._pool.connect(name) if self._pool else _connect(self._target, name)
        except psycopg.OperationalError as err:
            if not self._alive():
                raise _connection_lost(self._target, err) from err
            raise ServiceError(
                f'cannot connect to database "{name}" as the admin: {_last_line(str(err))}'
            ) from err
        try:
            yield DatabaseSession(conn, name, self)
        finally:
            conn.close()

    def _alive(self) -> bool:
        """Whether the admin's own connection still works: is the server still there?"""
        try:
            self._conn.execute(sql.SQL("SELECT 1"))
        except psycopg.Error:
            return False
        return True

    def apply(self, action: Action) -> bool:
        """Run one cluster-level action. False when someone else had already done it.
        The SQL of each is in roles.py and databases.py."""
        match action:
            case CreateRole(role=role, password=password):
                return self._run_with_password(
                    action, password_template(action), role, password, then=comment_on_role(role)
                )
            case SetPassword(role=role, password=password):
                return self._run_with_password(action, password_template(action), role, password)
            case IsolateDatabase(database=database):
                return self._isolate(action, database)
            case CreateDatabase():
                # Autocommit: CREATE DATABASE cannot run inside a transaction block.
                create, comment = database_statements(action)
                created = self._run(action, create)
                self._run(action, comment)
                return created
            case DisableRole(role=role):
                done = self._run(action, role_statement(action, self.server_version))
                self._end_sessions(role)
                return done
            case EndSessions(role=role):
                self._end_sessions(role)
                return True
            case _ if type(action) in DATABASE_ACTIONS:
                (statement,) = database_statements(action)
                return self._run(action, statement)
            case _ if type(action) in ROLE_ACTIONS:
                return self._run(action, role_statement(action, self.server_version))
        raise TypeError(f"not a cluster-level action: {action!r}")

    def _end_sessions(self, role: str) -> None:
        """End the open sessions of a role just set NOLOGIN: NOLOGIN only refuses new
        ones, and those already connected would go on with the removed service's rights."""
        try:
            with _IN_FLIGHT.track(self._conn, self._target):
                row = self._conn.execute(_END_SESSIONS, (role,)).fetchone()
        except psycopg.Error as err:
            reason = err.diag.message_primary or str(err)
            log.warning(
                'role "%s" is NOLOGIN, but its open sessions could not be ended (%s): end them '
                "with pg_terminate_backend as a superuser",
                role,
                reason,
                extra={"event": "leftover"},
            )
            return
        ended = int(str(row[0])) if row is not None else 0
        log.info(
            'role "%s": %d open session%s ended',
            role,
            ended,
            "" if ended == 1 else "s",
            extra={"event": "leftover"},
        )

    def _isolate(self, action: Action, database: str) -> bool:
        done = self._run_together(action, database_statements(action))
        # That REVOKE, as the owner, leaves what other grantors gave PUBLIC, without a
        # word: each takes back its own.
        for grantor in self._public_grantors(database):
            with suppress(ServiceError):  # may not SET ROLE: said just below
                self._run_together(action, revoke_from_public_as(grantor, database))
        if left := self._public_grantors(database):
            raise ServiceError(
                f"cannot {action.describe()}: PUBLIC may still connect through a grant "
                f'by "{left[0]}", which only that role can take back: run REVOKE '
                f"CONNECT, TEMPORARY ON DATABASE {sql_name(database)} FROM PUBLIC as "
                f"{sql_name(left[0])}"
            )
        return done

    def _run_with_password(
        self,
        action: Action,
        statement: sql.SQL,
        role: str,
        password: Secret,
        *,
        then: Query | None = None,
    ) -> bool:
        """Run ``statement`` with the role's verifier, statement logging off, and ``then``
        in the same transaction."""
        admin = self._observe_admin()
        # libpq hashes the password here: the server only ever sees the verifier.
        verifier = self._conn.pgconn.encrypt_password(
            password.reveal().encode("utf-8"), role.encode("utf-8"), b"scram-sha-256"
        ).decode("ascii")
        composed = statement.format(sql.Identifier(role), sql.Literal(verifier))
        # set_config(..., true) is SET LOCAL: it ends with the transaction. All of
        # them in one statement: one round trip, before the password's statement.
        local = sorted(admin.silenceable_settings - _SESSION_LOG_SETTINGS)
        session = sorted(admin.silenceable_settings & _SESSION_LOG_SETTINGS)
        silence = sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(
                sql.SQL("set_config({}, {}, true)").format(
                    sql.Literal(name), sql.Literal(_STATEMENT_LOG_SETTINGS[name])
                )
                for name in local
            )
        )
        # The server runs them in order: the password's statement is parsed, run and
        # (not) logged only after the settings are in force.
        statements: list[Query] = [silence] if local else []
        statements.append(composed)
        if then is not None:
            statements.append(then)
        if session and not self._session_silenced:
            # Decided when a transaction starts, and a pipeline's statements share one
            # implicit transaction up to its sync: so in a round trip of its own, once
            # per session.
            self.execute(
                sql.SQL("SELECT {}").format(
                    sql.SQL(", ").join(
                        sql.SQL("set_config({}, {}, false)").format(
                            sql.Literal(name), sql.Literal(_STATEMENT_LOG_SETTINGS[name])
                        )
                        for name in session
                    )
                )
            )
            self._session_silenced = True
        return self._run_together(action, statements)

    def _public_grantors(self, database: str) -> list[str]:
        """Who granted PUBLIC CONNECT or TEMPORARY on ``database`` (and has not revoked it)."""
        rows = self.rows(PUBLIC_GRANTORS, (database,))
        return [str(grantor) for (grantor,) in rows]

    def _run_together(self, action: Action, statements: Sequence[Query]) -> bool:
        """Run ``statements`` in one transaction, sent at once with a single sync
        (libpq's pipeline mode): one round trip, BEGIN and COMMIT included.

        The server still runs them one after the other; after an error it skips
        the rest up to the sync, leaving the transaction failed for us to end.
        """
        try:
            with _IN_FLIGHT.track(self._conn, self._target) as running, self._conn.pipeline():
                self._conn.execute(sql.SQL("BEGIN"))
                for statement in statements:
                    self._conn.execute(statement)
                self._conn.execute(sql.SQL("COMMIT"))
        except psycopg.Error as err:
            if self._conn.info.transaction_status == pq.TransactionStatus.INERROR:
                with suppress(psycopg.Error):
                    self._conn.execute(sql.SQL("ROLLBACK"))
            if isinstance(err, _ALREADY_EXISTS):
                return False
            # Not chained: nothing of a password statement may travel with the error.
            raise _service_error(action, err, self._conn, running) from None
        return True

    def _run(self, action: Action, statement: Query) -> bool:
        try:
            with (
                _IN_FLIGHT.track(self._conn, self._target) as running,
                _nothing_granted_fails(self._conn, action),
            ):
                self._conn.execute(statement)
        except _ALREADY_EXISTS:
            return False
        except psycopg.Error as err:
            raise _service_error(action, err, self._conn, running) from err
        return True

    def rows(
        self, query: Query, params: Sequence[object] | Mapping[str, object] | None = None
    ) -> list[tuple[object, ...]]:
        """A query that the whole run depends on (the catalogs): any failure ends it."""
        try:
            with _IN_FLIGHT.track(self._conn, self._target) as running:
                rows: list[tuple[object, ...]] = self._conn.execute(query, params).fetchall()
        except psycopg.Error as err:
            if (fatal := _fatal(err, running, "read the catalogs")) is None:
                raise
            raise fatal from err
        return rows

    def row(
        self, query: Query, params: Sequence[object] | Mapping[str, object] | None = None
    ) -> tuple[object, ...]:
        rows = self.rows(query, params)
        return rows[0]

    def scalar(
        self, query: Query, params: Sequence[object] | Mapping[str, object] | None = None
    ) -> object:
        return self.row(query, params)[0]

    def execute(
        self, query: Query, params: Sequence[object] | Mapping[str, object] | None = None
    ) -> None:
        try:
            with _IN_FLIGHT.track(self._conn, self._target) as running:
                self._conn.execute(query, params)
        except psycopg.Error as err:
            if (fatal := _fatal(err, running, "set up the session")) is None:
                raise
            raise fatal from err


class Coordinator(AdminSession):
    """The run's first connection: it holds the lock that serializes runs, reads the
    catalogs for every service, opens the workers, and handles the leftovers."""

    @contextmanager
    def exclusive(self, timeout: float) -> Iterator[None]:
        """Hold the advisory lock that serializes runs against this cluster, waiting at
        most ``timeout`` seconds for another run to release it."""
        if self.server_version >= 140000:
            # The lock lives as long as this connection, which idles while workers
            # run: a server-side idle timeout must not end it (and the lock) early.
            self.execute(sql.SQL("SET idle_session_timeout = 0"))
        locked = self.scalar(sql.SQL("SELECT pg_try_advisory_lock(%s)"), (ADVISORY_LOCK_KEY,))
        if not locked:
            log.info("another nomad-pginit run holds the lock on this cluster: waiting for it")
            # At least 1 ms: lock_timeout = 0 would mean waiting for ever.
            milliseconds = max(1, round(timeout * 1000))
            self.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(milliseconds)))
            # The statement lasts as long as the wait, which may be longer than our
            # statement_timeout: the lock wait, not that, ends it.
            waiting = self._target.with_statement_timeout(
                max(self._target.statement_timeout, timeout + 1)
            )
            self.execute(
                sql.SQL("SET statement_timeout = {}").format(
                    sql.Literal(round(waiting.statement_timeout * 1000))
                )
            )
            try:
                with _IN_FLIGHT.track(self._conn, waiting) as running:
                    self._conn.execute(sql.SQL("SELECT pg_advisory_lock(%s)"), (ADVISORY_LOCK_KEY,))
            except psycopg.errors.LockNotAvailable as err:
                holder = f" ({running.blockers})" if running.blockers else ""
                raise PostgresUnavailable(
                    f"another nomad-pginit run{holder} held the lock on this cluster for more "
                    f"than {timeout:g}s (--wait-timeout); run again once it is done"
                ) from err
            except psycopg.Error as err:
                if (fatal := _fatal(err, running, "wait for the lock on this cluster")) is None:
                    raise
                raise fatal from err
            finally:
                self.execute(sql.SQL("RESET lock_timeout"))
                self.execute(sql.SQL("RESET statement_timeout"))
        try:
            yield
        finally:
            # A lost connection has released the lock already: nothing to report.
            with suppress(psycopg.Error):
                if not self._conn.closed:
                    self._conn.execute(
                        sql.SQL("SELECT pg_advisory_unlock(%s)"), (ADVISORY_LOCK_KEY,)
                    )

    def observe(self, services: Sequence[Service]) -> ClusterState:
        """Read everything the planner needs about these services (catalog.py)."""
        return observe_cluster(self, services)

    @contextmanager
    def workers(self) -> Iterator[WorkerPool]:
        """Admin connections for worker threads, closed on the way out.

        Where the admin may read its own verifier and libpq takes SCRAM keys,
        they log in with the keys: a login then costs the client no PBKDF2,
        which is most of what one connection per database costs us.
        """
        target = self._target
        admin = self._observe_admin()
        if admin.can_read_verifiers and target.password is not None and _libpq_takes_scram_keys():
            verifier = self.scalar(
                sql.SQL("SELECT rolpassword FROM pg_authid WHERE rolname = current_user")
            )
            keys = derive_keys(
                str(verifier) if verifier is not None else None, target.password.reveal()
            )
            if keys is not None:
                target = replace(target, scram_keys=keys)
        pool = WorkerPool(target, admin)
        try:
            yield pool
        finally:
            pool.close()

    def template_contents(self) -> SchemaState | None:
        """What every new database starts with: template1's schema public, as its owner
        holds it (through pg_database_owner), and its extensions. None if unreadable."""
        try:
            with self.database("template1") as session:
                return session.observe_schema("pg_database_owner")
        except ServiceError as err:
            log.info("cannot look into template1 (%s): checking each new database instead", err)
            return None


class Worker(AdminSession):
    """A worker thread's connection, from the WorkerPool: it applies one service's
    actions from start to end, while other workers apply others'."""


class WorkerPool:
    """One more admin connection per worker thread, opened when the thread first asks.

    Services are independent of each other: on their own connections, one
    service's CREATE DATABASE runs while another's role is created.
    """

    def __init__(self, target: Target, state: AdminState) -> None:
        self._target = target
        self._state = state
        self._local = threading.local()
        self._opened: list[Worker] = []
        self._lock = threading.Lock()

    @property
    def target(self) -> Target:
        return self._target

    @property
    def logs_in_with_keys(self) -> bool:
        return self._target.scram_keys is not None

    def connect(self, dbname: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
        """A connection as the admin: with the keys, or the password once they fail."""
        target = self._target
        try:
            return _connect(target, dbname)
        except psycopg.OperationalError as err:
            if target.scram_keys is None or not _authentication_failed(err):
                raise
        # The keys went stale: the admin's password was set again during the run.
        # The password from now on, so that the server logs one failed login, not one
        # per database.
        log.info("the admin's SCRAM keys no longer log in: using its password")
        with self._lock:
            self._target = replace(self._target, scram_keys=None)
        return _connect(self._target, dbname)

    def worker(self) -> Worker:
        """This thread's admin connection. Raises PostgresUnavailable if none can be had."""
        admin: Worker | None = getattr(self._local, "admin", None)
        if admin is not None:
            return admin
        try:
            conn = self.connect()
        except psycopg.OperationalError as err:
            if any(marker in str(err) for marker in _NO_CONNECTION_SLOTS):
                raise PostgresUnavailable(
                    f"cannot open another connection to PostgreSQL at "
                    f"{self._target.description}: {_last_line(str(err))}; nomad-pginit needs a "
                    "few connections at once: raise max_connections (or the admin's "
                    "CONNECTION LIMIT), or end idle sessions"
                ) from err
            if any(marker in str(err) for marker in _LOGIN_FAILURES):
                raise PostgresUnavailable(
                    f"the admin could log in once, then not again, to PostgreSQL at "
                    f"{self._target.description}: {_last_line(str(err))}"
                ) from err
            # The coordinator connected a moment ago: the server went away (or the
            # primary failed over), which the run waits out.
            raise ConnectionLost(
                f"cannot open another connection to PostgreSQL at {self._target.description}: "
                f"{_last_line(str(err))}"
            ) from err
        admin = Worker(conn, self._target, self._state, pool=self)
        self._local.admin = admin
        with self._lock:
            self._opened.append(admin)
        return admin

    def close(self) -> None:
        with self._lock:
            for admin in self._opened:
                admin.close()
            self._opened.clear()
