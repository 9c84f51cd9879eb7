"""``nomad-pginit snippet SERVICE``: the blocks a service's own job needs to reach its database."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Final

from nomad_pginit import render, spec
from nomad_pginit.commands import repository

HELP: Final = "print the template and env blocks that a service's Nomad job needs"
DESCRIPTION: Final = (
    "Print the template and env blocks that the job of SERVICE needs to connect to "
    "PostgreSQL: DB_HOST and DB_PORT from service discovery, DB_PASSWORD from Vault "
    "(both written to secrets/db.env), DB_DATABASE and DB_USERNAME. The services file "
    f"is --config, else ${spec.ENV_CONFIG}, else {render.DEFAULT_SERVICES_FILE}."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="SERVICE", help="a service of the services file")
    parser.add_argument(
        "--consul",
        action="store_true",
        help="find PostgreSQL through Consul (`service`) instead of Nomad (`nomadService`)",
    )


def main(args: argparse.Namespace) -> int:
    services = spec.load(repository.services_file(args, os.environ))
    text = render.Templates(render.LOCAL_TEMPLATES).snippet(
        services, args.service, consul=args.consul
    )
    sys.stdout.write(text)
    return 0
