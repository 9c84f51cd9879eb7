"""What Nomad's API returns, typed: allocations, their tasks' states and events, jobs,
evaluations, variables. A task's state answers what deploy asks of it (did it run
again, did an attempt fail) from Nomad's own events."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from nomad_pginit.jobspec import JobVariables

DEFAULT_KILL_TIMEOUT_SECONDS: Final = 5  # api/tasks.go, when a task sets none
# The poststart task that runs `nomad-pginit run` in the postgresql job.
INIT_TASK: Final = "init-databases"

# Evaluation statuses after which the scheduler will not place anything more for it.
EVAL_DONE: Final = frozenset({"complete", "failed", "canceled"})
# Task events that announce a kill someone asked for, not a failure of the task
# (nomad/structs/structs.go TaskKilling and TaskRestartSignal, emitted before a
# kill or restart by alloc_runner.go and the template and vault hooks).
REQUESTED_KILLS: Final = frozenset({"Restart Signaled", "Killing"})
# Allocation client statuses from which no task will run again.
ALLOC_DONE: Final = frozenset({"complete", "failed", "lost"})

# `job "postgresql" {` at the start of a line: the label `nomad job run` uses as the ID.
_JOB_LABEL: Final = re.compile(r'^\s*job\s+"((?:[^"\\]|\\.)+)"\s*\{', re.MULTILINE)

LogStream = Literal["stdout", "stderr"]


# --- what the API returns, typed ------------------------------------------------------


@dataclass(frozen=True)
class TaskEvent:
    """One entry of a task's event history (Nomad keeps the last 10)."""

    type: str
    time: int  # unix nanoseconds
    exit_code: int | None
    message: str
    # Details (nomad/structs TaskEvent): "exit_code", "restart_reason", "fails_task", ...
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def restart_reason(self) -> str:
        """Why Nomad restarts the task: "" for a restart someone asked for
        (restarts.go: a triggered restart has no reason), the policy's words otherwise."""
        return self.details.get("restart_reason", "")


@dataclass(frozen=True)
class TaskState:
    """One task of an allocation: pending, running or dead."""

    state: str
    failed: bool
    restarts: int
    started_at: str | None
    finished_at: str | None
    events: tuple[TaskEvent, ...] = ()

    @property
    def exit_code(self) -> int | None:
        """The exit code of the last Terminated event, or None when it never exited."""
        for event in reversed(self.events):
            if event.type == "Terminated":
                return event.exit_code
        return None

    @property
    def last_event(self) -> TaskEvent | None:
        return self.events[-1] if self.events else None

    @property
    def last_exit_time(self) -> int:
        """When the task last exited (unix nanoseconds), 0 if it never did."""
        return max((event.time for event in self.events if event.type == "Terminated"), default=0)

    @property
    def last_policy_restart(self) -> TaskEvent | None:
        """The last restart that Nomad's restart policy made (restarts.go gives those a
        reason; a restart someone asked for has none)."""
        by_policy = [e for e in self.events if e.type == "Restarting" and e.restart_reason]
        return by_policy[-1] if by_policy else None

    def ran_after(self, previous: TaskState | None) -> bool:
        """Whether this state shows a later run than ``previous`` (an allocation restarted)."""
        if previous is None:
            return True
        later_exit = self.last_exit_time > previous.last_exit_time
        return later_exit or self.finished_at != previous.finished_at

    def failed_after(self, previous: TaskState | None) -> bool:
        """Whether an attempt after ``previous`` exited non-zero by itself.

        A restart block in mode "delay" retries a failed task forever, so it may
        never be dead: the first failed attempt is the answer. An exit after a kill
        someone asked for (a restart through the API) is not a failure.
        """
        since = previous.last_exit_time if previous is not None else 0
        requested = False
        for event in self.events:
            if event.time <= since:
                continue
            if event.type in REQUESTED_KILLS:
                requested = True
            elif event.type == "Terminated":
                if event.exit_code not in (None, 0) and not requested:
                    return True
                requested = False
        return False


@dataclass(frozen=True)
class Allocation:
    """An allocation stub, as GET /v1/job/:id/allocations lists it."""

    id: str
    eval_id: str
    name: str
    job_version: int
    client_status: str
    desired_status: str
    create_index: int
    modify_index: int
    task_states: Mapping[str, TaskState] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def task(self, name: str) -> TaskState | None:
        return self.task_states.get(name)


@dataclass(frozen=True)
class Job:
    """The parts of a registered job that deploy and verify need."""

    id: str
    version: int
    job_modify_index: int
    status: str
    stop: bool
    # In live mode ([job] mode = "live") init-databases is a sidecar that keeps running,
    # and reads its services from this variable.
    init_sidecar: bool = False
    services_variable: str | None = None


@dataclass(frozen=True)
class ParsedJob:
    """What Nomad's own parser made of a jobspec: ready for register_job."""

    id: str
    body: Mapping[str, Any]
    # The job file's text and the variables it was parsed with: the submission record.
    source: str = ""
    variables: JobVariables = field(default_factory=JobVariables)

    @property
    def init_sidecar(self) -> bool:
        return init_is_sidecar(self.body)

    @property
    def batch(self) -> bool:
        return is_batch(self.body)

    @property
    def services_variable(self) -> str | None:
        return services_variable(self.body)

    @property
    def kill_timeout(self) -> float:
        """The longest kill_timeout of the job's tasks, in seconds (Nomad's JSON has ns)."""
        longest = float(DEFAULT_KILL_TIMEOUT_SECONDS)
        for group in self.body.get("TaskGroups") or []:
            for raw in _mapping(group).get("Tasks") or []:
                value = _mapping(raw).get("KillTimeout")
                if isinstance(value, int) and not isinstance(value, bool):
                    longest = max(longest, value / 1e9)
        return longest


# consul-template's `nomadVar "path"` in a template of the init task: live mode.
_VARIABLE_READ: Final = re.compile(r'nomadVar\s+"([^"@]+)')


def _init_task(job: Mapping[str, Any]) -> Mapping[str, Any]:
    for group in job.get("TaskGroups") or []:
        for raw in _mapping(group).get("Tasks") or []:
            task = _mapping(raw)
            if task.get("Name") == INIT_TASK:
                return task
    return {}


def services_variable(job: Mapping[str, Any]) -> str | None:
    """The Nomad variable the init task's template reads the services file from
    (live mode), or None when the job carries the services file itself."""
    for raw in _init_task(job).get("Templates") or []:
        found = _VARIABLE_READ.search(str(_mapping(raw).get("EmbeddedTmpl") or ""))
        if found:
            return found.group(1)
    return None


def init_is_sidecar(job: Mapping[str, Any]) -> bool:
    """Whether the job's init-databases keeps running (watch mode): a poststart sidecar
    beside postgres, or the main task of a service job with no postgres task (an
    external cluster's live mode: a service job's main task is restarted whenever it
    exits, client/allocrunner/taskrunner/restarts/restarts.go NewRestartTracker)."""
    task = _init_task(job)
    lifecycle = _mapping(task.get("Lifecycle"))
    if lifecycle:
        return bool(lifecycle.get("Sidecar"))
    return bool(task) and not is_batch(job)


def is_batch(job: Mapping[str, Any]) -> bool:
    """A batch job (an external cluster's oneshot mode): Nomad runs it to completion,
    and again only as a new version (scheduler/reconciler filterOldTerminalAllocs
    ignores an older version's terminal allocations; the same version's stay)."""
    return job.get("Type") == "batch"


@dataclass(frozen=True)
class Variable:
    """A Nomad variable (GET /v1/var/:path): its items and the index CAS writes name."""

    path: str
    items: Mapping[str, str]
    modify_index: int


@dataclass(frozen=True)
class Submission:
    """What a job version was registered from (GET /v1/job/:id/submission)."""

    source: str
    variables: str
    variable_flags: Mapping[str, str]


@dataclass(frozen=True)
class Registration:
    """The answer to POST /v1/jobs."""

    eval_id: str
    job_modify_index: int
    warnings: str


@dataclass(frozen=True)
class Evaluation:
    """The scheduler's work item for one registration."""

    id: str
    status: str
    status_description: str
    blocked_eval: str
    # Task group -> why it could not be placed.
    placement_failures: Mapping[str, str] = field(default_factory=dict)


def newest(allocations: Sequence[Allocation]) -> Allocation | None:
    """The most recently created allocation: the highest CreateIndex."""
    return max(allocations, key=lambda alloc: alloc.create_index, default=None)


def job_label(hcl: str) -> str | None:
    """The label of the `job "..."` block of a jobspec, without evaluating anything."""
    match = _JOB_LABEL.search(hcl)
    if match is None:
        return None
    return match.group(1).replace('\\"', '"').replace("\\\\", "\\")


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
