"""Plan before apply, and drift: plan lists every change and writes nothing; what
someone changed by hand is found by plan and repaired by run.

Every scenario runs the real tool against real PostgreSQL and OpenBao servers,
then checks the cluster itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import LiteralString

import psycopg
import psycopg.errors
import pytest
from catalog import database_exists, database_owner, role_exists, scalar
from conftest import (
    Cluster,
    Vault,
    run_tool,
    tool_env,
    write_services_file,
)
from provisioning import (
    BYSTANDER,
    BYSTANDER_PASSWORD,
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
from server_log import tool_statements, writes

from sandbox import free_port


def test_plan_on_an_empty_cluster_lists_every_change_and_writes_nothing(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    names = ["gitea", "uptime-kuma"]
    config = provision(pg, vault, tmp_path, names)
    env = tool_env(vault)
    offset = pg.log_offset()

    pending = plan(config, env)

    assert pending.result.returncode == 2, pending.result.output
    assert pending.document["in_sync"] is False
    assert pending.document["pending"] is True
    expected = ["CreateRole", "CreateDatabase", "IsolateDatabase"]
    if pg.server_version < 150000:
        # public is the bootstrap superuser's, not the new database's owner's.
        expected.append("GrantSchema")
    for name in names:
        entry = pending.service(name)
        assert entry["status"] == "pending", entry
        assert pending.actions(name) == expected
        (create_role,) = [a for a in entry["actions"] if a["action"] == "CreateRole"]
        assert create_role["password"] == "******", create_role
        assert f'{name}: would create role "{name}"' in pending.result.stderr
        assert not role_exists(pg, name)
        assert not database_exists(pg, name)
        assert password_for(name) not in pending.result.output
    assert "summary: changes pending for 2 of 2 services" in pending.result.stderr
    statements = tool_statements(pg.log_since(offset))
    assert statements, "plan's catalog reads should be in the server log"
    assert writes(statements) == [], statements

    # The plain form says the same on stdout, and still writes nothing.
    plain = run_tool(["plan", "--config", str(config)], env)
    assert plain.returncode == 2, plain.output
    assert 'gitea: would create database "gitea" owned by "gitea"' in texts(plain.stdout)
    assert writes(tool_statements(pg.log_since(offset))) == []

    result = run(config, env)
    assert result.returncode == 0, result.output
    # run did exactly what plan announced: one log line per planned action.
    for name in names:
        assert len(service_lines(result.stdout, name)) == len(pending.actions(name))
        assert_can_work(pg.server, name, password_for(name))
    assert_in_sync(config, env, pg)


def test_plan_exit_codes_follow_run(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    vault.put("gitea", password_for("gitea"))
    config = write_services_file(tmp_path, pg, ["gitea", "grafana"])  # grafana has no secret
    env = tool_env(vault)

    missing_secret = plan(config, env)
    assert missing_secret.result.returncode == 1, missing_secret.result.output
    assert "no secret at secret/postgres/grafana" in missing_secret.service("grafana")["error"]
    assert missing_secret.service("gitea")["status"] == "pending"

    no_vault = run_tool(
        ["plan", "--config", str(config), "--json"],
        tool_env(vault, VAULT_ADDR=f"http://127.0.0.1:{free_port()}"),
    )
    assert no_vault.returncode == 4, no_vault.output
    assert "cannot reach Vault" in no_vault.stderr

    other = tmp_path / "elsewhere"
    other.mkdir()
    unreachable = write_services_file(other, pg, ["gitea"])
    unreachable.write_text(
        unreachable.read_text(encoding="utf-8").replace(f":{pg.port}/", f":{free_port()}/"),
        encoding="utf-8",
    )
    no_postgres = run_tool(
        ["plan", "--config", str(unreachable), "--json", "--wait-timeout", "1"], env
    )
    assert no_postgres.returncode == 3, no_postgres.output
    assert "was not ready within 1s" in no_postgres.stderr
    assert not role_exists(pg, "gitea")


DRIFTER = "Drift-App"


DRIFTER_SERVICE: Mapping[str, object] = {
    "name": DRIFTER,
    "extensions": ["pg_trgm"],
    "connection_limit": 5,
}


@dataclass(frozen=True)
class Drift:
    """Something an operator changed by hand, and what the tool must do about it."""

    # (database, statement): {role} and {db} name the service's role and database.
    statements: tuple[tuple[str, LiteralString], ...]
    actions: tuple[str, ...]
    done: tuple[str, ...]
    # Proves the drift bites before the repair.
    bites: Callable[[Cluster], None] = field(repr=False)


def _owner_moved(pg: Cluster) -> None:
    assert database_owner(pg, DRIFTER) == "drift_other"


def _cannot_connect(pg: Cluster) -> None:
    assert_login_refused(
        pg.server, DRIFTER, password_for(DRIFTER), "permission denied for database"
    )


def _cannot_create(pg: Cluster) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema public"):
        assert_can_work(pg.server, DRIFTER, password_for(DRIFTER))


def _cannot_log_in(pg: Cluster) -> None:
    assert_login_refused(pg.server, DRIFTER, password_for(DRIFTER), "not permitted to log in")


def _wrong_password(pg: Cluster) -> None:
    assert_login_refused(
        pg.server, DRIFTER, password_for(DRIFTER), "password authentication failed"
    )


def _bystander_gets_in(pg: Cluster) -> None:
    login_as(pg.server, BYSTANDER, BYSTANDER_PASSWORD, DRIFTER).close()


def _extension_gone(pg: Cluster) -> None:
    assert "pg_trgm" not in extensions_in(pg, DRIFTER)


def _no_limit(pg: Cluster) -> None:
    assert scalar(pg, "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", DRIFTER) == -1


DRIFTS = {
    "owner-changed": Drift(
        (
            ("postgres", "CREATE ROLE drift_other"),
            ("postgres", "ALTER DATABASE {db} OWNER TO drift_other"),
        ),
        ("ChangeDatabaseOwner", "GrantDatabase"),
        (f'owner of database "{DRIFTER}" updated from "drift_other" to "{DRIFTER}"',),
        _owner_moved,
    ),
    "database-privileges-revoked": Drift(
        (("postgres", "REVOKE ALL ON DATABASE {db} FROM {role}"),),
        ("GrantDatabase",),
        (f'ALL PRIVILEGES on database "{DRIFTER}" granted to "{DRIFTER}"',),
        _cannot_connect,
    ),
    "schema-privileges-revoked": Drift(
        (
            (DRIFTER, "ALTER SCHEMA public OWNER TO postgres"),
            (DRIFTER, "REVOKE ALL ON SCHEMA public FROM {role}"),
            # PostgreSQL 14 and earlier give PUBLIC CREATE on public.
            (DRIFTER, "REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        ),
        ("GrantSchema",),
        (f'ALL on schema public in database "{DRIFTER}" granted to "{DRIFTER}"',),
        _cannot_create,
    ),
    "login-removed": Drift(
        (("postgres", "ALTER ROLE {role} NOLOGIN"),),
        ("RestoreLogin",),
        (f'LOGIN restored on role "{DRIFTER}"',),
        _cannot_log_in,
    ),
    "password-changed-outside-vault": Drift(
        (("postgres", "ALTER ROLE {role} PASSWORD 'changed-by-hand'"),),
        ("SetPassword",),
        (f'password of role "{DRIFTER}" updated (differs from Vault)',),
        _wrong_password,
    ),
    "connect-granted-to-public": Drift(
        (
            ("postgres", f"CREATE ROLE {BYSTANDER} LOGIN PASSWORD '{BYSTANDER_PASSWORD}'"),
            ("postgres", "GRANT CONNECT ON DATABASE {db} TO PUBLIC"),
        ),
        ("IsolateDatabase",),
        (f'database "{DRIFTER}" isolated: only "{DRIFTER}" may connect',),
        _bystander_gets_in,
    ),
    "extension-dropped": Drift(
        ((DRIFTER, "DROP EXTENSION pg_trgm"),),
        ("CreateExtension",),
        (f'extension "pg_trgm" created in database "{DRIFTER}"',),
        _extension_gone,
    ),
    "connection-limit-removed": Drift(
        (("postgres", "ALTER ROLE {role} CONNECTION LIMIT -1"),),
        ("SetConnectionLimit",),
        (f'CONNECTION LIMIT of role "{DRIFTER}" updated to 5',),
        _no_limit,
    ),
}


def assert_drifter_provisioned(pg: Cluster) -> None:
    """Everything the services file asks for the drifting service is in place."""
    assert_can_work(pg.server, DRIFTER, password_for(DRIFTER))
    assert database_owner(pg, DRIFTER) == DRIFTER
    assert public_database_privileges(pg, DRIFTER) == set()
    assert "pg_trgm" in extensions_in(pg, DRIFTER)
    assert scalar(pg, "SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", DRIFTER) == 5
    assert scalar(pg, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", DRIFTER) is True
    with login_as(pg.server, DRIFTER, password_for(DRIFTER)) as conn:
        row = conn.execute("SELECT similarity('nomad', 'nomads')").fetchone()
        assert row is not None
        assert isinstance(row[0], float)
        assert row[0] > 0.5
    if role_exists(pg, BYSTANDER):
        assert_login_refused(
            pg.server, BYSTANDER, BYSTANDER_PASSWORD, "permission denied for database", DRIFTER
        )


@pytest.mark.parametrize("drift", DRIFTS.values(), ids=DRIFTS.keys())
def test_drift_is_planned_then_repaired(
    pg: Cluster, vault: Vault, tmp_path: Path, drift: Drift
) -> None:
    config = provision(pg, vault, tmp_path, [DRIFTER_SERVICE])
    env = tool_env(vault)
    first = run(config, env)
    assert first.returncode == 0, first.output
    assert_drifter_provisioned(pg)
    assert_in_sync(config, env, pg)

    for dbname, template in drift.statements:
        statement = sql.SQL(template).format(
            role=sql.Identifier(DRIFTER), db=sql.Identifier(DRIFTER)
        )
        execute(pg, statement, dbname)
    drift.bites(pg)

    offset = pg.log_offset()
    found = plan(config, env)
    assert found.result.returncode == 2, found.result.output
    assert writes(tool_statements(pg.log_since(offset))) == [], "plan repaired something"
    assert sorted(found.actions(DRIFTER)) == sorted(drift.actions), found.document
    for action in found.service(DRIFTER)["actions"]:
        assert f"{DRIFTER}: would {action['description']}" in found.result.stderr
    drift.bites(pg)

    repaired = run(config, env)
    assert repaired.returncode == 0, repaired.output
    lines = service_lines(repaired.stdout, DRIFTER)
    assert len(lines) == len(drift.actions), lines
    for done in drift.done:
        assert f"{DRIFTER}: {done}" in lines, lines
    assert summary(repaired.stdout).startswith("summary: ok"), repaired.stdout
    assert_drifter_provisioned(pg)
    assert_in_sync(config, env, pg)


def test_every_drift_at_once_is_repaired_in_one_run(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    config = provision(pg, vault, tmp_path, [DRIFTER_SERVICE])
    env = tool_env(vault)
    assert run(config, env).returncode == 0
    # The owner change last: it moves the revoked ACL to the other role with it.
    order = [name for name in DRIFTS if name != "owner-changed"] + ["owner-changed"]
    for name in order:
        for dbname, template in DRIFTS[name].statements:
            statement = sql.SQL(template).format(
                role=sql.Identifier(DRIFTER), db=sql.Identifier(DRIFTER)
            )
            execute(pg, statement, dbname)

    found = plan(config, env)
    assert found.result.returncode == 2, found.result.output
    expected = {action for drift in DRIFTS.values() for action in drift.actions}
    assert set(found.actions(DRIFTER)) == expected, found.document

    repaired = run(config, env)
    assert repaired.returncode == 0, repaired.output
    assert_drifter_provisioned(pg)
    assert_in_sync(config, env, pg)
