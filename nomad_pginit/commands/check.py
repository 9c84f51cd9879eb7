"""``nomad-pginit check``: can every service log in to its own database with Vault's password?

It replaces ssh to the host and ``docker exec psql`` as each user: for every
service in the services file it reads the catalog as the admin (database and
role exist, the role may log in, it owns its database), then logs in as the
service with its password from Vault and asks whether it may create in schema
``public``. It writes nothing and never prints a password.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from nomad_pginit import postgres, spec
from nomad_pginit.commands import options, repository
from nomad_pginit.errors import ExitCode, PginitError, ServiceError
from nomad_pginit.provision import VAULT_WORKERS, PasswordReads, connect_vault, vault_too_slow
from nomad_pginit.report import SUMMARY_PREFIX, configure_logging
from nomad_pginit.secret import Secret
from nomad_pginit.spec import PostgresSettings, Service, Spec
from nomad_pginit.state import ClusterState
from nomad_pginit.stopping import StopRequest
from nomad_pginit.vault import Vault, request_deadline

log = logging.getLogger("nomad_pginit")

# An operator's check should answer quickly when PostgreSQL is down.
DEFAULT_WAIT_TIMEOUT: Final = 10.0


class Kind(StrEnum):
    """What can be wrong with one service, as --json names it."""

    SECRET_UNAVAILABLE = "secret_unavailable"  # noqa: S105 (a problem's name, not a secret)
    DATABASE_MISSING = "database_missing"
    ROLE_MISSING = "role_missing"
    NOLOGIN = "nologin"
    PASSWORD_EXPIRED = "password_expired"  # noqa: S105 (a problem's name, not a secret)
    WRONG_OWNER = "wrong_owner"
    PASSWORD_DIFFERS = "password_differs"  # noqa: S105 (a problem's name, not a secret)
    LOGIN_FAILED = "login_failed"
    NO_CREATE_ON_PUBLIC = "no_create_on_public"


@dataclass(frozen=True)
class Problem:
    kind: Kind
    message: str


@dataclass(frozen=True)
class ServiceCheck:
    """What check found for one service."""

    service: Service
    vault_path: str
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def document(self) -> dict[str, object]:
        return {
            "name": self.service.name,
            "database": self.service.database,
            "databases": list(self.service.databases),
            "user": self.service.user,
            "vault_path": self.vault_path,
            "ok": self.ok,
            "problems": [
                {"kind": problem.kind.value, "message": problem.message}
                for problem in self.problems
            ],
        }


HELP: Final = "log in as every service with its password from Vault and report what is wrong"
DESCRIPTION: Final = (
    "For every service in the services file, check that its database and role exist, "
    "that the role may log in (not NOLOGIN) and owns the database, then log in as the "
    "service to its own database with its password from Vault and check that it may "
    "create in schema public. Writes nothing; never prints a password. The services "
    "file is --config, else $PGINIT_CONFIG, else the render default. PostgreSQL is "
    "reached as in the services file's [postgres], or --dsn from elsewhere (libpq's "
    "PG* variables and ~/.pgpass fill in the rest). Exit codes: 0 every service OK, "
    "1 a service has a problem, 2 invalid services file or command line, 3 PostgreSQL "
    "unreachable or the admin cannot log in, 4 Vault unreachable or the token rejected."
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
        "--wait-timeout",
        metavar="SECONDS",
        help="how long to wait for PostgreSQL to accept connections "
        f"(default: $PGINIT_WAIT_TIMEOUT, else {DEFAULT_WAIT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (ok, and per service: name, database, user, "
        "vault_path, ok, problems with kind and message); the log goes to stderr",
    )


def main(args: argparse.Namespace) -> int:
    environ = os.environ
    if args.json:
        configure_logging(args.log_format, sys.stderr)
    stop = StopRequest()
    stop.install()
    try:
        return stop.exit_now(_check(args, environ, stop))
    except PginitError as err:
        if not stop.is_set():
            raise
        # Given up on a Vault that does not answer (stop.abandon): a thread still
        # waits on it, and the process does not wait for that thread.
        log.error("%s", err)
        return stop.exit_now(int(err.exit_code))


def _check(args: argparse.Namespace, environ: Mapping[str, str], stop: StopRequest) -> int:
    services = _load(args, environ)
    settings = PostgresSettings(dsn=args.dsn) if args.dsn else services.postgres
    target = postgres.target(settings)
    readiness = _readiness(args, environ)

    # Each Vault request within VAULT_CLIENT_TIMEOUT, as in run: a proxy that
    # trickles its answer would otherwise hold check for ever.
    deadline = request_deadline(environ)
    spec = replace(services, postgres=settings)
    vault = stop.call(
        lambda: connect_vault(spec, environ),
        "logging in to Vault",
        deadline=deadline,
        too_slow=vault_too_slow(spec, "the login"),
    )
    if settings.password_secret:
        assert vault is not None  # connected for the admin's secret
        reader, secret = vault, settings.password_secret
        password = stop.call(
            lambda: reader.read_admin_password(secret),
            "reading the admin's password",
            deadline=deadline,
            too_slow=vault_too_slow(spec, f"the read of {spec.vault.mount}/{secret}"),
        )
        target = target.with_password(password)
    passwords, secret_problems = _read_passwords(services, vault, environ, stop)
    log.info(
        "checking %d services in %s against PostgreSQL at %s",
        len(services.services),
        services.source,
        target.description,
    )
    with postgres.wait_until_ready(target, readiness, writable=False) as admin:
        cluster = admin.observe(services.services)
    results = [
        check_service(
            service,
            cluster=cluster,
            target=target,
            password=passwords.get(service.name),
            secret_problem=secret_problems.get(service.name),
            vault_path=services.vault.cli_path(service.name),
        )
        for service in services.services
    ]
    for result in results:
        name = result.service.name
        if result.ok:
            log.info("%s: ok", name, extra={"service": name, "result": "ok"})
        for problem in result.problems:
            log.error(
                "%s: %s", name, problem.message, extra={"service": name, "result": problem.kind}
            )
    failed = [result.service.name for result in results if not result.ok]
    if failed:
        log.error(
            "%s failed: %d of %d services have problems (%s); nomad-pginit run repairs what it "
            "can (in Nomad: nomad-pginit deploy --rerun)",
            SUMMARY_PREFIX,
            len(failed),
            len(results),
            ", ".join(failed),
        )
    else:
        log.info("%s ok: %d services OK", SUMMARY_PREFIX, len(results))
    if args.json:
        document = {"ok": not failed, "services": [result.document() for result in results]}
        print(json.dumps(document, indent=2, ensure_ascii=False))
    return int(ExitCode.SERVICE_FAILED if failed else ExitCode.OK)


def _load(args: argparse.Namespace, environ: Mapping[str, str]) -> Spec:
    return spec.load(repository.services_file(args, environ))


def _readiness(args: argparse.Namespace, environ: Mapping[str, str]) -> postgres.Readiness:
    if args.wait_timeout or environ.get("PGINIT_WAIT_TIMEOUT"):
        return options.readiness(args, environ)
    return postgres.Readiness(timeout=DEFAULT_WAIT_TIMEOUT)


def _read_passwords(
    services: Spec, vault: Vault | None, environ: Mapping[str, str], stop: StopRequest
) -> tuple[dict[str, Secret], dict[str, str]]:
    """Each service's password, or why it cannot be read: through the same concurrent
    reads, with the same deadline, as ``run``."""
    passwords: dict[str, Secret] = {}
    problems: dict[str, str] = {}
    reader = ThreadPoolExecutor(VAULT_WORKERS, thread_name_prefix="vault")
    try:
        reads = PasswordReads.start(services, vault, reader, request_deadline(environ))
        for service in services.services:
            if service.password is None and vault is None:
                continue  # said by check_service: no Vault to read it from
            try:
                passwords[service.name] = reads.wait(service, stop)
            except ServiceError as err:
                problems[service.name] = str(err)
    finally:
        # A read given up on is not waited for (stop.exit_now ends the process).
        reader.shutdown(wait=False, cancel_futures=True)
    return passwords, problems


def check_service(
    service: Service,
    *,
    cluster: ClusterState,
    target: postgres.Target,
    password: Secret | None,
    secret_problem: str | None,
    vault_path: str,
) -> ServiceCheck:
    """Every problem of one service, most basic first; logs in only when it can."""
    problems: list[Problem] = []
    if secret_problem is not None:
        problems.append(Problem(Kind.SECRET_UNAVAILABLE, secret_problem))
    role = cluster.roles.get(service.user)
    if role is None:
        problems.append(Problem(Kind.ROLE_MISSING, f'role "{service.user}" does not exist'))
    elif not role.can_login:
        problems.append(Problem(Kind.NOLOGIN, f'role "{service.user}" cannot log in (NOLOGIN)'))
    if role is not None and role.expired:
        problems.append(
            Problem(
                Kind.PASSWORD_EXPIRED,
                f'the password of role "{service.user}" expired at {role.valid_until} '
                "(VALID UNTIL): no password logs it in",
            )
        )
    # An expired role fails every login as "password authentication failed": no news.
    may_log_in = role is not None and role.can_login and not role.expired
    for name in service.databases:
        problem = _database_problem(service, name, cluster)
        if problem is not None:
            problems.append(problem)
        if cluster.databases.get(name) is None or not may_log_in or password is None:
            continue
        problem = _login_problem(service, name, target, password, vault_path)
        if problem is not None:
            problems.append(problem)
            if problem.kind == Kind.PASSWORD_DIFFERS:
                break  # the same in every database: said once
    return ServiceCheck(service, vault_path, tuple(problems))


def _database_problem(service: Service, name: str, cluster: ClusterState) -> Problem | None:
    database = cluster.databases.get(name)
    if database is None:
        return Problem(Kind.DATABASE_MISSING, f'database "{name}" does not exist')
    role = cluster.roles.get(service.user)
    if role is not None and database.owner != role.name:
        return Problem(
            Kind.WRONG_OWNER,
            f'database "{name}" is owned by "{database.owner}", not by "{service.user}"',
        )
    return None


def _login_problem(
    service: Service, name: str, target: postgres.Target, password: Secret, vault_path: str
) -> Problem | None:
    """Log in as the service to database ``name``, as its apps do, and create a table."""
    login = postgres.try_service_login(target, service.user, name, password)
    if not login.logged_in:
        if login.wrong_password:
            return Problem(
                Kind.PASSWORD_DIFFERS,
                f'the password of role "{service.user}" differs from Vault\'s ({vault_path})',
            )
        failure = login.failure or "unknown reason"
        return Problem(
            Kind.LOGIN_FAILED, f'cannot log in as "{service.user}" to database "{name}": {failure}'
        )
    if login.failure is not None:
        return Problem(Kind.LOGIN_FAILED, f'as "{service.user}": {login.failure}')
    if not login.can_create_in_public:
        return Problem(
            Kind.NO_CREATE_ON_PUBLIC,
            f'role "{service.user}" cannot create in schema public of database "{name}"',
        )
    return None
