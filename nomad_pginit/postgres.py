"""PostgreSQL: the only module that imports psycopg.

It waits for a writable primary, reads the catalogs in bulk (``observe``), and
turns the planner's actions into SQL composed with ``psycopg.sql`` (``apply``).
Passwords reach the server only as SCRAM-SHA-256 verifiers computed here by
libpq, in statements that run with statement logging off where the admin may
switch it off.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import psycopg
import psycopg.errors
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from nomad_pginit.errors import ConfigError, PginitError, PostgresUnavailable, ServiceError
from nomad_pginit.plan import (
    Action,
    ChangeDatabaseOwner,
    ClearValidUntil,
    CreateDatabase,
    CreateExtension,
    CreateRole,
    DisableRole,
    GrantDatabase,
    GrantRoleToAdmin,
    GrantSchema,
    IsolateDatabase,
    MarkDatabase,
    MarkRole,
    RestoreLogin,
    SetConnectionLimit,
    SetPassword,
)
from nomad_pginit.scram import ScramKeys, derive_keys
from nomad_pginit.secret import Secret
from nomad_pginit.spec import PostgresSettings, Service
from nomad_pginit.state import (
    MANAGED_COMMENT,
    AdminState,
    ClusterState,
    DatabaseState,
    RoleState,
    SchemaState,
)
from nomad_pginit.stopping import Stopped, StopRequest

log = logging.getLogger(__name__)

# What psycopg accepts as a statement: only ever built from sql.SQL literals.
Query = sql.SQL | sql.Composed

APPLICATION_NAME: Final = "nomad-pginit"
# libpq's connect_timeout, on every connection and probe: a listener that accepts
# and never answers, or a backend stuck at login, must not hold a run (2 is
# libpq's minimum).
CONNECT_TIMEOUT_SECONDS: Final = 2
# Our sessions' limits, sent at connection start: a statement waiting behind
# another session's lock gives up after LOCK_TIMEOUT (and says who held it), and
# none runs longer than STATEMENT_TIMEOUT.
LOCK_TIMEOUT_SECONDS: Final = 10
STATEMENT_TIMEOUT_SECONDS: Final = 300
ENV_STATEMENT_TIMEOUT: Final = "PGINIT_STATEMENT_TIMEOUT"
# Every admin session's search_path: pg_catalog, and temporary objects last.
SAFE_SEARCH_PATH: Final = "-c search_path=pg_catalog,pg_temp"
# TCP keepalives and a bound on unacknowledged data: a server host that vanishes
# (powered off, a black-holed route) ends the connection in about half a minute
# instead of never. Unix sockets ignore them.
KEEPALIVES: Final = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
# Past statement_timeout by this much, a statement's connection is frozen: the
# server would have ended it (it runs statement_timeout itself), so nothing comes.
FROZEN_MARGIN_SECONDS: Final = 30
FROZEN_CHECK_SECONDS: Final = 1.0
# One readiness probe (a ping, a login, one query) never takes longer than this:
# each step has its own bound but the query's is the server's own timeout.
PROBE_DEADLINE_SECONDS: Final = 30.0
# A statement running longer than this has the sessions that block it looked up.
SLOW_STATEMENT_SECONDS: Final = 1.0
# How often readiness is probed: PQping is cheap, and a poststart task should
# notice the server within a fraction of a second.
PROBE_INTERVAL_SECONDS: Final = 0.05
# While waiting, say again why every so often so the log shows the task is alive.
WAIT_REPORT_SECONDS: Final = 10.0
# What CREATE DATABASE copies, and so what nobody may be connected to meanwhile.
# The majors nomad-pginit runs on: 14 brought pg_database_owner; make
# test-matrix runs the real-server tests on each of them.
OLDEST_MAJOR: Final = 14
NEWEST_TESTED_MAJOR: Final = 18
_WARNED_MAJORS: set[int] = set()
TEMPLATE_DATABASE: Final = "template1"
# Serializes concurrent runs (two allocations during a redeploy): any constant
# bigint works, this one spells "pginit".
ADVISORY_LOCK_KEY: Final = 0x7067696E6974

# Settings that would copy a password statement (its SCRAM verifier) somewhere it
# stays: the server log (log_*, and debug_print_* which print the parse tree,
# settable by anyone) or pg_stat_statements' table. Each is switched off for the
# statement's transaction, where the admin may set it.
_STATEMENT_LOG_SETTINGS: Final = {
    "log_statement": "none",
    "log_min_duration_statement": "-1",
    "log_min_error_statement": "panic",
    "log_min_duration_sample": "-1",
    "log_transaction_sample_rate": "0",
    # DEBUG2 logs each extended-protocol Parse with its text ("parse <unnamed>: ...").
    "log_min_messages": "warning",
    "debug_print_parse": "off",
    "debug_print_rewritten": "off",
    "debug_print_plan": "off",
    "pg_stat_statements.track": "none",
    # pg_stat_activity shows a running statement's text to monitoring roles
    # (pg_read_all_stats), and a deadlock report quotes it in the server log.
    "track_activities": "off",
}
# Settings decided when a transaction starts, not per statement: switched off for
# the session before BEGIN (and left off: our sessions need no sampling).
_SESSION_LOG_SETTINGS: Final = frozenset({"log_transaction_sample_rate"})
# Switched off when the admin may, but no reason for a warning when it may not:
# the text is visible only while the statement runs, to roles that monitor the server.
_TRANSIENT_SETTINGS: Final = frozenset({"track_activities"})
# log_min_messages at these levels logs the text of every statement parsed.
_LOGS_PARSED_STATEMENTS: Final = frozenset({"debug5", "debug4", "debug3", "debug2"})
# Levels at which log_min_error_statement logs a statement that fails with ERROR.
_LOGS_FAILED_STATEMENTS: Final = frozenset(
    {"debug5", "debug4", "debug3", "debug2", "debug1", "info", "notice", "warning", "error"}
)


def _would_keep_statement(name: str, value: str, settings: Mapping[str, str]) -> bool:
    """Whether ``name`` at ``value`` logs (or stores) a password statement."""
    match name:
        case "log_statement":
            return value in ("ddl", "mod", "all")
        case "log_min_duration_statement" | "log_min_duration_sample":
            return value != "-1"
        case "log_transaction_sample_rate":
            return value not in ("0", "0.0")
        case "log_min_error_statement":
            return value in _LOGS_FAILED_STATEMENTS  # when the statement fails
        case "log_min_messages":
            return value in _LOGS_PARSED_STATEMENTS
        case "track_activities":
            return False  # visible while it runs, kept nowhere
        case "pg_stat_statements.track":
            return value != "none" and settings.get("pg_stat_statements.track_utility") == "on"
    return value == "on"  # debug_print_*


# SQLSTATEs that mean "someone else created it first": the state we want exists.
_ALREADY_EXISTS = (
    psycopg.errors.DuplicateObject,  # 42710
    psycopg.errors.UniqueViolation,  # 23505: concurrent inserts into the catalogs
    psycopg.errors.DuplicateDatabase,  # 42P04
)

# Connection failures that waiting will not cure.
_LOGIN_FAILURES: Final = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied for database",
    "must have connect",
)


@dataclass(frozen=True)
class Target:
    """Where and as whom to connect as the admin. The password never appears in ``conninfo``."""

    conninfo: str
    password: Secret | None
    description: str
    # The admin's SCRAM keys, when known: libpq then skips PBKDF2 on every login.
    scram_keys: ScramKeys | None = None
    # How long our statements wait behind another session's lock, in seconds.
    lock_timeout: float = LOCK_TIMEOUT_SECONDS
    # How long the server lets one of our statements run (PGINIT_STATEMENT_TIMEOUT).
    statement_timeout: float = STATEMENT_TIMEOUT_SECONDS

    @functools.cached_property
    def secret_conninfo(self) -> str:
        """The full conninfo, password and keys included: for psycopg only, never for logs
        (nor is a connection's ``info.dsn``: psycopg hides the password there, not the keys).

        Built once: parsing a conninfo is pure Python, and a run connects once per
        database.
        """
        given = conninfo_to_dict(self.conninfo)
        extra: dict[str, str | int] = {
            **{key: value for key, value in KEEPALIVES.items() if key not in given},
            **_auth_guard(self.conninfo),
            "application_name": APPLICATION_NAME,
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "options": _session_options(self.conninfo, self.lock_timeout, self.statement_timeout),
        }
        if self.password is not None:
            extra["password"] = self.password.reveal()
        if self.scram_keys is not None:
            extra["scram_client_key"] = base64.b64encode(self.scram_keys.client_key).decode()
            extra["scram_server_key"] = base64.b64encode(self.scram_keys.server_key).decode()
        return make_conninfo(self.conninfo, **extra)

    @functools.cached_property
    def ping_conninfo(self) -> bytes:
        """What PQping is given: the target, never longer than the connect timeout."""
        return make_conninfo(self.conninfo, connect_timeout=CONNECT_TIMEOUT_SECONDS).encode()

    def with_statement_timeout(self, seconds: float) -> Target:
        """The same target, the server ending any of its statements after ``seconds``."""
        return replace(self, statement_timeout=seconds)

    @property
    def frozen_after(self) -> float:
        """No answer this long after a statement started: the connection is frozen, for
        the server would have ended the statement (statement_timeout) well before."""
        return self.statement_timeout + min(FROZEN_MARGIN_SECONDS, self.statement_timeout)

    def with_lock_timeout(self, seconds: float) -> Target:
        """The same target, its statements waiting at most ``seconds`` behind a lock."""
        return replace(self, lock_timeout=seconds)

    def with_password(self, password: Secret) -> Target:
        """The same target, logging in with ``password`` (the admin's, read from Vault)."""
        return replace(self, password=password, scram_keys=None)


def _session_options(
    conninfo: str, lock_timeout: float, statement_timeout: float = STATEMENT_TIMEOUT_SECONDS
) -> str:
    """libpq's options with our sessions' lock and statement timeouts first, so that the
    DSN's own options (or PGOPTIONS, which a conninfo with options would hide) win, and
    the search_path last, so that nothing overrides it.

    The admin's sessions resolve every function and operator in pg_catalog only:
    a service's role owns schema public in its database (pg_database_owner), and
    a function it plants there that matches a call better than pg_catalog's
    would run with the admin's privileges (CVE-2018-1058).
    """
    theirs = conninfo_to_dict(conninfo).get("options") or os.environ.get("PGOPTIONS") or ""
    # At least 1 ms: lock_timeout = 0 would mean waiting for ever.
    ours = (
        f"-c lock_timeout={max(1, round(lock_timeout * 1000))}ms "
        f"-c statement_timeout={max(1, round(statement_timeout * 1000))}ms"
    )
    return f"{ours} {theirs} {SAFE_SEARCH_PATH}".replace("  ", " ").strip()


@functools.cache
def _libpq_takes_require_auth() -> bool:
    """libpq 16 added require_auth."""
    return any(option.keyword == b"require_auth" for option in pq.Conninfo.get_defaults())


def _auth_guard(conninfo: str) -> dict[str, str]:
    """Never answer a server that asks for the password in clear text: whatever runs
    at the address (a mistyped host, a hijacked name) would get the password as it
    is. SCRAM (and MD5, for clusters that still use it) prove the password without
    sending it. A DSN that sets require_auth itself keeps its own."""
    if not _libpq_takes_require_auth() or "require_auth" in conninfo_to_dict(conninfo):
        return {}
    return {"require_auth": "!password"}


def _authentication_failed(err: psycopg.OperationalError) -> bool:
    # A failed connection carries no SQLSTATE; the server's message is all there is.
    return err.sqlstate == "28P01" or "password authentication failed" in str(err)


def _libpq_takes_scram_keys() -> bool:
    """libpq 18 added scram_client_key and scram_server_key; older ones refuse them."""
    return any(option.keyword == b"scram_client_key" for option in pq.Conninfo.get_defaults())


def _connect(target: Target, dbname: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
    """A connection as the admin (to ``dbname``, else the DSN's database)."""
    if dbname is None:
        return psycopg.connect(target.secret_conninfo, autocommit=True)
    return psycopg.connect(target.secret_conninfo, autocommit=True, dbname=dbname)


def target(settings: PostgresSettings) -> Target:
    """The admin's connection target from the services file; libpq's environment fills the rest."""
    try:
        params = conninfo_to_dict(settings.dsn)
    except psycopg.ProgrammingError as err:
        raise ConfigError(f"[postgres] dsn is not a valid connection string: {err}") from err
    password: Secret | None = None
    if settings.password_file is not None:
        password = _read_password_file(settings.password_file)
    elif "password" in params:
        password = Secret(str(params.pop("password")))
    conninfo = make_conninfo("", **{k: v for k, v in params.items() if v is not None})
    return Target(conninfo=conninfo, password=password, description=_describe(conninfo))


def _read_password_file(path: Path) -> Secret:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            f"cannot read the admin password file {path} ([postgres] password_file): "
            f"{err.strerror}; check the template block that writes it"
        ) from err
    except UnicodeDecodeError:
        # Never the error's own text: it quotes the bytes around the bad one.
        raise ConfigError(
            f"the admin password file {path} is not UTF-8 text: write the password as text"
        ) from None
    # Template blocks and `echo` add a trailing newline that is not part of the password.
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"the admin password file {path} is empty")
    if "\x00" in password:
        raise ConfigError(
            f"the admin password file {path} contains a NUL character: libpq would log in with "
            "what comes before it; write the password alone"
        )
    return Secret(password)


def _describe(conninfo: str) -> str:
    """user@host:port/dbname as libpq will resolve it, environment included."""
    values = {
        option.keyword.decode(): option.val.decode() if option.val is not None else ""
        for option in pq.Conninfo.parse(conninfo.encode())
    }
    defaults = {
        option.keyword.decode(): option.val.decode() if option.val is not None else ""
        for option in pq.Conninfo.get_defaults()
    }

    def value(key: str, fallback: str) -> str:
        return values.get(key) or defaults.get(key) or fallback

    user = value("user", "(OS user)")
    host = value("host", "local socket")
    return f"{user}@{host}:{value('port', '5432')}/{value('dbname', user)}"


# --- statements in flight ------------------------------------------------------------


@dataclass
class _Running:
    """One statement PostgreSQL is running for us."""

    conn: psycopg.Connection[tuple[object, ...]]
    pid: int
    started: float
    where: str  # the target's description, for messages
    lock_timeout: float
    frozen_after: float = float("inf")
    statement_timeout: float = STATEMENT_TIMEOUT_SECONDS
    # The sessions that block it, looked up once it is slow: "session 4242 (user ...)".
    blockers: str = ""
    # Cancelled because the run was asked to stop.
    cancelled: bool = False


class _InFlight:
    """The statements running for us: cancelled on a stop request, and the sessions
    blocking a slow one named, for the message if its lock wait times out.

    A watcher thread lives while statements run; it opens a connection of its
    own only when one of them has run longer than SLOW_STATEMENT_SECONDS, and
    asks pg_blocking_pids() who holds it up.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, _Running] = {}
        self._watcher: threading.Thread | None = None
        self._target: Target | None = None
        # Told about a statement that has run far longer than statement_timeout: the
        # server would have ended it, so the connection is frozen (deadman thread).
        self._on_frozen: list[Callable[[str], None]] = []
        self._deadman: threading.Thread | None = None
        self._frozen_reported: set[int] = set()

    def on_frozen(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback`` with a description when a statement is frozen; returns the
        function that takes it back."""
        with self._lock:
            self._on_frozen.append(callback)
            if self._deadman is None:
                self._deadman = threading.Thread(
                    target=self._watch_frozen, name="frozen-statements", daemon=True
                )
                self._deadman.start()

        def remove() -> None:
            with self._lock:
                if callback in self._on_frozen:
                    self._on_frozen.remove(callback)

        return remove

    def _watch_frozen(self) -> None:
        """No I/O here: whatever is stuck, this thread is not."""
        while True:
            time.sleep(FROZEN_CHECK_SECONDS)
            with self._lock:
                now = time.monotonic()
                frozen = [
                    item
                    for key, item in self._running.items()
                    if now - item.started > item.frozen_after and key not in self._frozen_reported
                ]
                self._frozen_reported.update(id(item) for item in frozen)
                callbacks = list(self._on_frozen)
            for item in frozen:
                what = (
                    f"PostgreSQL at {item.where} has not answered a statement for "
                    f"{round(now - item.started)}s, although the server ends any statement "
                    "before (statement_timeout): the connection is frozen (a host that "
                    "vanished, a stalled proxy or pooler)"
                )
                for callback in callbacks:
                    callback(what)

    @contextmanager
    def track(
        self, conn: psycopg.Connection[tuple[object, ...]], target: Target
    ) -> Iterator[_Running]:
        running = _Running(
            conn,
            conn.info.backend_pid,
            time.monotonic(),
            target.description,
            target.lock_timeout,
            target.frozen_after,
            target.statement_timeout,
        )
        with self._lock:
            self._running[id(running)] = running
            self._target = target
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="statement-watcher", daemon=True
                )
                self._watcher.start()
        try:
            yield running
        finally:
            with self._lock:
                self._running.pop(id(running), None)

    def cancel_all(self) -> None:
        """Cancel every statement running for us (a stop request's grace is over)."""
        with self._lock:
            running = list(self._running.values())
        for item in running:
            item.cancelled = True
            with suppress(psycopg.Error):
                item.conn.cancel_safe(timeout=CONNECT_TIMEOUT_SECONDS)

    def _watch(self) -> None:
        monitor: psycopg.Connection[tuple[object, ...]] | None = None
        try:
            while True:
                time.sleep(SLOW_STATEMENT_SECONDS / 2)
                with self._lock:
                    if not self._running:
                        self._watcher = None
                        return
                    now = time.monotonic()
                    slow = [
                        item
                        for item in self._running.values()
                        if now - item.started >= SLOW_STATEMENT_SECONDS and not item.cancelled
                    ]
                    target = self._target
                if not slow or target is None:
                    continue
                try:
                    if monitor is None or monitor.closed:
                        monitor = _connect(target)
                    rows = monitor.execute(_BLOCKERS, ([item.pid for item in slow],)).fetchall()
                except psycopg.Error:
                    continue  # the statement's own error will say what it can
                described: dict[int, list[str]] = {}
                for waiting, pid, user, application, state, since in rows:
                    described.setdefault(int(str(waiting)), []).append(
                        f'session {pid} (user "{user}", application "{application or "-"}", '
                        f"{state or 'busy'}{f' since {since}' if since else ''})"
                    )
                for item in slow:
                    if item.pid in described:
                        item.blockers = ", ".join(described[item.pid])
        finally:
            if monitor is not None:
                monitor.close()


# Predefined roles that reach beyond one database: a service's role that is a member
# (directly or not) could read or write every tenant's data, or the server's files.
_PRIVILEGED_ROLES: Final = (
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_signal_backend",
    "pg_create_subscription",
    "pg_checkpoint",
    "pg_read_all_stats",
    "pg_monitor",
    "pg_use_reserved_connections",
    "pg_maintain",  # PostgreSQL 17+
    "pg_signal_autovacuum_worker",  # PostgreSQL 18+
    # Superuser-only settings (primary_conninfo, with its password), and locks on any table.
    "pg_read_all_settings",
    "pg_stat_scan_tables",
)
# What makes role r more than a service's login, for the holder of its password:
# its own attributes; the roles it is a member of, directly or not, that are
# superusers, have such attributes, are privileged predefined roles (parameter
# "privileged": _PRIVILEGED_ROLES) or are another service's role (parameter
# "users": every service's user); privileges on the system catalogs or their
# functions granted to it or those roles (pg_authid, pg_read_binary_file: read in
# the admin's database, where such grants matter); and members of its own, who
# would own the service's database through it (the admin aside).
_ELEVATED_TEXT: Final = """
    ARRAY(
        WITH RECURSIVE up(roleid) AS (
            SELECT r.oid
            UNION
            SELECT m.roleid FROM pg_auth_members m JOIN up ON m.member = up.roleid
        )
        SELECT attribute FROM unnest(ARRAY[
            CASE WHEN r.rolcreatedb THEN 'has CREATEDB' END,
            CASE WHEN r.rolcreaterole THEN 'has CREATEROLE' END,
            CASE WHEN r.rolreplication THEN 'has REPLICATION' END,
            CASE WHEN r.rolbypassrls THEN 'has BYPASSRLS' END]) AS attribute
        WHERE attribute IS NOT NULL
        UNION ALL
        (SELECT 'is a member of "' || g.rolname || '"' ||
                CASE WHEN g.rolsuper THEN ' (a superuser)'
                     WHEN g.rolname = ANY(%(users)s) THEN ' (another service''s role)'
                     ELSE '' END
         FROM up JOIN pg_roles g ON g.oid = up.roleid
         WHERE g.oid <> r.oid
               AND (g.rolsuper OR g.rolcreatedb OR g.rolcreaterole OR g.rolreplication
                    OR g.rolbypassrls OR g.rolname = ANY(%(privileged)s)
                    OR g.rolname = ANY(%(users)s))
         ORDER BY 1)
        UNION ALL
        SELECT 'holds privileges on system catalog objects (' ||
               string_agg(DISTINCT name, ', ' ORDER BY name) || ')'
        FROM (SELECT c.relname::text AS name, a.grantee
              FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
              WHERE c.relnamespace = 'pg_catalog'::regnamespace
              UNION ALL
              SELECT p.proname::text, a.grantee
              FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
              WHERE p.pronamespace = 'pg_catalog'::regnamespace) AS granted
        WHERE granted.grantee IN (SELECT roleid FROM up)
        HAVING count(*) > 0
        UNION ALL
        SELECT 'has members (' || string_agg('"' || u.rolname || '"', ', ' ORDER BY u.rolname)
               || ') who would own the service''s database through it'
        FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
        WHERE m.roleid = r.oid AND u.rolname <> current_user
        HAVING count(*) > 0
        {parameters}
    )
    """
# PostgreSQL 15+: SET or ALTER SYSTEM granted on a parameter (archive_command runs a
# shell command as the server), to the role or a role it inherits from.
_PARAMETER_PRIVILEGES: Final = """
        UNION ALL
        SELECT 'holds privileges on parameters (' ||
               string_agg(DISTINCT p.parname, ', ' ORDER BY p.parname) || ')'
        FROM pg_parameter_acl p CROSS JOIN LATERAL aclexplode(p.paracl) a
        WHERE a.grantee IN (SELECT roleid FROM up)
        HAVING count(*) > 0
"""


def _elevated(server_version: int) -> sql.SQL:
    """What makes each role r more than a service's login (see above), on this version."""
    parameters = _PARAMETER_PRIVILEGES if server_version >= 150000 else ""
    return sql.SQL(_ELEVATED_TEXT.replace("{parameters}", parameters))


# Who blocks each waiting backend; never their query, which may hold a password.
# Whether the admin may hand the role a database (CREATE/ALTER DATABASE ... OWNER)
# and act as the database's owner. Up to 15, membership. From 16 on, also the SET
# and INHERIT options of that membership: the one CREATE ROLE gives a CREATEROLE
# admin carries ADMIN OPTION alone (createrole_self_grant adds the others).
_ADMIN_IS_MEMBER: Final = sql.SQL("pg_has_role(current_user, r.oid, 'MEMBER')")
_ADMIN_IS_MEMBER_16: Final = sql.SQL(
    "pg_has_role(current_user, r.oid, 'SET') AND pg_has_role(current_user, r.oid, 'USAGE')"
)
# Whether the admin may ALTER, COMMENT ON and GRANT the role: from 16 on, a CREATEROLE
# admin needs ADMIN OPTION on it, which it holds on the roles it created.
_ADMIN_MAY_ALTER_16: Final = sql.SQL("pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION')")

_BLOCKERS: Final = sql.SQL(
    """
    SELECT w.pid, b.pid, b.usename, b.application_name, b.state,
           to_char(b.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    FROM unnest(%s::int[]) AS w(pid)
    CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocker(pid)
    JOIN pg_stat_activity b ON b.pid = blocker.pid
    ORDER BY w.pid, b.pid
    """
)

_IN_FLIGHT: Final = _InFlight()
# The admin's exposed settings already warned of (watch mode warns once, not per pass).
_WARNED: Final[set[tuple[str, ...]]] = set()


def cancel_running() -> None:
    """Cancel every statement PostgreSQL runs for this process (for a stop request)."""
    _IN_FLIGHT.cancel_all()


def on_frozen(callback: Callable[[str], None]) -> Callable[[], None]:
    """Call ``callback`` when a statement's connection is frozen (no answer far past
    statement_timeout); returns the function that takes it back."""
    return _IN_FLIGHT.on_frozen(callback)


def _interrupted(err: psycopg.Error, running: _Running, doing: str) -> PginitError | None:
    """A statement that a stop request, a timeout or another session's lock cut short."""
    if isinstance(err, psycopg.errors.QueryCanceled):
        if running.cancelled:
            return Stopped(f"stopped while trying to {doing}")
        return ServiceError(
            f"cannot {doing}: the statement ran longer than the session's statement_timeout "
            f"({running.statement_timeout:g}s: {ENV_STATEMENT_TIMEOUT}; [postgres] dsn options "
            "or PGOPTIONS may set another): "
            f"{err.diag.message_primary or 'canceled'}"
        )
    if isinstance(err, psycopg.errors.LockNotAvailable):
        who = (
            f"held by {running.blockers}"
            if running.blockers
            else "held by another session (gone by now)"
        )
        return ServiceError(
            f"cannot {doing}: waited {running.lock_timeout:g}s for a lock {who}; end that "
            "session's transaction (or SELECT pg_terminate_backend(<pid>)) and run again"
        )
    return None


# --- readiness -----------------------------------------------------------------


@dataclass(frozen=True)
class Readiness:
    """How long to wait for PostgreSQL, and how often to look.

    The Nomad task probes often until a deadline; the standalone provisioner's
    users expect a few attempts some seconds apart. One waiting loop serves both.
    """

    timeout: float
    probe_interval: float = PROBE_INTERVAL_SECONDS

    @classmethod
    def attempts(cls, count: int, interval: float) -> Readiness:
        """``count`` attempts ``interval`` seconds apart."""
        return cls(timeout=max(0, count - 1) * interval, probe_interval=interval)


def wait_until_ready(
    target: Target,
    readiness: Readiness,
    *,
    writable: bool = True,
    stop: StopRequest | None = None,
) -> Admin:
    """Wait like pg_isready until the server accepts the admin (on a writable primary,
    unless ``writable`` is False: read-only checks may run on a standby).

    Raises PostgresUnavailable when the deadline passes or the admin cannot log in,
    Stopped as soon as ``stop`` is requested.
    """
    stop = stop or StopRequest()
    deadline = time.monotonic() + readiness.timeout
    started = time.monotonic()
    last_reason = ""
    last_report = 0.0
    while True:
        # A probe is bounded by the connect timeout; the stop request does not wait for it.
        attempt = stop.call(
            lambda: _probe(target, writable=writable),
            "waiting for PostgreSQL",
            deadline=PROBE_DEADLINE_SECONDS,
            too_slow=lambda seconds: PostgresUnavailable(
                f"PostgreSQL at {target.description} took a connection and then did not answer "
                f"for {seconds:g}s (a stalled proxy or pooler?): giving up"
            ),
        )
        if isinstance(attempt, Admin):
            waited = time.monotonic() - started
            if last_reason:
                log.info("PostgreSQL at %s is ready after %.1fs", target.description, waited)
            return attempt
        now = time.monotonic()
        if attempt != last_reason or now - last_report >= WAIT_REPORT_SECONDS:
            remaining = max(0.0, deadline - now)
            log.info(
                "waiting for PostgreSQL at %s: %s (%.0fs left)",
                target.description,
                attempt,
                remaining,
            )
            last_reason, last_report = attempt, now
        if now >= deadline:
            raise PostgresUnavailable(
                f"PostgreSQL at {target.description} was not ready within {readiness.timeout:g}s "
                f"({attempt}); check the postgres task (nomad alloc logs <alloc> postgres) "
                "or raise --wait-timeout"
            )
        if stop.wait(min(readiness.probe_interval, max(0.0, deadline - now))):
            stop.check("PostgreSQL was ready")


def _check_supported(conn: psycopg.Connection[tuple[object, ...]], target: Target) -> None:
    """Refuse a major older than OLDEST_MAJOR (no pg_database_owner, no
    has_parameter_privilege); warn, once, of one newer than the newest tested."""
    major = conn.info.server_version // 10000
    if major < OLDEST_MAJOR:
        conn.close()
        raise PostgresUnavailable(
            f"PostgreSQL at {target.description} is version {major}: nomad-pginit supports "
            f"PostgreSQL {OLDEST_MAJOR} to {NEWEST_TESTED_MAJOR}; upgrade the server "
            "(pg_upgrade, or a dump and restore)"
        )
    if major > NEWEST_TESTED_MAJOR and major not in _WARNED_MAJORS:
        _WARNED_MAJORS.add(major)
        log.warning(
            "PostgreSQL at %s is version %d, newer than any nomad-pginit was tested with "
            "(%d to %d): check the summary and nomad-pginit plan",
            target.description,
            major,
            OLDEST_MAJOR,
            NEWEST_TESTED_MAJOR,
        )


def _probe(target: Target, *, writable: bool) -> Admin | str:
    """A connected Admin when ready, else why not."""
    status = pq.PGconn.ping(target.ping_conninfo)
    if status == pq.Ping.NO_ATTEMPT:
        raise ConfigError(
            f"the connection parameters for {target.description} are invalid: "
            "check [postgres] dsn and the PG* environment variables"
        )
    if status == pq.Ping.NO_RESPONSE:
        _refuse_tls_mismatch(target)
        return "no response (not started, or not listening yet)"
    if status == pq.Ping.REJECT:
        return "rejecting connections (starting up, shutting down, or recovering)"
    try:
        conn = _connect(target)
    except psycopg.OperationalError as err:
        message = str(err)
        if "authentication method requirement" in message:
            # _auth_guard: the server asked for the password in clear text.
            raise PostgresUnavailable(
                f"PostgreSQL at {target.description} asked for the admin's password in clear "
                "text, and nomad-pginit never sends it so (whatever answers there would have "
                "it): use scram-sha-256 in pg_hba.conf, or, if clear text over TLS is "
                "intended, say so with require_auth=password in [postgres] dsn"
            ) from err
        if "invalid value for parameter" in message or "unrecognized configuration" in message:
            # The server refuses the session's options at every login: no wait cures it.
            raise ConfigError(
                f"PostgreSQL at {target.description} refuses the connection's options "
                f"({_last_line(message)}): fix the options in [postgres] dsn, or PGOPTIONS"
            ) from err
        if any(marker in message for marker in _LOGIN_FAILURES):
            raise PostgresUnavailable(
                f"the admin cannot log in to PostgreSQL at {target.description}: "
                f"{_last_line(message)}; check the admin's password ([postgres] password_secret "
                "in Vault, password_file, or PGPASSWORD) and the user in [postgres] dsn"
            ) from err
        return f"not accepting the admin yet: {_last_line(message)}"
    _check_supported(conn, target)
    if not writable:
        return Admin(conn, target)
    row = conn.execute("SELECT pg_is_in_recovery(), current_database()").fetchone()
    if row is None or row[0]:
        conn.close()
        return "in recovery (a standby, or a primary still replaying WAL): not writable"
    if row[1] == TEMPLATE_DATABASE:
        conn.close()
        # Our own workers would be "other users" of the template every new database copies.
        raise ConfigError(
            f"the admin connects to database {TEMPLATE_DATABASE} ([postgres] dsn or "
            f"PGDATABASE): CREATE DATABASE copies {TEMPLATE_DATABASE} and fails while anyone "
            "is connected to it; connect to postgres instead"
        )
    return Admin(conn, target)


# What a server that answers says when the connection's TLS settings cannot work:
# waiting would not change it, so it is said at once.
_TLS_MISMATCHES: Final = (
    "does not support SSL",
    "certificate verify failed",
    "SSL error",
    "root certificate file",
    "server certificate for",
)


def _refuse_tls_mismatch(target: Target) -> None:
    """PQping says "no response" when sslmode asks for TLS the server cannot give (or
    its certificate is refused): a connection attempt tells which, and that is final."""
    params = conninfo_to_dict(target.conninfo)
    sslmode = str(params.get("sslmode") or os.environ.get("PGSSLMODE") or "")
    if sslmode not in ("require", "verify-ca", "verify-full"):
        return
    try:
        psycopg.connect(target.secret_conninfo, autocommit=True).close()
    except psycopg.OperationalError as err:
        message = _last_line(str(err))
        if any(marker in message for marker in _TLS_MISMATCHES):
            raise PostgresUnavailable(
                f"PostgreSQL at {target.description} cannot be reached with sslmode={sslmode} "
                f"([postgres] dsn or PGSSLMODE): {message}; enable SSL on the server, or "
                "change sslmode (and sslrootcert for verify-ca/verify-full)"
            ) from err


def _sql_name(name: str) -> str:
    """``name`` as an SQL identifier in a message the operator may paste into psql."""
    return '"' + name.replace('"', '""') + '"'


def _last_line(message: str) -> str:
    """libpq's message on one line: 'connection failed: ... FATAL: reason', or
    'server closed the connection unexpectedly This probably means ...'."""
    lines = [" ".join(line.split()) for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return message
    if len(lines) > 1 and "FATAL:" in lines[-1]:
        # Connection failures end with the server's own reason.
        return lines[-1].split("FATAL:", 1)[1].strip()
    return " ".join(lines)


# --- observe and apply ------------------------------------------------------------


class Admin:
    """The admin's connection: observes the catalogs and applies actions."""

    def __init__(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        target: Target,
        state: AdminState | None = None,
        *,
        pool: AdminPool | None = None,
    ) -> None:
        self._conn = conn
        self._target = target
        self._admin = state
        # Whether the session-level settings (_SESSION_LOG_SETTINGS) are off already.
        self._session_silenced = False
        # A worker's connection: the pool connects to the databases too, keys and all.
        self._pool = pool

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def server_version(self) -> int:
        return self._conn.info.server_version

    @property
    def state(self) -> AdminState:
        """Who the admin is and what it may do (read once per run)."""
        return self._observe_admin()

    @contextmanager
    def exclusive(self, timeout: float) -> Iterator[None]:
        """Hold the advisory lock that serializes runs against this cluster, waiting at
        most ``timeout`` seconds for another run to release it."""
        if self.server_version >= 140000:
            # The lock lives as long as this connection, which idles while workers
            # run: a server-side idle timeout must not end it (and the lock) early.
            self._execute(sql.SQL("SET idle_session_timeout = 0"))
        locked = self._scalar(sql.SQL("SELECT pg_try_advisory_lock(%s)"), (ADVISORY_LOCK_KEY,))
        if not locked:
            log.info("another nomad-pginit run holds the lock on this cluster: waiting for it")
            # At least 1 ms: lock_timeout = 0 would mean waiting for ever.
            milliseconds = max(1, round(timeout * 1000))
            self._execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(milliseconds)))
            # The statement lasts as long as the wait, which may be longer than our
            # statement_timeout: the lock wait, not that, ends it.
            waiting = self._target.with_statement_timeout(
                max(self._target.statement_timeout, timeout + 1)
            )
            self._execute(
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
                self._execute(sql.SQL("RESET lock_timeout"))
                self._execute(sql.SQL("RESET statement_timeout"))
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
        """Read everything the planner needs about these services, in a few bulk queries."""
        admin = self._observe_admin()
        users = [service.user for service in services]
        names = [service.database for service in services]
        marker = MANAGED_COMMENT
        verifier_query = (
            sql.SQL("(SELECT a.rolpassword FROM pg_authid a WHERE a.oid = r.oid)")
            if admin.can_read_verifiers
            else sql.SQL("NULL::text")
        )
        query = sql.SQL(
            """
            SELECT r.rolname, r.rolcanlogin, r.rolsuper, {verifier},
                   {member},
                   ARRAY(SELECT d.datname::text FROM pg_database d
                         WHERE d.datdba = r.oid ORDER BY d.datname),
                   r.rolconnlimit,
                   shobj_description(r.oid, 'pg_authid') IS NOT DISTINCT FROM %(marker)s,
                   CASE WHEN r.rolvaliduntil <> 'infinity' THEN r.rolvaliduntil::text END,
                   r.rolvaliduntil < now(),
                   {elevated},
                   ARRAY(SELECT DISTINCT d.datname::text
                         FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
                         WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = r.oid
                               AND s.deptype = 'o'
                         ORDER BY 1),
                   {may_alter}
            FROM pg_roles r
            WHERE r.rolname = ANY(%(users)s)
            """
        ).format(
            verifier=verifier_query,
            elevated=_elevated(self.server_version),
            member=_ADMIN_IS_MEMBER_16 if self.server_version >= 160000 else _ADMIN_IS_MEMBER,
            may_alter=(_ADMIN_MAY_ALTER_16 if self.server_version >= 160000 else sql.SQL("true")),
        )
        roles: dict[str, RoleState] = {}
        params = {"marker": marker, "privileged": list(_PRIVILEGED_ROLES), "users": users}
        for row in self._rows(query, params):
            name, login, superuser, verifier, member, owned, limit, managed = row[:8]
            valid_until, expired, elevated, owns_objects_in, may_alter = row[8:]
            roles[str(name)] = RoleState(
                name=str(name),
                can_login=bool(login),
                superuser=bool(superuser),
                verifier=str(verifier) if verifier is not None else None,
                admin_is_member=bool(member),
                admin_may_alter=bool(may_alter),
                owned_databases=tuple(owned) if isinstance(owned, list) else (),
                connection_limit=int(str(limit)),
                managed=bool(managed),
                valid_until=str(valid_until) if valid_until is not None else None,
                expired=bool(expired),
                elevated=tuple(str(item) for item in elevated)
                if isinstance(elevated, list)
                else (),
                owns_objects_in=tuple(str(item) for item in owns_objects_in)
                if isinstance(owns_objects_in, list)
                else (),
            )
        databases: dict[str, DatabaseState] = {}
        for name, owner, public, managed in self._rows(
            sql.SQL(
                """
                SELECT d.datname, pg_get_userbyid(d.datdba),
                       ARRAY(SELECT DISTINCT a.privilege_type::text
                             FROM aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba))) a
                             WHERE a.grantee = 0),
                       shobj_description(d.oid, 'pg_database') IS NOT DISTINCT FROM %s
                FROM pg_database d
                WHERE d.datname = ANY(%s)
                """
            ),
            (marker, names),
        ):
            databases[str(name)] = DatabaseState(
                name=str(name),
                owner=str(owner),
                public_privileges=frozenset(public) if isinstance(public, list) else frozenset(),
                managed=bool(managed),
            )
        privileges: dict[tuple[str, str], frozenset[str]] = {}
        for database, role, create, connect, temporary in self._rows(
            sql.SQL(
                """
                SELECT p.db, p.role,
                       has_database_privilege(p.role, p.db, 'CREATE'),
                       has_database_privilege(p.role, p.db, 'CONNECT'),
                       has_database_privilege(p.role, p.db, 'TEMPORARY')
                FROM unnest(%s::text[], %s::text[]) AS p(db, role)
                WHERE EXISTS (SELECT FROM pg_roles WHERE rolname = p.role)
                  AND EXISTS (SELECT FROM pg_database WHERE datname = p.db)
                """
            ),
            (names, users),
        ):
            held = {
                privilege
                for privilege, has in (
                    ("CREATE", create),
                    ("CONNECT", connect),
                    ("TEMPORARY", temporary),
                )
                if has
            }
            privileges[(str(database), str(role))] = frozenset(held)
        available: frozenset[str] = frozenset()
        if any(service.extensions for service in services):
            available = frozenset(
                str(row[0])
                for row in self._rows(sql.SQL("SELECT name FROM pg_available_extensions"))
            )
        managed_roles: dict[str, bool] = {}
        protected: dict[str, str] = {}
        for name, login, superuser, is_admin, group, elevated in self._rows(
            sql.SQL(
                """
                SELECT r.rolname, r.rolcanlogin, r.rolsuper, r.rolname = current_user,
                       EXISTS (SELECT FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
                               WHERE m.roleid = r.oid AND u.rolname <> current_user),
                       {elevated}
                FROM pg_roles r
                WHERE shobj_description(r.oid, 'pg_authid') = %(marker)s
                """
            ).format(elevated=_elevated(self.server_version)),
            {"marker": marker, "privileged": list(_PRIVILEGED_ROLES), "users": users},
        ):
            managed_roles[str(name)] = bool(login)
            # The comment alone proves nothing: anyone may have put it there.
            if superuser:
                protected[str(name)] = "it is a superuser"
            elif is_admin:
                protected[str(name)] = "it is the admin nomad-pginit logs in as"
            elif group:
                protected[str(name)] = "other roles are members of it (a group role)"
            elif isinstance(elevated, list) and elevated:
                protected[str(name)] = f"it {', '.join(str(item) for item in elevated)}"
        managed_databases = frozenset(
            str(row[0])
            for row in self._rows(
                sql.SQL(
                    "SELECT datname FROM pg_database "
                    "WHERE shobj_description(oid, 'pg_database') = %s"
                ),
                (marker,),
            )
        )
        return ClusterState(
            admin=admin,
            roles=roles,
            databases=databases,
            database_privileges=privileges,
            available_extensions=available,
            managed_roles=managed_roles,
            managed_databases=managed_databases,
            protected_roles=protected,
        )

    def _observe_admin(self) -> AdminState:
        if self._admin is not None:
            return self._admin
        row = self._row(
            sql.SQL(
                "SELECT current_user, rolsuper, rolcreatedb, rolcreaterole, "
                "has_table_privilege('pg_authid', 'SELECT') "
                "FROM pg_roles WHERE rolname = current_user"
            )
        )
        name, superuser, createdb, createrole, read_authid = row
        # Who may set each: a superuser anything, anyone a "user" setting, others
        # what they were granted (GRANT SET ON PARAMETER, PostgreSQL 15+).
        granted = (
            sql.SQL("has_parameter_privilege(name, 'SET')")
            if self.server_version >= 150000
            else sql.SQL("false")
        )
        names = [*_STATEMENT_LOG_SETTINGS, "pg_stat_statements.track_utility"]
        settings: dict[str, str] = {}
        silenceable: set[str] = set()
        for setting, value, context, allowed in self._rows(
            sql.SQL(
                "SELECT name, setting, context, {} FROM pg_settings WHERE name = ANY(%s)"
            ).format(granted),
            (names,),
        ):
            settings[str(setting)] = str(value).lower()
            if setting in _STATEMENT_LOG_SETTINGS and (superuser or context == "user" or allowed):
                silenceable.add(str(setting))
        self._admin = AdminState(
            name=str(name),
            superuser=bool(superuser),
            createdb=bool(createdb),
            createrole=bool(createrole),
            can_read_verifiers=bool(read_authid),
            silenceable_settings=frozenset(silenceable),
        )
        exposed = [
            f"{setting} = {value}"
            for setting, value in settings.items()
            if setting in _STATEMENT_LOG_SETTINGS
            and setting not in silenceable
            and setting not in _TRANSIENT_SETTINGS
            and _would_keep_statement(setting, value, settings)
        ]
        if exposed and tuple(exposed) not in _WARNED:
            # Once per process: watch mode observes again at every pass.
            _WARNED.add(tuple(exposed))
            exposed_names = ", ".join(item.split(" = ")[0] for item in exposed)
            remedy = (
                f"GRANT SET ON PARAMETER {exposed_names} TO {name} avoids it"
                if self.server_version >= 150000
                # PostgreSQL 14 has no GRANT SET ON PARAMETER.
                else f"a superuser admin avoids it, or {exposed_names} set to keep no "
                f"statement (postgresql.conf, or ALTER ROLE {_sql_name(str(name))} SET ...)"
            )
            log.warning(
                'the admin "%s" may not switch off %s: the statements that set passwords '
                "may be logged or stored with their SCRAM verifiers (never the passwords "
                "themselves); %s",
                name,
                ", ".join(exposed),
                remedy,
            )
        return self._admin

    @contextmanager
    def workers(self) -> Iterator[AdminPool]:
        """Admin connections for worker threads, closed on the way out.

        Where the admin may read its own verifier and libpq takes SCRAM keys,
        they log in with the keys: a login then costs the client no PBKDF2,
        which is most of what one connection per database costs us.
        """
        target = self._target
        admin = self._observe_admin()
        if admin.can_read_verifiers and target.password is not None and _libpq_takes_scram_keys():
            verifier = self._scalar(
                sql.SQL("SELECT rolpassword FROM pg_authid WHERE rolname = current_user")
            )
            keys = derive_keys(
                str(verifier) if verifier is not None else None, target.password.reveal()
            )
            if keys is not None:
                target = replace(target, scram_keys=keys)
        pool = AdminPool(target, admin)
        try:
            yield pool
        finally:
            pool.close()

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

    def template_contents(self) -> SchemaState | None:
        """What every new database starts with: template1's schema public, as its owner
        holds it (through pg_database_owner), and its extensions. None if unreadable."""
        try:
            with self.database("template1") as session:
                return session.observe_schema("pg_database_owner")
        except ServiceError as err:
            log.info("cannot look into template1 (%s): checking each new database instead", err)
            return None

    def _alive(self) -> bool:
        """Whether the admin's own connection still works: is the server still there?"""
        try:
            self._conn.execute(sql.SQL("SELECT 1"))
        except psycopg.Error:
            return False
        return True

    def apply(self, action: Action) -> bool:
        """Run one cluster-level action. False when someone else had already done it."""
        admin = self._observe_admin()
        match action:
            case CreateRole(role=role, password=password):
                template = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
                return self._run_with_password(
                    action, template, role, password, admin=admin, then=_comment_on_role(role)
                )
            case SetPassword(role=role, password=password):
                template = sql.SQL("ALTER ROLE {} PASSWORD {}")
                return self._run_with_password(action, template, role, password, admin=admin)
            case RestoreLogin(role=role):
                return self._run(
                    action, sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role))
                )
            case GrantRoleToAdmin(role=role, admin=admin_name):
                # From 16 on, the membership must let the admin SET ROLE (to hand the
                # role a database) and inherit (to act as the database's owner).
                options = sql.SQL(
                    " WITH INHERIT TRUE, SET TRUE" if self.server_version >= 160000 else ""
                )
                statement = sql.SQL("GRANT {} TO {}{}").format(
                    sql.Identifier(role), sql.Identifier(admin_name), options
                )
                return self._run(action, statement)
            case CreateDatabase(database=database, owner=owner):
                # Autocommit: CREATE DATABASE cannot run inside a transaction block.
                statement = sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(owner)
                )
                created = self._run(action, statement)
                self._run(action, _comment_on_database(database))
                return created
            case ChangeDatabaseOwner(database=database, owner=owner):
                statement = sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(database), sql.Identifier(owner)
                )
                return self._run(action, statement)
            case GrantDatabase(database=database, role=role):
                statement = sql.SQL("GRANT ALL PRIVILEGES ON DATABASE {} TO {}").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
                return self._run(action, statement)
            case SetConnectionLimit(role=role, limit=limit):
                statement = sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                    sql.Identifier(role), sql.Literal(limit)
                )
                return self._run(action, statement)
            case MarkRole(role=role):
                return self._run(action, _comment_on_role(role))
            case MarkDatabase(database=database):
                return self._run(action, _comment_on_database(database))
            case IsolateDatabase(database=database, role=role):
                revoke = sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                    sql.Identifier(database)
                )
                done = self._run_together(
                    action,
                    [
                        revoke,
                        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                            sql.Identifier(database), sql.Identifier(role)
                        ),
                    ],
                )
                # That REVOKE, as the owner, leaves what other grantors gave PUBLIC,
                # without a word: each takes back its own.
                for grantor in self._public_grantors(database):
                    as_grantor = sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(grantor))
                    with suppress(ServiceError):  # may not SET ROLE: said just below
                        self._run_together(action, [as_grantor, revoke])
                if left := self._public_grantors(database):
                    raise ServiceError(
                        f"cannot {action.describe()}: PUBLIC may still connect through a grant "
                        f'by "{left[0]}", which only that role can take back: run REVOKE '
                        f"CONNECT, TEMPORARY ON DATABASE {_sql_name(database)} FROM PUBLIC as "
                        f"{_sql_name(left[0])}"
                    )
                return done
            case DisableRole(role=role):
                return self._run(
                    action, sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role))
                )
            case ClearValidUntil(role=role):
                return self._run(
                    action,
                    sql.SQL("ALTER ROLE {} VALID UNTIL 'infinity'").format(sql.Identifier(role)),
                )
        raise TypeError(f"not a cluster-level action: {action!r}")

    def _run_with_password(
        self,
        action: Action,
        statement: sql.SQL,
        role: str,
        password: Secret,
        *,
        admin: AdminState,
        then: Query | None = None,
    ) -> bool:
        """Run ``statement`` with the role's verifier, statement logging off, and ``then``
        in the same transaction."""
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
            self._execute(
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
        rows = self._rows(
            sql.SQL(
                "SELECT DISTINCT pg_get_userbyid(a.grantor) "
                "FROM pg_database d, aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba))) a "
                "WHERE d.datname = %s AND a.grantee = 0 "
                "AND a.privilege_type IN ('CONNECT', 'TEMPORARY') ORDER BY 1"
            ),
            (database,),
        )
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

    def _rows(
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

    def _row(
        self, query: Query, params: Sequence[object] | Mapping[str, object] | None = None
    ) -> tuple[object, ...]:
        rows = self._rows(query, params)
        return rows[0]

    def _scalar(
        self, query: Query, params: Sequence[object] | Mapping[str, object] | None = None
    ) -> object:
        return self._row(query, params)[0]

    def _execute(
        self, query: Query, params: Sequence[object] | Mapping[str, object] | None = None
    ) -> None:
        try:
            with _IN_FLIGHT.track(self._conn, self._target) as running:
                self._conn.execute(query, params)
        except psycopg.Error as err:
            if (fatal := _fatal(err, running, "set up the session")) is None:
                raise
            raise fatal from err


class AdminPool:
    """One more admin connection per worker thread, opened when the thread first asks.

    Services are independent of each other: on their own connections, one
    service's CREATE DATABASE runs while another's role is created.
    """

    def __init__(self, target: Target, state: AdminState) -> None:
        self._target = target
        self._state = state
        self._local = threading.local()
        self._opened: list[Admin] = []
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

    def admin(self) -> Admin:
        """This thread's admin connection. Raises PostgresUnavailable if none can be had."""
        admin: Admin | None = getattr(self._local, "admin", None)
        if admin is not None:
            return admin
        try:
            conn = self.connect()
        except psycopg.OperationalError as err:
            raise PostgresUnavailable(
                f"cannot open another connection to PostgreSQL at {self._target.description}: "
                f"{_last_line(str(err))}; run again once the server is back (nomad-pginit "
                "needs a few connections at once, see max_connections)"
            ) from err
        admin = Admin(conn, self._target, self._state, pool=self)
        self._local.admin = admin
        with self._lock:
            self._opened.append(admin)
        return admin

    def close(self) -> None:
        with self._lock:
            for admin in self._opened:
                admin.close()
            self._opened.clear()


def _comment_on_role(role: str) -> sql.Composed:
    return sql.SQL("COMMENT ON ROLE {} IS {}").format(
        sql.Identifier(role), sql.Literal(MANAGED_COMMENT)
    )


def _comment_on_database(database: str) -> sql.Composed:
    return sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(database), sql.Literal(MANAGED_COMMENT)
    )


class DatabaseSession:
    """The admin connected to one service's database, for schema-level work."""

    def __init__(
        self, conn: psycopg.Connection[tuple[object, ...]], name: str, admin: Admin
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
        ) = found or (False,) + (None,) * 7
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
        )

    def apply(self, action: Action) -> bool:
        """Run one action inside this database."""
        match action:
            case GrantSchema(role=role):
                statements: list[Query] = [
                    sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(role))
                ]
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


@dataclass(frozen=True)
class LoginCheck:
    """What a service sees when it logs in with its password, as ``check`` reports it."""

    logged_in: bool
    # The server's reason when the login failed; never contains the password.
    failure: str | None = None
    can_create_in_public: bool = False


def try_service_login(target: Target, user: str, database: str, password: Secret) -> LoginCheck:
    """Log in as a service, to its own database, over the admin's host and port.

    Writes nothing: the CREATE privilege on schema public is asked, not tried.
    """
    conninfo = make_conninfo(
        target.conninfo,
        user=user,
        dbname=database,
        password=password.reveal(),
        application_name=f"{APPLICATION_NAME}-check",
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        # The role may have set itself a statement_timeout of 1 ms: ours wins.
        options=f"-c statement_timeout={CONNECT_TIMEOUT_SECONDS}s",
        **_auth_guard(target.conninfo),
    )
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as err:
        return LoginCheck(logged_in=False, failure=_last_line(str(err)))
    with conn:
        try:
            row = conn.execute(
                sql.SQL(
                    "SELECT pg_catalog.has_schema_privilege(current_user, n.oid, 'CREATE') "
                    "FROM pg_catalog.pg_namespace n WHERE n.nspname = 'public'"
                )
            ).fetchone()
        except psycopg.Error as err:
            reason = err.diag.message_primary or _last_line(str(err))
            return LoginCheck(
                logged_in=True,
                failure=f"logged in, but could not ask about schema public: {reason}",
            )
    return LoginCheck(logged_in=True, can_create_in_public=bool(row and row[0]))


def password_works(target: Target, user: str, database: str, password: Secret) -> bool | None:
    """Whether ``password`` logs ``user`` in: True, False, or None when the login
    failed for another reason (pg_hba.conf, CONNECT), which says nothing about it."""
    check = try_service_login(target, user, database, password)
    if check.logged_in:
        return True
    if check.failure and "password authentication failed" in check.failure:
        return False
    return None


# What each action needs when the admin is not a superuser, for "permission denied".
_NEEDED_PRIVILEGE: Final[Mapping[type[Action], str]] = {
    CreateRole: "CREATEROLE",
    SetPassword: "CREATEROLE (and the role must not be a superuser)",
    RestoreLogin: "CREATEROLE",
    GrantRoleToAdmin: "CREATEROLE",
    CreateDatabase: "CREATEDB and membership in the owning role",
    ChangeDatabaseOwner: "CREATEDB, membership in the new owner and ownership of the database",
    GrantDatabase: "ownership of the database or a grant option on it",
    GrantSchema: "ownership of schema public (membership in the database owner)",
    SetConnectionLimit: "CREATEROLE",
    MarkRole: "CREATEROLE",
    MarkDatabase: "ownership of the database (membership in its owner)",
    IsolateDatabase: "ownership of the database (membership in its owner)",
    CreateExtension: "superuser, or a trusted extension and CREATE on the database",
    DisableRole: "CREATEROLE",
    ClearValidUntil: "CREATEROLE",
}


# The actions on a role that PostgreSQL 16+ allows a CREATEROLE admin only with
# ADMIN OPTION on that role, which it holds on the roles it created itself.
_ROLE_ACTIONS: Final = (
    CreateRole,
    SetPassword,
    RestoreLogin,
    GrantRoleToAdmin,
    SetConnectionLimit,
    MarkRole,
    DisableRole,
    ClearValidUntil,
)


def _needed_privilege(action: Action, conn: psycopg.Connection[tuple[object, ...]]) -> str:
    needed = _NEEDED_PRIVILEGE.get(type(action), "more privileges")
    role = getattr(action, "role", None)
    if (
        isinstance(action, _ROLE_ACTIONS)
        and not isinstance(action, CreateRole)
        and role is not None
        and not conn.closed
        and conn.info.server_version >= 160000
    ):
        needed = (
            f'CREATEROLE and ADMIN OPTION on role "{role}" (PostgreSQL 16+ gives it on '
            "the roles the admin created; for another, a superuser runs "
            f"GRANT {sql.Identifier(role).as_string(conn)} TO "
            f"{sql.Identifier(str(conn.info.user)).as_string(conn)} WITH ADMIN OPTION)"
        )
    return needed


# A GRANT or REVOKE by a role that may not: a warning, and the statement succeeds.
_NOTHING_GRANTED: Final = frozenset({"01007", "01006"})


@contextmanager
def _nothing_granted_fails(
    conn: psycopg.Connection[tuple[object, ...]], action: Action
) -> Iterator[None]:
    """Turn PostgreSQL's warning that a GRANT granted nothing (or a REVOKE revoked
    nothing) into the service's failure: otherwise it would pass for done."""
    warnings: list[str] = []

    def collect(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.sqlstate in _NOTHING_GRANTED:
            warnings.append(diagnostic.message_primary or "no privileges were granted")

    conn.add_notice_handler(collect)
    try:
        yield
    finally:
        conn.remove_notice_handler(collect)
    if warnings:
        needed = _needed_privilege(action, conn)
        raise ServiceError(
            f"cannot {action.describe()}: {warnings[0]} (PostgreSQL's warning); "
            f"the admin needs {needed}"
        )


def _service_error(
    action: Action,
    err: psycopg.Error,
    conn: psycopg.Connection[tuple[object, ...]],
    running: _Running,
) -> PginitError:
    interrupted = _interrupted(err, running, action.describe())
    if interrupted is not None:
        return interrupted
    if conn.closed or _connection_failure(err):
        return PostgresUnavailable(
            f"lost the connection to PostgreSQL while trying to {action.describe()}: "
            f"{_last_line(str(err))}; run again once the server is back"
        )
    primary = err.diag.message_primary or type(err).__name__
    if isinstance(err, psycopg.errors.TransactionRollback):
        # 40P01 deadlock, 40001 serialization: the other session went on, we rolled back.
        return ServiceError(
            f"cannot {action.describe()}: {primary} (another session's statement held what "
            "this one needed while waiting for ours); nothing was changed, the next run "
            "tries again"
        )
    if isinstance(err, psycopg.errors.InsufficientPrivilege):
        needed = _needed_privilege(action, conn)
        # PostgreSQL 16+ says in its detail which role attribute or option it wanted.
        detail = f" ({err.diag.message_detail.rstrip('.')})" if err.diag.message_detail else ""
        return ServiceError(
            f"cannot {action.describe()}: {primary}{detail}; the admin needs {needed}"
        )
    return ServiceError(f"cannot {action.describe()}: {primary} (SQLSTATE {err.sqlstate})")


def _connection_failure(err: psycopg.Error) -> bool:
    """Whether ``err`` means the connection is gone (not a statement's own failure,
    which has a SQLSTATE of its own even when psycopg calls it operational)."""
    if not isinstance(err, psycopg.OperationalError):
        return False
    state = err.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def _fatal(err: psycopg.Error, running: _Running, doing: str) -> PginitError | None:
    """A statement the whole run needs failed: stopped, timed out, or the server gone.
    None for anything else, which is a bug to show as one."""
    interrupted = _interrupted(err, running, doing)
    if isinstance(interrupted, Stopped):
        return interrupted
    if interrupted is not None:
        return PostgresUnavailable(str(interrupted))
    if _connection_failure(err):
        return PostgresUnavailable(
            f"lost the connection to PostgreSQL at {running.where}: {_last_line(str(err))}; "
            "run again once the server is back"
        )
    if isinstance(err, psycopg.OperationalError):
        primary = err.diag.message_primary or _last_line(str(err))
        return PostgresUnavailable(
            f"cannot {doing} at {running.where}: {primary} (SQLSTATE {err.sqlstate})"
        )
    return None


def _connection_lost(target: Target, err: psycopg.OperationalError) -> PostgresUnavailable:
    return PostgresUnavailable(
        f"lost the connection to PostgreSQL at {target.description}: {_last_line(str(err))}; "
        "run again once the server is back"
    )
