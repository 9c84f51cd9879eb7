"""``nomad-pginit plan``: what ``run`` would change, without changing anything.

It is ``run``'s own code path stopped before apply, so the two cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from typing import Final

from nomad_pginit.commands import options
from nomad_pginit.errors import ExitCode
from nomad_pginit.outcome import Outcome
from nomad_pginit.plan import Action, CreateDatabase
from nomad_pginit.provision import reconcile, warn_inline_passwords
from nomad_pginit.report import log_end
from nomad_pginit.secret import MASK, Secret
from nomad_pginit.stopping import StopRequest

log = logging.getLogger("nomad_pginit")


HELP: Final = "show what run would change, and change nothing"
DESCRIPTION: Final = (
    "Compute the changes that run would make and make none. Exit codes: 0 everything "
    "in sync, 2 changes pending, and otherwise as run (1 a service failed, "
    "3 PostgreSQL, 4 Vault; an invalid services file is also 2 and says so)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_wait_timeout(parser)
    options.add_json(parser, "print the plan as one JSON object on stdout")
    parser.add_argument(
        "--disable-removed",
        action="store_true",
        help="include setting leftover roles NOLOGIN, as run --disable-removed would",
    )


def main(args: argparse.Namespace) -> int:
    environ = os.environ
    spec = options.load_spec(args, environ)
    warn_inline_passwords(spec)
    stop = StopRequest()
    stop.install()
    stop.last_resort(lambda: options.last_words(stop))
    outcome = reconcile(
        spec,
        readiness=options.readiness(args, environ),
        apply=False,
        disable_removed=args.disable_removed,
        environ=environ,
        stop=stop,
    )
    stop.finishing()
    log_end(outcome, log)
    if args.json:
        print(json.dumps(plan_document(outcome), indent=2, ensure_ascii=False))
    if outcome.exit_code != ExitCode.OK:
        return stop.exit_now(int(outcome.exit_code))
    return stop.exit_now(int(ExitCode.CHANGES_PENDING) if outcome.pending else int(ExitCode.OK))


def action_document(action: Action) -> dict[str, object]:
    """An action as JSON: its kind, its fields, and passwords as ******."""
    fields: dict[str, object] = {"action": type(action).__name__}
    for item in dataclasses.fields(action):
        value = getattr(action, item.name)
        if isinstance(value, Secret):
            value = MASK
        elif isinstance(action, CreateDatabase) and item.name == "options":
            value = dict(value)  # {"locale": "C", ...}
        fields[item.name] = value
    fields["description"] = action.describe()
    return fields


def plan_document(outcome: Outcome) -> dict[str, object]:
    return {
        "in_sync": outcome.in_sync,
        "pending": outcome.pending,
        "services": [
            {
                "name": item.service.name,
                "database": item.service.database,
                "databases": list(item.service.databases),
                "user": item.service.user,
                "status": item.status.value,
                "actions": [action_document(action) for action in item.actions],
                # What run will not change, and says so (never pending): a database
                # created otherwise than the file asks, a setting the file does not list.
                "notes": item.notes,
                "error": item.error,
            }
            for item in outcome.services
        ],
        "leftovers": outcome.leftovers,
        "leftover_actions": [action_document(action) for action in outcome.leftover_actions],
    }
