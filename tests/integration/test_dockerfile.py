"""The init-databases task's image: hadolint, and what the Nomad job relies on.

These tests read the Dockerfile the way the build would; test_image.py builds
it with buildah and runs the image.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
ROOT_USERS = {"root", "0"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    argument: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, argument = (pending + line).partition(" ")
        result.append(Instruction(keyword.upper(), argument.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return result


def stages(parsed: list[Instruction]) -> list[list[Instruction]]:
    """The build stages, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in parsed:
        if instruction.keyword == "FROM":
            result.append([])
        assert result, f"{instruction.keyword} before the first FROM"
        result[-1].append(instruction)
    return result


@pytest.fixture(scope="module")
def parsed() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), (
        f"{hadolint} is missing: install the dev dependencies (pip install -e '.[dev]')"
    )
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_with_a_slim_final_stage(parsed: list[Instruction]) -> None:
    built = stages(parsed)
    assert len(built) >= 2
    builder, final = built[0], built[-1]
    assert builder[0].argument.lower().endswith(" as builder")
    assert final[0].argument == "python:3.11-slim"
    # The builder makes a wheel of this project; the final stage installs only wheels.
    assert any(i.keyword == "RUN" and "pip wheel" in i.argument for i in builder)
    final_text = " ".join(i.argument for i in final)
    assert "from=builder" in final_text
    assert ".whl" in final_text
    # Nothing from the build context: no source tree, no stray file with a secret.
    assert not any(i.keyword in ("COPY", "ADD") and "--from=" not in i.argument for i in final)
    for tool in ("gcc", "build-essential", "apt-get install"):
        assert tool not in final_text


def test_final_user_is_not_root(parsed: list[Instruction]) -> None:
    users = [i.argument for i in stages(parsed)[-1] if i.keyword == "USER"]
    assert users, "the final stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user not in ROOT_USERS


def test_entrypoint_runs_nomad_pginit(parsed: list[Instruction]) -> None:
    final = stages(parsed)[-1]
    (entrypoint,) = [i.argument for i in final if i.keyword == "ENTRYPOINT"]
    (command,) = [i.argument for i in final if i.keyword == "CMD"]
    assert json.loads(entrypoint) == ["nomad-pginit"]
    assert json.loads(command) == ["run"]


def test_the_image_leaves_the_services_file_to_its_deployment(parsed: list[Instruction]) -> None:
    """The Nomad job sets PGINIT_CONFIG; Compose and Kubernetes set CONFIG_PATH, which an
    image default for PGINIT_CONFIG would silently override."""
    env: dict[str, str] = {}
    for instruction in stages(parsed)[-1]:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.argument):
                key, _, value = word.partition("=")
                env[key] = value
    assert "PGINIT_CONFIG" not in env
    assert "CONFIG_PATH" not in env
    job = (ROOT / "jobs/services/databases/postgresql/postgresql.nomad.hcl").read_text(
        encoding="utf-8"
    )
    assert 'PGINIT_CONFIG = "/local/pginit.toml"' in job


def test_no_secret_goes_into_the_image(parsed: list[Instruction]) -> None:
    for instruction in parsed:
        if instruction.keyword in ("ENV", "ARG"):
            upper = instruction.argument.upper()
            for word in ("PASSWORD", "TOKEN", "SECRET"):
                assert word not in upper, instruction


def test_dockerignore_keeps_the_context_to_what_the_build_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!nomad_pginit/"} <= set(patterns)
