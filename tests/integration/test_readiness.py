"""Readiness means a writable primary: a standby is waited for until promoted.

Every scenario runs the real tool against real PostgreSQL and OpenBao servers,
then checks the cluster itself.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Cluster,
    Vault,
    communicate,
    start_tool,
    tool_env,
)
from provisioning import (
    assert_can_work,
    assert_in_sync,
    connect,
    password_for,
    provision,
    read_until,
    run,
    texts,
)

from sandbox import ThrowawayPostgres


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
