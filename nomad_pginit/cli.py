"""The command line: parse arguments, configure logging once, map errors to exit codes.

This is the only place that turns the project's errors into exit codes and
one readable line; anything else is a bug and says so.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from nomad_pginit import __version__
from nomad_pginit.commands import (
    add_service,
    check,
    deploy,
    options,
    plan,
    render,
    run,
    snippet,
    verify,
)
from nomad_pginit.errors import ExitCode, PginitError
from nomad_pginit.report import configure_logging, log_error_summary

log = logging.getLogger("nomad_pginit")

COMMANDS = (
    run,
    plan,
    render,
    snippet,
    add_service,
    deploy,
    verify,
    check,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nomad-pginit",
        description=(
            "Provision PostgreSQL databases and login roles for the services of a Nomad "
            "cluster, with their passwords in Vault."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = options.common_parser()
    for command in COMMANDS:
        command.register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad usage, as argparse users expect
    configure_logging(args.log_format)
    try:
        code: int = args.handler(args)
    except PginitError as err:
        log.error("%s", err)
        if getattr(args, "summary_on_error", False):
            # The task's log always ends with the line operators grep for.
            log_error_summary(err, log)
        return int(err.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception:
        log.critical(
            "unexpected error: this is a bug in nomad-pginit %s; please report it with "
            "the traceback below",
            __version__,
            exc_info=True,
        )
        return int(ExitCode.SERVICE_FAILED)
    return code


if __name__ == "__main__":
    sys.exit(main())
