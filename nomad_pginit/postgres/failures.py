"""psycopg's errors turned into ours, each saying what the admin lacks or what to do."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final

import psycopg
import psycopg.errors
from psycopg import sql

from nomad_pginit.errors import ConnectionLost, PginitError, PostgresUnavailable, ServiceError
from nomad_pginit.plan import Action, CreateRole
from nomad_pginit.postgres.connection import Target, _last_line
from nomad_pginit.postgres.databases import DATABASE_ACTIONS
from nomad_pginit.postgres.roles import ROLE_ACTIONS
from nomad_pginit.postgres.running import _interrupted, _Running
from nomad_pginit.postgres.schema import SCHEMA_ACTIONS
from nomad_pginit.stopping import Stopped

# What each action needs when the admin is not a superuser, for "permission denied":
# beside each kind's statements.
_NEEDED_PRIVILEGE: Final[Mapping[type[Action], str]] = {
    **ROLE_ACTIONS,
    **DATABASE_ACTIONS,
    **SCHEMA_ACTIONS,
}


def _needed_privilege(action: Action, conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """What the admin lacked. From PostgreSQL 16 on, a CREATEROLE admin may act on a
    role only with ADMIN OPTION on it, which it holds on the roles it created."""
    needed = _NEEDED_PRIVILEGE.get(type(action), "more privileges")
    role = getattr(action, "role", None)
    if (
        type(action) in ROLE_ACTIONS
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
        return ConnectionLost(
            f"lost the connection to PostgreSQL while trying to {action.describe()}: "
            f"{_last_line(str(err))}"
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
        return ConnectionLost(
            f"lost the connection to PostgreSQL at {running.where}: {_last_line(str(err))}"
        )
    if isinstance(err, psycopg.OperationalError):
        primary = err.diag.message_primary or _last_line(str(err))
        return PostgresUnavailable(
            f"cannot {doing} at {running.where}: {primary} (SQLSTATE {err.sqlstate})"
        )
    return None


def _connection_lost(target: Target, err: psycopg.OperationalError) -> ConnectionLost:
    return ConnectionLost(
        f"lost the connection to PostgreSQL at {target.description}: {_last_line(str(err))}"
    )
