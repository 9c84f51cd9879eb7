"""What tenants' apps ask of their database (issue 16), against a real server: creation
options, readers, settings, memberships, several databases, sessions ended on disable."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psycopg
import pytest
from catalog import database_exists, database_owner, scalar
from conftest import Cluster, Result, Vault, run_tool, tool_env, write_services_file
from provisioning import ADMIN, as_admin
from psycopg import sql
from server_log import tool_statements, writes
from test_run import password_for, service_lines, summary

# --- helpers ---------------------------------------------------------------------


def services_file(
    pg: Cluster, vault: Vault, tmp_path: Path, services: Sequence[Mapping[str, object]]
) -> Path:
    for service in services:
        vault.put(str(service["name"]), password_for(str(service["name"])))
    return write_services_file(tmp_path, pg, list(services))


def run(config: Path, vault: Vault, *extra: str) -> Result:
    return run_tool(["run", "--config", str(config), *extra], tool_env(vault))


def plan(config: Path, vault: Vault, *extra: str) -> Result:
    return run_tool(["plan", "--config", str(config), *extra], tool_env(vault))


def connect_as(pg: Cluster, name: str, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
    conninfo = pg.server.conninfo(dbname=dbname, user=name, password=password_for(name))
    return psycopg.connect(conninfo, autocommit=True)


def rewrite(config: Path, old: str, new: str) -> None:
    text = config.read_text(encoding="utf-8")
    assert old in text, text
    config.write_text(text.replace(old, new), encoding="utf-8")


def assert_no_writes(pg: Cluster, config: Path, vault: Vault) -> Result:
    """Run again: nothing to do, nothing written, every service unchanged."""
    offset = pg.log_offset()
    result = run(config, vault)
    assert result.returncode == 0, result.output
    assert writes(tool_statements(pg.log_since(offset))) == []
    assert "unchanged" in summary(result.stdout), result.stdout
    return result


# --- 1. creation options --------------------------------------------------------------


def test_creation_options_as_synapse_asks_and_a_differing_database_kept(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(
        pg,
        vault,
        tmp_path,
        [{"name": "synapse", "encoding": "UTF8", "locale": "C", "template": "template0"}],
    )
    result = run(config, vault)
    assert result.returncode == 0, result.output
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype, oid "
            "FROM pg_database WHERE datname = 'synapse'"
        ).fetchone()
    assert row is not None
    assert row[:3] == ("UTF8", "C", "C")
    assert_no_writes(pg, config, vault)

    # Asking for another collation later cannot change the database: said, kept, exit 0.
    rewrite(config, 'locale = "C"', 'locale = "en_US.UTF-8"')
    result = run(config, vault)
    assert result.returncode == 0, result.output
    warning = [line for line in result.stdout.splitlines() if "lc_collate is 'C'" in line]
    assert len(warning) == 1, result.stdout
    assert "WARNING" in warning[0]
    assert 'database "synapse"' in warning[0]
    assert "'en_US.UTF-8'" in warning[0]
    assert scalar(pg, "SELECT oid FROM pg_database WHERE datname = 'synapse'") == row[3]

    planned = plan(config, vault, "--json")
    assert planned.returncode == 0, planned.output  # nothing pending: not a change
    document = json.loads(planned.stdout)
    (synapse,) = document["services"]
    assert synapse["status"] == "unchanged"
    assert synapse["actions"] == []
    assert any("lc_ctype is 'C'" in note for note in synapse["notes"]), synapse
    assert document["in_sync"] is True


def test_creation_option_the_server_refuses_fails_that_service_alone(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(
        pg,
        vault,
        tmp_path,
        [{"name": "odd", "template": "no-such-template"}, {"name": "gitea"}],
    )
    result = run(config, vault)
    assert result.returncode == 1, result.output
    assert any("no-such-template" in line for line in service_lines(result.stdout, "odd"))
    assert database_exists(pg, "gitea")


# --- 2. readers --------------------------------------------------------------------


def test_readers_read_everything_now_and_later_and_write_nothing(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(
        pg,
        vault,
        tmp_path,
        [{"name": "app", "readers": ["grafana"]}, {"name": "grafana"}, {"name": "other"}],
    )
    result = run(config, vault)
    assert result.returncode == 0, result.output
    assert 'app: read-only access to database "app" granted to "grafana"' in result.stdout
    # Tables the service creates after the run are readable too (default privileges).
    with connect_as(pg, "app", "app") as conn:
        conn.execute("CREATE TABLE items (id serial PRIMARY KEY, name text)")
        conn.execute("INSERT INTO items (name) VALUES ('one')")
    with connect_as(pg, "grafana", "app") as conn:
        assert conn.execute("SELECT name FROM items").fetchall() == [("one",)]
        for statement in (
            "INSERT INTO items (name) VALUES ('two')",
            "UPDATE items SET name = 'x'",
            "DELETE FROM items",
            "SELECT nextval('items_id_seq')",
            "CREATE TABLE mine (id int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    # Isolation stays on for everyone else.
    with pytest.raises(psycopg.OperationalError, match="CONNECT"):
        connect_as(pg, "other", "app")
    assert_no_writes(pg, config, vault)

    # Removed from the list: its access goes on the next run.
    rewrite(config, 'readers = ["grafana"]\n', "")
    result = run(config, vault)
    assert result.returncode == 0, result.output
    assert 'read access to database "app" revoked from "grafana"' in result.stdout
    with pytest.raises(psycopg.OperationalError, match="CONNECT"):
        connect_as(pg, "grafana", "app")
    assert_no_writes(pg, config, vault)


def test_reader_may_be_an_existing_role_and_must_exist(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE ROLE analyst LOGIN PASSWORD 'analyst-pw'")
    config = services_file(
        pg,
        vault,
        tmp_path,
        [{"name": "app", "readers": ["analyst"]}, {"name": "lonely", "readers": ["ghost"]}],
    )
    result = run(config, vault)
    assert result.returncode == 1, result.output
    (failure,) = [line for line in service_lines(result.stdout, "lonely") if "failed" in line]
    assert 'readers names "ghost", which no role is' in failure
    conninfo = pg.server.conninfo(dbname="app", user="analyst", password="analyst-pw")
    with psycopg.connect(conninfo) as conn:
        conn.execute("SELECT 1")


# --- 3. settings -------------------------------------------------------------------


def test_settings_applied_repaired_and_unlisted_ones_reported(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(
        pg,
        vault,
        tmp_path,
        [
            {
                "name": "app",
                "settings": {"statement_timeout": "30s", "search_path": "app,public"},
            }
        ],
    )
    assert run(config, vault).returncode == 0
    with connect_as(pg, "app", "app") as conn:
        conn.execute("CREATE SCHEMA app")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        # Two schemas, not one named "app,public".
        assert conn.execute("SELECT current_schemas(false)").fetchone() == (["app", "public"],)
    assert_no_writes(pg, config, vault)

    with pg.connect() as conn:
        conn.execute("ALTER ROLE app IN DATABASE app SET statement_timeout = '1s'")
        conn.execute("ALTER ROLE app IN DATABASE app SET work_mem = '8MB'")
    planned = plan(config, vault)
    assert planned.returncode == 2, planned.output
    assert "would set statement_timeout = '30s'" in planned.stdout
    assert "now '1s'" in planned.stdout
    assert "work_mem = '8MB'" in planned.stdout
    assert "does not list" in planned.stdout
    result = run(config, vault)
    assert result.returncode == 0, result.output
    with connect_as(pg, "app", "app") as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        assert conn.execute("SHOW work_mem").fetchone() == ("8MB",)  # reported, not reset


def test_superuser_only_setting_refused(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = services_file(
        pg,
        vault,
        tmp_path,
        [{"name": "sneaky", "settings": {"session_replication_role": "replica"}}, {"name": "ok"}],
    )
    result = run(config, vault)
    assert result.returncode == 1, result.output
    assert 'context is "superuser"' in result.stdout
    assert not database_exists(pg, "sneaky")
    assert database_exists(pg, "ok")


# --- 4. memberships ------------------------------------------------------------------


def test_member_of_a_predefined_role(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = services_file(
        pg,
        vault,
        tmp_path,
        [
            {"name": "exporter", "member_of": ["pg_monitor"]},
            {"name": "thief", "member_of": ["pg_read_server_files"]},
            {"name": "typo", "member_of": ["pg_monitr"]},
        ],
    )
    result = run(config, vault)
    assert result.returncode == 1, result.output
    assert scalar(pg, "SELECT pg_has_role('exporter', 'pg_monitor', 'MEMBER')") is True
    assert "allow_privileged = true" in "\n".join(service_lines(result.stdout, "thief"))
    assert "does not exist" in "\n".join(service_lines(result.stdout, "typo"))
    assert scalar(pg, "SELECT count(*) FROM pg_roles WHERE rolname = 'thief'") == 0

    rewrite(config, 'member_of = ["pg_read_server_files"]', "")
    rewrite(config, 'member_of = ["pg_monitr"]', "")
    assert_no_writes(pg, run_first(config, vault), vault)


def run_first(config: Path, vault: Vault) -> Path:
    """Run once (to provision what the file now says), then hand the file back."""
    result = run(config, vault)
    assert result.returncode == 0, result.output
    return config


# --- 5. several databases ---------------------------------------------------------------


def test_several_databases_for_one_role(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = services_file(
        pg, vault, tmp_path, [{"name": "radarr", "databases": ["radarr-main", "radarr-log"]}]
    )
    result = run(config, vault)
    assert result.returncode == 0, result.output
    for name in ("radarr-main", "radarr-log"):
        assert database_owner(pg, name) == "radarr"
        pg.login("radarr", password_for("radarr"), dbname=name)
    assert not database_exists(pg, "radarr")
    checked = run_tool(["check", "--config", str(config), "--json"], tool_env(vault))
    assert checked.returncode == 0, checked.output
    assert_no_writes(pg, config, vault)


# --- 6. sessions ended on disable -------------------------------------------------------


def test_disable_removed_ends_open_sessions(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = services_file(pg, vault, tmp_path, [{"name": "keep"}, {"name": "gone"}])
    assert run(config, vault).returncode == 0
    # A session of the role that is about to lose its login, busy in a query.
    session = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, psycopg; c = psycopg.connect(sys.argv[1]); "
            "c.execute('SELECT pg_sleep(60)')",
            pg.server.conninfo(dbname="gone", user="gone", password=password_for("gone")),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while scalar(pg, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'gone'") == 0:
            assert time.monotonic() < deadline, "the session never connected"
            time.sleep(0.1)
        write_services_file(tmp_path, pg, ["keep"])
        result = run(config, vault, "--disable-removed")
        assert result.returncode == 0, result.output
        assert 'role "gone": 1 open session ended' in result.stdout
        assert session.wait(timeout=20) != 0
        assert "terminating connection" in (session.stderr.read() if session.stderr else "")
    finally:
        session.kill()
        session.wait()
    assert scalar(pg, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'gone'") is False


# --- all together, and the file checked first -------------------------------------------


def test_bad_options_all_reported_before_anything_is_done(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = write_services_file(
        tmp_path,
        pg,
        [
            {"name": "a", "locale_provider": "glibc", "databases": ["x", "x"]},
            {"name": "b", "database": "x", "settings": {"no such": "1"}, "readers": ["b"]},
        ],
    )
    result = run(config, vault)
    assert result.returncode == 2, result.output
    for words in (
        "'locale_provider' must be one of",
        "lists a database twice",
        "database 'x' is already used by [[service]] #1",
        "is not a parameter's name",
        "'readers' lists 'b', the service's own role",
    ):
        assert words in result.output, result.output
    with pg.connect() as conn:
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM pg_database WHERE datname = ANY(%s)"), (["x", "a", "b"],)
        ).fetchone()
    assert count == (0,)


# --- with an admin that is no superuser ----------------------------------------------


def test_readers_and_settings_with_a_createrole_admin(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(
        pg,
        vault,
        tmp_path,
        [
            {
                "name": "app",
                "readers": ["grafana"],
                "settings": {"statement_timeout": "30s"},
                "databases": ["app", "app-log"],
            },
            {"name": "grafana"},
        ],
    )
    as_admin(pg, tmp_path, config, "CREATEDB CREATEROLE")
    result = run(config, vault)
    if pg.server_version < 150000:
        # PUBLIC may create in public there, and only the bootstrap superuser may stop it.
        assert result.returncode == 1, result.output
        assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in result.stdout
        for name in ("app", "app-log"):
            with pg.connect(name) as conn:
                conn.execute("GRANT ALL ON SCHEMA public TO app")
                conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        result = run(config, vault)
    assert result.returncode == 0, result.output
    with connect_as(pg, "app", "app-log") as conn:
        conn.execute("CREATE TABLE entries (id int)")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
    with connect_as(pg, "grafana", "app-log") as conn:
        assert conn.execute("SELECT count(*) FROM entries").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO entries VALUES (1)")
    assert_no_writes(pg, config, vault)


def test_member_of_with_a_createrole_admin_says_what_it_lacks(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(pg, vault, tmp_path, [{"name": "exporter", "member_of": ["pg_monitor"]}])
    as_admin(pg, tmp_path, config, "CREATEDB CREATEROLE")
    result = run(config, vault)
    if pg.server_version >= 160000:
        # From 16 on, granting a role takes ADMIN OPTION on it.
        assert result.returncode == 1, result.output
        assert "pg_monitor" in "\n".join(service_lines(result.stdout, "exporter"))
        with pg.connect() as conn:
            conn.execute(
                sql.SQL("GRANT pg_monitor TO {} WITH ADMIN OPTION").format(sql.Identifier(ADMIN))
            )
        result = run(config, vault)
    assert result.returncode == 0, result.output
    assert scalar(pg, "SELECT pg_has_role('exporter', 'pg_monitor', 'MEMBER')") is True
    assert_no_writes(pg, config, vault)


# --- what a hostile review found -------------------------------------------------------


def test_what_the_tenant_shares_itself_is_never_taken_back(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(pg, vault, tmp_path, [{"name": "app"}, {"name": "viewer"}])
    assert run(config, vault).returncode == 0
    # The tenant lets a role of its own read, as the app's docs tell it to.
    with connect_as(pg, "app", "app") as conn:
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO viewer")
        conn.execute(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON SEQUENCES TO viewer"
        )
        conn.execute("GRANT CONNECT ON DATABASE app TO viewer")
        conn.execute("CREATE TABLE jobs (id serial)")
    assert_no_writes(pg, config, vault)
    rewrite(config, 'name = "app"\n', 'name = "app"\nreaders = ["viewer"]\n')
    assert run(config, vault).returncode == 0
    rewrite(config, 'readers = ["viewer"]\n', "")
    result = run(config, vault)
    assert result.returncode == 0, result.output
    assert 'revoked from "viewer"' in result.stdout  # what nomad-pginit gave, it takes back
    # What the tenant gave by itself came back with nomad-pginit's grant and went with it;
    # but a role the tenant shares with and nomad-pginit never recorded is left alone.
    with pg.connect() as conn:
        conn.execute("CREATE ROLE partner LOGIN PASSWORD 'partner-pw'")
    with connect_as(pg, "app", "app") as conn:
        conn.execute("GRANT CONNECT ON DATABASE app TO partner")
        conn.execute("GRANT SELECT ON jobs TO partner")
    assert_no_writes(pg, config, vault)
    conninfo = pg.server.conninfo(dbname="app", user="partner", password="partner-pw")
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_readers_read_only_the_services_own_tables(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(
        pg, vault, tmp_path, [{"name": "app", "readers": ["grafana"]}, {"name": "grafana"}]
    )
    assert run(config, vault).returncode == 0
    with pg.connect("app") as conn:
        conn.execute("CREATE TABLE public.dba_only (secret text)")
        conn.execute("INSERT INTO public.dba_only VALUES ('dba-secret')")
    with connect_as(pg, "app", "app") as conn:
        conn.execute("CREATE TABLE mine (id int)")
    assert run(config, vault).returncode == 0
    with connect_as(pg, "grafana", "app") as conn:
        conn.execute("SELECT * FROM mine")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM dba_only")
    assert_no_writes(pg, config, vault)


def test_readers_of_roles_created_in_the_same_run_in_a_chain(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    services: list[Mapping[str, object]] = [
        {"name": f"x{i}", "readers": ["y"]} for i in range(1, 5)
    ]
    services += [{"name": "y", "readers": ["z"]}, {"name": "z"}]
    config = services_file(pg, vault, tmp_path, services)
    result = run(config, vault)
    assert result.returncode == 0, result.output
    with connect_as(pg, "y", "x3") as conn:
        conn.execute("SELECT 1")
    assert_no_writes(pg, config, vault)


def test_member_of_taken_back_when_removed_and_beyond_one_database_refused(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(
        pg,
        vault,
        tmp_path,
        [
            {"name": "exporter", "member_of": ["pg_monitor"]},
            {"name": "killer", "member_of": ["pg_signal_backend"]},
        ],
    )
    result = run(config, vault)
    assert result.returncode == 1, result.output
    assert "allow_privileged = true" in "\n".join(service_lines(result.stdout, "killer"))
    rewrite(config, 'member_of = ["pg_monitor"]\n', "")
    rewrite(config, 'member_of = ["pg_signal_backend"]\n', "")
    result = run(config, vault)
    assert result.returncode == 0, result.output
    assert 'role "pg_monitor" revoked from "exporter"' in result.stdout
    assert scalar(pg, "SELECT pg_has_role('exporter', 'pg_monitor', 'MEMBER')") is False
    vault.put("exporter", password_for("exporter") + "-rotated")
    rotated = run(config, vault)
    assert rotated.returncode == 0, rotated.output


def test_disable_removed_ends_sessions_of_a_role_already_nologin(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(pg, vault, tmp_path, [{"name": "keep"}, {"name": "gone"}])
    assert run(config, vault).returncode == 0
    session = connect_as(pg, "gone", "gone")
    try:
        with pg.connect() as conn:
            conn.execute("ALTER ROLE gone NOLOGIN")  # a stop between the two steps, say
        write_services_file(tmp_path, pg, ["keep"])
        planned = plan(config, vault)
        assert "1 session(s) of it are still open" in planned.stdout, planned.output
        would = plan(config, vault, "--disable-removed")
        assert "1 leftover role whose open sessions to end (gone)" in would.output
        result = run(config, vault, "--disable-removed")
        assert result.returncode == 0, result.output
        assert 'role "gone": 1 open session ended' in result.stdout
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
    finally:
        session.close()


# --- a second hostile review -----------------------------------------------------------


def test_member_of_groups_that_reach_beyond_need_the_flag(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(pg, vault, tmp_path, [{"name": "old"}])
    assert run(config, vault).returncode == 0
    with pg.connect() as conn:
        conn.execute("CREATE ROLE fin_owner")
        conn.execute("CREATE DATABASE fin OWNER fin_owner")
        conn.execute("CREATE ROLE g_param")
        if pg.server_version >= 150000:
            conn.execute("GRANT ALTER SYSTEM ON PARAMETER archive_command TO g_param")
        else:
            conn.execute("GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO g_param")
    groups = {"a": "fin_owner", "b": "g_param", "c": "old"}  # "old": a removed service's role
    config = services_file(
        pg,
        vault,
        tmp_path,
        [{"name": name, "member_of": [group]} for name, group in groups.items()],
    )
    result = run(config, vault)
    assert result.returncode == 1, result.output
    for name, group in groups.items():
        lines = "\n".join(service_lines(result.stdout, name))
        assert f'member_of names role "{group}"' in lines, result.stdout
        assert "allow_privileged = true" in lines
        assert scalar(pg, "SELECT count(*) FROM pg_roles WHERE rolname = %s", name) == 0


def test_records_a_tenant_edits_never_turn_against_the_service(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(pg, vault, tmp_path, [{"name": "app"}])
    assert run(config, vault).returncode == 0
    with connect_as(pg, "app", "app") as conn:
        conn.execute('CREATE TABLE "Upper" (id int)')
        # The tenant owns its database, so it may rewrite the record: its own role, a
        # role that does not exist.
        conn.execute(
            'COMMENT ON DATABASE app IS \'managed by nomad-pginit; {"readers": ["app", "ghost"]}\''
        )
    result = run(config, vault)
    assert result.returncode == 0, result.output
    assert "revoked" not in result.stdout
    with connect_as(pg, "app", "app") as conn:
        conn.execute('SELECT * FROM "Upper"')
    assert_no_writes(pg, config, vault)


def test_template_of_a_removed_service_and_pg_database_owner_refused(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = services_file(pg, vault, tmp_path, [{"name": "gone"}])
    assert run(config, vault).returncode == 0
    config = services_file(
        pg,
        vault,
        tmp_path,
        [{"name": "copy", "template": "gone"}, {"name": "odd", "member_of": ["pg_database_owner"]}],
    )
    planned = plan(config, vault)
    assert 'template "gone" is a database nomad-pginit made' in planned.stdout, planned.output
    assert "cannot have members" in planned.stdout
    result = run(config, vault)
    assert result.returncode == 1, result.output
    assert not database_exists(pg, "copy")
