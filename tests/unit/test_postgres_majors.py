"""The helper that fetches PostgreSQL majors: it never runs what someone else planted."""

from __future__ import annotations

import os
from pathlib import Path

import postgres_majors
import pytest


def test_a_cache_others_may_write_to_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("PGINIT_PG_CACHE", str(shared))
    with pytest.raises(SystemExit, match="is not this user's alone"):
        postgres_majors.cache_dir()

    shared.chmod(0o755)
    assert postgres_majors.cache_dir() == shared

    elsewhere = tmp_path / "link"
    elsewhere.symlink_to(shared)
    monkeypatch.setenv("PGINIT_PG_CACHE", str(elsewhere))
    with pytest.raises(SystemExit, match="is not this user's alone"):
        postgres_majors.cache_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another user")
def test_a_cache_owned_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    monkeypatch.setenv("PGINIT_PG_CACHE", str(theirs))
    with pytest.raises(SystemExit, match="owner uid 65534"):
        postgres_majors.cache_dir()


def test_matrix_majors_are_checked_before_anything_is_fetched(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert postgres_majors.main(["matrix", "16,x"]) == 2
    assert 'MAJORS is a list of 14 to 18, e.g. MAJORS="16 17"' in capsys.readouterr().err
    assert postgres_majors.main(["matrix"]) == 2
