"""spec -> observe -> plan -> apply -> report, for ``run`` and ``plan`` alike.

``reconcile`` is the one code path: with ``apply=False`` it stops after
planning, so ``plan`` shows exactly what ``run`` would do.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import replace
from typing import Final

from nomad_pginit import postgres
from nomad_pginit.errors import (
    ConfigError,
    ConnectionLost,
    PginitError,
    PostgresUnavailable,
    ServiceError,
    VaultUnavailable,
)
from nomad_pginit.outcome import Outcome, ServiceOutcome, Status
from nomad_pginit.passwords import (
    VAULT_WORKERS,
    PasswordReads,
    count,
    log_in_to_vault,
)
from nomad_pginit.plan import (
    Action,
    ChangeDatabaseOwner,
    CreateDatabase,
    Refusal,
    plan_cluster,
    plan_leftovers,
    plan_notes,
    plan_schema,
)
from nomad_pginit.scram import verifier_matches
from nomad_pginit.secret import Secret
from nomad_pginit.spec import Service, Spec
from nomad_pginit.state import SCHEMA_PRIVILEGES, ClusterState, SchemaState
from nomad_pginit.stopping import Stopped, StopRequest
from nomad_pginit.vault import Vault, request_deadline

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 120.0
# Services worked on at once, each on its own admin connection (plus one to its
# database when needed): enough to keep a small server's cores busy and hide round
# trips, few enough to leave it connections to spare.
SERVICE_WORKERS = 4


def reconcile(
    spec: Spec,
    *,
    readiness: postgres.Readiness,
    apply: bool,
    disable_removed: bool = False,
    environ: Mapping[str, str] | None = None,
    stop: StopRequest | None = None,
    quiet: bool = False,
    vault: Vault | None = None,
    known_leftovers: frozenset[str] = frozenset(),
) -> Outcome:
    """Bring every service in ``spec`` in line (or, with apply=False, say what that takes).

    Raises ConfigError, VaultUnavailable or PostgresUnavailable when nothing can
    be done at all; one service's failure is recorded in its outcome instead.
    A ``stop`` request starts no other service and, after a moment's grace,
    cancels what PostgreSQL still runs for the ones under way: those not done
    are "not finished", left for the next run. ``quiet`` leaves out the
    "unchanged" lines, for watch mode, which also passes the ``vault`` client
    it keeps logged in between passes, and ``known_leftovers``, the leftovers it
    has reported already.
    """
    env = os.environ if environ is None else environ
    stop = stop or StopRequest()
    # A bad DSN is exit 2 before Vault is asked. Behind another session's lock, our
    # statements wait no longer than for PostgreSQL itself.
    target = (
        postgres.target(spec.postgres)
        .with_lock_timeout(min(postgres.LOCK_TIMEOUT_SECONDS, readiness.timeout))
        .with_statement_timeout(statement_timeout(env))
    )
    outcomes = {
        service.name: ServiceOutcome(service, applied=apply, quiet=quiet)
        for service in spec.services
    }
    result = Outcome([], applied=apply)
    # Whatever PostgreSQL still runs for us once a stop's grace is over is cancelled;
    # a connection that froze (no answer far past statement_timeout) ends the run.
    forget_stop = stop.on_stop(postgres.cancel_running)
    forget_frozen = postgres.on_frozen(lambda what: stop.abandon(PostgresUnavailable(what)))
    try:
        _reconcile(
            spec,
            target=target,
            readiness=readiness,
            disable_removed=disable_removed,
            env=env,
            stop=stop,
            vault=vault,
            outcomes=outcomes,
            result=result,
            known_leftovers=known_leftovers,
            quiet=quiet,
        )
    except Stopped as err:
        if stop.fatal is None:
            log.info("%s", err)
    finally:
        forget_stop()
        forget_frozen()
    if stop.fatal is not None:
        # Given up on, not asked to stop: the run failed, and says why.
        result.fatal = result.fatal or stop.fatal
    elif stop.is_set():
        result.stopped, result.stop_signal = True, stop.signal
        for outcome in outcomes.values():
            if not outcome.finished and outcome.error is None and outcome.not_finished is None:
                outcome.not_finished = "stopped"
    result.services = list(outcomes.values())
    if result.stopped and result.unfinished:
        log.info("stopping: %s left for the next run", count(len(result.unfinished), "service"))
    return result


def statement_timeout(environ: Mapping[str, str]) -> float:
    """$PGINIT_STATEMENT_TIMEOUT (seconds), else 300: how long the server lets any of our
    statements run, and so, with a margin, when a connection that answers nothing is
    taken for frozen."""
    raw = environ.get(postgres.ENV_STATEMENT_TIMEOUT, "")
    if not raw:
        return float(postgres.STATEMENT_TIMEOUT_SECONDS)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or not 1 <= value <= MAX_STATEMENT_TIMEOUT:
        raise ConfigError(
            f"${postgres.ENV_STATEMENT_TIMEOUT} must be a number of seconds from 1 to "
            f"{MAX_STATEMENT_TIMEOUT:g} (a day), not {raw!r}"
        )
    return value


MAX_STATEMENT_TIMEOUT: Final = 86400.0


# A run whose connection breaks mid-way (the server restarted, or the primary failed
# over to a standby) waits for a writable primary and starts over from the catalogs,
# this many times at most: a server that keeps going away is given up on.
MAX_RECONNECTS: Final = 3


def _reconcile(
    spec: Spec,
    *,
    target: postgres.Target,
    readiness: postgres.Readiness,
    disable_removed: bool,
    env: Mapping[str, str],
    stop: StopRequest,
    vault: Vault | None,
    outcomes: Mapping[str, ServiceOutcome],
    result: Outcome,
    known_leftovers: frozenset[str],
    quiet: bool = False,
) -> None:
    # Before waiting: a bad token is exit 4 at once.
    vault, admin_password = log_in_to_vault(spec, env, stop, vault)
    if admin_password is not None:
        target = target.with_password(admin_password)
    # Read Vault while waiting for PostgreSQL: the server is noticed the moment it
    # accepts connections, whatever the number of secrets, and each service's work
    # starts as soon as its own password is in. Read once, whatever the reconnects.
    reader = ThreadPoolExecutor(VAULT_WORKERS, thread_name_prefix="vault")
    try:
        passwords = PasswordReads.start(spec, vault, reader, request_deadline(env), quiet=quiet)
        lost_at: str | None = None
        for reconnects in range(MAX_RECONNECTS + 1):
            try:
                _attempt(
                    spec,
                    target=target,
                    readiness=readiness,
                    disable_removed=disable_removed,
                    stop=stop,
                    passwords=passwords,
                    outcomes=outcomes,
                    result=result,
                    known_leftovers=known_leftovers,
                    lost_at=lost_at,
                )
            except ConnectionLost as err:
                result.fatal = err
            except Stopped:
                # Asked to stop while waiting out a loss: stopped, not failed.
                if isinstance(result.fatal, ConnectionLost):
                    result.fatal = None
                raise
            except PostgresUnavailable as err:
                if lost_at is None:
                    raise
                # No writable primary in time after a loss: what was done stays done.
                result.fatal = err
                return
            lost = result.fatal
            if not isinstance(lost, ConnectionLost):
                return
            if stop.is_set():
                result.fatal = None  # reported as stopped: the rest is for the next run
                return
            if reconnects == MAX_RECONNECTS:
                result.fatal = ConnectionLost(
                    f"{lost}; lost the connection {MAX_RECONNECTS + 1} times in one run: "
                    "giving up, run again once PostgreSQL is stable"
                )
                return
            lost_at = result.postgres_at or target.description
            # Said once: the next attempt does not warn of these leftovers again.
            known_leftovers |= frozenset(result.leftovers)
            log.warning(
                "lost the connection to PostgreSQL at %s mid-run (%s): waiting up to %gs for a "
                "writable primary (a restart, or a failover to a standby), then reading the "
                "catalogs again and finishing",
                lost_at,
                lost,
                readiness.timeout,
            )
    finally:
        # On the way out (stopped, or failed), reads not yet started are not needed.
        reader.shutdown(wait=False, cancel_futures=True)


def _start_over(
    result: Outcome, outcomes: Mapping[str, ServiceOutcome], was: str, now: str
) -> None:
    """After a lost connection, on a writable primary again: everything is observed
    afresh (an asynchronous standby may have lost the old primary's last transactions),
    and what the earlier attempt did stays in each service's actions."""
    if now != was:
        log.warning(
            "failover: continuing on the writable primary at %s (was %s); what had not "
            "reached it is done again",
            now,
            was,
            extra={"event": "failover"},
        )
    else:
        log.info("PostgreSQL at %s is back: continuing", now, extra={"event": "failover"})
    result.fatal = None
    # The leftovers are judged again too, on the new primary.
    result.leftovers, result.leftover_actions = [], []
    result.leftover_failures, result.leftovers_unfinished = [], []
    for outcome in outcomes.values():
        outcome.start_over()


def _attempt(
    spec: Spec,
    *,
    target: postgres.Target,
    readiness: postgres.Readiness,
    disable_removed: bool,
    stop: StopRequest,
    passwords: PasswordReads,
    outcomes: Mapping[str, ServiceOutcome],
    result: Outcome,
    known_leftovers: frozenset[str],
    lost_at: str | None,
) -> None:
    """One pass over every service on one writable primary: wait for it, observe, plan
    and apply. A lost connection ends it with result.fatal a ConnectionLost (or raises
    one, from the coordinator's own statements)."""
    apply = result.applied
    with ExitStack() as stack:
        admin = stack.enter_context(postgres.wait_until_ready(target, readiness, stop=stop))
        if lost_at is not None:
            _start_over(result, outcomes, lost_at, admin.address)
        result.postgres_at = admin.address
        result.postgres_identity = admin.identity()
        if apply:
            # Another run holds the lock for as long as it takes to finish; we wait for it
            # no longer than for PostgreSQL itself.
            stack.enter_context(admin.exclusive(readiness.timeout))
        cluster = admin.observe(spec.services)
        # Read before any CREATE DATABASE: PostgreSQL refuses to copy a template that
        # someone is connected to.
        creates = any(
            name not in cluster.databases for service in spec.services for name in service.databases
        )
        template = admin.template_contents() if creates else None
        workers = stack.enter_context(admin.workers())
        halted = threading.Event()  # start no more services: PostgreSQL went away, or worse
        service_databases = frozenset(name for s in spec.services for name in s.databases)
        service_users = frozenset(service.user for service in spec.services)

        def work(service: Service, view: ClusterState, handed_over: frozenset[str]) -> None:
            if halted.is_set():
                raise _NotFinished(result.fatal)
            stop.check(f"provisioning {service.name}")
            _reconcile_service(
                service,
                passwords=passwords,
                workers=workers,
                # The coordinator's server, whatever else a multi-host DSN lists.
                target=workers.target,
                cluster=view,
                template=template,
                outcome=outcomes[service.name],
                stop=stop,
                service_databases=handed_over,
                service_users=service_users,
            )

        def run_round(
            services: list[Service], view: ClusterState, handed_over: frozenset[str]
        ) -> None:
            with ThreadPoolExecutor(SERVICE_WORKERS, thread_name_prefix="service") as pool:
                futures = {
                    pool.submit(work, service, view, handed_over): service for service in services
                }
                try:
                    for future in as_completed(futures):
                        outcome = outcomes[futures[future].name]
                        try:
                            future.result()
                            outcome.finished = True
                        except Stopped:
                            outcome.not_finished = "stopped"
                        except _NotFinished as err:
                            outcome.not_finished = str(err.reason)
                        except (Refusal, ServiceError) as err:
                            _fail(outcome, err)
                        except (PostgresUnavailable, VaultUnavailable) as err:
                            # Nothing more can be done: say so for every service not
                            # finished, and let the next run pick up from here.
                            outcome.not_finished = str(err)
                            if result.fatal is None:
                                result.fatal = err
                            halted.set()
                except BaseException:
                    # A bug, or Ctrl-C: the services under way finish, no other one starts.
                    halted.set()
                    raise

        # A role that owns another service's database is taken over only once that
        # service has its database: after the others, and only if it got it. A service
        # whose readers are roles other services create comes after those services.
        rounds = _rounds(spec.services, cluster, service_databases)
        run_round(rounds[0], cluster, service_databases)
        for later in rounds[1:]:
            handed_over = frozenset(
                name
                for outcome in outcomes.values()
                if outcome.finished and outcome.error is None
                for name in outcome.service.databases
            )
            # What the earlier rounds did, seen again (a plan changes nothing: predicted).
            view = cluster
            if apply and not halted.is_set() and not stop.is_set():
                view = admin.observe(later)
            run_round(later, view, handed_over)
        result.secret_versions = passwords.versions()
        if isinstance(result.fatal, ConnectionLost):
            return  # the run starts over: "unchanged" is said once, at its end
        for outcome in outcomes.values():
            _report(outcome)
        if result.fatal is None:
            try:
                _handle_leftovers(
                    admin,
                    spec,
                    cluster,
                    result,
                    disable_removed=disable_removed,
                    known_leftovers=known_leftovers,
                    stop=stop,
                )
            except PostgresUnavailable as err:
                result.fatal = err


def _rounds(
    services: tuple[Service, ...], cluster: ClusterState, service_databases: frozenset[str]
) -> list[list[Service]]:
    """The services in the order their work may start, round after round: first those
    that wait for no one; then a role that owns another service's database (handed
    over in the first round); then each service whose readers are other services'
    roles not there yet, once the services that create them are done. Readers that
    wait for each other in a ring go last together: the first run creates the roles,
    and one of them may fail to grant until the next."""
    creators = {service.user: service.name for service in services}

    def waits_for(service: Service) -> set[str]:
        return {
            creators[reader]
            for reader in service.readers
            if reader in creators
            and reader not in cluster.existing_readers
            and creators[reader] != service.name
        }

    first = [
        service
        for service in services
        if not waits_for(service) and not _owns_a_database_of(service, cluster, service_databases)
    ]
    rounds = [first]
    done = {service.name for service in first}
    pending = [service for service in services if service.name not in done]
    while pending:
        ready = [service for service in pending if waits_for(service) <= done]
        if not ready:
            ready = pending  # a ring of readers
        rounds.append(ready)
        done |= {service.name for service in ready}
        pending = [service for service in pending if service.name not in done]
    return rounds


def _owns_a_database_of(
    service: Service, cluster: ClusterState, service_databases: frozenset[str]
) -> bool:
    """Whether the service's existing role owns the database of another service."""
    role = cluster.roles.get(service.user)
    return role is not None and any(
        name not in service.databases and name in service_databases for name in role.owned_databases
    )


class _NotFinished(Exception):
    """PostgreSQL went away before this service started."""

    def __init__(self, reason: PginitError | None) -> None:
        super().__init__(str(reason))
        self.reason = reason


def _fail(outcome: ServiceOutcome, err: Exception) -> None:
    outcome.error = str(err)
    name = outcome.service.name
    log.error("%s: failed: %s", name, err, extra={"service": name})


def _reconcile_service(
    service: Service,
    *,
    passwords: PasswordReads,
    workers: postgres.WorkerPool,
    target: postgres.Target,
    cluster: ClusterState,
    template: SchemaState | None,
    outcome: ServiceOutcome,
    stop: StopRequest,
    service_databases: frozenset[str],
    service_users: frozenset[str] = frozenset(),
) -> None:
    """One service, start to end, on this worker's own admin connection."""
    password = passwords.wait(service, stop)  # SecretUnavailable fails this service alone
    verified = _password_verified(target, service, password, cluster)
    admin = workers.worker()
    cluster_actions = plan_cluster(
        service,
        password,
        cluster,
        password_verified=verified,
        service_databases=service_databases,
        service_users=service_users,
    )
    _note(outcome, plan_notes(service, cluster))
    for action in cluster_actions:
        _record(outcome, action, admin.apply(action) if outcome.applied else True)
    for database in service.databases:
        _reconcile_database_level(
            admin,
            service,
            database,
            cluster,
            outcome,
            cluster_actions=cluster_actions,
            template=template,
        )


def _password_verified(
    target: postgres.Target, service: Service, password: Secret, cluster: ClusterState
) -> bool | None:
    """Does the existing role's password equal Vault's? True, False, or None (unknown).

    With pg_authid readable, the stored SCRAM verifier is recomputed from its
    salt. Without it, logging in as the role answers without changing anything,
    so that a run with nothing to do stays a run that changes nothing.
    """
    role = cluster.roles.get(service.user)
    if role is None or not role.can_login:
        return None
    if cluster.admin.can_read_verifiers:
        return verifier_matches(role.verifier, password.reveal())
    database = next((name for name in service.databases if name in cluster.databases), "postgres")
    return postgres.password_works(target, service.user, database, password)


def _handle_leftovers(
    admin: postgres.Coordinator,
    spec: Spec,
    cluster: ClusterState,
    result: Outcome,
    *,
    disable_removed: bool,
    known_leftovers: frozenset[str],
    stop: StopRequest,
) -> None:
    """Report the leftovers, and with --disable-removed set their roles NOLOGIN. What
    fails, or what a stop leaves undone, counts in the summary as a service's would."""
    notes, actions = plan_leftovers(spec.services, cluster, disable=disable_removed)
    result.leftovers = notes
    if not stop.is_set():
        for note in notes:
            # Watch mode says each once, not at every pass.
            if note not in known_leftovers:
                log.warning("%s", note, extra={"event": "leftover"})
    for index, action in enumerate(actions):
        if stop.is_set() and result.applied:
            result.leftovers_unfinished.extend(actions[index:])
            return
        try:
            if result.applied:
                admin.apply(action)
                log.info("%s", action.done(), extra={"event": "leftover", "result": "updated"})
            else:
                log.info("would %s", action.describe(), extra={"event": "leftover"})
            result.leftover_actions.append(action)
        except Stopped as err:
            log.info("%s", err, extra={"event": "leftover"})
            result.leftovers_unfinished.extend(actions[index:])
            return
        except ServiceError as err:
            log.error("%s", err, extra={"event": "leftover", "result": "failed"})
            result.leftover_failures.append(str(err))


def primary_now(
    spec: Spec, environ: Mapping[str, str], stop: StopRequest, vault: Vault | None
) -> str | None:
    """Which writable primary [postgres] reaches now ('host:port (up since ...)'), None
    when none answers: for watch mode, to notice between passes a failover (or a
    restart) that may have lost what the last pass did."""
    target = postgres.target(spec.postgres).with_statement_timeout(PROBE_STATEMENT_SECONDS)
    _, admin_password = log_in_to_vault(spec, environ, stop, vault)
    if admin_password is not None:
        target = target.with_password(admin_password)
    return stop.call(
        lambda: postgres.primary_identity(target),
        "looking at PostgreSQL",
        deadline=postgres.PROBE_DEADLINE_SECONDS,
        too_slow=lambda seconds: PostgresUnavailable(f"no answer for {seconds:g}s"),
    )


# How long the look between watch mode's passes lets its two queries run.
PROBE_STATEMENT_SECONDS: Final = 5.0


def warn_inline_passwords(spec: Spec) -> None:
    """Once per loaded file: passwords written in a config file are easy to leak."""
    inline = [service.name for service in spec.services if service.password is not None]
    if inline:
        log.warning(
            "%s in %s: anyone who can read that file can read them; leave 'password' out "
            "and keep them in Vault at %s",
            count(len(inline), "inline password"),
            spec.source,
            spec.vault.cli_path("<name>"),
        )


def _reconcile_database_level(
    admin: postgres.Worker,
    service: Service,
    database: str,
    cluster: ClusterState,
    outcome: ServiceOutcome,
    *,
    cluster_actions: list[Action],
    template: SchemaState | None,
) -> None:
    """Schema public, the extensions and the readers, connected to one of the service's
    databases.

    A database created from ``template`` (template1, read before) in this run is what
    the template is: when that needs nothing, no connection is opened (one per new
    database would cost as much as creating it). Readers always need one.
    """
    created = any(
        isinstance(action, CreateDatabase) and action.database == database
        for action in cluster_actions
    )
    owner_changes = any(
        isinstance(action, ChangeDatabaseOwner) and action.database == database
        for action in cluster_actions
    )
    from_template1 = service.creation.template in (None, "template1")
    if created and template is not None and from_template1 and not service.readers:
        # The owner of a new database holds what pg_database_owner holds in the template.
        predicted = replace(template, database=database)
        planned = plan_schema(service, predicted, owner_changes=False)
        if not planned or not outcome.applied:
            for action in planned:
                _record(outcome, action, True)
            return
    elif not outcome.applied and created:
        # The template could not be read: PostgreSQL's defaults. From 15 on,
        # public belongs to pg_database_owner, the new database's owner; before,
        # to the bootstrap superuser, with CREATE for PUBLIC, which does not count.
        owned = admin.server_version >= 150000
        predicted = SchemaState(
            database=database,
            exists=True,
            privileges=SCHEMA_PRIVILEGES if owned else frozenset(),
            privileges_with_public=SCHEMA_PRIVILEGES,
            # Only a superuser may grant on the bootstrap superuser's schema.
            admin_may_grant=owned or admin.state.superuser,
            owned_by_database_owner=owned,
        )
        for action in plan_schema(service, predicted, owner_changes=True):
            _record(outcome, action, True)
        return
    role_exists = outcome.applied or service.user in cluster.roles
    with admin.database(database) as session:
        schema = session.observe_schema(
            service.user if role_exists else None,
            extensions=bool(service.extensions),
            owner=owner_changes,
        )
        existing = cluster.databases.get(database)
        recorded = existing.recorded_readers if existing is not None else frozenset()
        if service.readers or recorded:
            # The recorded ones too: a reader no longer listed is revoked only if it exists.
            schema = session.observe_readers(
                replace(schema, recorded_readers=recorded),
                service.user,
                sorted(set(service.readers) | recorded),
            )
        for action in plan_schema(service, schema, owner_changes=owner_changes):
            _record(outcome, action, session.apply(action) if outcome.applied else True)


# The notes already logged: watch mode says each once, not at every pass.
_NOTED: set[str] = set()


def _note(outcome: ServiceOutcome, notes: list[str]) -> None:
    outcome.notes = notes
    name = outcome.service.name
    for note in notes:
        if note not in _NOTED or not outcome.quiet:
            _NOTED.add(note)
            log.warning("%s: %s", name, note, extra={"service": name, "event": "note"})


def _record(outcome: ServiceOutcome, action: Action, did_it: bool) -> None:
    outcome.record(action)
    name = outcome.service.name
    extra = {"service": name, "action": type(action).__name__, "result": action.verb}
    if not outcome.applied:
        log.info("%s: would %s", name, action.describe(), extra=extra | {"result": "pending"})
    elif did_it:
        log.info("%s: %s", name, action.done(), extra=extra)
    else:
        log.info("%s: %s (another run did it first)", name, action.done(), extra=extra)


def _report(outcome: ServiceOutcome) -> None:
    if outcome.status == Status.UNCHANGED and not outcome.quiet and not outcome.said_unchanged:
        outcome.said_unchanged = True
        name = outcome.service.name
        log.info("%s: unchanged", name, extra={"service": name, "result": "unchanged"})
