"""Tenants apart: each database open to its own role only, extensions and connection
limits as asked, and nothing ever dropped.

Every scenario runs the real tool against real PostgreSQL and OpenBao servers,
then checks the cluster itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import psycopg
import psycopg.errors
import pytest
from catalog import database_exists, database_owner, role_exists, scalar
from conftest import (
    Cluster,
    Vault,
    tool_env,
    write_services_file,
)
from provisioning import (
    BYSTANDER,
    BYSTANDER_PASSWORD,
    as_admin,
    assert_can_work,
    assert_in_sync,
    assert_login_refused,
    execute,
    extensions_in,
    login_as,
    password_for,
    plan,
    provision,
    public_database_privileges,
    run,
    service_lines,
    summary,
    texts,
)
from psycopg import sql
from server_log import tool_statements


def test_services_cannot_connect_to_each_others_databases(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    services: list[str | Mapping[str, object]] = [
        "tenant-a",
        "Tenant B",
        {"name": "open-c", "isolate": False},
    ]
    config = provision(pg, vault, tmp_path, services)
    env = tool_env(vault)

    result = run(config, env)

    assert result.returncode == 0, result.output
    for name in ("tenant-a", "Tenant B", "open-c"):
        assert_can_work(pg.server, name, password_for(name))
    for intruder, victim in (
        ("tenant-a", "Tenant B"),
        ("Tenant B", "tenant-a"),
        ("open-c", "tenant-a"),
    ):
        assert_login_refused(
            pg.server, intruder, password_for(intruder), "permission denied for database", victim
        )
    assert public_database_privileges(pg, "tenant-a") == set()
    assert public_database_privileges(pg, "Tenant B") == set()
    # isolate = false: PUBLIC keeps what every new database grants it.
    assert public_database_privileges(pg, "open-c") == {"CONNECT", "TEMPORARY"}
    login_as(pg.server, "tenant-a", password_for("tenant-a"), "open-c").close()
    assert_in_sync(config, env, pg)


def test_schema_public_is_the_services_own_not_publics(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    # PostgreSQL 14 and earlier: public belongs to the bootstrap superuser and
    # PUBLIC may CREATE in it; template1 here plays that on any major.
    with psycopg.connect(pg.server.conninfo(dbname="template1"), autocommit=True) as conn:
        before_15 = conn.info.server_version < 150000
        conn.execute("ALTER SCHEMA public OWNER TO postgres")
        conn.execute("GRANT ALL ON SCHEMA public TO PUBLIC")
    try:
        config = provision(pg, vault, tmp_path, ["tenant-14"])
        env = tool_env(vault)
        result = run(config, env)
        assert result.returncode == 0, result.output
        assert 'ALL on schema public in database "tenant-14" granted to "tenant-14"' in (
            result.stdout
        )
        # What hardening guides say to do next leaves the service its schema.
        with psycopg.connect(pg.server.conninfo(dbname="tenant-14"), autocommit=True) as conn:
            conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        assert_can_work(pg.server, "tenant-14", password_for("tenant-14"))
        assert_in_sync(config, env, pg)
    finally:
        # Each major's own default back.
        with psycopg.connect(pg.server.conninfo(dbname="template1"), autocommit=True) as conn:
            if not before_15:
                conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                conn.execute("ALTER SCHEMA public OWNER TO pg_database_owner")


@pytest.mark.parametrize("admin", ["superuser", "limited"])
def test_connect_granted_to_public_by_another_grantor_is_taken_back_or_named(
    pg: Cluster, vault: Vault, tmp_path: Path, admin: str
) -> None:
    # REVOKE ... FROM PUBLIC as the owner leaves another grantor's grant, silently.
    config = provision(pg, vault, tmp_path, ["alpha"])
    if admin == "limited":
        config = as_admin(pg, tmp_path, config, "CREATEDB CREATEROLE")
    env = tool_env(vault)
    assert run(config, env).returncode == 0
    execute(pg, sql.SQL("CREATE ROLE bob LOGIN PASSWORD 'bob-pw'"))
    execute(pg, sql.SQL("GRANT CONNECT ON DATABASE alpha TO bob WITH GRANT OPTION"))
    with login_as(pg.server, "bob", "bob-pw", "postgres") as conn:
        conn.execute("GRANT CONNECT ON DATABASE alpha TO PUBLIC")
    execute(
        pg,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(BYSTANDER), sql.Literal(BYSTANDER_PASSWORD)
        ),
    )

    result = run(config, env)

    if admin == "superuser":
        assert result.returncode == 0, result.output
        assert 'database "alpha" isolated' in result.stdout
        assert public_database_privileges(pg, "alpha") == set()
        assert_login_refused(
            pg.server, BYSTANDER, BYSTANDER_PASSWORD, "permission denied for database", "alpha"
        )
        assert_in_sync(config, env, pg)
    else:
        # It may not act as bob: the service fails, naming who can, never "isolated".
        assert result.returncode == 1, result.output
        assert 'isolated: only "alpha"' not in result.stdout
        (failure,) = [line for line in service_lines(result.stdout, "alpha") if "failed" in line]
        assert 'PUBLIC may still connect through a grant by "bob"' in failure
        assert 'FROM PUBLIC as "bob"' in failure


def test_isolate_false_under_defaults_and_switching_it_on_later(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    services: list[str | Mapping[str, object]] = [
        "shared-a",
        "shared-b",
        {"name": "private-c", "isolate": True},
    ]
    config = provision(pg, vault, tmp_path, services, extra="[defaults]\nisolate = false\n")
    env = tool_env(vault)

    result = run(config, env)

    assert result.returncode == 0, result.output
    assert public_database_privileges(pg, "shared-a") == {"CONNECT", "TEMPORARY"}
    assert public_database_privileges(pg, "shared-b") == {"CONNECT", "TEMPORARY"}
    assert public_database_privileges(pg, "private-c") == set()
    login_as(pg.server, "shared-a", password_for("shared-a"), "shared-b").close()
    assert_login_refused(
        pg.server, "shared-a", password_for("shared-a"), "permission denied", "private-c"
    )
    assert_in_sync(config, env, pg)

    # Dropping the default isolates the existing databases too.
    config = provision(pg, vault, tmp_path, services)
    found = plan(config, env)
    assert found.result.returncode == 2, found.result.output
    assert found.actions("shared-a") == ["IsolateDatabase"]
    assert found.actions("private-c") == []
    isolated = run(config, env)
    assert isolated.returncode == 0, isolated.output
    assert_login_refused(
        pg.server, "shared-a", password_for("shared-a"), "permission denied", "shared-b"
    )
    for name in ("shared-a", "shared-b", "private-c"):
        assert public_database_privileges(pg, name) == set()
        assert_can_work(pg.server, name, password_for(name))
    assert_in_sync(config, env, pg)


def test_extensions_unknown_extension_and_connection_limits(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    services: list[str | Mapping[str, object]] = [
        {"name": "search", "extensions": ["pg_trgm"], "connection_limit": 5},
        {"name": "broken", "extensions": ["pg_trgm", "no_such_ext"]},
        "plain",
    ]
    config = provision(pg, vault, tmp_path, services, extra="[defaults]\nconnection_limit = 3\n")
    env = tool_env(vault)

    result = run(config, env)

    assert result.returncode == 1, result.output
    (failure,) = service_lines(result.stdout, "broken")
    assert failure.startswith("broken: failed: "), failure
    assert '"no_such_ext"' in failure, failure
    assert "pg_available_extensions" in failure, failure
    assert '"pg_trgm"' not in failure, "only the missing extension is named"
    assert summary(result.stdout).startswith("summary: failed: 1 of 3 services failed (broken)")
    assert not role_exists(pg, "broken")
    assert not database_exists(pg, "broken")
    assert "pg_trgm" in extensions_in(pg, "search")
    assert "pg_trgm" not in extensions_in(pg, "plain")
    limits = {
        name: scalar(pg, "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", name)
        for name in ("search", "plain")
    }
    assert limits == {"search": 5, "plain": 3}
    for name in ("search", "plain"):
        assert_can_work(pg.server, name, password_for(name))
    still_failing = plan(config, env)
    assert still_failing.result.returncode == 1, still_failing.result.output
    assert "no_such_ext" in still_failing.service("broken")["error"]

    # Connection limit drift is repaired like any other.
    execute(pg, sql.SQL("ALTER ROLE search CONNECTION LIMIT 50"))
    services[1] = {"name": "broken", "extensions": ["pg_trgm"]}
    config = write_services_file(tmp_path, pg, services, extra="[defaults]\nconnection_limit = 3\n")
    fixed = run(config, env)
    assert fixed.returncode == 0, fixed.output
    assert 'search: CONNECTION LIMIT of role "search" updated to 5' in texts(fixed.stdout)
    assert scalar(pg, "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'search'") == 5
    assert "pg_trgm" in extensions_in(pg, "broken")
    assert_can_work(pg.server, "broken", password_for("broken"))
    assert_in_sync(config, env, pg)


def test_removed_service_is_a_leftover_never_dropped(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    offset = pg.log_offset()
    config = provision(pg, vault, tmp_path, ["keeper", "gone-soon"])
    env = tool_env(vault)
    assert run(config, env).returncode == 0
    config = write_services_file(tmp_path, pg, ["keeper"])

    planned = plan(config, env)
    assert planned.result.returncode == 0, planned.result.output
    leftovers = planned.document["leftovers"]
    (role_note,) = [note for note in leftovers if 'leftover role "gone-soon"' in note]
    assert "kept" in role_note, role_note
    assert any('leftover database "gone-soon"' in note for note in leftovers)
    assert planned.document["leftover_actions"] == []

    kept = run(config, env)
    assert kept.returncode == 0, kept.output
    assert any(
        'leftover role "gone-soon"' in line and "--disable-removed" in line
        for line in texts(kept.stdout)
    ), kept.stdout
    assert role_exists(pg, "gone-soon")
    assert database_exists(pg, "gone-soon")
    assert_can_work(pg.server, "gone-soon", password_for("gone-soon"))
    assert_in_sync(config, env, pg)

    would_disable = plan(config, env, "--disable-removed")
    assert would_disable.result.returncode == 2, would_disable.result.output
    assert [a["action"] for a in would_disable.document["leftover_actions"]] == ["DisableRole"]
    assert would_disable.document["in_sync"] is False
    assert "1 leftover role to disable (gone-soon)" in would_disable.result.stderr
    assert scalar(pg, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'gone-soon'") is True

    disabled = run(config, env, "--disable-removed")
    assert disabled.returncode == 0, disabled.output
    assert 'leftover role "gone-soon" set NOLOGIN' in texts(disabled.stdout), disabled.stdout
    assert scalar(pg, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'gone-soon'") is False
    assert database_exists(pg, "gone-soon")
    assert database_owner(pg, "gone-soon") == "gone-soon"
    assert_login_refused(pg.server, "gone-soon", password_for("gone-soon"), "not permitted")
    assert_can_work(pg.server, "keeper", password_for("keeper"))
    assert_in_sync(config, env, pg, "--disable-removed")
    assert_in_sync(config, env, pg)

    # Listing it again brings it back as it was.
    config = write_services_file(tmp_path, pg, ["keeper", "gone-soon"])
    back = run(config, env)
    assert back.returncode == 0, back.output
    assert service_lines(back.stdout, "gone-soon") == [
        'gone-soon: LOGIN restored on role "gone-soon"'
    ]
    assert_can_work(pg.server, "gone-soon", password_for("gone-soon"))
    assert_in_sync(config, env, pg)

    server_log = pg.log_since(offset)
    statements = tool_statements(server_log)
    assert statements
    assert not [s for s in statements if re.match(r"\s*DROP\b", s, re.IGNORECASE)]
    assert not re.search(r"\bDROP\s+(ROLE|DATABASE|OWNED|USER|SCHEMA)\b", server_log, re.I)
