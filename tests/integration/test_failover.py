"""A replicated cluster: a primary and a streaming standby made with pg_basebackup -R,
a multi-host DSN with target_session_attrs=read-write, and the primary killed
(pg_ctl stop -m immediate) in the middle of a run, the standby promoted.

The standby is cut off from the primary before the kill, so that the last
transactions of the old primary never reach the new one, as asynchronous
replication may lose them: the run must notice, see what is missing, and do it
again on the new primary.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pytest
from conftest import Result, Vault, communicate, run_tool, start_tool, toml_string, tool_env
from provisioning import assert_can_work, password_for, read_until, run, summary, texts

from nomad_pginit.postgres import ADVISORY_LOCK_KEY
from sandbox import ThrowawayPostgres

pytestmark = pytest.mark.slow

SERVICES = [f"svc-{index:03d}" for index in range(60)]


@pytest.fixture
def pair() -> Iterator[tuple[ThrowawayPostgres, ThrowawayPostgres]]:
    """A primary and its streaming standby, both running."""
    with ThrowawayPostgres() as primary, ThrowawayPostgres(primary=primary) as standby:
        yield primary, standby


def connect(server: ThrowawayPostgres) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(server.conninfo(), autocommit=True)


def in_recovery(server: ThrowawayPostgres) -> bool:
    with connect(server) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def stop_streaming(standby: ThrowawayPostgres) -> None:
    """Cut the standby off its primary: what the primary commits from now on never
    reaches it (asynchronous replication's last transactions, lost in a failover)."""
    with connect(standby) as conn:
        conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while conn.execute("SELECT count(*) FROM pg_stat_wal_receiver").fetchone() != (0,):
            assert time.monotonic() < deadline, "the standby kept streaming"
            time.sleep(0.05)


def wait_for_replay(primary: ThrowawayPostgres, standby: ThrowawayPostgres) -> None:
    """Until the standby has replayed everything the primary has written."""
    with connect(primary) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    deadline = time.monotonic() + 30
    with connect(standby) as conn:
        while True:
            caught_up = conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)
            ).fetchone()
            if caught_up == (True,):
                return
            assert time.monotonic() < deadline, "the standby did not catch up"
            time.sleep(0.05)


def services_file(
    directory: Path,
    servers: Sequence[ThrowawayPostgres],
    names: Sequence[str],
    attrs: str = "read-write",
) -> Path:
    """A services file whose DSN lists every server: libpq picks the one that fits."""
    hosts = ",".join(f"{server.host}:{server.port}" for server in servers)
    password_file = directory / "pg_admin_password"
    password_file.write_text(servers[0].password + "\n", encoding="utf-8")
    lines = [
        "[postgres]",
        f'dsn = "postgresql://postgres@{hosts}/postgres?target_session_attrs={attrs}"',
        f"password_file = {toml_string(str(password_file))}",
        "",
    ]
    for name in names:
        lines += ["[[service]]", f'name = "{name}"', 'extensions = ["pg_trgm"]', ""]
    path = directory / "pginit.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def start_run(
    config: Path, vault: Vault, processes: list[subprocess.Popen[str]], *args: str
) -> subprocess.Popen[str]:
    """``run --config config *args`` started, killed by the fixture if the test fails."""
    proc = start_tool(["run", "--config", str(config), *args], tool_env(vault))
    processes.append(proc)
    return proc


def put_passwords(vault: Vault, names: Sequence[str]) -> None:
    for name in names:
        vault.put(name, password_for(name))


def roles_on(server: ThrowawayPostgres, names: Sequence[str]) -> set[str]:
    with connect(server) as conn:
        rows = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(names),)
        ).fetchall()
    return {str(row[0]) for row in rows}


def databases_on(server: ThrowawayPostgres, names: Sequence[str]) -> set[str]:
    with connect(server) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (list(names),)
        ).fetchall()
    return {str(row[0]) for row in rows}


def created_roles(lines: Sequence[str]) -> list[str]:
    return [match[1] for line in lines if (match := re.search(r'role "([^"]+)" created$', line))]


def fail_over(
    primary: ThrowawayPostgres,
    standby: ThrowawayPostgres,
    proc: subprocess.Popen[str],
    head: str,
) -> tuple[str, set[str]]:
    """Cut replication once a few services are done, kill the primary a few services
    later, promote the standby: the tool's output so far, and the roles the new primary
    lacks of those it had created."""
    head += read_until(proc, f'role "{SERVICES[3]}" created')
    stop_streaming(standby)
    head += read_until(proc, f'role "{SERVICES[12]}" created')
    primary.stop("immediate")
    done_before = created_roles(texts(head))
    standby.promote()
    missing = set(done_before) - roles_on(standby, done_before)
    return head, missing


def test_failover_mid_run_finishes_on_the_promoted_standby(
    pair: tuple[ThrowawayPostgres, ThrowawayPostgres],
    vault: Vault,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    primary, standby = pair
    put_passwords(vault, SERVICES)
    config = services_file(tmp_path, [primary, standby], SERVICES)
    env = tool_env(vault)

    proc = start_run(config, vault, processes, "--wait-timeout", "60")
    head, missing = fail_over(primary, standby, proc, "")
    result = communicate(proc, head)

    assert result.returncode == 0, result.output
    assert missing, "the test lost nothing in the failover: it proves nothing"
    said = texts(result.stdout)
    assert summary(result.stdout) == f"summary: ok: {len(SERVICES)} services in sync " + (
        f"({len(SERVICES)} created, 0 unchanged)"
    )
    failover = [line for line in said if line.startswith("failover: ")]
    assert failover == [
        f"failover: continuing on the writable primary at {standby.host}:{standby.port} "
        f"(was {primary.host}:{primary.port}); what had not reached it is done again"
    ], result.stdout
    lost = [line for line in said if line.startswith("lost the connection to PostgreSQL at")]
    assert len(lost) == 1, result.stdout
    assert f"{primary.host}:{primary.port}" in lost[0]
    # What the old primary had and the new one lost was created again, after the failover.
    after = said[said.index(failover[0]) :]
    for name in missing:
        assert f'{name}: role "{name}" created' in after, result.stdout
    # psycopg's own internals never reach the log.
    assert "psycopg" not in result.output
    assert "Traceback" not in result.output
    assert result.stderr == ""

    assert roles_on(standby, SERVICES) == set(SERVICES)
    assert databases_on(standby, SERVICES) == set(SERVICES)
    for name in (SERVICES[0], *sorted(missing), SERVICES[-1]):
        assert_can_work(standby, name, password_for(name))
    # In sync on the new primary: a second run changes nothing.
    again = run(config, env)
    assert again.returncode == 0, again.output
    assert summary(again.stdout).endswith(f"({len(SERVICES)} unchanged)")


def test_failover_in_watch_mode_finishes_the_pass_and_keeps_watching(
    pair: tuple[ThrowawayPostgres, ThrowawayPostgres],
    vault: Vault,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    primary, standby = pair
    put_passwords(vault, SERVICES)
    config = services_file(tmp_path, [primary, standby], SERVICES)

    proc = start_run(config, vault, processes, "--watch", "--interval", "1", "--wait-timeout", "60")
    head, missing = fail_over(primary, standby, proc, "")
    assert missing
    head += read_until(proc, "summary: ok")
    assert "failover: continuing on the writable primary" in head
    assert roles_on(standby, SERVICES) == set(SERVICES)

    # The next passes go to the new primary: a rotated password is applied there.
    vault.put(SERVICES[5], password_for(SERVICES[5], 2))
    head += read_until(proc, f'password of role "{SERVICES[5]}" updated')
    assert_can_work(standby, SERVICES[5], password_for(SERVICES[5], 2))

    proc.send_signal(signal.SIGTERM)
    result = communicate(proc, head)
    assert result.returncode == 0, result.output
    assert "Traceback" not in result.output
    assert "psycopg" not in result.output


def test_multi_host_dsn_reaches_the_primary_whatever_the_order(
    pair: tuple[ThrowawayPostgres, ThrowawayPostgres],
    vault: Vault,
    tmp_path: Path,
) -> None:
    """The standby listed first: every connection (admin, workers, inside the databases,
    check's logins as the services) still goes to the primary."""
    primary, standby = pair
    names = SERVICES[:6]
    put_passwords(vault, names)
    config = services_file(tmp_path, [standby, primary], names)
    env = tool_env(vault)

    result = run(config, env)
    assert result.returncode == 0, result.output
    assert roles_on(primary, names) == set(names)
    assert databases_on(primary, names) == set(names)
    # Made inside each database: the per-database sessions were on the primary too.
    for name in names:
        with psycopg.connect(primary.conninfo(dbname=name), autocommit=True) as conn:
            assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()
    checked = check(config, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(names)} services OK" in checked.stdout

    # The standby has them too, once it has replayed: check --replicas logs in there.
    wait_for_replay(primary, standby)
    replicas = check(config, env, "--replicas")
    assert replicas.returncode == 0, replicas.stdout + replicas.stderr
    assert f"replica {standby.host}:{standby.port}: {len(names)} services OK" in replicas.stdout


def test_a_run_pointed_at_a_standby_alone_says_so_and_waits(
    pair: tuple[ThrowawayPostgres, ThrowawayPostgres],
    vault: Vault,
    tmp_path: Path,
) -> None:
    _, standby = pair
    put_passwords(vault, SERVICES[:1])
    config = services_file(tmp_path, [standby], SERVICES[:1], attrs="any")
    result = run(config, tool_env(vault), "--wait-timeout", "2")
    assert result.returncode == 3, result.output
    assert "in recovery (a standby" in result.stdout
    assert in_recovery(standby)
    assert roles_on(standby, SERVICES[:1]) == set()


def check(config: Path, env: dict[str, str], *extra: str) -> Result:
    return run_tool(["check", "--config", str(config), *extra], env)


def test_check_replicas_says_what_a_standby_lacks(
    pair: tuple[ThrowawayPostgres, ThrowawayPostgres],
    vault: Vault,
    tmp_path: Path,
) -> None:
    """A standby that stopped streaming lacks what the last run did: check --replicas
    says so (exit 1), names a primary given as a replica, and refuses a bad address."""
    primary, standby = pair
    names = SERVICES[:3]
    put_passwords(vault, names)
    config = services_file(tmp_path, [primary, standby], names)
    env = tool_env(vault)
    stop_streaming(standby)
    assert run(config, env).returncode == 0

    lagging = check(config, env, "--replicas", "--wait-timeout", "2", "--json")
    assert lagging.returncode == 1, lagging.stdout + lagging.stderr
    document = json.loads(lagging.stdout)
    assert document["ok"] is False
    assert [service["ok"] for service in document["services"]] == [True] * len(names)
    (replica,) = document["replicas"]
    assert replica["address"] == f"{standby.host}:{standby.port}"
    assert "had not replayed the primary's WAL" in replica["problem"]
    assert "replicas with problems" in lagging.stderr

    # Named explicitly: a primary is no replica.
    named = check(config, env, "--replicas", f"{primary.host}:{primary.port}")
    assert named.returncode == 1, named.stdout + named.stderr
    assert "is not a standby (it accepts writes)" in named.stdout

    bad = check(config, env, "--replicas", "db2:port")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "is not a server address" in bad.stdout + bad.stderr


def test_a_stop_while_waiting_for_a_new_primary_ends_the_run_at_once(
    pair: tuple[ThrowawayPostgres, ThrowawayPostgres],
    vault: Vault,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    """No standby is promoted: the run waits for a writable primary, and SIGTERM ends
    that wait within seconds, as stopped (143), not as PostgreSQL unavailable."""
    primary, standby = pair
    put_passwords(vault, SERVICES)
    config = services_file(tmp_path, [primary, standby], SERVICES)
    proc = start_run(config, vault, processes, "--wait-timeout", "600")
    head = read_until(proc, f'role "{SERVICES[3]}" created')
    primary.stop("immediate")
    head += read_until(proc, "lost the connection to PostgreSQL at")
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    result = communicate(proc, head, timeout=60)

    assert time.monotonic() - stopped_at < 30
    assert result.returncode == 143, result.output
    assert summary(result.stdout).startswith("summary: stopped"), result.stdout
    assert "Traceback" not in result.output


def test_watch_mode_notices_a_failover_between_passes(
    pair: tuple[ThrowawayPostgres, ThrowawayPostgres],
    vault: Vault,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    """Replication lost the last pass's work, and the primary failed over while watch
    mode slept: the next look notices the new primary and a pass puts it back."""
    primary, standby = pair
    first, late = SERVICES[:3], SERVICES[3:5]
    put_passwords(vault, first + late)
    config = services_file(tmp_path, [primary, standby], first)
    proc = start_run(config, vault, processes, "--watch", "--interval", "1")
    head = read_until(proc, "summary: ok")
    stop_streaming(standby)
    services_file(tmp_path, [primary, standby], first + late)
    head += read_until(proc, "summary: ok")
    assert roles_on(primary, late) == set(late)
    primary.stop("immediate")
    standby.promote()
    assert roles_on(standby, late) == set()

    head += read_until(proc, "the writable primary is now")
    head += read_until(proc, "summary: ok")
    assert roles_on(standby, late) == set(late)
    for name in late:
        assert_can_work(standby, name, password_for(name))
    proc.send_signal(signal.SIGTERM)
    result = communicate(proc, head)
    assert result.returncode == 0, result.output


def test_after_a_failover_every_connection_goes_where_the_run_went_on(
    pair: tuple[ThrowawayPostgres, ThrowawayPostgres],
    vault: Vault,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    """A split brain: the old primary comes back writable while the run goes on on the
    promoted standby. Its workers and sessions follow the coordinator, not libpq's
    first writable host."""
    primary, standby = pair
    names = SERVICES[:40]
    put_passwords(vault, names)
    config = services_file(tmp_path, [primary, standby], names)
    proc = start_run(config, vault, processes, "--wait-timeout", "60")
    head = read_until(proc, f'role "{names[3]}" created')
    stop_streaming(standby)
    head += read_until(proc, f'role "{names[8]}" created')
    # The resumed run will wait for this advisory lock (another run's, as it takes it;
    # advisory locks work on a standby, and the session outlives the promotion)...
    with connect(standby) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        primary.stop("immediate")
        standby.promote()
        head += read_until(proc, "another nomad-pginit run holds the lock")
        # ...while the old primary, first in the DSN, comes back writable.
        primary.start()
        holder.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    result = communicate(proc, head)

    assert result.returncode == 0, result.output
    assert "another run did it first" not in result.stdout
    assert roles_on(standby, names) == set(names)
    assert databases_on(standby, names) == set(names)
    for name in (names[0], names[20], names[-1]):
        assert_can_work(standby, name, password_for(name))


def test_a_connection_limit_is_said_at_once_not_waited_out_as_a_failover(
    vault: Vault, tmp_path: Path
) -> None:
    """An admin whose CONNECTION LIMIT leaves the workers no room: the server answered,
    it did not go away."""
    with ThrowawayPostgres() as server:
        with connect(server) as conn:
            conn.execute(
                "CREATE ROLE pginit_admin LOGIN CREATEDB CREATEROLE CONNECTION LIMIT 1 "
                "PASSWORD 'limited-admin-password'"
            )
        password_file = tmp_path / "admin_password"
        password_file.write_text("limited-admin-password\n", encoding="utf-8")
        config = tmp_path / "pginit.toml"
        config.write_text(
            "[postgres]\n"
            f'dsn = "postgresql://pginit_admin@{server.host}:{server.port}/postgres"\n'
            f"password_file = {toml_string(str(password_file))}\n\n"
            '[[service]]\nname = "gitea"\n',
            encoding="utf-8",
        )
        put_passwords(vault, ["gitea"])
        result = run(config, tool_env(vault), "--wait-timeout", "30")

    assert result.returncode == 3, result.output
    assert "lost the connection" not in result.output
    assert "the admin's CONNECTION LIMIT" in result.stdout


def test_replicas_on_the_command_line_are_checked_before_anything(
    pair: tuple[ThrowawayPostgres, ThrowawayPostgres], vault: Vault, tmp_path: Path
) -> None:
    primary, standby = pair
    put_passwords(vault, SERVICES[:1])
    single = services_file(tmp_path, [primary], SERVICES[:1])
    env = tool_env(vault)
    alone = check(single, env, "--replicas")
    assert alone.returncode == 2, alone.stdout + alone.stderr
    assert "name the standbys" in alone.stdout + alone.stderr
    empty = check(single, env, "--replicas", ",")
    assert empty.returncode == 2
    assert "names no address" in empty.stdout + empty.stderr

    # Named twice: checked once.
    both = services_file(tmp_path, [primary, standby], SERVICES[:1])
    assert run(both, env).returncode == 0
    wait_for_replay(primary, standby)
    twice = f"{standby.host}:{standby.port}"
    checked = check(both, env, "--replicas", f"{twice},{twice}")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "services OK and on 1 replica" in checked.stdout
