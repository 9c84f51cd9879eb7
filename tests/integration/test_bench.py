"""The benchmark program: its verdicts from given figures, and one real smoke run.

No timing is asserted here: the figures below are made up to drive the table's
logic, and the smoke run only has to finish and report what it checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import table
from bench.machine import Machine
from bench.measure import COLD, ROTATE, TOGETHER, WAITING, WARM, ReadinessSample, Results

REPO_ROOT = Path(__file__).resolve().parents[2]


def sample(latency_ms: float) -> ReadinessSample:
    return ReadinessSample(latency_ms, latency_ms, latency_ms, 35.0)


def made_up_results(*, warm: float, together_ms: float, waiting_ms: float) -> Results:
    results = Results(n=1000, repeat=1)
    for scenario, ours, reference in ((COLD, 12.0, 36.0), (WARM, warm, 16.0), (ROTATE, 3.0, 16.0)):
        results.ours[scenario].append(ours)
        results.reference[scenario].append(reference)
        results.peak_rss_kib[scenario].append(56_000)
    results.floor.append(14.0)
    results.vault.append(1.1)
    results.readiness[TOGETHER].append(sample(together_ms))
    results.readiness[WAITING].append(sample(waiting_ms))
    results.warm_visited_every_database.append(True)
    results.rotation_applied.append(True)
    results.reference_rotation_applied.append(False)
    return results


MACHINE = Machine(
    cpu="test CPU",
    cores=2,
    usable_cores=2,
    memory_gib=1.0,
    kernel="6.1",
    postgresql="PostgreSQL 15",
    psql="psql 15",
    python="Python 3.11",
    openbao="OpenBao",
    nomad_pginit="nomad-pginit",
    source="0123456789ab",
    storage="tmpfs",
)


def test_verdicts_follow_the_targets() -> None:
    results = made_up_results(warm=3.0, together_ms=230.0, waiting_ms=40.0)
    verdicts = table.targets(results, table.Figures.of(results))
    assert {key: target.result for key, target in verdicts.items()} == {
        COLD: "PASS",  # 12 s against a 14 s floor
        WARM: "PASS",  # 16 s / 3 s
        "vault": "PASS",
        "memory": "PASS",
        "readiness": "PASS",  # the waiting loop's figure
    }
    slow = made_up_results(warm=4.0, together_ms=230.0, waiting_ms=150.0)
    verdicts = table.targets(slow, table.Figures.of(slow))
    assert verdicts[WARM].result == "MISS"  # 16 s / 4 s = 4x
    assert verdicts["readiness"].result == "MISS"


def test_warm_without_every_schema_checked_is_a_miss() -> None:
    results = made_up_results(warm=1.0, together_ms=230.0, waiting_ms=40.0)
    results.warm_visited_every_database[0] = False
    verdicts = table.targets(results, table.Figures.of(results))
    assert verdicts[WARM].result == "MISS"


def test_table_shows_start_up_without_a_verdict() -> None:
    results = made_up_results(warm=3.0, together_ms=230.0, waiting_ms=40.0)
    text = table.render(results, MACHINE, [])
    together = next(line for line in text.splitlines() if "started together" in line)
    assert "230 ms" in together
    assert "PASS" not in together
    assert "MISS" not in together
    waiting = next(line for line in text.splitlines() if "tool waiting" in line)
    assert waiting.split()[-1] == "PASS"


@pytest.mark.slow
def test_quick_run_measures_everything(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--json",
            str(output),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "nomad-pginit benchmark: N=20 services" in finished.stdout
    document = json.loads(output.read_text(encoding="utf-8"))
    assert set(document["targets"]) == {COLD, WARM, "vault", "memory", "readiness"}
    samples = document["samples"]
    # What the figures stand on: the runs did what they claim.
    assert samples["warm_visited_every_database"] == [True]
    assert samples["rotation_applied"] == [True]
    assert samples["drift_repaired"] is True
    for scenario in (COLD, WARM, ROTATE):
        assert len(samples["ours"][scenario]) == 1
        assert len(samples["reference"][scenario]) == 1
    assert all(len(samples["readiness"][mode]) == 1 for mode in (TOGETHER, WAITING))
