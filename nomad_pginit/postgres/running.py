"""Statements in flight: their deadlines, who blocks them, cancelling them on a stop, and a
frozen connection noticed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Final

import psycopg
import psycopg.errors
from psycopg import sql

from nomad_pginit.errors import PginitError, ServiceError
from nomad_pginit.postgres.connection import (
    CONNECT_TIMEOUT_SECONDS,
    ENV_STATEMENT_TIMEOUT,
    FROZEN_CHECK_SECONDS,
    SLOW_STATEMENT_SECONDS,
    STATEMENT_TIMEOUT_SECONDS,
    Target,
    _connect,
)
from nomad_pginit.stopping import Stopped


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
