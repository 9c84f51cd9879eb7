"""``nomad-pginit check``: can every service log in to its own databases with Vault's password?

It replaces ssh to the host and ``docker exec psql`` as each user; what it
checks is in ``nomad_pginit.checking``, this module reads the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from nomad_pginit import postgres, spec
from nomad_pginit.checking import check_services, exit_code
from nomad_pginit.commands import options, repository
from nomad_pginit.errors import ConfigError
from nomad_pginit.spec import PostgresSettings, Spec
from nomad_pginit.stopping import StopRequest

log = logging.getLogger("nomad_pginit")

# An operator's check should answer quickly when PostgreSQL is down.
CHECK_WAIT_TIMEOUT: Final = 10.0


HELP: Final = "log in as every service with its password from Vault and report what is wrong"
DESCRIPTION: Final = (
    "For every service in the services file, check that its database and role exist, "
    "that the role may log in (not NOLOGIN) and owns the database, then log in as the "
    "service to its own database with its password from Vault and check that it may "
    "create in schema public. Writes nothing; never prints a password. The services "
    "file is --config, else $PGINIT_CONFIG, else the render default. PostgreSQL is "
    "reached as in the services file's [postgres], or --dsn from elsewhere (libpq's "
    "PG* variables and ~/.pgpass fill in the rest). With --replicas, the same logins on "
    "each streaming standby. Exit codes: 0 every service OK, 1 a service has a problem "
    "(on the primary or a replica), 2 invalid services file or command line, 3 "
    "PostgreSQL unreachable or the admin cannot log in, 4 Vault unreachable or the "
    "token rejected."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        metavar="DSN",
        help="connect as the admin with this libpq connection string instead of the services "
        "file's [postgres] (e.g. postgresql://postgres@10.0.0.60:5432/postgres from a "
        "workstation; the password from PGPASSWORD or ~/.pgpass)",
    )
    parser.add_argument(
        "--replicas",
        nargs="?",
        const="",
        metavar="HOST:PORT,...",
        help="also log in as every service on each streaming standby, once it has replayed "
        "what the primary had written when the check began (within --wait-timeout): those "
        "named, else every other host of a multi-host [postgres] dsn",
    )
    options.add_wait_timeout(parser, default=CHECK_WAIT_TIMEOUT)
    options.add_json(
        parser,
        "print one JSON object on stdout (ok, and per service: name, database, databases, "
        "user, vault_path, ok, problems with kind and message; with --replicas, replicas: "
        "address, ok, problem and services)",
    )


def main(args: argparse.Namespace) -> int:
    stop = StopRequest()
    stop.install()
    # A Vault given up on (stop.abandon) raises here: cli.main says so and, as the
    # stop is set, ends the process without waiting for the thread still stuck on it.
    return stop.exit_now(_check(args, os.environ, stop))


def _check(args: argparse.Namespace, environ: Mapping[str, str], stop: StopRequest) -> int:
    services = _load(args, environ)
    settings = PostgresSettings(dsn=args.dsn) if args.dsn else services.postgres
    services = replace(services, postgres=settings)
    report = check_services(
        services,
        postgres.target(settings),
        options.readiness(args, environ, default=CHECK_WAIT_TIMEOUT),
        environ,
        stop,
        replicas=_replicas(args.replicas, postgres.target(settings)),
    )
    if args.json:
        document: dict[str, object] = {
            "ok": report.ok,
            "services": [result.document() for result in report.services],
        }
        if args.replicas is not None:
            document["replicas"] = [replica.document() for replica in report.replicas]
        print(json.dumps(document, indent=2, ensure_ascii=False))
    return int(exit_code(report))


def _replicas(given: str | None, target: postgres.Target) -> list[str] | None:
    """--replicas: None without it, [] alone (the DSN's other hosts), else each host:port."""
    if given is None:
        return None
    if given == "":
        if len(target.addresses) < 2:
            raise ConfigError(
                f"--replicas alone checks the other hosts of a multi-host DSN, and "
                f"{target.description} names one: name the standbys, --replicas "
                "db2:5432,db3:5432"
            )
        return []
    addresses = [address.strip() for address in given.split(",") if address.strip()]
    if not addresses:
        raise ConfigError(f"--replicas {given!r} names no address: write host:port,...")
    for address in addresses:
        postgres.check_address(address)
    return addresses


def _load(args: argparse.Namespace, environ: Mapping[str, str]) -> Spec:
    return spec.load(repository.services_file(args, environ))
