"""An admin that is not a superuser (CREATEDB CREATEROLE): what it may do on each
PostgreSQL major, and what it is told when it may not.

Every scenario runs the real tool against real PostgreSQL and OpenBao servers,
then checks the cluster itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import LiteralString

import psycopg
import psycopg.errors
import pytest
from catalog import database_exists, database_owner
from conftest import (
    Cluster,
    Vault,
    tool_env,
)
from provisioning import (
    ADMIN,
    ADMIN_PASSWORD,
    as_admin,
    assert_can_work,
    assert_in_sync,
    assert_login_refused,
    execute,
    password_for,
    plan,
    provision,
    public_database_privileges,
    run,
    service_lines,
    summary,
)
from psycopg import sql
from server_log import tool_statements, writes


def test_non_superuser_admin_provisions_verifies_and_rotates(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    names = ["gitea", "uptime-kuma"]
    config = as_admin(pg, tmp_path, provision(pg, vault, tmp_path, names), "CREATEDB CREATEROLE")
    env = tool_env(vault)

    first = run(config, env)

    assert first.returncode == 0, first.output
    (warning,) = [line for line in first.stdout.splitlines() if "may not switch off" in line]
    # The test cluster logs every statement; a failing one is logged by default too.
    assert "log_statement = all" in warning
    assert "log_min_error_statement = error" in warning
    for name in names:
        assert_can_work(pg.server, name, password_for(name))
        assert database_owner(pg, name) == name
        assert public_database_privileges(pg, name) == set()
    assert_in_sync(config, env, pg)

    offset = pg.log_offset()
    second = run(config, env)
    assert second.returncode == 0, second.output
    for name in names:
        assert service_lines(second.stdout, name) == [f"{name}: unchanged"], second.stdout
    assert writes(tool_statements(pg.log_since(offset))) == []

    vault.put("gitea", password_for("gitea", 2))
    found = plan(config, env)
    assert found.result.returncode == 2, found.result.output
    assert found.actions("gitea") == ["SetPassword"]
    assert found.actions("uptime-kuma") == []
    rotated = run(config, env)
    assert rotated.returncode == 0, rotated.output
    assert service_lines(rotated.stdout, "gitea") == [
        'gitea: password of role "gitea" updated (differs from Vault)'
    ]
    assert_can_work(pg.server, "gitea", password_for("gitea", 2))
    assert_login_refused(pg.server, "gitea", password_for("gitea"), "password authentication")
    assert_in_sync(config, env, pg)


def test_a_role_someone_else_created_needs_admin_option_from_16_on(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    execute(pg, sql.SQL("CREATE ROLE gitea LOGIN PASSWORD 'set-by-hand'"))
    config = as_admin(
        pg, tmp_path, provision(pg, vault, tmp_path, ["gitea"]), "CREATEDB CREATEROLE"
    )
    env = tool_env(vault)

    first = run(config, env)

    if pg.server_version < 160000:
        # CREATEROLE alone manages any role that is no superuser.
        assert first.returncode == 0, first.output
    else:
        assert first.returncode == 1, first.output
        (failure,) = [line for line in service_lines(first.stdout, "gitea") if "failed" in line]
        assert f'the admin "{ADMIN}" may not alter role "gitea"' in failure
        assert f'GRANT "gitea" TO "{ADMIN}" WITH ADMIN OPTION' in failure
        # plan says so too, before anything is tried.
        refused = plan(config, env)
        assert refused.result.returncode == 1, refused.result.output
        assert refused.service("gitea")["status"] == "failed", refused.document
        assert "WITH ADMIN OPTION" in str(refused.service("gitea")["error"])
        # What the message says to do, done as a superuser:
        execute(
            pg,
            sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier("gitea"), sql.Identifier(ADMIN)
            ),
        )
        again = run(config, env)
        assert again.returncode == 0, again.output
    assert_can_work(pg.server, "gitea", password_for("gitea"))
    assert_in_sync(config, env, pg)


def test_a_role_the_admin_created_itself_before_a_run_was_killed_is_provisioned(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    # A run killed between its CREATE ROLE and its GRANT role TO admin leaves this: on
    # 16+, a membership with ADMIN OPTION alone, which may not SET ROLE.
    config = as_admin(
        pg, tmp_path, provision(pg, vault, tmp_path, ["gitea"]), "CREATEDB CREATEROLE"
    )
    with psycopg.connect(
        pg.server.conninfo(user=ADMIN, password=ADMIN_PASSWORD), autocommit=True
    ) as conn:
        conn.execute("CREATE ROLE gitea LOGIN PASSWORD 'before-the-kill'")
    env = tool_env(vault)

    result = run(config, env)

    assert result.returncode == 0, result.output
    assert database_owner(pg, "gitea") == "gitea"
    assert_can_work(pg.server, "gitea", password_for("gitea"))
    assert_in_sync(config, env, pg)


def test_plan_predicts_run_when_template1_cannot_be_read(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    # The admin (no superuser: those connect anyway) may not connect to template1:
    # plan predicts a new database from this major's defaults, and run does just that.
    config = as_admin(
        pg, tmp_path, provision(pg, vault, tmp_path, ["gitea"]), "CREATEDB CREATEROLE"
    )
    execute(pg, sql.SQL("REVOKE CONNECT ON DATABASE template1 FROM PUBLIC"))
    try:
        env = tool_env(vault)
        pending = plan(config, env)
        assert pending.result.returncode == 2, pending.result.output
        result = run(config, env)
        assert result.returncode == 0, result.output
        assert len(service_lines(result.stdout, "gitea")) == len(pending.actions("gitea"))
        assert_can_work(pg.server, "gitea", password_for("gitea"))
        assert_in_sync(config, env, pg)
    finally:
        execute(pg, sql.SQL("GRANT CONNECT ON DATABASE template1 TO PUBLIC"))


def test_a_schema_public_the_admin_may_not_grant_on_is_refused_with_what_to_do(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    # public the bootstrap superuser's (PostgreSQL 14's default) without PUBLIC's
    # CREATE: an admin that is no superuser can neither use PUBLIC's nor grant.
    with psycopg.connect(pg.server.conninfo(dbname="template1"), autocommit=True) as conn:
        before_15 = conn.info.server_version < 150000
        conn.execute("ALTER SCHEMA public OWNER TO postgres")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    try:
        config = as_admin(
            pg, tmp_path, provision(pg, vault, tmp_path, ["gitea"]), "CREATEDB CREATEROLE"
        )
        env = tool_env(vault)
        found = plan(config, env)
        result = run(config, env)
    finally:
        with psycopg.connect(pg.server.conninfo(dbname="template1"), autocommit=True) as conn:
            if before_15:
                conn.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
            else:
                conn.execute("ALTER SCHEMA public OWNER TO pg_database_owner")

    assert found.result.returncode == 1, found.result.output
    assert result.returncode == 1, result.output
    (failure,) = [line for line in service_lines(result.stdout, "gitea") if "failed" in line]
    assert 'the admin may not grant on schema public in database "gitea"' in failure
    assert 'GRANT ALL ON SCHEMA public TO "gitea" there as its owner' in failure
    # No line claims a grant that PostgreSQL did not make.
    assert "ALL on schema public in database" not in result.stdout


@pytest.mark.parametrize(
    ("attributes", "missing"),
    [
        pytest.param("CREATEROLE", "CREATEDB", id="no-createdb"),
        pytest.param("CREATEDB", "CREATEROLE", id="no-createrole"),
    ],
)
def test_non_superuser_admin_missing_privilege_is_named(
    pg: Cluster, vault: Vault, tmp_path: Path, attributes: LiteralString, missing: str
) -> None:
    config = as_admin(pg, tmp_path, provision(pg, vault, tmp_path, ["gitea"]), attributes)
    env = tool_env(vault)

    result = run(config, env)

    assert result.returncode == 1, result.output
    failures = [line for line in service_lines(result.stdout, "gitea") if "failed" in line]
    assert len(failures) == 1, result.stdout
    assert "permission denied" in failures[0], failures
    assert f"the admin needs {missing}" in failures[0], failures
    assert summary(result.stdout).startswith("summary: failed: 1 of 1 services failed (gitea)")
    assert not database_exists(pg, "gitea")

    execute(pg, sql.SQL("ALTER ROLE {} " + missing).format(sql.Identifier(ADMIN)))
    again = run(config, env)
    assert again.returncode == 0, again.output
    assert_can_work(pg.server, "gitea", password_for("gitea"))
    assert_in_sync(config, env, pg)
