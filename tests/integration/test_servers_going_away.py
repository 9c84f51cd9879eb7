"""PostgreSQL and Vault going away, or a session terminated, in the middle of a run:
explained, never a crash, and the next run ends as an undisturbed one would.

Every scenario runs the real tool against real PostgreSQL and OpenBao servers,
then checks the cluster itself.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import pytest
from catalog import database_exists, database_owner, role_exists, scalar
from conftest import (
    LOGGED_SETTINGS,
    PASSWORD_MARKER,
    Cluster,
    Vault,
    communicate,
    start_tool,
    tool_env,
    write_services_file,
)
from provisioning import (
    assert_can_work,
    assert_in_sync,
    connect,
    execute,
    login_as,
    password_for,
    plan,
    provision,
    public_database_privileges,
    read_until,
    run,
    service_lines,
    summary,
    texts,
    verifiers,
)
from psycopg import sql
from server_log import tool_statements, writes

from sandbox import ThrowawayPostgres, ThrowawayVault


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
        # The run waits this long for a writable primary again, then gives up.
        proc = start_tool(["run", "--config", str(config), "--wait-timeout", "3"], env)
        processes.append(proc)
        head = read_until(proc, where.after(names))
        server.stop(mode="immediate")
        interrupted = communicate(proc, head)

        assert interrupted.returncode == 3, interrupted.output
        assert interrupted.stderr == "", interrupted.stderr
        assert "Traceback" not in interrupted.output
        assert "unexpected error" not in interrupted.output
        said = texts(interrupted.stdout)
        assert any(
            line.startswith("lost the connection to PostgreSQL at") and "waiting up to 3s" in line
            for line in said
        ), interrupted.stdout
        assert any("was not ready within 3s" in line for line in said), interrupted.stdout
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
