"""`make demo` keeps working: it runs the task of the committed job twice."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import tool_env

ROOT = Path(__file__).resolve().parents[2]


def test_demo_provisions_then_finds_nothing_to_do() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples/demo.py")],
        env=tool_env(None),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Which PostgreSQL, in one line: version, path, and why that one.
    assert re.search(
        r"^postgresql: PostgreSQL 1[4-8]\.\d+ from /\S+ \(.+\), on 127", result.stdout, re.M
    )
    assert "summary: ok: 7 services in sync (7 created, 0 unchanged)" in result.stdout
    assert "summary: ok: 7 services in sync (7 unchanged)" in result.stdout
    assert "connected as gitea to database gitea" in result.stdout
    assert result.stdout.rstrip().endswith("demo succeeded")
