"""What the figures were measured on: CPU, cores, memory, and the software's versions."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nomad_pginit
from bench import reference
from nomad_pginit import __version__
from sandbox import find_bao, find_pg_bindir


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    usable_cores: int
    memory_gib: float
    kernel: str
    postgresql: str
    psql: str
    python: str
    openbao: str
    nomad_pginit: str
    # A digest of the package's source, to tell which code was measured (the version
    # number does not change with every edit).
    source: str
    # Where the clusters' data directories were, and what that means for the figures.
    storage: str

    def header(self) -> list[str]:
        return [
            f"machine:  {self.cpu}, {self.cores} cores ({self.usable_cores} usable), "
            f"{self.memory_gib:.1f} GiB RAM, Linux {self.kernel}",
            f"software: {self.postgresql}; {self.psql}; Python {self.python}; {self.openbao}; "
            f"nomad-pginit {self.nomad_pginit} (source {self.source})",
            f"data:     {self.storage}",
        ]


def source_digest() -> str:
    """sha256 over nomad_pginit's .py files (paths and contents), shortened."""
    root = Path(nomad_pginit.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _first_line(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return "unknown"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def describe(storage: str) -> Machine:
    postgres = _first_line([str(find_pg_bindir() / "postgres"), "--version"])
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 0,
        usable_cores=len(os.sched_getaffinity(0)),
        memory_gib=_memory_gib(),
        kernel=platform.release(),
        # "postgres (PostgreSQL) 15.18 (Debian ...)" -> "PostgreSQL 15.18 (Debian ...)"
        postgresql="PostgreSQL " + postgres.removeprefix("postgres (PostgreSQL)").strip(),
        psql="psql "
        + reference.version(reference.find_psql()).removeprefix("psql (PostgreSQL)").strip(),
        python=platform.python_version(),
        openbao=_first_line([str(find_bao()), "version"]).split(" (")[0],
        nomad_pginit=__version__,
        source=source_digest(),
        storage=storage,
    )
