"""The targets, the one table (medians, ratios, PASS/MISS) and the same as JSON."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from bench.machine import Machine
from bench.measure import (
    COLD,
    ROTATE,
    SCENARIOS,
    TOGETHER,
    WAITING,
    WARM,
    WARM_RESTART,
    Results,
)

# The targets.
TARGET_N = 1000  # where the warm and Vault targets are defined
WARM_OVER_FLOOR = 1.25  # warm, after a restart or not: at most this many times the floor sum
COLD_OVER_FLOOR = 1.15  # cold: at most this many times the bare CREATE DATABASE floor
READINESS_MS = 100.0  # the first statement within this long of the server accepting
VAULT_SECONDS_PER_1000 = 2.0  # 1000 Vault reads in under this
# Our own CPU per service in a warm run, PBKDF2 left out: half the 2.5 ms measured before
# the work on it (2026-11-22, N=1000 on this machine).
OWN_CPU_MS_BEFORE = 2.5
OWN_CPU_MS = OWN_CPU_MS_BEFORE / 2
MEMORY_N = 5000  # where the memory target is defined
MEMORY_MB = 150.0  # peak RSS under this, in MB (10^6 bytes)

_SCENARIO_LABELS = {
    COLD: "cold: create all",
    WARM: "warm: nothing to do",
    WARM_RESTART: "warm, right after a restart",
    ROTATE: "rotate: 1 password",
}
_READINESS_LABELS = {TOGETHER: "readiness, started together", WAITING: "readiness, tool waiting"}
_COLUMNS = ("", "nomad-pginit", "reference", "ref/ours", "floor", "ours/floor", "target", "result")
_RIGHT_ALIGNED = frozenset({1, 2, 3, 4, 5})
_WIDTH = 100


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def _ratio(value: float) -> str:
    return f"{value:.2f}x"


@dataclass(frozen=True)
class Figures:
    """Medians and ratios: what the table shows, as numbers."""

    ours: dict[str, float]
    reference: dict[str, float]
    floor: float
    # reference / ours: how many times faster we are.
    speedup: dict[str, float]
    # ours / floor: how far above the bare CREATE DATABASE statements.
    over_floor: dict[str, float]
    reference_over_floor: float
    vault: float
    vault_per_1000: float
    readiness_ms: dict[str, float]
    readiness_by_ping_ms: dict[str, float]
    readiness_by_server_log_ms: dict[str, float]
    tool_start_to_accepting_ms: dict[str, float]
    peak_rss_mb: float
    grants_checked: bool
    # The floors of a warm run (bench/floors.py), and their sums with the Vault reads.
    floor_logins: float
    floor_logins_restart: float
    floor_pbkdf2: float
    floor_sum: float
    floor_sum_restart: float
    # Our process's CPU per service in a warm run, ms, without the PBKDF2 checks.
    own_cpu_ms: float

    @classmethod
    def of(cls, results: Results) -> Figures:
        ours = {s: _median(results.ours[s]) for s in SCENARIOS}
        ref = {s: _median(results.reference[s]) for s in SCENARIOS}
        floor = _median(results.floor)
        vault = _median(results.vault)
        peak_kib = max((k for runs in results.peak_rss_kib.values() for k in runs), default=0)
        samples = results.readiness
        logins = _median(results.floor_logins)
        logins_restart = _median(results.floor_logins_restart)
        pbkdf2 = _median(results.floor_pbkdf2)
        floor_sum = logins + pbkdf2 + vault
        floor_sum_restart = logins_restart + pbkdf2 + vault
        per_check = _median(results.pbkdf2_cpu_per_check)
        cpu_warm = _median(results.cpu_seconds[WARM])
        # Each scenario against its own floor: a rotation has none.
        over = {
            COLD: ours[COLD] / floor,
            WARM: ours[WARM] / floor_sum,
            WARM_RESTART: ours[WARM_RESTART] / floor_sum_restart,
        }
        return cls(
            ours=ours,
            reference=ref,
            floor=floor,
            speedup={s: ref[s] / ours[s] for s in SCENARIOS},
            over_floor=over,
            reference_over_floor=ref[COLD] / floor,
            vault=vault,
            vault_per_1000=vault * TARGET_N / results.n,
            readiness_ms={m: _median([x.latency_ms for x in samples[m]]) for m in samples},
            readiness_by_ping_ms={
                m: _median([x.latency_by_ping_ms for x in samples[m]]) for m in samples
            },
            readiness_by_server_log_ms={
                m: _median([x.latency_by_server_log_ms for x in samples[m]]) for m in samples
            },
            tool_start_to_accepting_ms={
                m: _median([x.tool_start_to_accepting_ms for x in samples[m]]) for m in samples
            },
            peak_rss_mb=peak_kib * 1024 / 1e6,
            grants_checked=all(results.warm_visited_every_database)
            and results.drift_repaired is not False,
            floor_logins=logins,
            floor_logins_restart=logins_restart,
            floor_pbkdf2=pbkdf2,
            floor_sum=floor_sum,
            floor_sum_restart=floor_sum_restart,
            own_cpu_ms=(cpu_warm - per_check * results.n) / results.n * 1000,
        )


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: str
    passed: bool
    # False when the target is defined at N=1000 and this run used another N.
    at_defined_n: bool = True

    @property
    def result(self) -> str:
        return ("PASS" if self.passed else "MISS") + ("" if self.at_defined_n else "*")


def targets(results: Results, figures: Figures) -> dict[str, Target]:
    at_n = results.n == TARGET_N
    found = {
        COLD: Target(
            "cold",
            f"<= {COLD_OVER_FLOOR:g}x floor",
            _ratio(figures.over_floor[COLD]),
            figures.over_floor[COLD] <= COLD_OVER_FLOOR,
        ),
        WARM: Target(
            "warm",
            f"<= {WARM_OVER_FLOOR:g}x floor sum",
            _ratio(figures.over_floor[WARM]),
            figures.over_floor[WARM] <= WARM_OVER_FLOOR and figures.grants_checked,
            at_n,
        ),
        WARM_RESTART: Target(
            "warm after a restart",
            f"<= {WARM_OVER_FLOOR:g}x floor sum",
            _ratio(figures.over_floor[WARM_RESTART]),
            figures.over_floor[WARM_RESTART] <= WARM_OVER_FLOOR,
            at_n,
        ),
        "cpu": Target(
            "own CPU per service",
            f"<= {OWN_CPU_MS:g} ms (half of {OWN_CPU_MS_BEFORE:g})",
            f"{figures.own_cpu_ms:.2f} ms",
            figures.own_cpu_ms <= OWN_CPU_MS,
            at_n,
        ),
        "vault": Target(
            "vault",
            f"{TARGET_N} reads < {VAULT_SECONDS_PER_1000:g} s",
            f"{figures.vault_per_1000:.2f} s per {TARGET_N}",
            figures.vault_per_1000 < VAULT_SECONDS_PER_1000,
            at_n,
        ),
        "memory": Target(
            "memory",
            f"< {MEMORY_MB:g} MB at N={MEMORY_N}",
            f"{figures.peak_rss_mb:.1f} MB",
            figures.peak_rss_mb < MEMORY_MB,
            results.n == MEMORY_N,
        ),
    }
    # "Noticed within 100 ms of accepting" is the waiting loop's figure. Started
    # together, a server that accepts before the tool has started measures the
    # tool's start-up instead: shown, with no target of its own.
    found["readiness"] = Target(
        "readiness",
        f"<= {READINESS_MS:g} ms",
        f"{figures.readiness_ms[WAITING]:.0f} ms",
        figures.readiness_ms[WAITING] <= READINESS_MS,
    )
    return found


def _rows(results: Results, figures: Figures, goals: dict[str, Target]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for scenario in SCENARIOS:
        goal = goals.get(scenario)
        reference = _seconds(figures.reference[scenario])
        if scenario == ROTATE:
            reference += " (!)"  # runs, but does not apply the new password
        floor_figure = {
            COLD: figures.floor,
            WARM: figures.floor_sum,
            WARM_RESTART: figures.floor_sum_restart,
        }.get(scenario)
        rows.append(
            (
                _SCENARIO_LABELS[scenario],
                _seconds(figures.ours[scenario]),
                reference,
                _ratio(figures.speedup[scenario]),
                _seconds(floor_figure) if floor_figure is not None else "",
                _ratio(figures.over_floor[scenario]) if floor_figure is not None else "",
                goal.goal if goal else "",
                goal.result if goal else "",
            )
        )
    n = results.n
    for label, value in (
        (f"floor: {n} logins, warm", figures.floor_logins),
        (f"floor: {n} logins, after restart", figures.floor_logins_restart),
        (f"floor: {n} PBKDF2 checks, all cores", figures.floor_pbkdf2),
    ):
        rows.append((label, "", "", "", _seconds(value), "", "", ""))
    cpu = goals["cpu"]
    rows.append(("own CPU per service, warm", cpu.measured, "", "", "", "", cpu.goal, cpu.result))
    vault = goals["vault"]
    vault_figure = _seconds(figures.vault)
    if results.n != TARGET_N:
        vault_figure += f" ({_seconds(figures.vault_per_1000)}/{TARGET_N})"
    rows.append(
        (f"Vault: {results.n} reads", vault_figure, "", "", "", "", vault.goal, vault.result)
    )
    readiness = goals["readiness"]
    rows.append(
        (
            _READINESS_LABELS[TOGETHER],
            f"{figures.readiness_ms[TOGETHER]:.0f} ms",
            "",
            "",
            "",
            "",
            "start-up, see notes",
            "",
        )
    )
    rows.append(
        (
            _READINESS_LABELS[WAITING],
            readiness.measured,
            "",
            "",
            "",
            "",
            readiness.goal,
            readiness.result,
        )
    )
    memory = goals["memory"]
    rows.append(("peak memory (RSS)", memory.measured, "", "", "", "", memory.goal, memory.result))
    return rows


def _format_table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in _RIGHT_ALIGNED else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return [line(_COLUMNS), rule, *(line(row) for row in rows)]


def _notes(results: Results, figures: Figures) -> list[tuple[str, str]]:
    n, repeat = results.n, results.repeat
    applied = sum(results.reference_rotation_applied)
    visited = sum(results.warm_visited_every_database)
    drift = ", ".join(results.drift_databases)
    drift_result = {True: "restored in all", False: "NOT restored", None: "not checked"}[
        results.drift_repaired
    ]
    notes = [
        (
            "nomad-pginit",
            "wall time of the `nomad-pginit run` process, start to exit, as an operator "
            "sees it: Python start-up and reading the N passwords from Vault included.",
        ),
        (
            "reference",
            "wall time of `psql -f` running the seed's 'Adding a New Service' block for each "
            "service (\\c postgres, CREATE DATABASE ... \\gexec, the DO block, GRANT, \\c <db>, "
            "GRANT ON SCHEMA public), over TCP with scram-sha-256; rendering the script from "
            "Vault (consul-template's job, before the task starts) is not timed.",
        ),
        (
            "floor",
            "N bare CREATE DATABASE statements on one psycopg connection (autocommit); "
            "connecting not timed. The reference's cold run is "
            f"{figures.reference_over_floor:.2f}x the floor.",
        ),
        (
            "floor sum",
            "what a warm run cannot do without, measured in the same repetition: N logins "
            "as the admin, one per database, each running one statement, on as many threads "
            "as nomad-pginit's workers, with the admin's SCRAM keys where libpq takes them "
            f"({_seconds(figures.floor_logins)} warm, {_seconds(figures.floor_logins_restart)} "
            "right after a restart); N PBKDF2 checks of the stored verifiers on all cores "
            f"({_seconds(figures.floor_pbkdf2)}); and the N Vault reads below "
            f"({_seconds(figures.vault)}). Warm rows compare with their sum. After a restart: "
            "PostgreSQL stopped and started (pg_ctl), as a redeploy in Nomad does, so its "
            "caches are empty and its relation cache init files gone.",
        ),
        (
            "own CPU",
            "user + system CPU of our process in the warm run (wait4), minus N times the "
            "CPU one PBKDF2 check takes on one core, divided by N: Python start-up included.",
        ),
        (
            "ratios",
            "ref/ours = reference time / our time (how many times faster we are); "
            "ours/floor = our time / the floor (cold: the CREATE DATABASE floor; warm: the "
            "floor sum).",
        ),
        (
            "runs",
            f"median of {repeat}; each repetition interleaves floor, ours, reference, Vault, "
            "readiness, each of the first three on a fresh cluster (initdb --auth=scram-sha-256, "
            "127.0.0.1, fsync/full_page_writes/synchronous_commit off as the sandbox sets "
            "them). cold: nothing exists; warm: the run right after it; warm after a restart: the "
            "same once PostgreSQL restarted; rotate: one password given a new version in "
            "Vault first.",
        ),
        (
            "(!)",
            "the reference does NOT apply a rotation: its DO block only creates a missing "
            f"role. Verified: the new password logged in after {applied} of "
            f"{len(results.reference_rotation_applied)} reference rotate runs, after "
            f"{sum(results.rotation_applied)} of {len(results.rotation_applied)} of ours.",
        ),
        (
            "checks",
            f"ours: cold reported {n} created, warm {n} unchanged, rotate 1 updated. "
            f"Every warm run connected to each of the {n} databases to check its schema "
            f"grants (pg_stat_database.sessions): {visited} of "
            f"{len(results.warm_visited_every_database)}. Drift: schema public taken from "
            f"the owner in {drift}: {drift_result} by the next run.",
        ),
        (
            "Vault",
            "the tool's own code path (passwords.connect_vault, then PasswordReads: "
            "read_password for each service on the tool's pool, as run does it), in-process, "
            "against an "
            "OpenBao dev server.",
        ),
        (
            "readiness",
            "from 'accepting' to the timestamp of the server's first log line with "
            "app=nomad-pginit (log_statement=all, log_line_prefix='%m app=%a ', 1 ms "
            "resolution). 'accepting' is the earlier of the bench's first PQping OK (polled "
            "every 1 ms) and the server's own 'ready to accept connections' line, so that poll "
            "lag never flatters us (from the ping alone: "
            f"{figures.readiness_by_ping_ms[TOGETHER]:.0f} ms / "
            f"{figures.readiness_by_ping_ms[WAITING]:.0f} ms; from the log line alone: "
            f"{figures.readiness_by_server_log_ms[TOGETHER]:.0f} ms / "
            f"{figures.readiness_by_server_log_ms[WAITING]:.0f} ms). Started together: the tool is "
            "launched, then at once the server (pg_ctl start, no wait), as Nomad starts a "
            "poststart task; the server accepted "
            f"{figures.tool_start_to_accepting_ms[TOGETHER]:.0f} ms after the tool was "
            "launched, so this is mostly the tool's own start-up (the Python interpreter and "
            "importing psycopg, some 0.15 s on a 2-core machine, before any probe can be "
            "made): a figure to watch, with no target. Tool waiting: the server is started "
            "only once the tool logs 'waiting for PostgreSQL', which isolates the waiting "
            "loop: that is what the 100 ms target ('readiness noticed') is about.",
        ),
        (
            "memory",
            "peak RSS of the tool process, the highest of all its runs: its VmHWM "
            "(/proc/<pid>/status) read every 50 ms while it runs, its own memory after exec "
            "(wait4's ru_maxrss would also count the bench's, at the fork).",
        ),
        (
            "noise",
            f"load average {results.load_before[0]:.2f} before, {results.load_after[0]:.2f} "
            "after; the machine is shared, so single figures can be off by tens of percent.",
        ),
    ]
    if n != TARGET_N or n != MEMORY_N:
        notes.append(
            (
                "*",
                f"a target defined at another N (N={TARGET_N}; memory at N={MEMORY_N}), "
                f"evaluated at N={n} anyway (the Vault figure extrapolated linearly): a PASS "
                "here does not promise one there. --scaling measures several N.",
            )
        )
    return notes


def render(results: Results, machine: Machine, warnings: Sequence[str] = ()) -> str:
    figures = Figures.of(results)
    goals = targets(results, figures)
    lines = [
        f"nomad-pginit benchmark: N={results.n} services, median of {results.repeat} "
        f"repetition{'s' if results.repeat != 1 else ''}",
        *machine.header(),
        *(f"WARNING:  {warning}" for warning in warnings),
        "",
        *_format_table(_rows(results, figures, goals)),
        "",
    ]
    label_width = max(len(label) for label, _ in _notes(results, figures))
    for label, text in _notes(results, figures):
        lines += textwrap.wrap(
            text,
            width=_WIDTH,
            initial_indent=label.ljust(label_width + 2),
            subsequent_indent=" " * (label_width + 2),
        )
    return "\n".join(lines)


def as_json(results: Results, machine: Machine, warnings: Sequence[str] = ()) -> dict[str, object]:
    figures = Figures.of(results)
    return {
        "machine": asdict(machine),
        "n": results.n,
        "repeat": results.repeat,
        "figures": asdict(figures),
        "targets": {
            key: asdict(target) | {"result": target.result}
            for key, target in targets(results, figures).items()
        },
        "samples": asdict(results),
        "notes": dict(_notes(results, figures)),
        "warnings": list(warnings),
    }
