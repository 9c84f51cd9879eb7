"""What a run or a plan did to each service, and what that makes of the whole: the
summary's counts, whether everything is in sync, the exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from nomad_pginit import stopping
from nomad_pginit.errors import ExitCode, PginitError
from nomad_pginit.plan import Action
from nomad_pginit.spec import Service


class Status(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    PENDING = "pending"  # plan only: changes that run would make
    FAILED = "failed"
    # Not reached, or cut short: the run was asked to stop, or PostgreSQL went away.
    NOT_FINISHED = "not finished"


@dataclass
class ServiceOutcome:
    """What happened to one service."""

    service: Service
    actions: list[Action] = field(default_factory=list)
    error: str | None = None
    applied: bool = True
    quiet: bool = False
    # Its work ran to the end (whatever it found).
    finished: bool = False
    # Why the run did not finish this service (it has no error of its own).
    not_finished: str | None = None
    # What it will not change, and says: a database created otherwise than the file
    # asks, a setting the file does not list (plan_notes).
    notes: list[str] = field(default_factory=list)
    # "unchanged" was logged: a run that starts over does not say it again.
    said_unchanged: bool = False

    def start_over(self) -> None:
        """Worked on again from the start (the connection was lost mid-run): what it
        did stays in ``actions``, the rest is decided afresh."""
        self.error = None
        self.finished = False
        self.not_finished = None
        self.notes = []

    def record(self, action: Action) -> None:
        """Add what was done, once: a run that started over may do it again."""
        if all(done.describe() != action.describe() for done in self.actions):
            self.actions.append(action)

    @property
    def status(self) -> Status:
        if self.error is not None:
            return Status.FAILED
        if self.not_finished is not None:
            return Status.NOT_FINISHED
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
    # What --disable-removed did (or, in a plan, would do) about them.
    leftover_actions: list[Action] = field(default_factory=list)
    # What it tried and could not do (each one's message), and what a stop left undone.
    leftover_failures: list[str] = field(default_factory=list)
    leftovers_unfinished: list[Action] = field(default_factory=list)
    # The Vault version of each password used, for watch mode to notice rotations.
    secret_versions: dict[str, int] = field(default_factory=dict)
    # Set when a stop request (this signal) cut the run short.
    stopped: bool = False
    stop_signal: int | None = None
    # host:port of the writable primary the run worked on (the last one, after a failover).
    postgres_at: str | None = None
    # That server and when it started ("host:port (up since ...)"): watch mode looks
    # again between passes, and a pass runs when it changed.
    postgres_identity: str | None = None

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
    def unfinished(self) -> list[ServiceOutcome]:
        return [outcome for outcome in self.services if outcome.status == Status.NOT_FINISHED]

    @property
    def in_sync(self) -> bool:
        """Everything done (or, in a plan, nothing to do): no failure, nothing left."""
        return (
            self.fatal is None
            and not self.failed
            and not self.unfinished
            and not self.leftover_failures
            and not self.leftovers_unfinished
            and not self.pending
        )

    @property
    def exit_code(self) -> ExitCode:
        if self.fatal is not None:
            return self.fatal.exit_code
        if self.failed or self.leftover_failures:
            return ExitCode.SERVICE_FAILED
        if self.unfinished or self.leftovers_unfinished:
            return stopping.exit_code(self.stop_signal)
        return ExitCode.OK
