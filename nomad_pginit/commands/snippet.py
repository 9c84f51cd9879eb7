"""``nomad-pginit snippet SERVICE``: the blocks a service's own job needs to reach its database."""

from __future__ import annotations

import argparse
import os
import sys

from nomad_pginit import render, spec
from nomad_pginit.commands import repository


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "snippet",
        parents=[common],
        help="print the template and env blocks that a service's Nomad job needs",
        description=(
            "Print the template and env blocks that the job of SERVICE needs to connect to "
            "PostgreSQL: DB_HOST and DB_PORT from service discovery, DB_PASSWORD from Vault "
            "(both written to secrets/db.env), DB_DATABASE and DB_USERNAME. The services file "
            f"is --config, else ${spec.ENV_CONFIG}, else {render.DEFAULT_SERVICES_FILE}."
        ),
    )
    parser.add_argument("service", metavar="SERVICE", help="a service of the services file")
    parser.add_argument(
        "--consul",
        action="store_true",
        help="find PostgreSQL through Consul (`service`) instead of Nomad (`nomadService`)",
    )
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    services = spec.load(repository.services_file(args, os.environ))
    text = render.Templates(render.LOCAL_TEMPLATES).snippet(
        services, args.service, consul=args.consul
    )
    sys.stdout.write(text)
    return 0
