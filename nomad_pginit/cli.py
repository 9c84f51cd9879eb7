"""The command line: parse arguments, configure logging once, map errors to exit codes.

This is the only place that turns the project's errors into exit codes and
one readable line; anything else is a bug and says so.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Final

from nomad_pginit import __version__, stopping
from nomad_pginit.commands import options
from nomad_pginit.errors import ExitCode, PginitError
from nomad_pginit.report import configure_logging, log_error_summary

log = logging.getLogger("nomad_pginit")

# Command name -> its module under nomad_pginit.commands, in --help order. A
# module is imported only when its command runs (or for the full --help), so
# the init task does not pay for Jinja2 and python-nomad at every start. Each
# module has HELP, DESCRIPTION, add_arguments(parser) and main(args) -> exit code.
COMMANDS: Final = {
    "run": "run",
    "plan": "plan",
    "render": "render",
    "snippet": "snippet",
    "add-service": "add_service",
    "publish": "publish",
    "deploy": "deploy",
    "verify": "verify",
    "check": "check",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with ``only`` that one (same behaviour, faster)."""
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
    for name, module_name in COMMANDS.items():
        if only is None or name == only:
            module = importlib.import_module(f"nomad_pginit.commands.{module_name}")
            command = subparsers.add_parser(
                name, parents=[common], help=module.HELP, description=module.DESCRIPTION
            )
            module.add_arguments(command)
            command.set_defaults(
                handler=module.main,
                summary_on_error=getattr(module, "SUMMARY_ON_ERROR", False),
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = arguments[0] if arguments and arguments[0] in COMMANDS else None
    parser = build_parser(only=command)
    args = parser.parse_args(arguments)  # exits 2 on bad usage, as argparse users expect
    # A command printing one JSON document (--json) has stdout for it alone.
    configure_logging(args.log_format, sys.stderr if getattr(args, "json", False) else None)
    try:
        code: int = args.handler(args)
    except PginitError as err:
        log.error("%s", err)
        if args.summary_on_error:
            # The task's log always ends with the line operators grep for.
            log_error_summary(err, log)
        return stopping.end(int(err.exit_code))
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
