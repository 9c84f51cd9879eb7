"""How cost grows with the work: the whole benchmark at several N (``--scaling``), one
table of time per run and per service, the linearity target, and a plot (matplotlib,
a bench-only dependency) of time per run against N."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from bench.machine import Machine
from bench.measure import COLD, ROTATE, WARM, WARM_RESTART, Results
from bench.table import MEMORY_MB, MEMORY_N, Figures, as_json

DEFAULT_NS: Final = (10, 100, 500, 1000, 5000)
# Linear: no step costs more per service at the largest N than at this one, within
# what a shared machine's noise allows.
LINEAR_FROM_N: Final = 500
LINEAR_TOLERANCE: Final = 1.10

# (label, figure of a Figures) for the table and the plot.
_SERIES: Final[tuple[tuple[str, Callable[[Figures], float]], ...]] = (
    ("ours cold", lambda f: f.ours[COLD]),
    ("ours warm", lambda f: f.ours[WARM]),
    ("ours warm after restart", lambda f: f.ours[WARM_RESTART]),
    ("ours rotate", lambda f: f.ours[ROTATE]),
    ("script cold", lambda f: f.reference[COLD]),
    ("script warm", lambda f: f.reference[WARM]),
    ("script warm after restart", lambda f: f.reference[WARM_RESTART]),
    ("floor: CREATE DATABASE", lambda f: f.floor),
    ("floor sum, warm", lambda f: f.floor_sum),
    ("floor sum, after restart", lambda f: f.floor_sum_restart),
)
_OUR_STEPS: Final = ("ours cold", "ours warm", "ours warm after restart", "ours rotate")


def parse_ns(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        values = ()
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(
            f"takes numbers of services, 1 or more, separated by commas, not {text!r}"
        )
    return values


def linearity(by_n: dict[int, Figures]) -> dict[str, float] | None:
    """Per step, what one more service costs at the largest N over what it costs at
    LINEAR_FROM_N (or the smallest N above it): the time per run less the run at the
    smallest N (start-up, which any N pays once), per service beyond it. None when the
    run lacks an N below LINEAR_FROM_N and two at or above it."""
    ns = sorted(by_n)
    base = next((n for n in ns if n >= LINEAR_FROM_N), None)
    start = ns[0]
    if base is None or base == ns[-1] or start >= base:
        return None
    top = ns[-1]

    def marginal(figure: Callable[[Figures], float], n: int) -> float:
        return (figure(by_n[n]) - figure(by_n[start])) / (n - start)

    return {
        label: marginal(figure, top) / marginal(figure, base)
        for label, figure in _SERIES
        if label in _OUR_STEPS
    }


def render(by_n: dict[int, Figures], machine: Machine) -> str:
    ns = sorted(by_n)
    lines = [
        f"nomad-pginit benchmark, scaling: N = {', '.join(map(str, ns))}",
        *machine.header(),
        "",
        "time per run (s), and per service (ms)",
    ]
    width = max(len(label) for label, _ in _SERIES)
    header = "".join(f"{f'N={n}':>22}" for n in ns)
    lines.append(" " * width + header)
    for label, figure in _SERIES:
        cells = "".join(
            f"{figure(by_n[n]):>11.2f} s {figure(by_n[n]) / n * 1000:>6.2f} ms" for n in ns
        )
        lines.append(label.ljust(width) + cells)
    ratios = linearity(by_n)
    lines.append("")
    if ratios is None:
        lines.append(
            f"linearity: needs a small N, N={LINEAR_FROM_N} (or more) and a larger N: not judged"
        )
    else:
        base = next(n for n in ns if n >= LINEAR_FROM_N)
        for label, ratio in ratios.items():
            verdict = "PASS" if ratio <= LINEAR_TOLERANCE else "MISS"
            lines.append(
                f"linear: {label}: one more service at N={ns[-1]} / at N={base} = {ratio:.2f}x "
                f"(target <= {LINEAR_TOLERANCE:g}x, the noise allowed)  {verdict}"
            )
    if MEMORY_N in by_n:
        peak = by_n[MEMORY_N].peak_rss_mb
        verdict = "PASS" if peak < MEMORY_MB else "MISS"
        lines.append(
            f"memory: peak RSS at N={MEMORY_N}: {peak:.1f} MB (target < {MEMORY_MB:g} MB)  "
            f"{verdict}"
        )
    return "\n".join(lines)


def document(
    results: dict[int, Results], machine: Machine, warnings: Sequence[str] = ()
) -> dict[str, object]:
    by_n = {n: Figures.of(r) for n, r in results.items()}
    return {
        "ns": sorted(results),
        "linearity": linearity(by_n),
        "per_n": {str(n): as_json(r, machine, warnings) for n, r in sorted(results.items())},
    }


def plot(by_n: dict[int, Figures], machine: Machine, path: Path) -> None:
    """Time per run against N, both axes logarithmic: a line of slope 1 is linear cost."""
    # Imported here, after every measurement: the bench process stays small while it
    # starts the tool (a fork counts the parent's memory in the child's ru_maxrss).
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")  # no display: the plot goes to a file
    from matplotlib import pyplot  # noqa: PLC0415

    ns = sorted(by_n)
    figure, axes = pyplot.subplots(figsize=(9, 6), dpi=110)
    styles: dict[str, dict[str, str | float]] = {
        "ours": {"linestyle": "-", "linewidth": 2.2},
        "script": {"linestyle": "--", "linewidth": 1.5},
        "floor": {"linestyle": ":", "linewidth": 1.8},
    }
    for label, value in _SERIES:
        if label == "ours rotate":
            continue  # as warm, one password more: it would hide the warm line
        kind = label.split()[0].rstrip(":")
        style = styles[kind]
        axes.plot(
            ns,
            [value(by_n[n]) for n in ns],
            marker="o",
            label=label,
            linestyle=str(style["linestyle"]),
            linewidth=float(style["linewidth"]),
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("N services")
    axes.set_ylabel("seconds per run")
    axes.set_title("nomad-pginit run against the psql script and the floors")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.text(
        0.01, 0.01, f"{machine.cpu}, {machine.cores} cores; {machine.postgresql}", fontsize=7
    )
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
