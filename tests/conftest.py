"""Fixtures: a real PostgreSQL cluster and a real OpenBao server, started once per session.

Nothing is mocked: the tool talks to these servers exactly as it talks to
production ones. Each test gets a clean cluster and a clean KV mount.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import psycopg
import pytest
from psycopg import sql

from sandbox import (
    SandboxError,
    ThrowawayPostgres,
    ThrowawayVault,
    WorkloadIdentities,
    describe_pg,
    find_pg_bindir,
)

pytest_plugins = ["fix_nomad"]

# Every statement goes to the server log: tests read it to prove what ran and what never leaks.
LOGGED_SETTINGS = {
    "log_statement": "all",
    "log_min_error_statement": "error",
    "log_line_prefix": "%m [%p] app=%a user=%u db=%d ",
}
# The tool must never echo these markers; passwords in tests contain them.
PASSWORD_MARKER = "pw-marker-"


def pytest_report_header() -> str:
    """Which PostgreSQL the real-server tests run (PG_BINDIR chooses another)."""
    try:
        return f"postgresql: {describe_pg(find_pg_bindir())}"
    except SandboxError as err:
        return f"postgresql: {err}"


# The repository's own files that a command run from the wrong directory would
# rewrite (render and add-service update the services table of the README next
# to the services file; before, of ./README.md).
_GUARDED = (
    "README.md",
    "jobs/services/databases/postgresql/README.md",
    "jobs/services/databases/postgresql/postgresql.nomad.hcl",
)


@pytest.fixture(scope="session", autouse=True)
def repository_untouched() -> Iterator[None]:
    """Fail the session if a test wrote to the checkout's READMEs or committed job."""
    root = Path(__file__).resolve().parent.parent
    before = {name: (root / name).read_bytes() for name in _GUARDED}
    yield
    changed = [name for name in _GUARDED if (root / name).read_bytes() != before[name]]
    assert not changed, f"a test rewrote {', '.join(changed)} in the checkout"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres(settings=LOGGED_SETTINGS) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def vault_server() -> Iterator[ThrowawayVault]:
    with ThrowawayVault() as server:
        yield server


@pytest.fixture(scope="session")
def identities(vault_server: ThrowawayVault) -> WorkloadIdentities:
    """Nomad's workload identities, trusted by the JWT auth method at auth/jwt-nomad."""
    signer = WorkloadIdentities()
    signer.configure(hvac.Client(url=vault_server.addr, token=vault_server.token))
    return signer


def superuser_connect(
    cluster: ThrowawayPostgres, dbname: str = "postgres"
) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(cluster.conninfo(dbname=dbname), autocommit=True)


def reset_cluster(cluster: ThrowawayPostgres) -> None:
    """Drop every database and role that a test made, so each test starts clean."""
    with superuser_connect(cluster) as conn:
        # A tool process killed by a test may leave its last statement running.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name LIKE 'nomad-pginit%%' AND pid <> pg_backend_pid()"
            ).fetchone()
            if not busy or not busy[0]:
                break
            time.sleep(0.1)
        databases = [
            str(row[0])
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname NOT IN "
                "('postgres', 'template0', 'template1')"
            )
        ]
        for name in databases:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        roles = [
            str(row[0])
            for row in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname <> 'postgres' "
                "AND rolname NOT LIKE 'pg\\_%'"
            )
        ]
        for name in roles:
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
        # What a test may have planted on what stays: comments, settings, grants.
        conn.execute("COMMENT ON ROLE postgres IS NULL")
        conn.execute("COMMENT ON DATABASE postgres IS 'default administrative connection database'")
        conn.execute("ALTER ROLE postgres RESET ALL")


@dataclass
class Cluster:
    """The session cluster, clean at the start of the test."""

    server: ThrowawayPostgres

    @property
    def port(self) -> int:
        return self.server.port

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return superuser_connect(self.server, dbname)

    @property
    def server_version(self) -> int:
        """PostgreSQL's version number: 150018 for 15.18."""
        with self.connect() as conn:
            return conn.info.server_version

    def log_offset(self) -> int:
        return self.server.logfile.stat().st_size if self.server.logfile.exists() else 0

    def log_since(self, offset: int) -> str:
        with self.server.logfile.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")

    def login(self, user: str, password: str, dbname: str | None = None) -> None:
        """Log in over TCP as ``user`` and create a table in public: what a service does."""
        conninfo = self.server.conninfo(dbname=dbname or user, user=user, password=password)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS public.pginit_probe (id int)")
            conn.execute("DROP TABLE public.pginit_probe")


@pytest.fixture
def pg(pg_cluster: ThrowawayPostgres) -> Iterator[Cluster]:
    reset_cluster(pg_cluster)
    yield Cluster(pg_cluster)
    reset_cluster(pg_cluster)


@dataclass
class Vault:
    """The session OpenBao server, with an empty ``secret/`` mount."""

    server: ThrowawayVault
    client: hvac.Client

    @property
    def addr(self) -> str:
        return self.server.addr

    @property
    def token(self) -> str:
        return self.server.token

    def put(self, service: str, password: str, key: str = "password") -> None:
        self.client.secrets.kv.v2.create_or_update_secret(
            path=f"postgres/{service}", secret={key: password}, mount_point="secret"
        )

    def clear(self) -> None:
        try:
            keys = self.client.secrets.kv.v2.list_secrets(path="postgres", mount_point="secret")
        except hvac.exceptions.InvalidPath:
            return
        for key in keys["data"]["keys"]:
            self.client.secrets.kv.v2.delete_metadata_and_all_versions(
                path=f"postgres/{key}", mount_point="secret"
            )


@pytest.fixture
def vault(vault_server: ThrowawayVault) -> Iterator[Vault]:
    client = hvac.Client(url=vault_server.addr, token=vault_server.token)
    store = Vault(vault_server, client)
    store.clear()
    yield store
    store.clear()


def write_services_file(
    directory: Path,
    cluster: Cluster,
    services: Sequence[str | Mapping[str, object]],
    *,
    password_file: Path | None = None,
    admin_secret: str | None = None,
    extra: str = "",
) -> Path:
    """A services file for the test cluster; the admin password goes in a file, or, with
    ``admin_secret``, is read from Vault at that path ([postgres] password_secret)."""
    lines = [
        "[postgres]",
        f'dsn = "postgresql://postgres@127.0.0.1:{cluster.port}/postgres"',
    ]
    if admin_secret is not None:
        lines.append(f"password_secret = {toml_string(admin_secret)}")
    else:
        if password_file is None:
            password_file = directory / "pg_admin_password"
            password_file.write_text(cluster.server.password + "\n", encoding="utf-8")
        lines.append(f"password_file = {toml_string(str(password_file))}")
    lines.append("")
    if extra:
        lines.append(textwrap.dedent(extra))
    for service in services:
        entry = {"name": service} if isinstance(service, str) else dict(service)
        lines.append("[[service]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in entry.items())
        lines.append("")
    path = directory / "pginit.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{toml_string(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    return toml_string(str(value))


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def tool_env(vault: Vault | None = None, **overrides: str) -> dict[str, str]:
    """A clean environment for the tool: nothing inherited from the developer's shell."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PG", "VAULT_", "NOMAD_", "PGINIT_", "BAO_"))
    }
    env["HOME"] = env.get("PGINIT_TEST_HOME", "/nonexistent")
    if vault is not None:
        env["VAULT_ADDR"] = vault.addr
        env["VAULT_TOKEN"] = vault.token
    env.update(overrides)
    return env


def run_tool(
    args: Sequence[str], env: Mapping[str, str], timeout: float = 120, cwd: Path | None = None
) -> Result:
    """Run nomad-pginit as a real process, as Nomad would."""
    completed = subprocess.run(
        [sys.executable, "-m", "nomad_pginit", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def start_tool(args: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nomad_pginit", *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def communicate(proc: subprocess.Popen[str], head: str = "", timeout: float = 120) -> Result:
    """Wait for a started tool; ``head`` is the stdout already read from it."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"nomad-pginit did not exit within {timeout}s:\n{head}{stdout}{stderr}")
    return Result(proc.returncode, head + stdout, stderr)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Tool processes a test started: killed if the test failed before they exited."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
