"""Waits that end: hung servers, other sessions' locks, and stop requests, against real servers.

Nomad sends SIGKILL a few seconds after its kill signal, so every wait must
end by its deadline, and a stop request must end the run within a second or
two wherever it is, with the summary line saying what was not finished.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import psycopg
import pytest
from catalog import database_owner, role_exists
from conftest import (
    Cluster,
    Result,
    Vault,
    communicate,
    run_tool,
    start_tool,
    superuser_connect,
    tool_env,
    write_services_file,
)

from nomad_pginit.errors import ExitCode
from sandbox import ThrowawayVault

# What "a second or two" is allowed to be on a loaded shared machine.
PROMPT_SECONDS = 4.0


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(50)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not done.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    done.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def hung_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "pginit.toml"
    (tmp_path / "pw").write_text("pw\n", encoding="utf-8")
    path.write_text(
        f'[postgres]\ndsn = "postgresql://postgres@127.0.0.1:{port}/postgres"\n'
        f'password_file = "{tmp_path}/pw"\n\n[[service]]\nname = "gitea"\n\n'
        '[[service]]\nname = "grafana"\n',
        encoding="utf-8",
    )
    return path


def stop_after(proc: subprocess.Popen[str], seconds: float, signum: int) -> float:
    """Send ``signum`` after ``seconds``; the time it was sent."""
    time.sleep(seconds)
    proc.send_signal(signum)
    return time.monotonic()


def ended_within(proc: subprocess.Popen[str], sent: float) -> tuple[Result, float]:
    result = communicate(proc, timeout=60)
    return result, time.monotonic() - sent


# --- a server that never answers -----------------------------------------------------------


def test_a_silent_listener_ends_at_the_wait_timeout(
    tmp_path: Path, silent_listener: int, vault: Vault
) -> None:
    config = hung_config(tmp_path, silent_listener)
    vault.put("gitea", "a")
    vault.put("grafana", "b")
    started = time.monotonic()

    result = run_tool(["run", "--config", str(config), "--wait-timeout", "3"], tool_env(vault))

    assert result.returncode == ExitCode.POSTGRES, result.output
    assert time.monotonic() - started < 3 + PROMPT_SECONDS + 2  # a probe is 2 s at most
    assert "was not ready within 3s" in result.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_waiting_for_postgres_ends_at_once(
    tmp_path: Path, silent_listener: int, vault: Vault, signum: int
) -> None:
    config = hung_config(tmp_path, silent_listener)
    vault.put("gitea", "a")
    vault.put("grafana", "b")
    proc = start_tool(["run", "--config", str(config), "--wait-timeout", "60"], tool_env(vault))

    sent = stop_after(proc, 3, signum)
    result, took = ended_within(proc, sent)

    assert took < PROMPT_SECONDS, result.output
    assert result.returncode == 128 + signum, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert "summary: stopped: 2 of 2 services not finished (gitea, grafana)" in last
    assert "summary: ok" not in result.stdout


def test_a_stopped_plan_is_not_in_sync(tmp_path: Path, silent_listener: int, vault: Vault) -> None:
    config = hung_config(tmp_path, silent_listener)
    vault.put("gitea", "a")
    vault.put("grafana", "b")
    proc = start_tool(
        ["plan", "--config", str(config), "--json", "--wait-timeout", "60"], tool_env(vault)
    )

    sent = stop_after(proc, 3, signal.SIGTERM)
    result, _ = ended_within(proc, sent)

    assert result.returncode == ExitCode.STOPPED, result.output
    document = json.loads(result.stdout)
    assert document["in_sync"] is False
    assert {item["status"] for item in document["services"]} == {"not finished"}


def test_the_wait_timeout_is_checked(tmp_path: Path, pg: Cluster) -> None:
    config = write_services_file(tmp_path, pg, ["gitea"])
    for value in ("1e300", "-1", "nan", "86401"):
        result = run_tool(["run", "--config", str(config), "--wait-timeout", value], tool_env())
        assert result.returncode == ExitCode.CONFIG, result.output
        assert "--wait-timeout must be a number of seconds from 0 to 86400" in result.stdout
        assert "bug" not in result.output


# --- other sessions' locks --------------------------------------------------------------------


def test_a_locked_catalog_ends_at_the_wait_timeout(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    # Logins read pg_authid: with it locked, no new session gets in.
    with psycopg.connect(pg.server.conninfo()) as blocker:
        blocker.execute("LOCK TABLE pg_authid IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = run_tool(["run", "--config", str(config), "--wait-timeout", "3"], tool_env(vault))
        took = time.monotonic() - started
        blocker.rollback()

    assert result.returncode == ExitCode.POSTGRES, result.output
    assert took < 3 + PROMPT_SECONDS + 2
    assert "was not ready within 3s" in result.stdout


def test_a_statement_behind_another_sessions_lock_names_it(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    # The database exists, owned by someone else: run must hand it to its role.
    with superuser_connect(pg.server) as conn:
        conn.execute("CREATE ROLE squatter")
        conn.execute('CREATE DATABASE "gitea" OWNER squatter')
    vault.put("gitea", "gitea-pw")
    vault.put("grafana", "grafana-pw")
    config = write_services_file(tmp_path, pg, ["gitea", "grafana"])
    with psycopg.connect(pg.server.conninfo(), application_name="a-migration") as blocker:
        # An open transaction that changed the database's row: ALTER DATABASE waits.
        blocker.execute('ALTER DATABASE "gitea" CONNECTION LIMIT 7')
        pid = blocker.info.backend_pid
        result = run_tool(["run", "--config", str(config), "--wait-timeout", "3"], tool_env(vault))
        blocker.rollback()

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    (line,) = [line for line in result.stdout.splitlines() if "gitea: failed" in line]
    assert "waited 3s for a lock held by session" in line
    assert f"session {pid} (user " in line
    assert 'application "a-migration"' in line
    assert "idle in transaction" in line
    assert "lost the connection" not in result.stdout
    # The other service is done; the blocked one is left as it was.
    assert role_exists(pg, "grafana")
    assert database_owner(pg, "gitea") == "squatter"


def test_a_stop_cancels_a_statement_blocked_by_another_session(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    with superuser_connect(pg.server) as conn:
        conn.execute("CREATE ROLE squatter")
        conn.execute('CREATE DATABASE "gitea" OWNER squatter')
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    with psycopg.connect(pg.server.conninfo()) as blocker:
        blocker.execute('ALTER DATABASE "gitea" CONNECTION LIMIT 7')
        proc = start_tool(["run", "--config", str(config), "--wait-timeout", "60"], tool_env(vault))
        sent = stop_after(proc, 4, signal.SIGTERM)
        result, took = ended_within(proc, sent)
        blocker.rollback()

    assert took < PROMPT_SECONDS, result.output
    assert result.returncode == ExitCode.STOPPED, result.output
    assert "summary: stopped: 1 of 1 services not finished (gitea)" in result.stdout
    with superuser_connect(pg.server) as conn:
        # Our statement was cancelled, not left waiting in the server.
        waiting = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'nomad-pginit'"
        ).fetchone()
    assert waiting == (0,)


def test_the_advisory_lock_wait_ends_and_names_the_other_run(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    with psycopg.connect(pg.server.conninfo(), autocommit=True) as other_run:
        other_run.execute("SELECT pg_advisory_lock(%s)", (0x7067696E6974,))
        started = time.monotonic()
        result = run_tool(["run", "--config", str(config), "--wait-timeout", "3"], tool_env(vault))
        took = time.monotonic() - started
        pid = other_run.info.backend_pid

        proc = start_tool(["run", "--config", str(config), "--wait-timeout", "60"], tool_env(vault))
        sent = stop_after(proc, 3, signal.SIGTERM)
        stopped, stop_took = ended_within(proc, sent)

    assert result.returncode == ExitCode.POSTGRES, result.output
    assert took < 3 + PROMPT_SECONDS
    assert f"another nomad-pginit run (session {pid}" in result.stdout
    assert "for more than 3s (--wait-timeout)" in result.stdout
    assert stopped.returncode == ExitCode.STOPPED, stopped.output
    assert stop_took < PROMPT_SECONDS, stopped.output


# --- watch mode and Vault -------------------------------------------------------------------------


def test_watch_mode_stops_at_once_while_vault_does_not_answer(
    tmp_path: Path, pg: Cluster, silent_listener: int
) -> None:
    config = write_services_file(tmp_path, pg, ["gitea", "grafana"])
    env = tool_env(None, VAULT_ADDR=f"http://127.0.0.1:{silent_listener}", VAULT_TOKEN="a-token")
    proc = start_tool(["run", "--watch", "--interval", "1", "--config", str(config)], env)

    sent = stop_after(proc, 3, signal.SIGTERM)
    result, took = ended_within(proc, sent)

    assert took < PROMPT_SECONDS, result.output
    assert result.returncode == 0, result.output


def test_watch_mode_says_once_that_vault_is_away_and_once_that_it_is_back(
    tmp_path: Path, pg: Cluster
) -> None:
    with ThrowawayVault() as vault:
        client = hvac.Client(url=vault.addr, token=vault.token)
        client.secrets.kv.v2.create_or_update_secret(
            path="postgres/gitea", secret={"password": "gitea-pw"}, mount_point="secret"
        )
        config = write_services_file(tmp_path, pg, ["gitea"])
        env = tool_env(None, VAULT_ADDR=vault.addr, VAULT_TOKEN=vault.token)
        proc = start_tool(["run", "--watch", "--interval", "0.5", "--config", str(config)], env)
        try:
            time.sleep(3)
            client.sys.seal()  # type: ignore[no-untyped-call]
            time.sleep(4)  # eight looks at Vault while it is sealed
            client.sys.submit_unseal_key(vault.unseal_key)
            time.sleep(3)
        finally:
            proc.send_signal(signal.SIGTERM)
        result = communicate(proc, timeout=30)

    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    away = [line for line in lines if "rotations wait until it answers" in line]
    assert len(away) == 1, result.stdout
    assert "sealed" in away[0]
    assert len([line for line in lines if "Vault answers again" in line]) == 1, result.stdout


# --- a connection that freezes after login ---------------------------------------------------


class FreezingProxy:
    """Forwards to PostgreSQL until a client sends ``trigger``; from then on that
    connection carries nothing either way and stays open: a host that vanished
    behind a stalled proxy or pooler, which no cancel request crosses either."""

    def __init__(self, target_port: int, trigger: bytes) -> None:
        self.target_port = target_port
        self.trigger = trigger
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.frozen = threading.Event()
        self.freeze_everything = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            held = threading.Event()
            threading.Thread(target=self._pump, args=(client, upstream, held), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, held), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, held: threading.Event) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.trigger in data:
                held.set()
                self.frozen.set()
                self.freeze_everything = True
            if held.is_set() or (self.freeze_everything and self.frozen.is_set()):
                held.set()
                continue  # swallowed: nothing more gets through this connection
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.server.close()
        for sock in self._sockets:
            # shutdown first: a close alone leaves the connection up while a thread
            # is blocked reading it, and PostgreSQL would keep the session (and its
            # advisory lock) for ever.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def freezing(pg: Cluster) -> Iterator[FreezingProxy]:
    proxy = FreezingProxy(pg.port, b"ALTER ROLE")
    yield proxy
    proxy.close()


def frozen_config(tmp_path: Path, pg: Cluster, vault: Vault, proxy: FreezingProxy) -> Path:
    """gitea exists with another password: the run sends ALTER ROLE, and the proxy freezes."""
    vault.put("gitea", "first")
    assert (
        run_tool(
            ["run", "--config", str(write_services_file(tmp_path, pg, ["gitea"]))], tool_env(vault)
        ).returncode
        == ExitCode.OK
    )
    vault.put("gitea", "rotated")
    config = write_services_file(tmp_path, pg, ["gitea"])
    text = config.read_text(encoding="utf-8").replace(f":{pg.port}/", f":{proxy.port}/")
    config.write_text(text, encoding="utf-8")
    return config


def test_a_stop_ends_a_run_whose_connection_froze(
    tmp_path: Path, pg: Cluster, vault: Vault, freezing: FreezingProxy
) -> None:
    config = frozen_config(tmp_path, pg, vault, freezing)
    proc = start_tool(["run", "--config", str(config)], tool_env(vault))
    assert freezing.frozen.wait(30), "the run never sent its password statement"
    sent = stop_after(proc, 1, signal.SIGTERM)
    result, took = ended_within(proc, sent)

    # The grace, the cancel that cannot get through (its own connect timeout), and
    # the last resort: within the few seconds a scheduler waits before SIGKILL.
    assert took < 5 + PROMPT_SECONDS, result.output
    assert result.returncode == ExitCode.STOPPED, result.output
    assert "summary: stopped" in result.stdout
    assert "Traceback" not in result.output


def test_a_frozen_connection_ends_the_run_without_a_stop(
    tmp_path: Path, pg: Cluster, vault: Vault, freezing: FreezingProxy
) -> None:
    config = frozen_config(tmp_path, pg, vault, freezing)
    env = tool_env(vault, PGINIT_STATEMENT_TIMEOUT="2")  # frozen after twice that
    started = time.monotonic()

    result = run_tool(["run", "--config", str(config)], env, timeout=60)

    took = time.monotonic() - started
    assert result.returncode == ExitCode.POSTGRES, result.output
    assert "the connection is frozen" in result.stdout
    assert "summary: failed" in result.stdout
    assert took < 30, result.output


def test_the_statement_timeout_is_checked(tmp_path: Path, pg: Cluster) -> None:
    config = write_services_file(tmp_path, pg, ["gitea"])
    for value in ("0", "-1", "soon", "nan", "86401"):
        result = run_tool(
            ["run", "--config", str(config)], tool_env(None, PGINIT_STATEMENT_TIMEOUT=value)
        )
        assert result.returncode == ExitCode.CONFIG, result.output
        assert "PGINIT_STATEMENT_TIMEOUT must be a number of seconds" in result.stdout


class TricklingProxy:
    """In front of Vault: forwards requests, and answers one byte a second, so that
    no single read ever times out and a request never ends."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.addr = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._trickle, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _requests(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)

    @staticmethod
    def _trickle(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                for byte in data:
                    sink.sendall(bytes([byte]))
                    time.sleep(1)

    def close(self) -> None:
        self.server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_trickling_vault_ends_at_its_deadline(
    tmp_path: Path, pg: Cluster, vault: Vault, command: str
) -> None:
    # check reads the passwords as run does: the same reads, the same deadline.
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    proxy = TricklingProxy(vault.addr)
    try:
        env = tool_env(vault, VAULT_ADDR=proxy.addr, VAULT_CLIENT_TIMEOUT="3s")
        started = time.monotonic()
        result = run_tool([command, "--config", str(config)], env, timeout=60)
        took = time.monotonic() - started
    finally:
        proxy.close()

    assert result.returncode == ExitCode.VAULT, result.output
    assert "has not finished" in result.output
    assert "after 3s" in result.output
    if command == "run":
        assert "summary: failed" in result.stdout
    assert took < 20, result.output


def test_the_vault_client_timeout_is_checked(tmp_path: Path, pg: Cluster, vault: Vault) -> None:
    config = write_services_file(tmp_path, pg, ["gitea"])
    result = run_tool(["run", "--config", str(config)], tool_env(vault, VAULT_CLIENT_TIMEOUT="x"))
    assert result.returncode == ExitCode.CONFIG, result.output
    assert "VAULT_CLIENT_TIMEOUT must be a duration" in result.stdout
