"""The PostgreSQL module in-process against the real test cluster: the admin's
worker connections and the SCRAM keys they log in with."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from conftest import Cluster
from psycopg import pq, sql

from nomad_pginit import postgres
from nomad_pginit.errors import ConfigError, PostgresUnavailable, ServiceError
from nomad_pginit.plan import CreateRole, GrantDatabase, GrantSchema
from nomad_pginit.secret import Secret
from nomad_pginit.spec import PostgresSettings

READY_NOW = postgres.Readiness(timeout=5)


def admin_target(
    pg: Cluster, tmp_path: Path, user: str, password: str, dbname: str = "postgres"
) -> postgres.Target:
    password_file = tmp_path / f"{user}.password"
    password_file.write_text(password + "\n", encoding="utf-8")
    dsn = f"postgresql://{user}@{pg.server.host}:{pg.port}/{dbname}"
    return postgres.target(PostgresSettings(dsn=dsn, password_file=password_file))


def backend_count(pg: Cluster) -> int:
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (postgres.APPLICATION_NAME,),
        ).fetchone()
    assert row is not None
    return int(str(row[0]))


def eventually_no_backends(pg: Cluster) -> bool:
    """Backends exit a moment after their connection closes."""
    deadline = time.monotonic() + 10
    while backend_count(pg) != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_workers_log_in_with_the_superusers_scram_keys(pg: Cluster, tmp_path: Path) -> None:
    target = admin_target(pg, tmp_path, pg.server.superuser, pg.server.password)
    with postgres.wait_until_ready(target, READY_NOW) as admin, admin.workers() as workers:
        assert workers.logs_in_with_keys
        # The keys alone are enough: libpq never needs the password.
        keyed = replace(workers.target, password=Secret("not the password"))
        with psycopg.connect(keyed.secret_conninfo, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (pg.server.superuser,)
        assert workers.worker() is workers.worker()  # one connection per thread
        assert backend_count(pg) == 2
    assert eventually_no_backends(pg)


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
        with workers.worker().database("template1") as session:
            assert session.name == "template1"
        # Once is enough: the next logins go with the password, not another failure.
        assert not workers.logs_in_with_keys


def test_admin_without_pg_authid_logs_in_with_its_password(pg: Cluster, tmp_path: Path) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE ROLE pginit_admin LOGIN CREATEDB CREATEROLE PASSWORD 'admin-pw'")
    target = admin_target(pg, tmp_path, "pginit_admin", "admin-pw")
    with postgres.wait_until_ready(target, READY_NOW) as admin, admin.workers() as workers:
        assert not workers.logs_in_with_keys
        assert workers.worker() is not None


def test_no_worker_connection_when_the_server_is_gone(pg: Cluster, tmp_path: Path) -> None:
    target = admin_target(pg, tmp_path, pg.server.superuser, pg.server.password)
    gone = replace(target, conninfo=psycopg.conninfo.make_conninfo(target.conninfo, port=1))
    with postgres.wait_until_ready(target, READY_NOW) as admin, admin.workers() as workers:
        broken = postgres.WorkerPool(gone, admin.state)
        with pytest.raises(PostgresUnavailable, match="cannot open another connection"):
            broken.worker()
        assert workers.worker() is not None


def test_a_password_and_its_transaction_go_in_one_round_trip(pg: Cluster, tmp_path: Path) -> None:
    target = admin_target(pg, tmp_path, pg.server.superuser, pg.server.password)
    trace = tmp_path / "protocol.trace"
    with postgres.wait_until_ready(target, READY_NOW) as admin, trace.open("w") as handle:
        assert admin.state.superuser  # read before tracing: only the transaction is traced
        # libpq's own protocol trace of the admin's connection: what went over the wire.
        pgconn = admin._conn.pgconn
        pgconn.trace(handle.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        assert admin.apply(CreateRole("svc", "svc", Secret("pw-marker-one-trip")))
        assert not admin.apply(CreateRole("svc", "svc", Secret("pw-marker-one-trip")))
        pgconn.untrace()
        assert admin._conn.info.transaction_status == pq.TransactionStatus.IDLE
    sent = [line.split("\t") for line in trace.read_text(encoding="utf-8").splitlines()]
    messages = [fields[2].split(" ")[0] for fields in sent if len(fields) > 2 and fields[0] == "F"]
    # Each attempt: BEGIN, the settings, CREATE ROLE, COMMENT, COMMIT, then one Sync
    # (one round trip); the failed one adds a ROLLBACK of its own. Once per session,
    # before the first: log_transaction_sample_rate, decided when a transaction starts.
    assert messages.count("Sync") == 2
    assert messages.count("Query") == 2  # that setting, and the ROLLBACK of the failed one
    with pg.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'svc'").fetchone() == (
            1,
        )


def test_admin_connected_to_template1_is_refused(pg: Cluster, tmp_path: Path) -> None:
    target = admin_target(pg, tmp_path, pg.server.superuser, pg.server.password, "template1")
    with pytest.raises(ConfigError, match="connect to postgres instead"):
        postgres.wait_until_ready(target, READY_NOW)
    assert eventually_no_backends(pg)


def test_a_grant_that_grants_nothing_fails_instead_of_passing_for_done(
    pg: Cluster, tmp_path: Path
) -> None:
    # PostgreSQL only warns when the grantor may not grant: the GRANT "succeeds".
    with pg.connect() as conn:
        conn.execute("CREATE ROLE pginit_admin LOGIN CREATEDB CREATEROLE PASSWORD 'admin-pw'")
        conn.execute("CREATE ROLE svc LOGIN")
        conn.execute("CREATE DATABASE svc")
    with pg.connect("svc") as conn:
        conn.execute("ALTER SCHEMA public OWNER TO postgres")
        conn.execute("GRANT CONNECT ON DATABASE svc TO pginit_admin")
    target = admin_target(pg, tmp_path, "pginit_admin", "admin-pw")
    with postgres.wait_until_ready(target, READY_NOW) as admin:
        with admin.database("svc") as session, pytest.raises(ServiceError) as raised:
            session.apply(GrantSchema("svc", "svc", "svc"))
        assert "no privileges were granted" in str(raised.value)
        assert "the admin needs ownership of schema public" in str(raised.value)
        with pytest.raises(ServiceError, match="no privileges were granted"):
            admin.apply(GrantDatabase("svc", "svc", "svc"))
    with pg.connect("svc") as conn:
        row = conn.execute("SELECT has_schema_privilege('svc', 'public', 'CREATE')").fetchone()
        # PUBLIC's CREATE on PostgreSQL 14 and earlier; none from 15 on.
        assert row == (conn.info.server_version < 150000,)
