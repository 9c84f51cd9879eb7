"""Hostile state, against real servers: privileged roles, planted comments, expired
passwords, verifiers that could reach logs, passwords PostgreSQL cannot store, and
the messages that must send an operator the right way."""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import hvac
import psycopg
import pytest
from catalog import database_exists, database_owner, scalar
from conftest import (
    PASSWORD_MARKER,
    Cluster,
    Result,
    Vault,
    run_tool,
    start_tool,
    superuser_connect,
    tool_env,
    write_services_file,
)
from psycopg import sql

from nomad_pginit import postgres
from nomad_pginit.errors import ExitCode
from sandbox import ThrowawayPostgres


def run(config: Path, env: dict[str, str], *extra: str) -> Result:
    return run_tool(["run", "--config", str(config), *extra], env)


def verifier(pg: Cluster, role: str) -> object:
    return scalar(pg, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", role)


def can_login(server: ThrowawayPostgres, user: str, password: str) -> bool:
    try:
        psycopg.connect(server.conninfo(user=user, password=password, dbname="postgres")).close()
    except psycopg.OperationalError:
        return False
    return True


# --- roles with more than a service's rights --------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (["ALTER ROLE squatter CREATEDB"], "has CREATEDB"),
        (["ALTER ROLE squatter CREATEROLE"], "has CREATEROLE"),
        (["ALTER ROLE squatter REPLICATION"], "has REPLICATION"),
        (["ALTER ROLE squatter BYPASSRLS"], "has BYPASSRLS"),
        (["GRANT postgres TO squatter"], 'is a member of "postgres" (a superuser)'),
        (
            [
                "CREATE ROLE readers NOLOGIN",
                "GRANT pg_read_all_data TO readers",
                "GRANT readers TO squatter",
            ],
            'is a member of "pg_read_all_data"',
        ),
        (["GRANT pg_read_all_settings TO squatter"], 'is a member of "pg_read_all_settings"'),
        (
            ["GRANT SELECT ON pg_authid TO squatter"],
            "holds privileges on system catalog objects (pg_authid)",
        ),
        (
            [
                "CREATE ROLE readers NOLOGIN",
                "GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO readers",
                "GRANT readers TO squatter",
            ],
            "holds privileges on system catalog objects (pg_read_binary_file)",
        ),
        (
            ["CREATE ROLE human LOGIN", "GRANT squatter TO human"],
            'has members ("human") who would own the service\'s database through it',
        ),
        (
            [
                "CREATE TABLE public.squatters_table (id int)",
                "ALTER TABLE public.squatters_table OWNER TO squatter",
            ],
            'owns objects in other databases ("postgres")',
        ),
    ],
)
def test_an_existing_privileged_role_is_refused_and_left_untouched(
    tmp_path: Path, pg: Cluster, vault: Vault, setup: list[str], reason: str
) -> None:
    with superuser_connect(pg.server) as conn:
        conn.execute("CREATE ROLE squatter LOGIN PASSWORD 'the-squatters-own'")
        for statement in setup:
            conn.execute(statement)
    before = verifier(pg, "squatter")
    vault.put("squatter", f"{PASSWORD_MARKER}squatter")
    config = write_services_file(tmp_path, pg, ["squatter"])

    result = run(config, tool_env(vault))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    (line,) = [line for line in result.stdout.splitlines() if "squatter: failed" in line]
    assert reason in line
    if "owns objects" not in reason:
        assert "allow_privileged_role = true" in line
    assert verifier(pg, "squatter") == before
    assert not database_exists(pg, "squatter")


def test_a_role_holding_privileges_on_parameters_is_refused(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    # ALTER SYSTEM on archive_command: a shell command run by the server (PostgreSQL 15+).
    with superuser_connect(pg.server) as conn:
        if conn.info.server_version < 150000:
            pytest.skip("GRANT ... ON PARAMETER came with PostgreSQL 15")
        conn.execute("CREATE ROLE squatter LOGIN PASSWORD 'the-squatters-own'")
        conn.execute("CREATE ROLE archivists NOLOGIN")
        conn.execute("GRANT ALTER SYSTEM ON PARAMETER archive_command TO archivists")
        conn.execute("GRANT archivists TO squatter")
    try:
        before = verifier(pg, "squatter")
        vault.put("squatter", f"{PASSWORD_MARKER}squatter")
        result = run(write_services_file(tmp_path, pg, ["squatter"]), tool_env(vault))
    finally:
        with superuser_connect(pg.server) as conn:
            # A parameter's ACL outlives the roles' reset: take it back by hand.
            conn.execute("REVOKE ALTER SYSTEM ON PARAMETER archive_command FROM archivists")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    (line,) = [line for line in result.stdout.splitlines() if "squatter: failed" in line]
    assert "holds privileges on parameters (archive_command)" in line
    assert verifier(pg, "squatter") == before
    assert not database_exists(pg, "squatter")


def test_every_privileged_predefined_role_of_this_major_is_refused(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    # Each major adds its own (pg_maintain in 17, pg_signal_autovacuum_worker in 18).
    with superuser_connect(pg.server) as conn:
        present = [
            str(name)
            for (name,) in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname",
                (list(postgres.PRIVILEGED_ROLES),),
            )
        ]
        for name in present:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(f"member-of-{name}"))
            )
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(name), sql.Identifier(f"member-of-{name}")
                )
            )
    assert "pg_read_all_data" in present
    services = [f"member-of-{name}" for name in present]
    for service in services:
        vault.put(service, f"{PASSWORD_MARKER}{service}")
    config = write_services_file(tmp_path, pg, services)

    result = run(config, tool_env(vault))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    for name in present:
        (line,) = [
            line for line in result.stdout.splitlines() if f"member-of-{name}: failed" in line
        ]
        assert f'is a member of "{name}"' in line, line
        assert not database_exists(pg, f"member-of-{name}")


def test_a_member_of_another_services_role_is_refused(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    """Its password would open the other tenant's database too (SET ROLE tenant)."""
    vault.put("tenant", "tenant-pw")
    vault.put("nosy", f"{PASSWORD_MARKER}nosy")
    assert run(write_services_file(tmp_path, pg, ["tenant"]), tool_env(vault)).returncode == 0
    with superuser_connect(pg.server) as conn:
        conn.execute("CREATE ROLE nosy LOGIN")
        conn.execute("GRANT tenant TO nosy")
    config = write_services_file(tmp_path, pg, ["tenant", "nosy"])

    result = run(config, tool_env(vault))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    (line,) = [line for line in result.stdout.splitlines() if "nosy: failed" in line]
    assert 'is a member of "tenant" (another service\'s role)' in line
    # And tenant's own role now has a member who would own its database through it.
    (line,) = [line for line in result.stdout.splitlines() if "tenant: failed" in line]
    assert 'has members ("nosy")' in line
    assert not can_login(pg.server, "nosy", f"{PASSWORD_MARKER}nosy")


def test_allow_privileged_role_takes_it_over_on_purpose(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    with superuser_connect(pg.server) as conn:
        conn.execute("CREATE ROLE replicator LOGIN REPLICATION")
    vault.put("replicator", "replicator-pw")
    config = write_services_file(
        tmp_path, pg, [{"name": "replicator", "allow_privileged_role": True}]
    )

    result = run(config, tool_env(vault))

    assert result.returncode == ExitCode.OK, result.output
    assert can_login(pg.server, "replicator", "replicator-pw")
    assert database_owner(pg, "replicator") == "replicator"


def test_allow_privileged_role_cannot_come_from_defaults(tmp_path: Path, pg: Cluster) -> None:
    config = write_services_file(
        tmp_path, pg, ["gitea"], extra="[defaults]\nallow_privileged_role = true\n"
    )

    result = run(config, tool_env(None))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "unknown key 'allow_privileged_role'" in result.stdout


# --- --disable-removed and planted comments ---------------------------------------------------


def test_disable_removed_never_locks_out_a_superuser_the_admin_or_a_group(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    planted = ["postgres", "other_super", "team", "old_service"]
    with superuser_connect(pg.server) as conn:
        conn.execute("CREATE ROLE other_super LOGIN SUPERUSER")
        conn.execute("CREATE ROLE team LOGIN")
        conn.execute("CREATE ROLE member_of_team LOGIN")
        conn.execute("GRANT team TO member_of_team")
        conn.execute("CREATE ROLE old_service LOGIN")
        for role in planted:
            conn.execute(
                sql.SQL("COMMENT ON ROLE {} IS 'managed by nomad-pginit'").format(
                    sql.Identifier(role)
                )
            )
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])

    result = run(config, tool_env(vault), "--disable-removed")

    assert result.returncode == ExitCode.OK, result.output
    with superuser_connect(pg.server) as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s)", (planted,)
        ).fetchall()
    logins = {str(name): bool(login) for name, login in rows}
    # Only the plain leftover loses LOGIN.
    assert logins == {"postgres": True, "other_super": True, "team": True, "old_service": False}
    assert 'leftover role "postgres": no longer in the services file, kept; never set ' in (
        result.stdout
    )
    assert "it is a superuser" in result.stdout
    assert "other roles are members of it" in result.stdout
    psycopg.connect(pg.server.conninfo()).close()  # the admin still logs in


# --- VALID UNTIL ------------------------------------------------------------------------------


@pytest.mark.parametrize("until", ["2001-01-01", "2999-01-01"])
def test_a_valid_until_is_drift_repaired(
    tmp_path: Path, pg: Cluster, vault: Vault, until: str
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    assert run(config, tool_env(vault)).returncode == ExitCode.OK
    with superuser_connect(pg.server) as conn:
        conn.execute(sql.SQL("ALTER ROLE gitea VALID UNTIL {}").format(sql.Literal(until)))
    if until < "2026":
        assert not can_login(pg.server, "gitea", "gitea-pw")
        checked = run_tool(["check", "--config", str(config), "--json"], tool_env(vault))
        assert checked.returncode == ExitCode.SERVICE_FAILED, checked.output
        (service,) = json.loads(checked.stdout)["services"]
        assert [problem["kind"] for problem in service["problems"]] == ["password_expired"]

    planned = run_tool(["plan", "--config", str(config)], tool_env(vault))
    repaired = run(config, tool_env(vault))
    again = run(config, tool_env(vault))

    assert planned.returncode == ExitCode.CONFIG, planned.output  # changes pending
    assert 'would remove the VALID UNTIL of role "gitea"' in planned.stdout
    assert repaired.returncode == ExitCode.OK, repaired.output
    assert 'VALID UNTIL of role "gitea" removed' in repaired.stdout
    assert can_login(pg.server, "gitea", "gitea-pw")
    assert "gitea: unchanged" in again.stdout


def test_a_leftover_that_cannot_be_disabled_fails_the_run(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    vault.put("keeper", "keeper-pw")
    vault.put("gone", "gone-pw")
    assert (
        run(write_services_file(tmp_path, pg, ["keeper", "gone"]), tool_env(vault)).returncode == 0
    )
    config = write_services_file(tmp_path, pg, ["keeper"])
    with psycopg.connect(pg.server.conninfo(), application_name="a-migration") as blocker:
        blocker.execute("ALTER ROLE gone CONNECTION LIMIT 7")  # its row, changed, held
        failed = run(config, tool_env(vault), "--disable-removed", "--wait-timeout", "2")
        process = start_tool(
            ["run", "--config", str(config), "--disable-removed", "--wait-timeout", "60"],
            tool_env(vault),
        )
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "keeper: unchanged" in line:
                break
        time.sleep(1.5)  # DisableRole is waiting on the lock now
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        blocker.rollback()
    stopped = "".join(lines) + out

    assert failed.returncode == ExitCode.SERVICE_FAILED, failed.output
    assert 'cannot set leftover role "gone" NOLOGIN' in failed.stdout
    assert "summary: failed: 1 leftover role could not be disabled" in failed.stdout
    assert process.returncode == ExitCode.STOPPED, stopped
    assert "summary: stopped: 1 leftover role not disabled (gone), left for the next run" in (
        stopped
    )
    assert scalar(pg, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'gone'") is True


# --- verifiers and the server's logs ----------------------------------------------------------


def test_a_limited_admin_is_warned_of_each_setting_that_would_log_verifiers(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    with superuser_connect(pg.server) as conn:
        grants_parameters = conn.info.server_version >= 150000
        conn.execute("CREATE ROLE limited LOGIN CREATEDB CREATEROLE PASSWORD 'limited-pw'")
        if grants_parameters:
            conn.execute("GRANT SET ON PARAMETER log_statement TO limited")
        conn.execute("ALTER ROLE limited SET log_min_duration_statement = 0")
    vault.put("gitea", "gitea-pw")
    password_file = tmp_path / "limited"
    password_file.write_text("limited-pw\n", encoding="utf-8")
    config = write_services_file(tmp_path, pg, ["gitea"], password_file=password_file)
    config.write_text(
        config.read_text(encoding="utf-8").replace("postgres@", "limited@"), encoding="utf-8"
    )

    result = run(config, tool_env(vault))

    assert result.returncode == ExitCode.OK, result.output
    (warning,) = [line for line in result.stdout.splitlines() if "may not switch off" in line]
    assert "log_min_duration_statement = 0" in warning
    if grants_parameters:
        # Granted: log_statement is one it may switch off.
        assert "log_statement" not in warning.split("off ")[1].split(":")[0]
        assert "GRANT SET ON PARAMETER log_min_duration_statement" in warning
        assert "TO limited avoids it" in warning
    else:
        # PostgreSQL 14 cannot grant it, and the warning does not suggest it.
        assert "GRANT SET" not in warning
        assert "a superuser admin avoids it" in warning


def test_debug_print_parse_never_prints_a_verifier(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    # Anyone may set debug_print_parse; the parse tree holds the statement's literals.
    with superuser_connect(pg.server) as conn:
        conn.execute("ALTER ROLE postgres SET debug_print_parse = on")
    try:
        vault.put("gitea", f"{PASSWORD_MARKER}gitea")
        config = write_services_file(tmp_path, pg, ["gitea"])
        offset = pg.log_offset()
        result = run(config, tool_env(vault))
        logged = pg.log_since(offset)
    finally:
        with superuser_connect(pg.server) as conn:
            conn.execute("ALTER ROLE postgres RESET debug_print_parse")

    assert result.returncode == ExitCode.OK, result.output
    assert "SCRAM-SHA-256$" not in logged
    assert PASSWORD_MARKER not in logged


def test_pg_stat_statements_never_stores_a_verifier(tmp_path: Path, vault: Vault) -> None:
    with ThrowawayPostgres(settings={"shared_preload_libraries": "pg_stat_statements"}) as server:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        vault.put("gitea", "gitea-pw")
        (tmp_path / "pw").write_text(server.password + "\n", encoding="utf-8")
        config = tmp_path / "pginit.toml"
        config.write_text(
            f'[postgres]\ndsn = "postgresql://postgres@127.0.0.1:{server.port}/postgres"\n'
            f'password_file = "{tmp_path}/pw"\n\n[[service]]\nname = "gitea"\n',
            encoding="utf-8",
        )
        result = run(config, tool_env(vault))
        vault.put("gitea", "gitea-pw-2")
        rotated = run(config, tool_env(vault))
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            stored = [
                str(row[0])
                for row in conn.execute("SELECT query FROM pg_stat_statements").fetchall()
            ]

    assert result.returncode == ExitCode.OK, result.output
    assert rotated.returncode == ExitCode.OK, rotated.output
    assert not [query for query in stored if "SCRAM-SHA-256$" in query], stored


# --- passwords PostgreSQL cannot store --------------------------------------------------------


def test_a_password_with_a_nul_byte_is_refused_not_set_for_ever(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    vault.put("gitea", "before\x00after")
    vault.put("grafana", "grafana-pw")
    config = write_services_file(tmp_path, pg, ["gitea", "grafana"])

    first = run(config, tool_env(vault))
    second = run(config, tool_env(vault))

    for result in (first, second):
        assert result.returncode == ExitCode.SERVICE_FAILED, result.output
        assert "contains a NUL character, which PostgreSQL cannot store" in result.stdout
        assert "updated" not in result.stdout or "gitea: password" not in result.stdout
    assert "grafana: unchanged" in second.stdout


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"password": ""}, "'password' must be a non-empty string"),
        ({"password": "a\x00b"}, "contains a NUL character"),
        ({"connection_limit": 2147483648}, "'connection_limit' must be -1 (no limit) to"),
        # JSON can escape half a UTF-16 pair, which is no text at all.
        ({"password": "secret\ud800tail"}, "is not valid Unicode text"),
    ],
)
def test_values_postgresql_cannot_take_are_refused_up_front(
    tmp_path: Path, pg: Cluster, entry: dict[str, object], message: str
) -> None:
    document = {
        "root_connection_string": f"postgresql://postgres@127.0.0.1:{pg.port}/postgres",
        "databases": [{"database": "gitea", "user": "gitea", **entry}],
    }
    config = tmp_path / "config.json"
    config.write_text(json.dumps(document), encoding="utf-8")

    result = run(config, tool_env(None))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert message in result.stdout
    assert "this is a bug" not in result.output
    if isinstance(entry.get("password"), str) and len(str(entry["password"])) > 3:
        # Not a piece of it, nor where the bad character is.
        assert "tail" not in result.output
        assert "position" not in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xffpassword\n", "is not UTF-8 text"),
        (b"before\x00after\n", "contains a NUL character"),
        (b"\n", "is empty"),
    ],
)
def test_an_admin_password_file_that_is_no_password_is_a_config_error(
    tmp_path: Path, pg: Cluster, vault: Vault, content: bytes, message: str
) -> None:
    password_file = tmp_path / "admin-pw"
    password_file.write_bytes(content)
    config = write_services_file(tmp_path, pg, ["gitea"], password_file=password_file)

    result = run(config, tool_env(vault))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert message in result.stdout
    assert "this is a bug" not in result.output
    assert "after" not in result.output


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12345, "is a number, not a string"),
        (["a", "b"], "is a list, not a string"),
        ("", "has an empty 'password'"),
    ],
)
def test_a_vault_value_that_is_no_password_says_what_it_is(
    tmp_path: Path, pg: Cluster, vault: Vault, value: object, expected: str
) -> None:
    vault.client.secrets.kv.v2.create_or_update_secret(
        path="postgres/gitea", secret={"password": value}, mount_point="secret"
    )
    config = write_services_file(tmp_path, pg, ["gitea"])

    result = run(config, tool_env(vault))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert expected in result.stdout
    assert "12345" not in result.output


# --- a refusal made from state the run itself changes -----------------------------------------


def test_a_role_owning_another_services_database_converges_in_one_run(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    with superuser_connect(pg.server) as conn:
        conn.execute("CREATE ROLE xb LOGIN")
        conn.execute("CREATE DATABASE xa OWNER xb")
    vault.put("xa", "xa-pw")
    vault.put("xb", "xb-pw")
    config = write_services_file(tmp_path, pg, ["xa", "xb"])

    result = run(config, tool_env(vault))

    assert result.returncode == ExitCode.OK, result.output
    assert database_owner(pg, "xa") == "xa"
    assert database_owner(pg, "xb") == "xb"
    # Both plan and run say the same, whatever the order of the services.
    config = write_services_file(tmp_path, pg, ["xb", "xa"])
    assert run(config, tool_env(vault)).returncode == ExitCode.OK


@pytest.mark.parametrize(
    "why_xa_fails",
    ["no secret", "privileged role"],
)
def test_a_role_owning_a_database_its_service_did_not_take_is_refused(
    tmp_path: Path, pg: Cluster, vault: Vault, why_xa_fails: str
) -> None:
    """The hand-over must have happened: if service xa fails, role xb still owns xa's
    data, and the holder of xb's password must not get it."""
    with superuser_connect(pg.server) as conn:
        conn.execute("CREATE ROLE xb LOGIN PASSWORD 'xb-own'")
        conn.execute("CREATE DATABASE xa OWNER xb")
        if why_xa_fails == "privileged role":
            conn.execute("CREATE ROLE xa LOGIN CREATEROLE")
    with superuser_connect(pg.server, "xa") as conn:
        conn.execute("CREATE TABLE public.precious (id int)")
        conn.execute("ALTER TABLE public.precious OWNER TO xb")
    if why_xa_fails != "no secret":
        vault.put("xa", "xa-pw")
    vault.put("xb", f"{PASSWORD_MARKER}xb")
    before = verifier(pg, "xb")
    config = write_services_file(tmp_path, pg, ["xa", "xb"])

    result = run(config, tool_env(vault))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "xa: failed" in result.stdout
    (line,) = [line for line in result.stdout.splitlines() if "xb: failed" in line]
    assert 'role "xb" already exists and owns other databases ("xa")' in line
    assert database_owner(pg, "xa") == "xb"
    assert verifier(pg, "xb") == before
    assert not can_login(pg.server, "xb", f"{PASSWORD_MARKER}xb")


# --- messages that send the operator the right way --------------------------------------------


def test_a_deleted_secret_says_how_to_bring_it_back(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    vault.put("gitea", "gitea-pw")
    vault.client.secrets.kv.v2.delete_latest_version_of_secret(
        path="postgres/gitea", mount_point="secret"
    )
    config = write_services_file(tmp_path, pg, ["gitea"])

    result = run(config, tool_env(vault))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "the newest version (1) of secret/postgres/gitea was deleted" in result.stdout
    assert "vault kv undelete -versions=1 secret/postgres/gitea" in result.stdout


def test_a_kv_version_1_mount_is_named(tmp_path: Path, pg: Cluster, vault: Vault) -> None:
    client = hvac.Client(url=vault.addr, token=vault.token)
    client.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
    try:
        client.write_data("kv1/postgres/gitea", data={"password": "gitea-pw"})
        config = write_services_file(tmp_path, pg, ["gitea"], extra='[vault]\nmount = "kv1"\n')
        result = run(config, tool_env(vault))
    finally:
        client.sys.disable_secrets_engine("kv1")  # type: ignore[no-untyped-call]

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "kv1/ is a KV version 1 mount" in result.stdout
    assert "vault kv enable-versioning kv1/" in result.stdout


def test_sslmode_require_against_a_server_without_ssl_is_said_at_once(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    text = config.read_text(encoding="utf-8")
    config.write_text(re.sub(r"/postgres\"", '/postgres?sslmode=require"', text), "utf-8")

    result = run(config, tool_env(vault), "--wait-timeout", "60")

    assert result.returncode == ExitCode.POSTGRES, result.output
    assert "server does not support SSL, but SSL was required" in result.stdout
    assert "waiting for PostgreSQL" not in result.stdout


# --- a tenant's own schema is not the admin's ---------------------------------------------------


def test_functions_a_tenant_plants_in_its_public_never_run_as_the_admin(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    """A service's role owns schema public in its database: a function there that
    matches one of the admin's calls better than pg_catalog's must not be called."""
    vault.put("tenant", "tenant-pw")
    config = write_services_file(tmp_path, pg, ["tenant"])
    assert run(config, tool_env(vault)).returncode == ExitCode.OK
    conninfo = pg.server.conninfo(dbname="tenant", user="tenant", password="tenant-pw")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for signature, returns in [
            ("has_schema_privilege(text, regnamespace, text)", "boolean"),
            ("has_schema_privilege(name, regnamespace, text)", "boolean"),
            ("to_regnamespace(text)", "regnamespace"),
            ("shobj_description(oid, text)", "text"),
            ("set_config(text, text, boolean)", "text"),
        ]:
            conn.execute(
                f"CREATE FUNCTION public.{signature} RETURNS {returns} "
                "LANGUAGE plpgsql AS $$ BEGIN "
                "EXECUTE 'ALTER ROLE tenant SUPERUSER'; RETURN NULL; END $$"
            )
        conn.execute(
            "CREATE FUNCTION public.escalate(regrole, regrole) RETURNS boolean LANGUAGE plpgsql "
            "AS $$ BEGIN EXECUTE 'ALTER ROLE tenant SUPERUSER'; RETURN $1::oid = $2::oid; END $$"
        )
        conn.execute(
            "CREATE OPERATOR public.= (LEFTARG = regrole, RIGHTARG = regrole, "
            "FUNCTION = public.escalate)"
        )
    vault.put("tenant", "tenant-pw-2")  # a rotation: the password statement runs too
    config = write_services_file(tmp_path, pg, [{"name": "tenant", "extensions": ["pg_trgm"]}])

    planned = run_tool(["plan", "--config", str(config)], tool_env(vault))
    applied = run(config, tool_env(vault))
    again = run(config, tool_env(vault))

    assert planned.returncode == ExitCode.CONFIG, planned.output  # changes pending
    assert applied.returncode == ExitCode.OK, applied.output
    assert again.returncode == ExitCode.OK, again.output
    assert scalar(pg, "SELECT rolsuper FROM pg_roles WHERE rolname = 'tenant'") is False
    # The extension went where it goes for anyone: public, not pg_catalog.
    with pg.connect("tenant") as conn:
        row = conn.execute(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_trgm'"
        ).fetchone()
    assert row == ("public",)


@pytest.mark.parametrize(
    "setting",
    [
        # Sampling is decided when the transaction starts, not per statement.
        "log_transaction_sample_rate = 1",
        # DEBUG2 logs every extended-protocol Parse with its text.
        "log_min_messages = debug2",
    ],
)
def test_settings_that_log_at_transaction_start_or_parse_never_log_a_verifier(
    tmp_path: Path, pg: Cluster, vault: Vault, setting: str
) -> None:
    name, value = setting.split(" = ", maxsplit=1)
    with superuser_connect(pg.server) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE postgres SET {} = {}").format(
                sql.Identifier(name), sql.Literal(value)
            )
        )
    try:
        vault.put("gitea", f"{PASSWORD_MARKER}gitea")
        config = write_services_file(tmp_path, pg, ["gitea"])
        offset = pg.log_offset()
        created = run(config, tool_env(vault))
        vault.put("gitea", f"{PASSWORD_MARKER}gitea-2")
        rotated = run(config, tool_env(vault))
        logged = pg.log_since(offset)
    finally:
        with superuser_connect(pg.server) as conn:
            conn.execute(sql.SQL("ALTER ROLE postgres RESET {}").format(sql.Identifier(name)))

    assert created.returncode == ExitCode.OK, created.output
    assert rotated.returncode == ExitCode.OK, rotated.output
    assert 'password of role "gitea" updated' in rotated.stdout
    assert "SCRAM-SHA-256$" not in logged
    assert PASSWORD_MARKER not in logged


def test_a_password_statement_waiting_on_a_lock_shows_no_verifier_to_monitors(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    """pg_stat_activity shows a running statement to pg_read_all_stats members, and a
    deadlock report would quote it in the server log."""
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    assert run(config, tool_env(vault)).returncode == ExitCode.OK
    vault.put("gitea", f"{PASSWORD_MARKER}rotated")
    with superuser_connect(pg.server) as holder, superuser_connect(pg.server) as monitor:
        holder.execute("BEGIN")
        holder.execute("ALTER ROLE gitea CONNECTION LIMIT 7")  # gitea's row, changed, held
        process = start_tool(["run", "--config", str(config)], tool_env(vault))
        seen: list[str] = []
        try:
            for _ in range(60):
                rows = monitor.execute(
                    "SELECT coalesce(a.query, '') FROM pg_stat_activity a "
                    "JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted "
                    "WHERE a.application_name = 'nomad-pginit'"
                ).fetchall()
                seen += [str(row[0]) for row in rows]
                if rows:
                    break
                time.sleep(0.1)
        finally:
            holder.execute("ROLLBACK")
            process.wait(timeout=60)

    assert seen, "the run never waited on the lock"
    assert not [query for query in seen if "SCRAM-SHA-256$" in query], seen


class CleartextAsker:
    """A server at the DSN's address that asks for the password in clear text, as one
    that is not PostgreSQL would to collect it; it records what it was sent."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    while True:
                        length, code = struct.unpack("!II", conn.recv(8))
                        conn.recv(length - 8)
                        if code not in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                            break  # the startup message
                        conn.sendall(b"N")  # neither: go on in plain text
                    conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartext
                    while chunk := conn.recv(4096):
                        self.received += chunk
                except OSError:
                    continue


def test_the_admins_password_is_never_sent_in_clear_text(tmp_path: Path, vault: Vault) -> None:
    asker = CleartextAsker()
    password_file = tmp_path / "admin-pw"
    password_file.write_text(f"{PASSWORD_MARKER}admin\n", encoding="utf-8")
    config = tmp_path / "pginit.toml"
    config.write_text(
        f'[postgres]\ndsn = "postgresql://postgres@127.0.0.1:{asker.port}/postgres"\n'
        f'password_file = "{password_file}"\n\n[[service]]\nname = "gitea"\n',
        encoding="utf-8",
    )
    vault.put("gitea", "gitea-pw")

    result = run(config, tool_env(vault), "--wait-timeout", "3")

    assert result.returncode == ExitCode.POSTGRES, result.output
    assert PASSWORD_MARKER.encode() not in asker.received
    assert PASSWORD_MARKER not in result.output
    assert "asked for the admin's password in clear text" in result.stdout
    assert "was not ready within" not in result.stdout  # said at once, not waited out


def test_options_the_server_refuses_are_a_config_error_at_once(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    text = config.read_text(encoding="utf-8").replace(
        '/postgres"', '/postgres?options=-c%20work_mem%3Dplenty"'
    )
    config.write_text(text, encoding="utf-8")

    result = run(config, tool_env(vault), "--wait-timeout", "30")

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "refuses the connection's options" in result.stdout
    assert "work_mem" in result.stdout
    assert "was not ready within" not in result.stdout


def test_check_is_not_upset_by_a_tenants_own_statement_timeout(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    """A role may set itself statement_timeout = 1 ms; check's own query still runs."""
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    assert run(config, tool_env(vault)).returncode == ExitCode.OK
    conninfo = pg.server.conninfo(dbname="gitea", user="gitea", password="gitea-pw")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("ALTER ROLE gitea SET statement_timeout = 1")

    checked = [run_tool(["check", "--config", str(config)], tool_env(vault)) for _ in range(5)]

    for result in checked:
        assert result.returncode == ExitCode.OK, result.output
        assert "this is a bug" not in result.output
        assert "gitea: ok" in result.stdout
