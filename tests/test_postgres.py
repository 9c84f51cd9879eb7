"""The PostgreSQL module in-process against the real test cluster: the admin's
worker connections and the SCRAM keys they log in with."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from conftest import Cluster
from psycopg import sql

from nomad_pginit import postgres
from nomad_pginit.errors import PostgresUnavailable
from nomad_pginit.secret import Secret
from nomad_pginit.spec import PostgresSettings

READY_NOW = postgres.Readiness(timeout=5)


def admin_target(pg: Cluster, tmp_path: Path, user: str, password: str) -> postgres.Target:
    password_file = tmp_path / f"{user}.password"
    password_file.write_text(password + "\n", encoding="utf-8")
    dsn = f"postgresql://{user}@{pg.server.host}:{pg.port}/postgres"
    return postgres.target(PostgresSettings(dsn=dsn, password_file=password_file))


def backend_count(pg: Cluster) -> int:
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (postgres.APPLICATION_NAME,),
        ).fetchone()
    assert row is not None
    return int(str(row[0]))


def test_workers_log_in_with_the_superusers_scram_keys(pg: Cluster, tmp_path: Path) -> None:
    target = admin_target(pg, tmp_path, pg.server.superuser, pg.server.password)
    with postgres.wait_until_ready(target, READY_NOW) as admin, admin.workers() as workers:
        assert workers.logs_in_with_keys
        # The keys alone are enough: libpq never needs the password.
        keyed = replace(workers.target, password=Secret("not the password"))
        with psycopg.connect(keyed.secret_conninfo, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (pg.server.superuser,)
        assert workers.admin() is workers.admin()  # one connection per thread
        assert backend_count(pg) == 2
    assert backend_count(pg) == 0


def test_stale_keys_fall_back_to_the_password(pg: Cluster, tmp_path: Path) -> None:
    target = admin_target(pg, tmp_path, pg.server.superuser, pg.server.password)
    with postgres.wait_until_ready(target, READY_NOW) as admin, admin.workers() as workers:
        assert workers.logs_in_with_keys
        # The same password set again gets a new salt: the keys no longer fit it.
        with pg.connect() as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(pg.server.superuser), sql.Literal(pg.server.password)
                )
            )
        with workers.admin().database("template1") as session:
            assert session.name == "template1"


def test_admin_without_pg_authid_logs_in_with_its_password(pg: Cluster, tmp_path: Path) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE ROLE pginit_admin LOGIN CREATEDB CREATEROLE PASSWORD 'admin-pw'")
    target = admin_target(pg, tmp_path, "pginit_admin", "admin-pw")
    with postgres.wait_until_ready(target, READY_NOW) as admin, admin.workers() as workers:
        assert not workers.logs_in_with_keys
        assert workers.admin() is not None


def test_no_worker_connection_when_the_server_is_gone(pg: Cluster, tmp_path: Path) -> None:
    target = admin_target(pg, tmp_path, pg.server.superuser, pg.server.password)
    gone = replace(target, conninfo=psycopg.conninfo.make_conninfo(target.conninfo, port=1))
    with postgres.wait_until_ready(target, READY_NOW) as admin, admin.workers() as workers:
        broken = postgres.AdminPool(gone, admin.state)
        with pytest.raises(PostgresUnavailable, match="cannot open another connection"):
            broken.admin()
        assert workers.admin() is not None
