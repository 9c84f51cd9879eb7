"""Running nomad-pginit as a process against the test servers, and looking at the
cluster afterwards: the helpers the integration tests of provisioning share."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import psycopg.errors
import pytest
from conftest import (
    PASSWORD_MARKER,
    Cluster,
    Result,
    Vault,
    run_tool,
    write_services_file,
)
from psycopg import sql
from server_log import tool_statements, writes

from sandbox import ThrowawayPostgres

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


BYSTANDER = "drift_bystander"


BYSTANDER_PASSWORD = "bystander-password"


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


ADMIN = "pginit_admin"


ADMIN_PASSWORD = "admin-password-Q2"
