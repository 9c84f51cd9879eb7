"""Logging in as a service, for check and for comparing a password nobody can read."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import make_conninfo

from nomad_pginit.postgres.connection import (
    APPLICATION_NAME,
    CONNECT_TIMEOUT_SECONDS,
    Target,
    _auth_guard,
    _authentication_failed,
    _last_line,
)
from nomad_pginit.secret import Secret


@dataclass(frozen=True)
class LoginCheck:
    """What a service sees when it logs in with its password, as ``check`` reports it."""

    logged_in: bool
    # The server's reason when the login failed; never contains the password.
    failure: str | None = None
    # The failure was the password's (SQLSTATE 28P01), not pg_hba.conf's or CONNECT's.
    wrong_password: bool = False
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
        return LoginCheck(
            logged_in=False,
            failure=_last_line(str(err)),
            wrong_password=_authentication_failed(err),
        )
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
    if check.wrong_password:
        return False
    return None
