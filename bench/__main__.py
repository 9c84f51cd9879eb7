"""``python -m bench``: measure, then print one table (and optionally write it as JSON)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import machine, scaling, table
from bench.lab import BenchError, choose_storage, open_lab
from bench.measure import Results, measure_all
from bench.table import Figures
from sandbox import SandboxError

DEFAULT_N = 200
DEFAULT_REPEAT = 3
QUICK_N = 20
QUICK_REPEAT = 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark nomad-pginit against the seed's psql script and the bare CREATE "
            "DATABASE floor, on throwaway PostgreSQL clusters and an OpenBao dev server."
        ),
    )
    parser.add_argument("--n", type=_positive, help=f"number of services (default: {DEFAULT_N})")
    parser.add_argument(
        "--repeat",
        type=_positive,
        metavar="K",
        help=f"repetitions; the table shows medians (default: {DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: N={QUICK_N}, one repetition",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="run the whole benchmark at several N (--scaling-n) and print how cost grows "
        "(one repetition each unless --repeat)",
    )
    parser.add_argument(
        "--scaling-n",
        type=scaling.parse_ns,
        default=scaling.DEFAULT_NS,
        metavar="N,N,...",
        help="the N of --scaling (default: " + ",".join(map(str, scaling.DEFAULT_NS)) + ")",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PATH",
        help="with --scaling: write the plot of time per run against N here (PNG)",
    )
    parser.add_argument(
        "--tmpdir",
        type=Path,
        metavar="DIR",
        help="where the throwaway clusters live (default: /dev/shm when it is a tmpfs with "
        "room for N databases, else the system's temporary directory)",
    )
    args = parser.parse_args(argv)
    if args.scaling and (args.quick or args.n is not None):
        parser.error("--scaling runs each N of --scaling-n: drop --n and --quick")
    if args.quick:
        if args.n is not None or args.repeat is not None:
            parser.error("--quick sets N and the repetitions itself: drop --n and --repeat")
        args.n, args.repeat = QUICK_N, QUICK_REPEAT
    if not args.scaling and (args.plot is not None or args.scaling_n != scaling.DEFAULT_NS):
        parser.error("--plot and --scaling-n are for --scaling")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install -e '.[bench]' (make bench does)")
    if args.scaling and args.repeat is None:
        args.repeat = 1
    args.n = args.n or DEFAULT_N
    args.repeat = args.repeat or DEFAULT_REPEAT
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scaling:
        return _scaling(args)
    storage = choose_storage(args.n, args.tmpdir)
    # The sandbox makes every server's directory with tempfile.mkdtemp().
    tempfile.tempdir = str(storage.path)
    try:
        host = machine.describe(storage.note)
        _progress(f"benchmark: N={args.n}, {args.repeat} repetition(s); progress on stderr")
        with open_lab(args.n) as lab:
            results = measure_all(lab, args.repeat, _progress)
    except (BenchError, SandboxError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    warnings = []
    if (source := machine.source_digest()) != host.source:
        warnings.append(
            f"nomad_pginit's source changed during the run ({host.source} -> {source}): "
            "the figures mix two versions of the tool; run the benchmark again"
        )
    print(table.render(results, host, warnings))
    if args.json is not None:
        document = table.as_json(results, host, warnings)
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        _progress(f"wrote {args.json}")
    return 0


def _scaling(args: argparse.Namespace) -> int:
    ns: tuple[int, ...] = args.scaling_n
    # One storage for every N (the one the largest fits), so the figures compare.
    storage = choose_storage(max(ns), args.tmpdir)
    tempfile.tempdir = str(storage.path)
    results: dict[int, Results] = {}
    try:
        host = machine.describe(storage.note)
        for n in ns:
            _progress(f"scaling: N={n}, {args.repeat} repetition(s)")
            with open_lab(n) as lab:
                results[n] = measure_all(lab, args.repeat, _progress)
    except (BenchError, SandboxError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    by_n = {n: Figures.of(found) for n, found in results.items()}
    for n in ns:
        print(table.render(results[n], host), end="\n\n")
    print(scaling.render(by_n, host))
    if args.json is not None:
        document = scaling.document(results, host)
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        _progress(f"wrote {args.json}")
    if args.plot is not None:
        scaling.plot(by_n, host, args.plot)
        _progress(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
