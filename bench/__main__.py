"""``python -m bench``: measure, then print one table (and optionally write it as JSON)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import machine, table
from bench.lab import BenchError, choose_storage, open_lab
from bench.measure import measure_all
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
        "--tmpdir",
        type=Path,
        metavar="DIR",
        help="where the throwaway clusters live (default: /dev/shm when it is a tmpfs with "
        "room for N databases, else the system's temporary directory)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        if args.n is not None or args.repeat is not None:
            parser.error("--quick sets N and the repetitions itself: drop --n and --repeat")
        args.n, args.repeat = QUICK_N, QUICK_REPEAT
    args.n = args.n or DEFAULT_N
    args.repeat = args.repeat or DEFAULT_REPEAT
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
