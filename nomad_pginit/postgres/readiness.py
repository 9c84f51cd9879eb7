"""Waiting for a writable primary the way pg_isready does, with a deadline, and refusing
what no wait cures.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Final

import psycopg
import psycopg.errors
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict

from nomad_pginit.errors import ConfigError, PginitError, PostgresUnavailable
from nomad_pginit.postgres.connection import (
    _LOGIN_FAILURES,
    PROBE_DEADLINE_SECONDS,
    PROBE_INTERVAL_SECONDS,
    TEMPLATE_DATABASE,
    WAIT_REPORT_SECONDS,
    Target,
    _connect,
    _last_line,
)
from nomad_pginit.postgres.session import Coordinator
from nomad_pginit.stopping import StopRequest

log = logging.getLogger("nomad_pginit")

# What CREATE DATABASE copies, and so what nobody may be connected to meanwhile.
# The majors nomad-pginit runs on: 14 brought pg_database_owner; make
# test-matrix runs the real-server tests on each of them.
OLDEST_MAJOR: Final = 14


NEWEST_TESTED_MAJOR: Final = 18


_WARNED_MAJORS: set[int] = set()


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
    advice: str = "check the postgres task (nomad alloc logs <alloc> postgres)",
) -> Coordinator:
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
        if isinstance(attempt, Coordinator):
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
                f"({attempt}); {advice} or raise --wait-timeout"
            )
        if stop.wait(min(readiness.probe_interval, max(0.0, deadline - now))):
            stop.check("PostgreSQL was ready")


def primary_identity(target: Target) -> str | None:
    """Which writable primary ``target`` reaches now (Coordinator.identity), or None
    when none does: one login, bounded by connect_timeout and the server's
    statement_timeout. Watch mode asks between passes, to notice a failover."""
    try:
        coordinator = Coordinator(_connect(target), target)
    except psycopg.OperationalError:
        return None
    with coordinator:
        try:
            if coordinator.scalar(sql.SQL("SELECT pg_catalog.pg_is_in_recovery()")):
                return None
            return coordinator.identity()
        except PginitError:
            return None


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


def _probe(target: Target, *, writable: bool) -> Coordinator | str:
    """A connected Coordinator when ready, else why not."""
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
        return Coordinator(conn, target.pinned(conn))
    row = conn.execute("SELECT pg_is_in_recovery(), current_database()").fetchone()
    if row is None or row[0]:
        conn.close()
        if len(target.addresses) > 1 and "target_session_attrs" not in target.conninfo:
            return (
                "in recovery (a standby): not writable; [postgres] dsn lists several hosts, "
                "add target_session_attrs=read-write so that libpq passes over the standbys"
            )
        return "in recovery (a standby, or a primary still replaying WAL): not writable"
    if row[1] == TEMPLATE_DATABASE:
        conn.close()
        # Our own workers would be "other users" of the template every new database copies.
        raise ConfigError(
            f"the admin connects to database {TEMPLATE_DATABASE} ([postgres] dsn or "
            f"PGDATABASE): CREATE DATABASE copies {TEMPLATE_DATABASE} and fails while anyone "
            "is connected to it; connect to postgres instead"
        )
    return Coordinator(conn, target.pinned(conn))


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
