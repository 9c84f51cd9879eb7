"""spec -> observe -> plan -> apply -> report, for ``run`` and ``plan`` alike.

``reconcile`` is the one code path: with ``apply=False`` it stops after
planning, so ``plan`` shows exactly what ``run`` would do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from enum import StrEnum

from nomad_pginit import postgres
from nomad_pginit.errors import ExitCode, PginitError, PostgresUnavailable, ServiceError
from nomad_pginit.plan import (
    Action,
    ChangeDatabaseOwner,
    CreateDatabase,
    Refusal,
    plan_cluster,
    plan_leftovers,
    plan_schema,
)
from nomad_pginit.scram import verifier_matches
from nomad_pginit.secret import Secret
from nomad_pginit.spec import Service, Spec
from nomad_pginit.state import SCHEMA_PRIVILEGES, ClusterState, SchemaState
from nomad_pginit.vault import Vault

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 120.0
# Connections open at once for work inside the services' databases, and Vault
# reads in flight: enough to hide round trips, few enough for a small server.
DATABASE_WORKERS = 4
VAULT_WORKERS = 8


class Status(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    PENDING = "pending"  # plan only: changes that run would make
    FAILED = "failed"


@dataclass
class ServiceOutcome:
    """What happened to one service."""

    service: Service
    actions: list[Action] = field(default_factory=list)
    error: str | None = None
    applied: bool = True
    quiet: bool = False

    @property
    def status(self) -> Status:
        if self.error is not None:
            return Status.FAILED
        if not self.actions:
            return Status.UNCHANGED
        if not self.applied:
            return Status.PENDING
        if any(action.verb == "created" for action in self.actions):
            return Status.CREATED
        return Status.UPDATED


@dataclass
class Outcome:
    """What happened to every service, and why the run stopped early if it did."""

    services: list[ServiceOutcome]
    applied: bool
    # A failure that stopped the run part-way, e.g. PostgreSQL went away.
    fatal: PginitError | None = None
    # Roles and databases we manage whose service left the file (never dropped).
    leftovers: list[str] = field(default_factory=list)
    # What --disable-removed does (or, in a plan, would do) about them.
    leftover_actions: list[Action] = field(default_factory=list)
    # The Vault version of each password used, for watch mode to notice rotations.
    secret_versions: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        """A plan found changes to make."""
        return not self.applied and (self.count(Status.PENDING) > 0 or bool(self.leftover_actions))

    def count(self, status: Status) -> int:
        return sum(1 for outcome in self.services if outcome.status == status)

    @property
    def failed(self) -> list[ServiceOutcome]:
        return [outcome for outcome in self.services if outcome.status == Status.FAILED]

    @property
    def exit_code(self) -> ExitCode:
        if self.fatal is not None:
            return self.fatal.exit_code
        if self.failed:
            return ExitCode.SERVICE_FAILED
        return ExitCode.OK


def reconcile(
    spec: Spec,
    *,
    readiness: postgres.Readiness,
    apply: bool,
    disable_removed: bool = False,
    environ: Mapping[str, str] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    quiet: bool = False,
) -> Outcome:
    """Bring every service in ``spec`` in line (or, with apply=False, say what that takes).

    Raises ConfigError, VaultUnavailable or PostgresUnavailable when nothing can
    be done at all; one service's failure is recorded in its outcome instead.
    ``should_stop`` is asked before each service (SIGTERM lets the current one
    finish); ``quiet`` leaves out the "unchanged" lines, for watch mode.
    """
    env = os.environ if environ is None else environ
    target = postgres.target(spec.postgres)
    outcomes = {
        service.name: ServiceOutcome(service, applied=apply, quiet=quiet)
        for service in spec.services
    }
    vault = _connect_vault(spec, env)  # before waiting: a bad token is exit 4 at once

    with ExitStack() as stack:
        # Read Vault while waiting for PostgreSQL: the server is noticed the moment it
        # accepts connections, whatever the number of secrets.
        reader = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="secrets"))
        reading = reader.submit(_read_passwords, spec, vault, outcomes)
        admin = stack.enter_context(postgres.wait_until_ready(target, readiness))
        passwords, versions = reading.result()
        if apply:
            # Another run holds the lock for as long as it takes to finish.
            stack.enter_context(admin.exclusive(max(readiness.timeout, LOCK_WAIT_SECONDS)))
        ready = [service for service in spec.services if service.name in passwords]
        cluster = admin.observe(ready)
        verified = _check_passwords(target, ready, passwords, cluster)
        result = Outcome([], applied=apply, secret_versions=versions)

        # Roles and databases, one service after the other on the admin's connection.
        started: list[tuple[Service, list[Action]]] = []
        for index, service in enumerate(ready):
            if should_stop():
                log.info("stopping: %d services left for the next run", len(ready) - index)
                for skipped in ready[index:]:
                    del outcomes[skipped.name]
                break
            outcome = outcomes[service.name]
            try:
                cluster_actions = _reconcile_cluster_level(
                    admin, service, passwords[service.name], cluster, outcome, verified=verified
                )
            except (Refusal, ServiceError) as err:
                _fail(outcome, err)
            except PostgresUnavailable as err:
                # Nothing more can be done on this connection: say so for every
                # service not finished, and let the next run pick up from here.
                for pending in ready[index:]:
                    outcomes[pending.name].error = f"not finished: {err}"
                result.fatal = err
                break
            else:
                started.append((service, cluster_actions))

        # Inside each database: one connection per database, several at a time.
        if result.fatal is None:
            creates = any(
                isinstance(action, CreateDatabase) for _, actions in started for action in actions
            )
            try:
                template = admin.template_contents() if creates else None
            except PostgresUnavailable as err:
                result.fatal = err
                started = []
                for service in ready:
                    if service.name in outcomes and outcomes[service.name].error is None:
                        outcomes[service.name].error = f"not finished: {err}"
            with ThreadPoolExecutor(DATABASE_WORKERS, thread_name_prefix="database") as pool:
                futures = {
                    pool.submit(
                        _reconcile_database_level,
                        admin,
                        service,
                        cluster,
                        outcomes[service.name],
                        cluster_actions=cluster_actions,
                        template=template,
                    ): service
                    for service, cluster_actions in started
                }
                for future in as_completed(futures):
                    outcome = outcomes[futures[future].name]
                    try:
                        future.result()
                    except (Refusal, ServiceError) as err:
                        _fail(outcome, err)
                    except PostgresUnavailable as err:
                        outcome.error = f"not finished: {err}"
                        result.fatal = err
        result.services = list(outcomes.values())
        for outcome in result.services:
            _report(outcome)
        if result.fatal is None:
            try:
                _handle_leftovers(admin, spec, cluster, result, disable_removed)
            except PostgresUnavailable as err:
                result.fatal = err
    return result


def _fail(outcome: ServiceOutcome, err: Exception) -> None:
    outcome.error = str(err)
    name = outcome.service.name
    log.error("%s: failed: %s", name, err, extra={"service": name})


def _check_passwords(
    target: postgres.Target,
    services: list[Service],
    passwords: Mapping[str, Secret],
    cluster: ClusterState,
) -> dict[str, bool | None]:
    """Does each existing role's password equal Vault's? True, False, or None (unknown).

    With pg_authid readable, the stored SCRAM verifier is recomputed from its
    salt (CPU-bound, in C: threads run it in parallel). Without it, logging in
    as the role answers without changing anything, so that a run with nothing
    to do stays a run that changes nothing.
    """
    existing = [
        service
        for service in services
        if service.user in cluster.roles and cluster.roles[service.user].can_login
    ]

    def check(service: Service) -> bool | None:
        password = passwords[service.name]
        if cluster.admin.can_read_verifiers:
            return verifier_matches(cluster.roles[service.user].verifier, password.reveal())
        database = service.database if service.database in cluster.databases else "postgres"
        return postgres.password_works(target, service.user, database, password)

    with ThreadPoolExecutor(DATABASE_WORKERS, thread_name_prefix="password") as pool:
        results = pool.map(check, existing)
        return {service.name: result for service, result in zip(existing, results, strict=True)}


def _handle_leftovers(
    admin: postgres.Admin,
    spec: Spec,
    cluster: ClusterState,
    result: Outcome,
    disable_removed: bool,
) -> None:
    notes, actions = plan_leftovers(spec.services, cluster, disable=disable_removed)
    result.leftovers = notes
    for note in notes:
        log.warning("%s", note, extra={"event": "leftover"})
    for action in actions:
        try:
            if result.applied:
                admin.apply(action)
                log.info("%s", action.done(), extra={"event": "leftover", "result": "updated"})
            else:
                log.info("would %s", action.describe(), extra={"event": "leftover"})
            result.leftover_actions.append(action)
        except ServiceError as err:
            log.error("%s", err, extra={"event": "leftover"})


def warn_inline_passwords(spec: Spec) -> None:
    """Once per loaded file: passwords written in a config file are easy to leak."""
    inline = [service.name for service in spec.services if service.password is not None]
    if inline:
        log.warning(
            "%s in %s: anyone who can read that file can read them; leave 'password' out "
            "and keep them in Vault at %s",
            _count(len(inline), "inline password"),
            spec.source,
            spec.vault.cli_path("<name>"),
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _connect_vault(spec: Spec, environ: Mapping[str, str]) -> Vault | None:
    """A logged-in Vault client, or None when every password is inline."""
    if all(service.password is not None for service in spec.services):
        return None
    return Vault.connect(spec.vault, environ)


def _read_passwords(
    spec: Spec, vault: Vault | None, outcomes: dict[str, ServiceOutcome]
) -> tuple[dict[str, Secret], dict[str, int]]:
    """Each service's password, and the Vault version it came from.

    A service whose secret cannot be read is left out, and so left alone.
    """
    passwords = {
        service.name: service.password for service in spec.services if service.password is not None
    }
    versions: dict[str, int] = {}
    from_vault = [service for service in spec.services if service.password is None]
    if vault is None or not from_vault:
        return passwords, versions
    log.info("reading %s from Vault at %s", _count(len(from_vault), "password"), vault.address)
    with ThreadPoolExecutor(VAULT_WORKERS, thread_name_prefix="vault") as pool:
        futures = {
            pool.submit(vault.read_password, service.name): service for service in from_vault
        }
        for future in as_completed(futures):
            service = futures[future]
            try:
                secret = future.result()
            except ServiceError as err:
                _fail(outcomes[service.name], err)
                continue
            passwords[service.name] = secret.password
            versions[service.name] = secret.version
    return passwords, versions


def _reconcile_cluster_level(
    admin: postgres.Admin,
    service: Service,
    password: Secret,
    cluster: ClusterState,
    outcome: ServiceOutcome,
    *,
    verified: Mapping[str, bool | None],
) -> list[Action]:
    """The role and the database: the actions taken (or, in a plan, to take)."""
    actions = plan_cluster(service, password, cluster, password_verified=verified.get(service.name))
    for action in actions:
        _record(outcome, action, admin.apply(action) if outcome.applied else True)
    return actions


def _reconcile_database_level(
    admin: postgres.Admin,
    service: Service,
    cluster: ClusterState,
    outcome: ServiceOutcome,
    *,
    cluster_actions: list[Action],
    template: SchemaState | None,
) -> None:
    """Schema public and the extensions, connected to the service's own database.

    A database created from ``template`` in this run is what the template is:
    when that needs nothing, no connection is opened (one per new database
    would cost as much as creating it).
    """
    created = any(isinstance(action, CreateDatabase) for action in cluster_actions)
    owner_changes = any(isinstance(action, ChangeDatabaseOwner) for action in cluster_actions)
    if created and template is not None:
        # The owner of a new database holds what pg_database_owner holds in the template.
        predicted = replace(template, database=service.database)
        planned = plan_schema(service, predicted, owner_changes=False)
        if not planned or not outcome.applied:
            for action in planned:
                _record(outcome, action, True)
            return
    elif not outcome.applied and created:
        # The template could not be read: PostgreSQL's defaults.
        predicted = SchemaState(
            database=service.database,
            exists=True,
            privileges=SCHEMA_PRIVILEGES,
            owned_by_database_owner=True,
        )
        for action in plan_schema(service, predicted, owner_changes=True):
            _record(outcome, action, True)
        return
    role_exists = outcome.applied or service.user in cluster.roles
    with admin.database(service.database) as session:
        schema = session.observe_schema(service.user if role_exists else None)
        for action in plan_schema(service, schema, owner_changes=owner_changes):
            _record(outcome, action, session.apply(action) if outcome.applied else True)


def _record(outcome: ServiceOutcome, action: Action, did_it: bool) -> None:
    outcome.actions.append(action)
    name = outcome.service.name
    extra = {"service": name, "action": type(action).__name__, "result": action.verb}
    if not outcome.applied:
        log.info("%s: would %s", name, action.describe(), extra=extra | {"result": "pending"})
    elif did_it:
        log.info("%s: %s", name, action.done(), extra=extra)
    else:
        log.info("%s: %s (another run did it first)", name, action.done(), extra=extra)


def _report(outcome: ServiceOutcome) -> None:
    if outcome.error is None and not outcome.actions and not outcome.quiet:
        name = outcome.service.name
        log.info("%s: unchanged", name, extra={"service": name, "result": "unchanged"})
