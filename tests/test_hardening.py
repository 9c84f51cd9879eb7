"""Plan before apply, drift repair, tenant isolation, and the tool under bad input and faults.

Every scenario runs the real tool (``python -m nomad_pginit``) against real
PostgreSQL and OpenBao servers and then checks the cluster itself. After every
scenario ``assert_in_sync`` proves that ``plan`` finds nothing left to do.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import hvac
import psycopg
import psycopg.errors
import pytest
from catalog import database_exists, database_owner, role_exists, scalar
from conftest import (
    LOGGED_SETTINGS,
    PASSWORD_MARKER,
    Cluster,
    Result,
    Vault,
    communicate,
    run_tool,
    start_tool,
    tool_env,
    write_services_file,
)
from psycopg import sql
from server_log import tool_statements, writes

from sandbox import ThrowawayPostgres, ThrowawayVault, free_port

# --- reading the tool's output and the server log ------------------------------------------

# "2026-11-21T22:50:01Z INFO gitea: role "gitea" created"
_TOOL_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?P<level>[A-Z]+) (?P<message>.*)$")


def texts(output: str) -> list[str]:
    """The message of every plain log line the tool printed."""
    return [match["message"] for line in output.splitlines() if (match := _TOOL_LINE.match(line))]


def service_lines(output: str, name: str) -> list[str]:
    return [message for message in texts(output) if message.startswith(f"{name}: ")]


def summary(output: str) -> str:
    lines = [message for message in texts(output) if message.startswith("summary: ")]
    assert lines, f"no summary line in:\n{output}"
    return lines[-1]


# --- running the tool --------------------------------------------------------------------


def password_for(name: str, generation: int = 1) -> str:
    return f"{PASSWORD_MARKER}{name}-{generation}-Zk9"


def run(config: Path, env: Mapping[str, str], *extra: str) -> Result:
    return run_tool(["run", "--config", str(config), *extra], env)


@dataclass
class Plan:
    """``nomad-pginit plan --json``: its exit code, its log (stderr) and its document."""

    result: Result
    document: dict[str, Any]

    def service(self, name: str) -> dict[str, Any]:
        for entry in self.document["services"]:
            if entry["name"] == name:
                assert isinstance(entry, dict)
                return entry
        raise AssertionError(f"{name} is not in the plan: {self.document}")

    def actions(self, name: str) -> list[str]:
        return [str(action["action"]) for action in self.service(name)["actions"]]


def plan(config: Path, env: Mapping[str, str], *extra: str) -> Plan:
    result = run_tool(["plan", "--config", str(config), "--json", *extra], env)
    try:
        document = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"plan --json did not print one JSON document on stdout:\n{result.output}")
    assert isinstance(document, dict), document
    return Plan(result, document)


def assert_in_sync(
    config: Path, env: Mapping[str, str], pg: Cluster | None = None, *extra: str
) -> Plan:
    """Right after a successful run, plan finds nothing to do, exits 0 and writes nothing."""
    offset = pg.log_offset() if pg is not None else 0
    result = plan(config, env, *extra)
    assert result.result.returncode == 0, f"plan is not empty after run:\n{result.result.output}"
    document = result.document
    assert document["in_sync"] is True, document
    assert document["pending"] is False, document
    assert document["services"], document
    for entry in document["services"]:
        assert entry["status"] == "unchanged", entry
        assert entry["actions"] == [], entry
        assert entry["error"] is None, entry
    assert document["leftover_actions"] == [], document
    assert summary(result.result.stderr).startswith("summary: ok"), result.result.stderr
    if pg is not None:
        statements = tool_statements(pg.log_since(offset))
        assert statements, "plan's catalog reads should be in the server log"
        assert writes(statements) == [], "plan wrote to the cluster"
    return result


# --- looking at the cluster --------------------------------------------------------------


def connect(server: ThrowawayPostgres, dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(server.conninfo(dbname=dbname), autocommit=True)


def public_database_privileges(pg: Cluster, name: str) -> set[str]:
    """What PUBLIC holds on a database, from pg_database.datacl (NULL: the default ACL)."""
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT a.privilege_type FROM pg_database d, "
            "aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba))) a "
            "WHERE d.datname = %s AND a.grantee = 0",
            (name,),
        ).fetchall()
    return {str(row[0]) for row in rows}


def verifiers(server: ThrowawayPostgres, names: Sequence[str]) -> dict[str, str | None]:
    with connect(server) as conn:
        rows = conn.execute(
            "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)", (list(names),)
        ).fetchall()
    found = {str(name): None if password is None else str(password) for name, password in rows}
    assert sorted(found) == sorted(names), found
    return found


def login_as(
    server: ThrowawayPostgres, user: str, password: str, dbname: str | None = None
) -> psycopg.Connection[Any]:
    return psycopg.connect(
        server.conninfo(dbname=dbname or user, user=user, password=password), autocommit=True
    )


def assert_can_work(server: ThrowawayPostgres, user: str, password: str) -> None:
    """What a service does: log in to its own database and create a table in public."""
    with login_as(server, user, password) as conn:
        conn.execute("CREATE TABLE public.hardening_probe (id int)")
        conn.execute("INSERT INTO public.hardening_probe VALUES (1)")
        conn.execute("DROP TABLE public.hardening_probe")


def assert_login_refused(
    server: ThrowawayPostgres, user: str, password: str, reason: str, dbname: str | None = None
) -> None:
    with pytest.raises(psycopg.OperationalError, match=reason):
        login_as(server, user, password, dbname).close()


def extensions_in(pg: Cluster, dbname: str) -> set[str]:
    with pg.connect(dbname) as conn:
        return {str(row[0]) for row in conn.execute("SELECT extname FROM pg_extension")}


def execute(pg: Cluster, statement: sql.SQL | sql.Composed, dbname: str = "postgres") -> None:
    with pg.connect(dbname) as conn:
        conn.execute(statement)


def read_until(proc: subprocess.Popen[str], needle: str) -> str:
    """The tool's stdout up to and including the first line containing ``needle``."""
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return "".join(seen)
    rest = proc.stderr.read() if proc.stderr is not None else ""
    pytest.fail(f"the tool exited before printing {needle!r}:\n{''.join(seen)}{rest}")


def provision(
    pg: Cluster,
    vault: Vault,
    directory: Path,
    services: Sequence[str | Mapping[str, object]],
    **kwargs: Any,
) -> Path:
    """A services file for ``services``, each with its password in Vault."""
    for service in services:
        name = service if isinstance(service, str) else str(service["name"])
        vault.put(name, password_for(name))
    return write_services_file(directory, pg, services, **kwargs)


# --- 1: plan computes the changes and writes nothing ----------------------------------------


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


# --- 2: drift found by plan, repaired by run ----------------------------------------------

DRIFTER = "Drift-App"
DRIFTER_SERVICE: Mapping[str, object] = {
    "name": DRIFTER,
    "extensions": ["pg_trgm"],
    "connection_limit": 5,
}
BYSTANDER = "drift_bystander"
BYSTANDER_PASSWORD = "bystander-password"


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


# --- 3: tenant isolation -------------------------------------------------------------------


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
    execute(pg, sql.SQL(f"CREATE ROLE {BYSTANDER} LOGIN PASSWORD '{BYSTANDER_PASSWORD}'"))

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


# --- 4: extensions and connection limits ------------------------------------------------------


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


# --- 5: nothing is ever dropped -----------------------------------------------------------


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


# --- 6: an admin that is not a superuser ---------------------------------------------------

ADMIN = "pginit_admin"
ADMIN_PASSWORD = "admin-password-Q2"


def as_admin(pg: Cluster, directory: Path, config: Path, attributes: LiteralString) -> Path:
    """Create the admin role with ``attributes`` and point the services file at it."""
    execute(
        pg,
        sql.SQL("CREATE ROLE {} LOGIN " + attributes + " PASSWORD {}").format(
            sql.Identifier(ADMIN), sql.Literal(ADMIN_PASSWORD)
        ),
    )
    password_file = directory / "admin_password"
    password_file.write_text(ADMIN_PASSWORD + "\n", encoding="utf-8")
    text = config.read_text(encoding="utf-8")
    text = text.replace("postgresql://postgres@", f"postgresql://{ADMIN}@")
    text = re.sub(r"(?m)^password_file = .*$", f'password_file = "{password_file}"', text)
    config.write_text(text, encoding="utf-8")
    return config


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
        execute(pg, sql.SQL(f'GRANT "gitea" TO "{ADMIN}" WITH ADMIN OPTION'))
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


# --- 7: readiness means a writable primary ------------------------------------------------


def _as_server_user(server: ThrowawayPostgres) -> dict[str, Any]:
    """subprocess arguments that run a server tool as the server's OS user when we are root."""
    if server.os_user is None:
        return {}
    entry = pwd.getpwnam(server.os_user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _server_tool(server: ThrowawayPostgres, name: str) -> Path:
    # bindir may be a directory of symlinks to initdb and pg_ctl only (/usr/local/bin).
    for directory in (server.bindir, (server.bindir / "pg_ctl").resolve().parent):
        if (directory / name).is_file():
            return directory / name
    pytest.skip(f"{name} is not installed beside pg_ctl in {server.bindir}")


def _server_tool_env(password: str | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    return env


@contextmanager
def standby_of(primary: ThrowawayPostgres) -> Iterator[ThrowawayPostgres]:
    """A hot standby of ``primary`` (pg_basebackup -R), on its own port and socket."""
    standby = ThrowawayPostgres(password=primary.password)
    try:
        backup = subprocess.run(
            [
                str(_server_tool(primary, "pg_basebackup")),
                "--pgdata",
                str(standby.datadir),
                "--write-recovery-conf",
                "--wal-method=stream",
                "--no-sync",
                "--host",
                primary.host,
                "--port",
                str(primary.port),
                "--username",
                primary.superuser,
            ],
            env=_server_tool_env(primary.password),
            cwd=standby.root_dir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **_as_server_user(primary),
        )
        assert backup.returncode == 0, backup.stdout + backup.stderr
        assert (standby.datadir / "standby.signal").exists()
        with (standby.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"\nport = {standby.port}\nunix_socket_directories = '{standby.socket_dir}'\n"
            )
        standby.start()
        yield standby
    finally:
        standby.cleanup()


def promote(server: ThrowawayPostgres) -> None:
    result = subprocess.run(
        [str(_server_tool(server, "pg_ctl")), "promote", "-D", str(server.datadir), "-w"],
        env=_server_tool_env(),
        cwd=server.root_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **_as_server_user(server),
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_standby_is_not_ready_until_promoted(
    vault: Vault, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    with ThrowawayPostgres() as primary, standby_of(primary) as standby:
        with connect(standby) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            assert row == (True,), "the standby should be in recovery"
        target = Cluster(standby)
        config = provision(target, vault, tmp_path, ["gitea"])
        env = tool_env(vault)

        started = time.monotonic()
        refused = run(config, env, "--wait-timeout", "3")
        elapsed = time.monotonic() - started

        assert refused.returncode == 3, refused.output
        assert elapsed >= 3
        waiting = [line for line in texts(refused.stdout) if "waiting for PostgreSQL" in line]
        assert waiting, refused.stdout
        assert "in recovery" in waiting[0], waiting
        assert "was not ready within 3s (in recovery" in refused.stdout, refused.stdout

        proc = start_tool(["run", "--config", str(config), "--wait-timeout", "60"], env)
        processes.append(proc)
        head = read_until(proc, "in recovery")
        time.sleep(1)
        assert proc.poll() is None, "the tool gave up before the standby was promoted"
        promote(standby)
        result = communicate(proc, head)

        assert result.returncode == 0, result.output
        assert any("is ready after" in line for line in texts(result.stdout)), result.stdout
        assert 'gitea: role "gitea" created' in texts(result.stdout)
        assert_can_work(standby, "gitea", password_for("gitea"))
        # The primary it was copied from never saw the service.
        with connect(primary) as conn:
            assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'gitea'").fetchone() is None
        assert_in_sync(config, env)


# --- 8: proof under faults ------------------------------------------------------------------


def test_no_password_or_verifier_reaches_the_server_log_or_the_output(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    assert pg.server.settings.get("log_statement") == "all"
    names = ["gitea", "uptime-kuma", "MixedCase"]
    offset = pg.log_offset()
    config = provision(pg, vault, tmp_path, names)
    env = tool_env(vault)

    outputs = [run(config, env)]
    first_verifiers = verifiers(pg.server, names)
    for name in names:
        vault.put(name, password_for(name, 2))
    outputs.append(plan(config, env).result)
    outputs.append(run(config, env))
    second_verifiers = verifiers(pg.server, names)
    outputs.append(assert_in_sync(config, env, pg).result)
    server_log = pg.log_since(offset)

    assert [result.returncode for result in outputs] == [0, 2, 0, 0]
    statements = tool_statements(server_log)
    # The log really records the tool's statements, so absence below means something.
    assert any(s.startswith("CREATE DATABASE") for s in statements), statements
    assert any(
        re.match(r"SELECT .*set_config\('log_statement', 'none', true\)", s) for s in statements
    ), statements
    secrets: list[str] = []
    for name in names:
        secrets += [password_for(name, 1), password_for(name, 2)]
        for verifier in (first_verifiers[name], second_verifiers[name]):
            assert verifier is not None
            assert verifier.startswith("SCRAM-SHA-256$")
            stored_key, server_key = verifier.rsplit("$", 1)[1].split(":")
            secrets += [verifier, stored_key, server_key]
        assert first_verifiers[name] != second_verifiers[name]
        assert_can_work(pg.server, name, password_for(name, 2))
    for secret in secrets:
        assert secret not in server_log
        for result in outputs:
            assert secret not in result.output
    assert PASSWORD_MARKER not in server_log


def test_concurrent_runs_on_thirty_services(
    pg: Cluster, vault: Vault, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    names = [f"svc-{index:02d}" for index in range(30)]
    config = provision(pg, vault, tmp_path, names)
    env = tool_env(vault)
    offset = pg.log_offset()

    processes.extend(start_tool(["run", "--config", str(config)], env) for _ in range(3))
    results = [communicate(proc) for proc in processes]

    for result in results:
        assert result.returncode == 0, result.output
        assert summary(result.stdout).startswith("summary: ok: 30 services in sync")
    everything = [line for result in results for line in texts(result.stdout)]
    for name in names:
        assert everything.count(f'{name}: role "{name}" created') == 1, name
        assert everything.count(f'{name}: database "{name}" created, owned by "{name}"') == 1
        assert database_owner(pg, name) == name
        assert public_database_privileges(pg, name) == set()
        assert_can_work(pg.server, name, password_for(name))
    server_log = pg.log_since(offset)
    for verifier in verifiers(pg.server, names).values():
        assert verifier is not None
        assert verifier not in server_log
    assert_in_sync(config, env, pg)


def test_existing_superuser_or_owner_of_other_databases_is_refused(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    execute(pg, sql.SQL("CREATE ROLE gitea SUPERUSER LOGIN PASSWORD 'the-dba-password'"))
    execute(pg, sql.SQL("CREATE ROLE grafana LOGIN PASSWORD 'grafana-old'"))
    execute(pg, sql.SQL("CREATE DATABASE legacy OWNER grafana"))
    execute(pg, sql.SQL("CREATE DATABASE reports OWNER grafana"))
    before = verifiers(pg.server, ["gitea", "grafana"])
    config = provision(pg, vault, tmp_path, ["gitea", "grafana", "fresh"])
    env = tool_env(vault)
    offset = pg.log_offset()

    result = run(config, env)

    assert result.returncode == 1, result.output
    (gitea,) = service_lines(result.stdout, "gitea")
    assert gitea.startswith("gitea: failed: ")
    assert 'role "gitea" already exists and is a superuser' in gitea
    (grafana,) = service_lines(result.stdout, "grafana")
    assert grafana.startswith("grafana: failed: ")
    assert 'role "grafana" already exists and owns other databases ("legacy", "reports")' in grafana
    assert summary(result.stdout).startswith("summary: failed: 2 of 3 services failed")
    assert_can_work(pg.server, "fresh", password_for("fresh"))
    # Left exactly as they were.
    assert verifiers(pg.server, ["gitea", "grafana"]) == before
    assert scalar(pg, "SELECT rolsuper FROM pg_roles WHERE rolname = 'gitea'") is True
    assert database_owner(pg, "legacy") == "grafana"
    assert database_owner(pg, "reports") == "grafana"
    assert not database_exists(pg, "gitea")
    assert not database_exists(pg, "grafana")
    login_as(pg.server, "gitea", "the-dba-password", "postgres").close()
    touched = [s for s in writes(tool_statements(pg.log_since(offset))) if '"fresh"' not in s]
    assert not [s for s in touched if "gitea" in s or "grafana" in s or "legacy" in s], touched
    refused = plan(config, env)
    assert refused.result.returncode == 1, refused.result.output

    # Giving the services their own users is the way out.
    config = write_services_file(
        tmp_path,
        pg,
        [
            {"name": "gitea", "user": "gitea_app"},
            {"name": "grafana", "user": "grafana_app", "database": "grafana"},
            "fresh",
        ],
    )
    fixed = run(config, env)
    assert fixed.returncode == 0, fixed.output
    with login_as(pg.server, "gitea_app", password_for("gitea"), "gitea") as conn:
        conn.execute("CREATE TABLE t (id int)")
    with login_as(pg.server, "grafana_app", password_for("grafana"), "grafana") as conn:
        conn.execute("CREATE TABLE t (id int)")
    assert scalar(pg, "SELECT rolsuper FROM pg_roles WHERE rolname = 'gitea'") is True
    assert database_owner(pg, "legacy") == "grafana"
    assert_in_sync(config, env, pg)


# --- 8: PostgreSQL and Vault going away in the middle of a run ------------------------------


def cluster_snapshot(server: ThrowawayPostgres) -> dict[str, object]:
    """Roles, databases, owners, comments, ACLs and memberships, without OIDs or order."""
    with connect(server) as conn:
        roles = conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolinherit, "
            "rolconnlimit, shobj_description(oid, 'pg_authid') "
            "FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY rolname"
        ).fetchall()
        databases = [
            (name, owner, comment, sorted(acl) if acl is not None else None)
            for name, owner, comment, acl in conn.execute(
                "SELECT datname, pg_get_userbyid(datdba), shobj_description(oid, 'pg_database'), "
                "datacl::text[] FROM pg_database ORDER BY datname"
            ).fetchall()
        ]
        members = conn.execute(
            "SELECT pg_get_userbyid(roleid), pg_get_userbyid(member), admin_option "
            "FROM pg_auth_members WHERE pg_get_userbyid(roleid) !~ '^pg_' ORDER BY 1, 2"
        ).fetchall()
    schemas: dict[str, object] = {}
    for name, *_ in databases:
        if name in ("template0", "template1", "postgres"):
            continue
        with connect(server, str(name)) as conn:
            schemas[str(name)] = conn.execute(
                "SELECT nspowner::regrole::text, "
                "ARRAY(SELECT unnest(nspacl)::text ORDER BY 1), "
                "ARRAY(SELECT extname::text FROM pg_extension ORDER BY 1) "
                "FROM pg_namespace WHERE nspname = 'public'"
            ).fetchall()
    return {"roles": roles, "databases": databases, "members": members, "schemas": schemas}


def failed_in_summary(line: str) -> list[str]:
    """The services a "summary: failed: N of M services failed (a, b); K not finished (c)"
    line names, failed or not finished."""
    names: list[str] = []
    for match in re.finditer(r"(?:services? failed|not finished) \((?P<names>[^)]*)\)", line):
        names.extend(match["names"].split(", "))
    return names


@dataclass(frozen=True)
class Interruption:
    """Where in a first run on a fresh cluster PostgreSQL is shut down (immediate mode)."""

    services: int
    extensions: tuple[str, ...]
    # The log line after which the server is stopped, given the services' names.
    after: Callable[[Sequence[str]], str] = field(repr=False)


INTERRUPTIONS = {
    # A few services in: the next run finds some done, one half-done, most not begun.
    "creating-roles-and-databases": Interruption(
        40, (), lambda names: f'{names[3]}: database "{names[3]}" created'
    ),
    # A few services in, with work inside their databases (extensions) under way while
    # the next ones' roles and databases are made (four services at a time).
    "inside-the-databases": Interruption(
        40, ("pg_trgm",), lambda names: f'{names[3]}: extension "pg_trgm" created in database'
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("where", INTERRUPTIONS.values(), ids=INTERRUPTIONS.keys())
def test_postgres_stopped_mid_run_then_run_again_ends_as_an_undisturbed_run(
    pg: Cluster,
    vault: Vault,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    where: Interruption,
) -> None:
    names = [f"svc-{index:02d}" for index in range(where.services)]
    services = [{"name": name, "extensions": list(where.extensions)} for name in names]
    for name in names:
        vault.put(name, password_for(name))
    env = tool_env(vault)
    # Problems with what the interrupted run says, checked last so that the
    # recovery below is checked whatever they are.
    problems: list[str] = []
    with ThrowawayPostgres(settings=LOGGED_SETTINGS) as server:
        victim = Cluster(server)
        config = write_services_file(tmp_path, victim, services)
        proc = start_tool(["run", "--config", str(config)], env)
        processes.append(proc)
        head = read_until(proc, where.after(names))
        server.stop(mode="immediate")
        interrupted = communicate(proc, head)

        assert interrupted.returncode == 3, interrupted.output
        assert interrupted.stderr == "", interrupted.stderr
        assert "Traceback" not in interrupted.output
        assert "unexpected error" not in interrupted.output
        assert any(
            "run again once the server is back" in line for line in texts(interrupted.stdout)
        )
        finished = [
            name for name in names if f'{name}: extension "pg_trgm" created' in interrupted.stdout
        ]
        assert len(finished) < len(names) or not where.extensions, "stopped after the run"
        created = [line for line in texts(interrupted.stdout) if line.endswith(" created")]
        assert created, interrupted.stdout
        summaries = [line for line in texts(interrupted.stdout) if line.startswith("summary: ")]
        if not summaries:
            problems.append(
                "the interrupted run printed no summary line (README: grep for 'summary: ok' "
                "or 'summary: failed')"
            )
        else:
            last = summaries[-1]
            assert last.startswith("summary: failed"), summaries
            unfinished = failed_in_summary(last)
            if "nothing was changed" in last:
                problems.append(
                    f"the summary says nothing was changed, but the run had already made "
                    f"{len(created)} changes ({created[0]}, ...): {last}"
                )
            elif not unfinished:
                problems.append(f"the summary does not name the unfinished services: {last}")
            elif not where.extensions:
                assert names[-1] in unfinished, "stopped after the run"
        # libpq says "server closed the connection unexpectedly / This probably means
        # the server terminated abnormally / before or while processing the request.":
        # the last fragment alone tells the operator nothing.
        problems.extend(
            f"unclear message: {line}"
            for line in texts(interrupted.stdout)
            if re.search(r": before or while processing the request\.", line)
        )

        server.start()
        resumed = run(config, env)
        assert resumed.returncode == 0, resumed.output
        assert summary(resumed.stdout).startswith(f"summary: ok: {len(names)} services in sync"), (
            resumed.stdout
        )
        for name in names:
            assert_can_work(server, name, password_for(name))
        assert_in_sync(config, env, victim)
        disturbed = cluster_snapshot(server)

    # The same services on a clean cluster, without interruption.
    undisturbed_dir = tmp_path / "undisturbed"
    undisturbed_dir.mkdir()
    config = write_services_file(undisturbed_dir, pg, services)
    clean = run(config, env)
    assert clean.returncode == 0, clean.output
    assert cluster_snapshot(pg.server) == disturbed

    assert not problems, "\n".join(problems)


MANY = [f"svc-{index:02d}" for index in range(40)]


@pytest.fixture
def own_vault() -> Iterator[tuple[ThrowawayVault, hvac.Client]]:
    with ThrowawayVault() as server:
        yield server, hvac.Client(url=server.addr, token=server.token)


def put_all(client: hvac.Client, names: Sequence[str], generation: int) -> None:
    for name in names:
        client.secrets.kv.v2.create_or_update_secret(
            path=f"postgres/{name}",
            secret={"password": password_for(name, generation)},
            mount_point="secret",
        )


@pytest.mark.slow
def test_vault_stopped_before_or_during_a_run_changes_no_password_wrongly(
    pg: Cluster,
    own_vault: tuple[ThrowawayVault, hvac.Client],
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    server, client = own_vault
    env = tool_env(VAULT_ADDR=server.addr, VAULT_TOKEN=server.token)
    put_all(client, MANY, 1)
    config = write_services_file(tmp_path, pg, MANY)
    assert run(config, env).returncode == 0
    before = verifiers(pg.server, MANY)

    # Rotated in Vault, then Vault goes away before the run: nothing is touched.
    put_all(client, MANY, 2)
    server.stop()
    offset = pg.log_offset()
    unreachable = run(config, env)
    assert unreachable.returncode == 4, unreachable.output
    assert f"cannot reach Vault at {server.addr}" in unreachable.stdout
    assert verifiers(pg.server, MANY) == before
    assert tool_statements(pg.log_since(offset)) == []

    # Vault (a dev server keeps secrets in memory) comes back with the rotated
    # passwords and is stopped again just after the tool starts reading them.
    server.start()
    put_all(client, MANY, 2)
    proc = start_tool(["run", "--config", str(config)], env)
    processes.append(proc)
    head = read_until(proc, "reading 40 passwords")
    server.stop()
    during = communicate(proc, head)

    assert during.returncode in (0, 1, 4), during.output
    assert "Traceback" not in during.output
    after = verifiers(pg.server, MANY)
    failed = {
        name for name in MANY if any("failed" in s for s in service_lines(during.stdout, name))
    }
    for name in MANY:
        verifier = after[name]
        assert verifier is not None, f"{name}'s password was blanked"
        assert verifier.startswith("SCRAM-SHA-256$")
        if verifier == before[name]:
            # Not read before Vault went away: left alone, and said so.
            assert during.returncode != 0
            assert name in failed, during.stdout
            assert_can_work(pg.server, name, password_for(name, 1))
        else:
            assert name not in failed, during.stdout
            assert service_lines(during.stdout, name) == [
                f'{name}: password of role "{name}" updated (differs from Vault)'
            ]
            assert_can_work(pg.server, name, password_for(name, 2))
    if during.returncode == 1:
        assert summary(during.stdout).startswith(f"summary: failed: {len(failed)} of 40")
        for name in failed:
            (line,) = service_lines(during.stdout, name)
            assert f"secret/postgres/{name}" in line, line
            assert "Vault" in line, line

    server.start()
    put_all(client, MANY, 2)
    finished = run(config, env)
    assert finished.returncode == 0, finished.output
    for name in MANY:
        assert_can_work(pg.server, name, password_for(name, 2))
    assert_in_sync(config, env, pg)


def test_admin_session_in_a_service_database_terminated_is_reported_not_a_crash(
    pg: Cluster, vault: Vault, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """The server ends the admin's session inside one service's database (a DBA's
    pg_terminate_backend, a failover): that is an error the tool explains, not a bug."""
    services: list[str | Mapping[str, object]] = [
        {"name": "victim", "extensions": ["pg_trgm"]},
        "bystander",
    ]
    config = provision(pg, vault, tmp_path, services)
    env = tool_env(vault)
    assert run(config, env).returncode == 0

    # Hold pg_extension in the service's database: the tool's look inside it waits,
    # and is then terminated while it waits.
    with pg.connect("victim") as blocker, pg.connect() as observer:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE pg_catalog.pg_extension IN ACCESS EXCLUSIVE MODE")
        proc = start_tool(["run", "--config", str(config)], env)
        processes.append(proc)
        deadline = time.monotonic() + 30
        while True:
            row = observer.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = 'victim' "
                "AND application_name = 'nomad-pginit' AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None:
                break
            if proc.poll() is not None:
                pytest.fail(f"the tool did not wait for the lock:\n{communicate(proc).output}")
            assert time.monotonic() < deadline, "the tool never looked inside the database"
            time.sleep(0.05)
        observer.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        blocker.execute("ROLLBACK")
    result = communicate(proc)

    assert "unexpected error" not in result.output, result.output
    assert "Traceback" not in result.output, result.output
    assert result.returncode in (1, 3), result.output
    failures = [line for line in service_lines(result.stdout, "victim") if "failed" in line]
    assert failures, result.stdout
    assert summary(result.stdout).startswith("summary: failed"), result.stdout

    again = run(config, env)
    assert again.returncode == 0, again.output
    assert_can_work(pg.server, "victim", password_for("victim"))
    assert_in_sync(config, env, pg)


# --- the service name is also a Vault path ------------------------------------------------------


def test_service_name_cannot_read_another_services_secret(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    """``name`` goes into the Vault path: dot segments must not lead to another secret."""
    vault.put("gitea", password_for("gitea"))
    config = write_services_file(tmp_path, pg, ["x/../gitea"])

    result = run(config, tool_env(vault))

    if role_exists(pg, "x/../gitea"):
        with login_as(pg.server, "x/../gitea", password_for("gitea"), "x/../gitea"):
            pass
        pytest.fail(
            "the service 'x/../gitea' was provisioned with the password stored at "
            "secret/postgres/gitea (the HTTP client resolved the dot segments):\n" + result.stdout
        )
    assert result.returncode in (1, 2), result.output
    assert "x/../gitea" in result.stdout


def test_a_vault_error_always_says_why(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    """OpenBao answers 400 with an empty error list for a path it will not take
    (here one with a no-break space): the message must still give a reason."""
    config = write_services_file(tmp_path, pg, ["no\u00a0break"])

    result = run(config, tool_env(vault))

    if result.returncode == 2:
        return  # refused up front by the validator: nothing reaches Vault
    (failure,) = service_lines(result.stdout, "no\u00a0break")
    assert "secret/postgres/no\u00a0break" in failure, failure
    reason = failure.rsplit("from Vault:", 1)[-1].strip()
    assert reason, f"no reason given: {failure!r}"
