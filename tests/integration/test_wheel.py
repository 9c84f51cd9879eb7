"""The wheel holds the tool and nothing else: no throwaway servers, no tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc")


def test_the_wheel_holds_the_tool_its_templates_and_nothing_else(tmp_path: Path) -> None:
    # What the Dockerfile copies into its builder stage; built there, not in the checkout.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "nomad_pginit", source / "nomad_pginit", ignore=_CACHES)
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("nomad_pginit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    top_levels = {name.split("/")[0] for name in names}
    assert top_levels == {"nomad_pginit", wheel.name.split("-py3")[0] + ".dist-info"}, top_levels
    assert "nomad_pginit/cli.py" in names
    assert "nomad_pginit/py.typed" in names
    templates = [name for name in names if name.startswith("nomad_pginit/templates/")]
    assert templates
    assert all(name.endswith(".j2") for name in templates), templates
    # The demo's, the tests' and the benchmark's servers stay out of what operators install.
    assert not [name for name in names if "sandbox" in name or name.startswith("tests/")]
