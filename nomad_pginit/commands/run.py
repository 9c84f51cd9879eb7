"""``nomad-pginit run``: the init-databases task itself."""

from __future__ import annotations

import argparse
import logging
import os

from nomad_pginit.commands import options
from nomad_pginit.provision import reconcile
from nomad_pginit.report import log_summary

log = logging.getLogger("nomad_pginit")


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "run",
        parents=[common],
        help="create or repair every service's role, database and privileges",
        description=(
            "Wait for PostgreSQL, read each service's password from Vault, and create or "
            "repair its login role, database and privileges. Exit codes: 0 every service in "
            "sync, 1 a service failed, 2 invalid configuration, 3 PostgreSQL not ready or the "
            "admin cannot log in, 4 Vault unreachable or the token rejected."
        ),
    )
    options.add_wait_timeout(parser)
    parser.add_argument(
        "--disable-removed",
        action="store_true",
        help="set NOLOGIN on roles that nomad-pginit created for services no longer in the "
        "file (nothing is ever dropped)",
    )
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    environ = os.environ
    spec = options.load_spec(args, environ)
    timeout = options.wait_timeout(args, environ)
    log.info("nomad-pginit: %d services in %s", len(spec.services), spec.source)
    outcome = reconcile(
        spec,
        wait_timeout=timeout,
        apply=True,
        disable_removed=args.disable_removed,
        environ=environ,
    )
    if outcome.fatal is not None:
        log.error("%s", outcome.fatal)
    log_summary(outcome, log)
    return int(outcome.exit_code)
