"""Can every service log in to its own databases with Vault's password? What
``nomad-pginit check`` finds, service by service, and the summary it logs.

It reads the catalog as the admin (databases and role exist, the role may log
in, it owns its databases), then logs in as the service to each of its databases
with its password from Vault, as its apps do, and asks whether it may create in
schema ``public``. With ``--replicas`` it does the same on each streaming standby,
once the standby has replayed what the primary had written. It writes nothing and
never logs a password.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

from nomad_pginit import postgres
from nomad_pginit.errors import ExitCode, PostgresUnavailable, ServiceError
from nomad_pginit.passwords import VAULT_WORKERS, PasswordReads, log_in_to_vault
from nomad_pginit.report import SUMMARY_PREFIX
from nomad_pginit.secret import Secret
from nomad_pginit.spec import Service, Spec
from nomad_pginit.state import ClusterState
from nomad_pginit.stopping import StopRequest
from nomad_pginit.vault import Vault, request_deadline

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class ReplicaCheck:
    """What check --replicas found on one streaming standby."""

    address: str
    # The standby as a whole: unreachable, not a standby, or behind the primary.
    problem: str | None
    services: tuple[ServiceCheck, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None and all(result.ok for result in self.services)

    def document(self) -> dict[str, object]:
        return {
            "address": self.address,
            "ok": self.ok,
            "problem": self.problem,
            "services": [result.document() for result in self.services],
        }


@dataclass(frozen=True)
class CheckReport:
    """Every service on the server the DSN reaches, and on each standby asked for."""

    services: list[ServiceCheck]
    replicas: list[ReplicaCheck]

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.services) and all(
            replica.ok for replica in self.replicas
        )


def check_services(
    services: Spec,
    target: postgres.Target,
    readiness: postgres.Readiness,
    environ: Mapping[str, str],
    stop: StopRequest,
    *,
    replicas: list[str] | None = None,
) -> CheckReport:
    """Check every service of ``services`` (whose [postgres] ``target`` reaches), and
    log each one's result and the summary. ``replicas``: the standbys to check too
    (host:port), [] for every other host the DSN lists, None for none."""
    vault, admin_password = log_in_to_vault(services, environ, stop)
    if admin_password is not None:
        target = target.with_password(admin_password)
    passwords, secret_problems = _read_passwords(services, vault, environ, stop)
    log.info(
        "checking %d services in %s against PostgreSQL at %s",
        len(services.services),
        services.source,
        target.description,
    )
    with postgres.wait_until_ready(target, readiness, writable=False) as admin:
        cluster = admin.observe(services.services)
        position = postgres.wal_position(admin) if replicas is not None else None
        checked_at = admin.address
        # The logins too go to the server the catalogs were read on.
        checked = admin.target

    def check_all(cluster: ClusterState, target: postgres.Target) -> list[ServiceCheck]:
        return [
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

    results = check_all(cluster, checked)
    _log_results(results)
    report = CheckReport(results, [])
    if replicas is not None:
        explicit = bool(replicas)
        addresses = replicas or [address for address in target.addresses if address != checked_at]
        if not addresses:
            log.warning(
                "--replicas: [postgres] dsn lists no other host than %s; name the standbys: "
                "--replicas db2:5432,db3:5432",
                checked_at,
            )
        for address in dict.fromkeys(addresses):  # each once, in order
            replica = _check_replica(
                services,
                address,
                target=target.at(address),
                position=position,
                readiness=readiness,
                stop=stop,
                check_all=check_all,
                explicit=explicit,
            )
            if replica is not None:
                report.replicas.append(replica)
    _log_summary(report)
    return report


def _check_replica(
    services: Spec,
    address: str,
    *,
    target: postgres.Target,
    position: str | None,
    readiness: postgres.Readiness,
    stop: StopRequest,
    check_all: Callable[[ClusterState, postgres.Target], list[ServiceCheck]],
    explicit: bool,
) -> ReplicaCheck | None:
    """Every service on one standby, once it has replayed the primary's WAL up to
    ``position``. None for a host of the DSN that turns out to be a primary."""
    where = f"replica {address}"
    try:
        with postgres.wait_until_ready(
            target, readiness, writable=False, stop=stop, advice="check that standby"
        ) as admin:
            if not postgres.in_recovery(admin):
                if not explicit:
                    log.info("%s is a primary, not a standby: left out", where)
                    return None
                return _replica_problem(
                    address,
                    f"{where} is not a standby (it accepts writes): --replicas names "
                    "streaming standbys",
                )
            if position is not None and not postgres.wait_for_replay(
                admin, position, readiness.timeout, stop
            ):
                return _replica_problem(
                    address,
                    f"{where} had not replayed the primary's WAL up to {position} within "
                    f"{readiness.timeout:g}s (it lags, or no longer streams): what the last run "
                    "did may not have reached it; see pg_stat_replication on the primary",
                )
            cluster = admin.observe(services.services)
    except PostgresUnavailable as err:
        return _replica_problem(address, f"{where}: {err}")
    results = check_all(cluster, target)
    _log_results(results, where=f"{where}: ")
    replica = ReplicaCheck(address, None, tuple(results))
    failed = [result.service.name for result in results if not result.ok]
    if failed:
        log.error(
            "%s: %d of %d services have problems (%s)",
            where,
            len(failed),
            len(results),
            ", ".join(failed),
        )
    else:
        log.info("%s: %d services OK", where, len(results))
    return replica


def _replica_problem(address: str, message: str) -> ReplicaCheck:
    log.error("%s", message, extra={"result": "failed"})
    return ReplicaCheck(address, message)


def exit_code(report: CheckReport) -> ExitCode:
    return ExitCode.OK if report.ok else ExitCode.SERVICE_FAILED


def _log_results(results: list[ServiceCheck], where: str = "") -> None:
    for result in results:
        name = result.service.name
        if result.ok:
            log.info("%s%s: ok", where, name, extra={"service": name, "result": "ok"})
        for problem in result.problems:
            log.error(
                "%s%s: %s",
                where,
                name,
                problem.message,
                extra={"service": name, "result": problem.kind},
            )


def _log_summary(report: CheckReport) -> None:
    results = report.services
    failed = [result.service.name for result in results if not result.ok]
    count = len(report.replicas)
    replicas = f" and on {count} replica{'' if count == 1 else 's'}" if report.replicas else ""
    bad_replicas = [replica.address for replica in report.replicas if not replica.ok]
    if failed or bad_replicas:
        problems = (
            [f"{len(failed)} of {len(results)} services have problems ({', '.join(failed)})"]
            if failed
            else []
        )
        if bad_replicas:
            problems.append(f"replicas with problems: {', '.join(bad_replicas)}")
        advice = (
            "nomad-pginit run repairs what it can (in Nomad: nomad-pginit deploy --rerun)"
            if failed
            else "a standby has what the primary has once it replays it: see "
            "pg_stat_replication on the primary"
        )
        log.error("%s failed: %s; %s", SUMMARY_PREFIX, "; ".join(problems), advice)
    else:
        log.info("%s ok: %d services OK%s", SUMMARY_PREFIX, len(results), replicas)


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
