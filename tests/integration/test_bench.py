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

from bench import scaling, table
from bench.machine import Machine
from bench.measure import (
    COLD,
    ROTATE,
    TOGETHER,
    WAITING,
    WARM,
    WARM_RESTART,
    ReadinessSample,
    Results,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def sample(latency_ms: float) -> ReadinessSample:
    return ReadinessSample(latency_ms, latency_ms, latency_ms, 35.0)


def made_up_results(
    *, warm: float, together_ms: float, waiting_ms: float, warm_cpu: float = 1.5
) -> Results:
    results = Results(n=1000, repeat=1)
    for scenario, ours, reference in (
        (COLD, 12.0, 36.0),
        (WARM, warm, 16.0),
        (WARM_RESTART, warm + 1.0, 18.0),
        (ROTATE, 3.0, 16.0),
    ):
        results.ours[scenario].append(ours)
        results.reference[scenario].append(reference)
        results.peak_rss_kib[scenario].append(56_000)
        results.cpu_seconds[scenario].append(warm_cpu)
    results.floor.append(14.0)
    results.vault.append(1.1)
    # Floor sums: 1.1 + 1.2 + 0.9 = 3.2 s warm, 1.1 + 2.2 + 0.9 = 4.2 s after a restart.
    results.floor_logins.append(1.2)
    results.floor_logins_restart.append(2.2)
    results.floor_pbkdf2.append(0.9)
    results.pbkdf2_cpu_per_check.append(0.0008)  # 0.8 s of the warm run's CPU
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
    results = made_up_results(warm=3.8, together_ms=230.0, waiting_ms=40.0)
    verdicts = table.targets(results, table.Figures.of(results))
    assert {key: target.result for key, target in verdicts.items()} == {
        COLD: "PASS",  # 12 s against a 14 s floor
        WARM: "PASS",  # 3.8 s against a 3.2 s floor sum: 1.19x
        WARM_RESTART: "PASS",  # 4.8 s against 4.2 s: 1.14x
        "cpu": "PASS",  # (1.5 s - 1000 x 0.8 ms) / 1000 = 0.7 ms
        "vault": "PASS",
        "memory": "PASS*",  # defined at N=5000
        "readiness": "PASS",  # the waiting loop's figure
    }
    slow = made_up_results(warm=4.5, together_ms=230.0, waiting_ms=150.0, warm_cpu=3.0)
    verdicts = table.targets(slow, table.Figures.of(slow))
    assert verdicts[WARM].result == "MISS"  # 4.5 / 3.2 = 1.41x
    assert verdicts[WARM_RESTART].result == "MISS"  # 5.5 / 4.2 = 1.31x
    assert verdicts["cpu"].result == "MISS"  # 2.2 ms
    assert verdicts["readiness"].result == "MISS"


def test_scaling_judges_linearity_and_draws(tmp_path: Path) -> None:
    def figures(n: int, per_service: float) -> table.Figures:
        results = made_up_results(warm=per_service * n, together_ms=1.0, waiting_ms=1.0)
        results.n = n
        for runs in (results.ours, results.reference):
            for scenario in runs:
                runs[scenario] = [per_service * n]
        return table.Figures.of(results)

    linear = {n: figures(n, 0.004) for n in (10, 500, 5000)}
    ratios = scaling.linearity(linear)
    assert ratios is not None
    assert all(abs(ratio - 1.0) < 1e-9 for ratio in ratios.values())
    worse = {**linear, 5000: figures(5000, 0.006)}
    text = scaling.render(worse, MACHINE)
    assert "one more service at N=5000 / at N=500 = 1.50x" in text
    assert "MISS" in text
    assert scaling.linearity({10: linear[10], 100: figures(100, 0.004)}) is None
    plot = tmp_path / "scaling.png"
    scaling.plot(linear, MACHINE, plot)
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_warm_without_every_schema_checked_is_a_miss() -> None:
    results = made_up_results(warm=3.0, together_ms=230.0, waiting_ms=40.0)
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
    assert set(document["targets"]) == {
        COLD,
        WARM,
        WARM_RESTART,
        "cpu",
        "vault",
        "memory",
        "readiness",
    }
    samples = document["samples"]
    # What the figures stand on: the runs did what they claim.
    assert samples["warm_visited_every_database"] == [True, True]  # warm, after a restart
    assert samples["rotation_applied"] == [True]
    assert samples["drift_repaired"] is True
    for floor in ("floor_logins", "floor_logins_restart", "floor_pbkdf2"):
        assert len(samples[floor]) == 1
    for scenario in (COLD, WARM, WARM_RESTART, ROTATE):
        assert len(samples["ours"][scenario]) == 1
        assert samples["cpu_seconds"][scenario][0] > 0
        assert len(samples["reference"][scenario]) == 1
    assert all(len(samples["readiness"][mode]) == 1 for mode in (TOGETHER, WAITING))
