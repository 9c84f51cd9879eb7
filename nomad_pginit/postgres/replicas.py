"""Streaming standbys, for ``check --replicas``: is a server one, and has it replayed
what the primary had written when the check began?

Roles and databases reach standbys by replication alone; nomad-pginit never writes
to one. These only read.
"""

from __future__ import annotations

import time
from typing import Final

from psycopg import sql

from nomad_pginit.postgres.session import AdminSession
from nomad_pginit.stopping import StopRequest

# How often a standby is asked how far it has replayed.
REPLAY_POLL_SECONDS: Final = 0.1


def in_recovery(admin: AdminSession) -> bool:
    """Whether the server ``admin`` is connected to is a standby (or still recovering)."""
    return bool(admin.scalar(sql.SQL("SELECT pg_is_in_recovery()")))


def wal_position(admin: AdminSession) -> str | None:
    """The primary's current WAL position ('0/3000148'), None on a standby."""
    position = admin.scalar(
        sql.SQL(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END"
        )
    )
    return None if position is None else str(position)


def wait_for_replay(
    standby: AdminSession, position: str, timeout: float, stop: StopRequest
) -> bool:
    """Wait until ``standby`` has replayed the primary's WAL up to ``position``: True,
    or False once ``timeout`` seconds have passed without."""
    deadline = time.monotonic() + timeout
    while True:
        replayed = standby.scalar(
            sql.SQL("SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)"),
            (position,),
        )
        if replayed:
            return True
        if time.monotonic() >= deadline:
            return False
        if stop.wait(REPLAY_POLL_SECONDS):
            stop.check("waiting for a standby to replay")
