"""What every measurement needs: Vault holding the services' passwords, services files
for throwaway clusters, and ``nomad-pginit run`` as a real process with its wall time
and peak memory.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import hvac
import psycopg
from psycopg import sql

from sandbox import ThrowawayPostgres, ThrowawayVault

# Where the tool looks by default ([vault] mount, path and key left out of the file).
MOUNT = "secret"
KEY = "password"
# The tool waits at most this long for PostgreSQL; a run never needs more than a moment.
WAIT_TIMEOUT_SECONDS = 60
# A safety net: a run that takes longer than this is killed and the benchmark fails.
RUN_TIMEOUT_SECONDS = 1800.0
# Environment variables of the developer's shell that would change what the tool does.
_SCRUBBED_PREFIXES = ("PG", "VAULT_", "BAO_", "NOMAD_", "PGINIT_")
_SCRUBBED_NAMES = frozenset({"WATCH_MODE", "CONFIG_PATH"})
_SUMMARY = re.compile(r"summary: ok: \d+ services? in sync \((?P<counts>[^)]*)\)")
_OUTPUT_TAIL_CHARS = 3000
# A PostgreSQL 15 database starts as a ~7.5 MB copy of template1; plus WAL (max_wal_size
# 1 GB by default) and room to spare.
_BYTES_PER_DATABASE = 8 * 1024 * 1024
_BYTES_SPARE = 2 * 1024 * 1024 * 1024
_PACKAGE = Path(__file__).resolve().parents[1] / "nomad_pginit"
_RAM_DISK = Path("/dev/shm")  # noqa: S108 - only ever a parent for mkdtemp()


class BenchError(Exception):
    """Something did not go as the measurement assumes: its figure would be meaningless."""


def service_names(n: int) -> list[str]:
    """svc0001 ... svcNNNN: plain lowercase SQL identifiers, as the reference script needs."""
    width = max(4, len(str(n)))
    return [f"svc{index:0{width}d}" for index in range(1, n + 1)]


def new_password() -> str:
    """What the seed tells operators to store: ``openssl rand -base64 32``."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def tail(text: str) -> str:
    return text if len(text) <= _OUTPUT_TAIL_CHARS else "...\n" + text[-_OUTPUT_TAIL_CHARS:]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without anything that points at real servers."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_SCRUBBED_PREFIXES) and name not in _SCRUBBED_NAMES
    }
    env["HOME"] = str(home)  # no ~/.vault-token, ~/.pgpass or ~/.psqlrc of the developer's
    # As installed (pip compiles the package): a shell that sets PYTHONDONTWRITEBYTECODE
    # would have every run compile nomad-pginit again. Compiled into the scratch
    # directory, never into the source tree.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(home / "pycache")
    env.update(extra)
    return env


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@dataclass(frozen=True)
class Storage:
    """Where the throwaway clusters live, and why."""

    path: Path
    filesystem: str
    note: str


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts), or "unknown"."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def _available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def choose_storage(n: int, requested: Path | None) -> Storage:
    """Where to put the clusters: a RAM disk when there is room, else the temp directory.

    On a disk, N CREATE DATABASE statements write N copies of template1 and the
    timing follows the disk's writeback (and every other tenant's), not PostgreSQL;
    on tmpfs the floor and the cold runs are CPU-bound and repeatable.
    """
    if requested is not None:
        kind = _filesystem(requested)
        return Storage(requested, kind, f"{requested} ({kind}), as asked")
    needed = n * _BYTES_PER_DATABASE + _BYTES_SPARE
    default = Path(tempfile.gettempdir())
    if _RAM_DISK.is_dir() and _filesystem(_RAM_DISK) == "tmpfs":
        room = min(shutil.disk_usage(_RAM_DISK).free, _available_memory())
        if room >= needed:
            return Storage(_RAM_DISK, "tmpfs", f"{_RAM_DISK} (tmpfs: disk I/O out of the figures)")
        note = f"not {_RAM_DISK}: it lacks the {needed / 1e9:.1f} GB needed"
    else:
        note = f"no tmpfs at {_RAM_DISK}"
    kind = _filesystem(default)
    return Storage(
        default, kind, f"{default} ({kind}; {note}): the disk's writeback adds noise to cold runs"
    )


class Secrets:
    """The services' passwords in the OpenBao dev server, as ``vault kv put`` leaves them."""

    def __init__(self, server: ThrowawayVault) -> None:
        self._client = hvac.Client(url=server.addr, token=server.token)

    def put(self, service: str, password: str) -> None:
        self._client.secrets.kv.v2.create_or_update_secret(
            path=f"postgres/{service}", secret={KEY: password}, mount_point=MOUNT
        )

    def read(self, service: str) -> str:
        response = self._client.secrets.kv.v2.read_secret_version(
            path=f"postgres/{service}", mount_point=MOUNT, raise_on_deleted_version=True
        )
        value = response["data"]["data"][KEY]
        if not isinstance(value, str):
            raise BenchError(f"secret/postgres/{service} holds no string password")
        return value

    def read_all(self, services: Sequence[str]) -> dict[str, str]:
        return {service: self.read(service) for service in services}


@dataclass(frozen=True)
class ToolRun:
    """One ``nomad-pginit run`` process, start to exit."""

    seconds: float
    peak_rss_kib: int
    returncode: int
    output: str
    # User and system CPU of the process.
    cpu_seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """The summary line's counts, e.g. {"created": 200, "unchanged": 0}."""
        match = _SUMMARY.search(self.output)
        if self.returncode != 0 or match is None:
            raise BenchError(
                f"nomad-pginit run exited {self.returncode} without 'summary: ok':\n"
                + tail(self.output)
            )
        counts: dict[str, int] = {}
        for part in match["counts"].split(", "):
            number, status = part.split(" ", 1)
            counts[status] = int(number)
        return counts

    def expect(self, what: str, **expected: int) -> None:
        """Fail unless the run did exactly this (statuses not named must be 0)."""
        found = {status: count for status, count in self.counts().items() if count}
        wanted = {status: count for status, count in expected.items() if count}
        if found != wanted:
            raise BenchError(
                f"the {what} run was expected to report {wanted} but reported {found}:\n"
                + tail(self.output)
            )


class RunningTool:
    """``nomad-pginit run`` started as Nomad starts it; ``finish`` reaps it with its rusage."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.log = log
        # A file, not a pipe: nothing has to read while the process runs, as with Nomad's logs.
        self._out: IO[bytes] = log.open("wb")
        self.started_wall = time.time()
        self._started = time.perf_counter()
        self._proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def terminate(self) -> None:
        """SIGTERM: the tool finishes the service at hand and exits."""
        self._proc.send_signal(signal.SIGTERM)

    def finish(self, timeout: float = RUN_TIMEOUT_SECONDS) -> ToolRun:
        pid = self._proc.pid
        pidfd = os.pidfd_open(pid)
        deadline = time.monotonic() + timeout
        # The process's own peak (VmHWM of its memory after exec), looked at until it
        # exits: wait4's ru_maxrss also counts the bench's own memory at the fork.
        peak_kib = 0
        try:
            while True:
                peak_kib = max(peak_kib, _high_water_kib(pid))
                remaining = deadline - time.monotonic()
                wait = max(0.0, min(_RSS_POLL_SECONDS, remaining))
                exited, _, _ = select.select([pidfd], [], [], wait)
                if exited or remaining <= 0:
                    break
            if not exited:
                self._proc.kill()  # not reaped yet, so the pid is still ours
        finally:
            os.close(pidfd)
        # wait4 rather than Popen.wait: it also returns the child's peak RSS.
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - self._started
        self._proc.returncode = os.waitstatus_to_exitcode(status)
        self._out.close()
        if not exited:
            raise BenchError(
                f"nomad-pginit run did not finish within {timeout:g}s:\n" + tail(self.output())
            )
        return ToolRun(
            seconds,
            peak_kib or int(usage.ru_maxrss),  # ru_maxrss in KiB on Linux: an upper bound
            self._proc.returncode,
            self.output(),
            usage.ru_utime + usage.ru_stime,
        )


# What `nomad-pginit run` imports, imported once before anything is timed.
_RUN_MODULES: Final = (
    "nomad_pginit.cli",
    "nomad_pginit.commands.run",
    "nomad_pginit.provision",
    "nomad_pginit.watch",
)
_IMPORT_ALL: Final = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
# How often the tool's memory high-water mark is read while it runs.
_RSS_POLL_SECONDS: Final = 0.05


def _high_water_kib(pid: int) -> int:
    """VmHWM of a running process, in KiB; 0 once it is gone (a zombie has none)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@dataclass
class Lab:
    """The Vault server with every service's secret, a scratch directory, the services."""

    workdir: Path
    vault: ThrowawayVault
    secrets: Secrets
    names: list[str]
    _rotations: int = 0

    @property
    def n(self) -> int:
        return len(self.names)

    def tool_env(self) -> dict[str, str]:
        return clean_env(self.workdir, VAULT_ADDR=self.vault.addr, VAULT_TOKEN=self.vault.token)

    def services_file(self, cluster: ThrowawayPostgres | None, tag: str) -> Path:
        """A services file as in tests/conftest.py: [postgres] dsn and password_file."""
        lines: list[str] = []
        if cluster is not None:
            password_file = self.workdir / f"{tag}.pg_admin_password"
            password_file.write_text(cluster.password + "\n", encoding="utf-8")
            lines += [
                "[postgres]",
                f'dsn = "postgresql://{cluster.superuser}@{cluster.host}:{cluster.port}/postgres"',
                f"password_file = {_toml_string(str(password_file))}",
                "",
            ]
        for name in self.names:
            lines += ["[[service]]", f'name = "{name}"', ""]
        path = self.workdir / f"{tag}.toml"
        path.write_text("\n".join(lines), encoding="utf-8")
        return path

    def start_tool(self, config: Path, tag: str) -> RunningTool:
        command = [
            sys.executable,
            "-m",
            "nomad_pginit",
            "run",
            "--config",
            str(config),
            "--wait-timeout",
            str(WAIT_TIMEOUT_SECONDS),
        ]
        return RunningTool(command, self.tool_env(), self.workdir / f"{tag}.log")

    def run_tool(self, config: Path, tag: str) -> ToolRun:
        return self.start_tool(config, tag).finish()

    def rotate(self) -> tuple[str, str]:
        """Give one service a new password in Vault (a new KV version): (service, password)."""
        service = self.names[(self.n // 2 + self._rotations) % self.n]
        self._rotations += 1
        password = new_password()
        self.secrets.put(service, password)
        return service, password


@contextmanager
def open_lab(n: int) -> Iterator[Lab]:
    """A scratch directory and an OpenBao dev server holding ``n`` services' passwords."""
    with (
        tempfile.TemporaryDirectory(prefix="nomad-pginit-bench-") as scratch,
        ThrowawayVault() as vault,
    ):
        # Compiled once, as pip compiles an installed package: no run pays for it. The
        # bytecode goes to the scratch directory (PYTHONPYCACHEPREFIX), so what the tool
        # imports (the standard library, psycopg, hvac) is compiled there too, untimed.
        env = clean_env(Path(scratch))
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(_PACKAGE)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run([sys.executable, "-c", _IMPORT_ALL, *_RUN_MODULES], env=env, check=True)
        store = Secrets(vault)
        names = service_names(n)
        for name in names:
            store.put(name, new_password())
        yield Lab(Path(scratch), vault, store, names)


# --- looking at a cluster, untimed -------------------------------------------------


def connect(
    cluster: ThrowawayPostgres, dbname: str = "postgres"
) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(cluster.conninfo(dbname=dbname), autocommit=True)


def inventory(cluster: ThrowawayPostgres, names: Sequence[str]) -> tuple[int, int]:
    """How many of these databases and roles exist."""
    with connect(cluster) as conn:
        databases = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = ANY(%s)", (list(names),)
        ).fetchone()
        roles = conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (list(names),)
        ).fetchone()
    return (int(str(databases[0])) if databases else 0, int(str(roles[0])) if roles else 0)


def expect_provisioned(cluster: ThrowawayPostgres, names: Sequence[str], what: str) -> None:
    found = inventory(cluster, names)
    if found != (len(names), len(names)):
        raise BenchError(
            f"after the {what} run, {found[0]} of {len(names)} databases and {found[1]} of "
            f"{len(names)} roles exist"
        )


def can_log_in(cluster: ThrowawayPostgres, user: str, password: str) -> bool:
    """Does ``password`` log ``user`` in over TCP (scram-sha-256), to its own database?"""
    conninfo = cluster.conninfo(dbname=user, user=user, password=password)
    try:
        with psycopg.connect(conninfo, connect_timeout=10):
            return True
    except psycopg.OperationalError as err:
        if "password authentication failed" in str(err):
            return False
        raise BenchError(f"cannot tell whether {user}'s password works: {err}") from err


def sessions(cluster: ThrowawayPostgres, names: Sequence[str]) -> dict[str, int]:
    """pg_stat_database.sessions of each database: how often anyone connected to it."""
    with connect(cluster) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute(
            "SELECT datname, sessions FROM pg_stat_database WHERE datname = ANY(%s)",
            (list(names),),
        ).fetchall()
    return {str(name): int(str(count)) for name, count in rows}


def all_visited_since(
    cluster: ThrowawayPostgres, before: Mapping[str, int], timeout: float = 10.0
) -> bool:
    """Whether every database in ``before`` got a new session since (statistics lag a little)."""
    deadline = time.monotonic() + timeout
    while True:
        now = sessions(cluster, list(before))
        if all(now.get(name, 0) > count for name, count in before.items()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def take_schema_away(cluster: ThrowawayPostgres, database: str) -> None:
    """Drift: schema public no longer belongs to the database owner, so the role loses CREATE."""
    with connect(cluster, database) as conn:
        conn.execute(
            sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(cluster.superuser))
        )


def can_create_in_public(cluster: ThrowawayPostgres, database: str, role: str) -> bool:
    with connect(cluster, database) as conn:
        row = conn.execute(
            "SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,)
        ).fetchone()
    return bool(row and row[0])
