"""Standalone and watch mode, against the real servers: config.json, edits, rotation, signals."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import psycopg
import pytest
from conftest import Cluster, Vault, run_tool, start_tool, tool_env, write_services_file

WAIT = 20.0  # generous: the interval is 1 s, the machines are shared


class LineReader:
    """Collects a running tool's stdout lines so a test can wait for one."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.lines.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no matching line within {timeout}s; got:\n{''.join(self.lines)}")

    def drain(self) -> str:
        while True:
            try:
                self.lines.append(self._queue.get_nowait())
            except queue.Empty:
                return "".join(self.lines)


class Watcher(Protocol):
    def __call__(
        self, config: Path, extra_env: dict[str, str], interval: str = "1"
    ) -> LineReader: ...


@pytest.fixture
def watcher(tmp_path: Path, pg: Cluster, vault: Vault) -> Iterator[Watcher]:
    processes: list[subprocess.Popen[str]] = []

    def start(config: Path, extra_env: dict[str, str], interval: str = "1") -> LineReader:
        env = tool_env(vault, **extra_env)
        process = start_tool(
            ["run", "--watch", "--interval", interval, "--config", str(config)], env
        )
        processes.append(process)
        return LineReader(process)

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def can_login(pg: Cluster, user: str, password: str) -> bool:
    try:
        pg.login(user, password)
    except psycopg.OperationalError:
        return False
    return True


def json_config(path: Path, pg: Cluster, databases: list[dict[str, str]]) -> Path:
    document = {
        "root_connection_string": (
            f"postgres://postgres:{pg.server.password}@127.0.0.1:{pg.port}/postgres?sslmode=disable"
        ),
        "databases": databases,
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_json_format_with_inline_passwords_end_to_end(tmp_path: Path, pg: Cluster) -> None:
    config = json_config(
        tmp_path / "config.json",
        pg,
        [
            {"database": "app_db", "user": "app_user", "password": "securepassword123"},
            {"database": "other_db", "user": "other_user", "password": "an'other\"one"},
        ],
    )
    # No Vault at all: every password is inline. CONFIG_PATH, as the old provisioner read it.
    env = tool_env(None, CONFIG_PATH=str(config), VAULT_ADDR="http://127.0.0.1:9")
    result = run_tool(["run"], env)
    assert result.returncode == 0, result.output
    assert result.stdout.count("inline password") == 1
    assert "keep them in Vault" in result.stdout
    assert "securepassword123" not in result.output
    pg.login("app_user", "securepassword123", dbname="app_db")
    pg.login("other_user", "an'other\"one", dbname="other_db")
    again = run_tool(["run"], env)
    assert again.returncode == 0
    assert "app_db: unchanged" in again.stdout


def test_json_format_reads_missing_passwords_from_vault(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    vault.put("gitea", "from-vault")
    config = json_config(tmp_path / "services.json", pg, [{"database": "gitea"}])
    result = run_tool(["run", "--config", str(config)], tool_env(vault))
    assert result.returncode == 0, result.output
    assert "inline password" not in result.stdout
    pg.login("gitea", "from-vault")


def test_json_format_is_validated_like_toml(tmp_path: Path, pg: Cluster) -> None:
    config = json_config(
        tmp_path / "config.json", pg, [{"database": "postgres", "usr": "x", "password": "p"}]
    )
    result = run_tool(["run", "--config", str(config)], tool_env(None))
    assert result.returncode == 2
    assert "databases[0]" in result.stdout
    assert "reserved" in result.stdout
    assert "did you mean 'user'" in result.stdout


def test_edit_of_the_file_is_applied_within_the_interval(
    tmp_path: Path, pg: Cluster, vault: Vault, watcher: Watcher
) -> None:
    vault.put("gitea", "gitea-pw")
    vault.put("grafana", "grafana-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    tool = watcher(config, {})
    tool.wait_for(lambda line: "summary: ok" in line)
    assert can_login(pg, "gitea", "gitea-pw")

    write_services_file(tmp_path, pg, ["gitea", "grafana"])
    tool.wait_for(lambda line: 'role "grafana" created' in line)
    tool.wait_for(lambda line: "summary: ok" in line)
    assert can_login(pg, "grafana", "grafana-pw")


def test_rotated_password_is_applied_and_the_old_one_stops_working(
    tmp_path: Path, pg: Cluster, vault: Vault, watcher: Watcher
) -> None:
    vault.put("gitea", "old-password")
    config = write_services_file(tmp_path, pg, ["gitea"])
    tool = watcher(config, {})
    tool.wait_for(lambda line: "summary: ok" in line)

    vault.put("gitea", "new-password")
    tool.wait_for(lambda line: "has version 2" in line)
    tool.wait_for(lambda line: 'password of role "gitea" updated' in line)
    assert can_login(pg, "gitea", "new-password")
    assert not can_login(pg, "gitea", "old-password")
    assert "new-password" not in tool.drain()


def test_broken_edit_keeps_the_last_good_configuration(
    tmp_path: Path, pg: Cluster, vault: Vault, watcher: Watcher
) -> None:
    vault.put("gitea", "gitea-pw")
    vault.put("grafana", "grafana-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    tool = watcher(config, {})
    tool.wait_for(lambda line: "summary: ok" in line)

    good = config.read_text(encoding="utf-8")
    config.write_text(good + "\n[[service]]\nnmae = 'typo'\n", encoding="utf-8")
    line = tool.wait_for(lambda line: "keeping the last good configuration" in line)
    assert "did you mean 'name'" in line or "'name' is required" in tool.drain()
    # Still alive, still in force: a rotation is applied with the last good file.
    vault.put("gitea", "rotated")
    tool.wait_for(lambda line: 'password of role "gitea" updated' in line)
    assert tool.process.poll() is None
    assert can_login(pg, "gitea", "rotated")

    write_services_file(tmp_path, pg, ["gitea", "grafana"])
    tool.wait_for(lambda line: 'role "grafana" created' in line)


def test_configmap_swap_through_a_symlink_is_noticed(
    tmp_path: Path, pg: Cluster, vault: Vault, watcher: Watcher
) -> None:
    """Kubernetes mounts a ConfigMap as ..data -> ..timestamp/ and swaps the link."""
    vault.put("gitea", "gitea-pw")
    vault.put("grafana", "grafana-pw")
    mount = tmp_path / "config"
    first, second = mount / "..2026_01", mount / "..2026_02"
    first.mkdir(parents=True)
    second.mkdir()
    write_services_file(first, pg, ["gitea"])
    write_services_file(second, pg, ["gitea", "grafana"])
    os.utime(second / "pginit.toml", (0, 0))  # an old mtime must not hide the change
    (mount / "..data").symlink_to(first.name)
    (mount / "pginit.toml").symlink_to("..data/pginit.toml")

    tool = watcher(mount / "pginit.toml", {})
    tool.wait_for(lambda line: "summary: ok" in line)
    (mount / "..data_tmp").symlink_to(second.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    tool.wait_for(lambda line: 'role "grafana" created' in line)


def test_sigterm_exits_zero(tmp_path: Path, pg: Cluster, vault: Vault, watcher: Watcher) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    tool = watcher(config, {})
    tool.wait_for(lambda line: "summary: ok" in line)
    tool.process.send_signal(signal.SIGTERM)
    assert tool.process.wait(timeout=WAIT) == 0
    assert "stopped" in tool.drain()


def test_watch_mode_from_the_environment(tmp_path: Path, pg: Cluster, vault: Vault) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    env = tool_env(vault, WATCH_MODE="true", PGINIT_CONFIG=str(config))
    process = start_tool(["run", "--interval", "1"], env)
    tool = LineReader(process)
    try:
        tool.wait_for(lambda line: "watching" in line)
        tool.wait_for(lambda line: "summary: ok" in line)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_invalid_watch_mode_value_is_a_usage_error(tmp_path: Path, pg: Cluster) -> None:
    config = write_services_file(tmp_path, pg, ["gitea"])
    result = run_tool(["run", "--config", str(config)], tool_env(None, WATCH_MODE="maybe"))
    assert result.returncode == 2
    assert "WATCH_MODE must be true or false" in result.stdout


def test_standalone_mode_retries_five_times_five_seconds_apart(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    """Outside Nomad, with no timeout given, the old provisioner's retry policy applies."""
    from sandbox import free_port

    config = write_services_file(tmp_path, pg, ["gitea"])
    text = config.read_text(encoding="utf-8").replace(f":{pg.port}/", f":{free_port()}/")
    config.write_text(text, encoding="utf-8")
    started = time.monotonic()
    vault.put("gitea", "gitea-pw")
    result = run_tool(["run", "--config", str(config)], tool_env(vault), timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 3
    assert "not ready within 20s" in result.stdout
    assert 18 <= elapsed < 45


def test_leftovers_are_reported_once_not_at_every_pass(
    tmp_path: Path, pg: Cluster, vault: Vault, watcher: Watcher
) -> None:
    vault.put("gitea", "gitea-pw")
    vault.put("wiki", "wiki-pw")
    both = write_services_file(tmp_path, pg, ["gitea", "wiki"])
    assert run_tool(["run", "--config", str(both)], tool_env(vault)).returncode == 0
    config = write_services_file(tmp_path, pg, ["gitea"])  # wiki left the file
    tool = watcher(config, {})
    tool.wait_for(lambda line: "summary: ok" in line)
    # Several passes: the file is read again and applied each time it changes.
    for extra in ("# one\n", "# two\n"):
        config.write_text(config.read_text(encoding="utf-8") + extra, encoding="utf-8")
        tool.wait_for(lambda line: "services file changed" in line)
        tool.wait_for(lambda line: "summary: ok" in line)
    tool.process.send_signal(signal.SIGTERM)
    assert tool.process.wait(timeout=WAIT) == 0
    output = tool.drain()
    assert output.count('leftover role "wiki"') == 1, output
    assert output.count('leftover database "wiki"') == 1, output


# --- live mode: Nomad re-renders the file and sends SIGHUP -------------------------------------


def test_sighup_applies_a_new_file_at_once_whatever_the_interval(
    tmp_path: Path, pg: Cluster, vault: Vault, watcher: Watcher
) -> None:
    vault.put("gitea", "gitea-pw")
    vault.put("grafana", "grafana-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    tool = watcher(config, {}, interval="3600")
    tool.wait_for(lambda line: "summary: ok" in line)

    # As Nomad's template runner does: the new file renamed into place, then the signal.
    staging = tmp_path / "staging"
    staging.mkdir()
    os.replace(write_services_file(staging, pg, ["gitea", "grafana"]), config)
    tool.process.send_signal(signal.SIGHUP)

    # An hour-long interval: only the SIGHUP can have started this pass.
    tool.wait_for(lambda line: "applying (SIGHUP: services file read again)" in line)
    tool.wait_for(lambda line: 'role "grafana" created' in line)
    tool.wait_for(lambda line: "summary: ok" in line)
    assert can_login(pg, "grafana", "grafana-pw")
    assert tool.process.poll() is None


def test_sighup_with_the_same_file_applies_again(
    tmp_path: Path, pg: Cluster, vault: Vault, watcher: Watcher
) -> None:
    """deploy --now: the file did not change, a password in Vault did."""
    vault.put("gitea", "before")
    config = write_services_file(tmp_path, pg, ["gitea"])
    tool = watcher(config, {}, interval="3600")
    tool.wait_for(lambda line: "summary: ok" in line)
    vault.put("gitea", "after")

    tool.process.send_signal(signal.SIGHUP)

    tool.wait_for(lambda line: 'password of role "gitea" updated' in line)
    assert can_login(pg, "gitea", "after")


def test_stop_signals_end_a_long_wait_at_once(
    tmp_path: Path, pg: Cluster, vault: Vault, watcher: Watcher
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    for stop in (signal.SIGTERM, signal.SIGINT):
        tool = watcher(config, {}, interval="3600")
        tool.wait_for(lambda line: "summary: ok" in line)
        tool.process.send_signal(signal.SIGHUP)  # a reload on the way does not hold it up
        tool.process.send_signal(stop)
        assert tool.process.wait(timeout=WAIT) == 0
        assert "stopped" in tool.drain()


def test_a_broken_file_on_sighup_keeps_the_last_good_one(
    tmp_path: Path, pg: Cluster, vault: Vault, watcher: Watcher
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    tool = watcher(config, {}, interval="3600")
    tool.wait_for(lambda line: "summary: ok" in line)

    config.write_text("", encoding="utf-8")  # the variable lost its item
    tool.process.send_signal(signal.SIGHUP)

    line = tool.wait_for(lambda line: "keeping the last good configuration" in line)
    assert "is empty" in line
    assert "nomad-pginit publish" in line
    assert tool.process.poll() is None


def split_files(tmp_path: Path, pg: Cluster, names: list[str]) -> tuple[Path, Path]:
    """Live mode's view: where to connect in one file, the services in another."""
    whole = write_services_file(tmp_path, pg, names).read_text(encoding="utf-8")
    head, _, rest = whole.partition("[[service]]")
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(head, encoding="utf-8")
    services = tmp_path / "services.toml"
    services.write_text("[[service]]" + rest, encoding="utf-8")
    return cluster, services


class Listener:
    """A TCP port that records whoever connects to it (and answers nothing)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


def test_the_variables_file_may_not_say_where_to_connect(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    """Whoever may write the variable decides which services exist, not where the
    admin's password goes: a [postgres] table there is refused, never merged."""
    vault.put("gitea", "gitea-pw")
    cluster, services = split_files(tmp_path, pg, ["gitea"])
    elsewhere = Listener()
    hostile = (
        f'[postgres]\ndsn = "postgresql://postgres@127.0.0.1:{elsewhere.port}/postgres"\n\n'
        + services.read_text(encoding="utf-8")
    )
    bad = tmp_path / "hostile.toml"
    bad.write_text(hostile, encoding="utf-8")

    refused = run_tool(["run", "--config", str(cluster), "--services", str(bad)], tool_env(vault))
    process = start_tool(
        [
            "run",
            "--watch",
            "--interval",
            "3600",
            "--config",
            str(cluster),
            "--services",
            str(services),
        ],
        tool_env(vault),
    )
    tool = LineReader(process)
    try:
        tool.wait_for(lambda line: "summary: ok" in line)
        services.write_text(hostile, encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        line = tool.wait_for(lambda line: "keeping the last good configuration" in line)
    finally:
        process.terminate()
        process.wait(timeout=WAIT)

    assert refused.returncode == 2, refused.output
    assert "may hold only [defaults] and [[service]] entries" in refused.stdout
    assert "[postgres]" in line
    assert elsewhere.connections == 0
    assert can_login(pg, "gitea", "gitea-pw")
