"""``nomad-pginit publish``: the services file into the job's Nomad variable (live mode)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Final

from nomad_pginit import render, spec
from nomad_pginit.commands import repository
from nomad_pginit.deploy.publication import publish
from nomad_pginit.nomad import Nomad

log = logging.getLogger("nomad_pginit")


HELP: Final = "write the services file into the job's Nomad variable (live mode)"
DESCRIPTION: Final = (
    "Validate the services file and write it, as the init-databases task sees it, "
    'into the Nomad variable of [job] variable (live mode, [job] mode = "live"): '
    "once Nomad's client has rendered it into the sidecar's file (its template wait, "
    "5 s by default) the sidecar applies it, and PostgreSQL is not restarted. "
    "Services the variable holds and the file does not are removed only with --prune. "
    "The write is a "
    "check-and-set on the variable's ModifyIndex: a change by someone else in between "
    "is refused, never overwritten. The same content writes nothing. Reads NOMAD_ADDR, "
    "NOMAD_TOKEN, NOMAD_NAMESPACE, NOMAD_REGION and the TLS variables, as deploy does. "
    "Exit codes: 0 written or already current, 1 someone else wrote the variable in "
    "between (or holds its lock), 2 invalid services file, services it would remove "
    "without --prune, or a file too large (nothing written), 5 Nomad unreachable or "
    "the token rejected."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prune",
        action="store_true",
        help="let the publication remove services that the variable holds and the services "
        "file does not (refused otherwise: an older checkout would drop someone else's "
        "services)",
    )


def main(args: argparse.Namespace) -> int:
    services = spec.load(repository.services_file(args, os.environ))
    templates = render.Templates(render.LOCAL_TEMPLATES)
    client = Nomad.from_environ(os.environ)
    publish(client, services, templates, prune=args.prune)
    return 0
