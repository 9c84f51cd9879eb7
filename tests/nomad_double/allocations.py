"""Allocations of the Nomad double: each task's states and events, as a Nomad client makes them.

Not a scheduler: an allocation moves one step each time the job's allocations
are listed, so a test sees every state a poller could see, in Nomad's order.
What each step does follows the Nomad client (paths in hashicorp/nomad):

- every task of the group is in TaskStates as "pending", with a "Received"
  event, from the start (client/allocrunner/alloc_runner.go initTaskRunners,
  taskrunner/task_runner.go NewTaskRunner and Run);
- main tasks start first, poststart tasks once no main task is pending
  (client/allocrunner/tasklifecycle/coordinator.go);
- a task that exits non-zero goes through its restart block
  (taskrunner/restarts/restarts.go GetState): "Restarting" with the reason
  "Restart within policy" while the failures in the interval are at most
  ``attempts``; past that, mode "delay" restarts with "Exceeded allowed
  attempts, applying a delay" and mode "fail" gives "Not Restarting" with
  ``fails_task``: the task is dead and failed. A task that exits 0 is dead and
  not failed when it is not restarted on success: a non-sidecar poststart task,
  or any task of a batch job (restarts.go NewRestartTracker, onSuccess); the
  allocation of a batch job whose tasks all ended so is "complete";
- the init task is the one named init-databases, whatever its lifecycle: a
  poststart task beside postgres, or the main task of a job with no postgres
  task ([job] postgres = "external"), started with the main tasks;
- a vault block that cannot log in, and a template that cannot read Vault,
  fail the task without any restart ("Killing" with ``fails_task``:
  taskrunner/vault_hook.go, taskrunner/template/template.go);
- once a task is dead and failed, every live task gets "Sibling Task
  Failed", "Killing", "Terminated", "Killed" and the allocation is "failed"
  (alloc_runner.go handleTaskStateUpdates, killTasks, getClientStatus);
- ``restart_all`` is ``nomad alloc restart -all-tasks``
  (taskrunner/lifecycle.go restartImpl): "Restart Signaled", a running task
  stops ("Terminated"), then "Restarting" with no reason and no delay, which
  counts in ``Restarts``; a dead task gets the same without "Terminated", and
  its ``FinishedAt`` stays what it was (task_runner.go updateStateImpl).

Each event carries ``Details`` as the client fills them (nomad/structs
TaskEvent setters: exit_code, restart_reason, start_delay, fails_task,
failed_sibling, kill_timeout); the deprecated top-level fields are filled too.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Self

from nomad_pginit.errors import ConfigError
from nomad_pginit.render import TASK_CLUSTER_FILE, TASK_SERVICES_FILE
from nomad_pginit.report import APPLYING, INVALID_NEW_FILE, REASON_RELOAD
from nomad_pginit.spec import VARIABLE_ITEM, fingerprint, loads_parts

INIT_TASK: Final = "init-databases"
ZERO_TIME: Final = "0001-01-01T00:00:00Z"
MAX_EVENTS: Final = 10  # taskrunner/task_runner.go defaultMaxEvents
USER_RESTART: Final = "User requested all tasks to restart"  # client/client.go
EXCEEDED_DELAY: Final = "Exceeded allowed attempts, applying a delay"  # restarts.go
# {{ with secret "path" }} or {{ secret "path" }} in a template (consul-template).
_SECRET_READ: Final = re.compile(r'\{\{-?\s*(?:with\s+)?secret\s+"([^"]+)"')
# {{ with nomadVar "path" }}: consul-template's blocking read of a Nomad variable.
_VARIABLE_READ: Final = re.compile(r'nomadVar\s+"([^"@]+)')


@dataclass(frozen=True)
class TaskRun:
    """What one run of the init task's process does."""

    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    # False: the allocation never gets as far as starting the task.
    starts: bool = True
    # True: watch mode, a sidecar that keeps running after it logged its summary.
    keeps_running: bool = False
    # True: live mode's sidecar, whose passes the double plays from the services
    # its template reads from the variable (Behaviour.sidecar_pass).
    live: bool = False

    @classmethod
    def live_sidecar(cls) -> Self:
        return cls(keeps_running=True, live=True)

    @classmethod
    def ok(cls, summary: str = "summary: ok: 2 services in sync (0 created, 2 unchanged)") -> Self:
        return cls(
            exit_code=0,
            stdout=(
                "2026-11-21T23:24:21Z INFO nomad-pginit: 2 services in /local/pginit.toml\n"
                "2026-11-21T23:24:21Z INFO gitea: unchanged\n"
                f"2026-11-21T23:24:22Z INFO {summary}\n"
            ),
        )

    @classmethod
    def watching(cls, summary: str = "summary: ok: 2 services in sync (2 unchanged)") -> Self:
        return cls(
            stdout=(
                "2026-11-21T23:24:21Z INFO watching /local/pginit.toml and the Vault secrets "
                "every 10s\n"
                "2026-11-21T23:24:21Z INFO applying (start)\n"
                f"2026-11-21T23:24:22Z INFO {summary}\n"
            ),
            keeps_running=True,
        )

    @classmethod
    def failed(cls) -> Self:
        return cls(
            exit_code=1,
            stdout=(
                "2026-11-21T23:24:21Z ERROR freshrss: failed: no secret at "
                "secret/postgres/freshrss in Vault\n"
                "2026-11-21T23:24:22Z ERROR summary: failed: 1 of 2 services failed (freshrss); "
                "others: 1 unchanged\n"
            ),
        )


@dataclass
class Clock:
    """Event times in unix nanoseconds, one second apart, so their order is their time."""

    now: int = 1_700_000_000_000_000_000

    def tick(self) -> int:
        self.now += 1_000_000_000
        return self.now


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _restarts_on_success(job_type: str, lifecycle: Mapping[str, Any]) -> bool:
    """client/allocrunner/taskrunner/restarts/restarts.go NewRestartTracker: batch jobs'
    tasks are not restarted when they exit 0; prestart and poststart tasks only when
    they are sidecars; poststop never."""
    on_success = job_type not in ("batch", "sysbatch")
    hook = lifecycle.get("Hook")
    if hook in ("prestart", "poststart"):
        on_success = bool(lifecycle.get("Sidecar"))
    if hook == "poststop":
        on_success = False
    return on_success


def _go_duration(ns: int) -> str:
    """time.Duration.String() for whole seconds, minutes and hours: "5m0s", "30s"."""
    seconds = ns // 1_000_000_000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass
class RestartPolicy:
    """A task's restart block; Nomad's service default when it has none (api/tasks.go)."""

    attempts: int = 2
    interval: int = 30 * 60 * 1_000_000_000
    delay: int = 15 * 1_000_000_000
    mode: str = "fail"

    @classmethod
    def of(cls, task: Mapping[str, Any], group: Mapping[str, Any]) -> RestartPolicy:
        policy = cls()
        for source in (group.get("RestartPolicy") or {}, task.get("RestartPolicy") or {}):
            policy.attempts = source.get("Attempts", policy.attempts)
            policy.interval = source.get("Interval", policy.interval)
            policy.delay = source.get("Delay", policy.delay)
            policy.mode = source.get("Mode", policy.mode)
        return policy


@dataclass
class Task:
    """One task runner: its TaskState as the API shows it, and its log."""

    name: str
    hook: str | None  # None: a main task
    sidecar: bool
    policy: RestartPolicy
    kill_timeout: int
    vault_role: str | None  # None: no vault block
    template_secrets: tuple[str, ...]  # Vault paths the task's templates read
    # Nomad variables its templates read (nomadVar), and whether a change signals
    # the task (change_mode = "signal") or restarts it.
    clock: Clock
    template_variables: tuple[str, ...] = ()
    signals_on_change: bool = False
    state: str = "pending"
    failed: bool = False
    restarts: int = 0
    failures: int = 0  # in the current interval (restarts.go count)
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME
    last_restart: str = ZERO_TIME
    events: list[dict[str, Any]] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    run: TaskRun | None = None  # the run in progress
    set_up: bool = False
    # restarts.go NewRestartTracker: a task exiting 0 is restarted only when true.
    restarts_on_success: bool = True

    @property
    def main(self) -> bool:
        return self.hook is None

    def event(self, kind: str, display: str, **details: str) -> dict[str, Any]:
        """Append an event as taskrunner appendEvent does (the last 10 are kept)."""
        event: dict[str, Any] = {
            "Type": kind,
            "Time": self.clock.tick(),
            "Message": "",
            "DisplayMessage": display,
            "Details": dict(details),
            "FailsTask": details.get("fails_task") == "true",
            "RestartReason": details.get("restart_reason", ""),
            "ExitCode": int(details.get("exit_code", "0")),
            # SetSignal writes a number; SetSignalText (the signal API) words in Details only.
            "Signal": int(details["signal"]) if details.get("signal", "").isdigit() else 0,
            "TaskSignal": details.get("task_signal", ""),
            "KillTimeout": 0,
            "StartDelay": int(details.get("start_delay", "0")),
            "FailedSibling": details.get("failed_sibling", ""),
        }
        self.events.append(event)
        del self.events[:-MAX_EVENTS]
        if event["FailsTask"]:
            self.failed = True
        if kind == "Restarting":
            self.restarts += 1
            self.last_restart = _rfc3339(event["Time"])
        return event

    def set_state(self, state: str) -> None:
        """task_runner.go updateStateImpl: StartedAt on entering running, FinishedAt once."""
        if state == "running" and self.state != "running":
            self.started_at = _rfc3339(self.clock.now)
        if state == "dead" and self.finished_at == ZERO_TIME:
            self.finished_at = _rfc3339(self.clock.now)
        self.state = state

    def document(self) -> dict[str, Any]:
        return {
            "State": self.state,
            "Failed": self.failed,
            "Restarts": self.restarts,
            "LastRestart": self.last_restart,
            "StartedAt": self.started_at,
            "FinishedAt": self.finished_at,
            "Events": [dict(event) for event in self.events],
            "Paused": "",
        }


@dataclass
class Behaviour:
    """How the cluster around the allocation behaves: set by the test through the double."""

    # What the init task's successive runs do; the last one repeats.
    runs: list[TaskRun]
    # Vault refuses the login of a vault block with one of these roles, and the
    # reads of these paths by templates.
    refused_vault_roles: set[str] = field(default_factory=set)
    unreadable_secrets: set[str] = field(default_factory=set)
    # The postgres task's own output.
    main_stdout: str = "LOG:  database system is ready to accept connections\n"
    # What the init task prints after a SIGHUP (a template re-rendered, or the
    # signal API); None: one pass of a live-mode sidecar, played from the variable.
    reload_output: str | None = None
    # The client's template wait (5 s by default, client/config/config.go): a
    # changed variable is rendered, and the task signalled, this many steps later.
    render_delay_steps: int = 0
    # Variables the client cannot read for its templates (its Nomad servers away,
    # or no ACL for them): after consul-template's retries the task fails for good.
    unreadable_variables: set[str] = field(default_factory=set)
    # The variables Nomad holds, (namespace, path) -> items: templates read them.
    variables: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def next_run(self) -> TaskRun:
        return self.runs.pop(0) if len(self.runs) > 1 else self.runs[0]


@dataclass
class Allocation:
    id: str
    eval_id: str
    namespace: str
    job_id: str
    job_version: int
    group: str
    create_index: int
    modify_index: int
    tasks: dict[str, Task]
    behaviour: Behaviour
    clock: Clock
    desired_status: str = "run"
    steps: deque[Callable[[], None]] = field(default_factory=deque)
    # A seeded allocation's own script of runs; until a restart, used before the double's.
    own_runs: list[TaskRun] | None = None
    job_type: str = "service"

    @classmethod
    def create(
        cls,
        *,
        job: Mapping[str, Any],
        namespace: str,
        eval_id: str,
        job_version: int,
        index: int,
        behaviour: Behaviour,
        clock: Clock,
    ) -> Allocation:
        group = job["TaskGroups"][0]
        tasks = {}
        for raw in group.get("Tasks") or []:
            lifecycle = raw.get("Lifecycle") or {}
            task = Task(
                name=raw["Name"],
                hook=lifecycle.get("Hook"),
                sidecar=bool(lifecycle.get("Sidecar")),
                policy=RestartPolicy.of(raw, group),
                kill_timeout=raw.get("KillTimeout") or 5_000_000_000,
                vault_role=(raw["Vault"].get("Role") or "") if raw.get("Vault") else None,
                template_secrets=tuple(
                    path
                    for template in raw.get("Templates") or []
                    for path in _SECRET_READ.findall(template.get("EmbeddedTmpl") or "")
                ),
                template_variables=tuple(
                    path
                    for template in raw.get("Templates") or []
                    for path in _VARIABLE_READ.findall(template.get("EmbeddedTmpl") or "")
                ),
                signals_on_change=any(
                    template.get("ChangeMode") == "signal"
                    for template in raw.get("Templates") or []
                ),
                clock=clock,
                restarts_on_success=_restarts_on_success(job.get("Type") or "service", lifecycle),
            )
            task.event("Received", "Task received by client")
            tasks[task.name] = task
        alloc = cls(
            id=str(uuid.uuid4()),
            eval_id=eval_id,
            namespace=namespace,
            job_id=job["ID"],
            job_version=job_version,
            group=group["Name"],
            create_index=index,
            modify_index=index,
            tasks=tasks,
            behaviour=behaviour,
            clock=clock,
            job_type=job.get("Type") or "service",
        )
        alloc.steps.append(alloc._start_main_tasks)
        return alloc

    # --- what the API shows --------------------------------------------------------------

    @property
    def client_status(self) -> str:
        """alloc_runner.go getClientStatus, in its order of precedence."""
        states = list(self.tasks.values())
        if any(task.state == "dead" and task.failed for task in states):
            return "failed"
        if any(task.state == "running" for task in states):
            return "running"
        if any(task.state == "pending" for task in states):
            return "pending"
        return "complete"

    def stub(self) -> dict[str, Any]:
        """An AllocListStub (nomad/structs/alloc.go)."""
        return {
            "ID": self.id,
            "EvalID": self.eval_id,
            "Name": f"{self.job_id}.{self.group}[0]",
            "Namespace": self.namespace,
            "NodeID": "f3c1e9a4-2b7d-4c1e-9d0a-5e6f7a8b9c0d",
            "NodeName": "client-1",
            "JobID": self.job_id,
            "JobType": self.job_type,
            "JobVersion": self.job_version,
            "TaskGroup": self.group,
            "DesiredStatus": self.desired_status,
            "DesiredDescription": "",
            "ClientStatus": self.client_status,
            "ClientDescription": "",
            "TaskStates": {name: task.document() for name, task in self.tasks.items()},
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
            "CreateTime": self.create_index * 1_000_000_000,
            "ModifyTime": self.modify_index * 1_000_000_000,
        }

    def advance(self) -> None:
        """One step further, if there is one (the double calls this per listing)."""
        if self.steps:
            self.steps.popleft()()

    def settle(self) -> None:
        """The allocation as it stands long after: every step, up to the wait of mode
        "delay" (a task that keeps failing restarts for ever, an interval apart)."""
        while self.steps and not self._waiting_out_an_interval():
            self.advance()

    def _waiting_out_an_interval(self) -> bool:
        return any(
            task.state == "pending"
            and task.events
            and task.events[-1]["Details"].get("restart_reason") == EXCEEDED_DELAY
            for task in self.tasks.values()
        )

    # --- the steps -----------------------------------------------------------------------

    def _live(self) -> list[Task]:
        return [task for task in self.tasks.values() if task.state != "dead"]

    def _fail_for_good(self, task: Task, display: str, *, hook_message: str | None = None) -> None:
        """A task that fails with no restart at all; then its siblings are killed."""
        task.event("Killing", display, fails_task="true")
        if hook_message is not None:
            task.event("Task hook failed", hook_message, message=hook_message)
            task.event(
                "Not Restarting",
                "Error was unrecoverable",
                restart_reason="Error was unrecoverable",
                fails_task="true",
            )
        task.set_state("dead")
        self.steps.append(lambda: self._kill_siblings(task))

    def _kill_siblings(self, failed: Task) -> None:
        """alloc_runner.go: every live task is killed once one is dead and failed."""
        for task in self._live():
            task.event(
                "Sibling Task Failed",
                f'Task\'s sibling "{failed.name}" failed',
                failed_sibling=failed.name,
            )
            timeout = _go_duration(min(task.kill_timeout, 30_000_000_000))
            task.event(
                "Killing",
                f"Sent interrupt. Waiting {timeout} before force killing",
                kill_timeout=timeout,
            )
            if task.state == "running":
                task.event(
                    "Terminated", "Exit Code: 0", exit_code="0", signal="0", oom_killed="false"
                )
            task.event("Killed", "Task successfully killed")
            task.set_state("dead")
        self.steps.clear()

    def _start(self, task: Task) -> bool:
        """Prestart hooks, then the driver: False when a hook failed the task for good."""
        if not task.set_up:
            task.event("Task Setup", "Building Task Directory", message="Building Task Directory")
            task.set_up = True
        if task.vault_role is not None and task.vault_role in self.behaviour.refused_vault_roles:
            reason = f'role "{task.vault_role}" could not be found'
            self._fail_for_good(
                task,
                "Vault: failed to derive vault token: failed to derive Vault token for identity "
                "vault_default: failed to login with JWT: Error making API request. Code: 400. "
                f"Errors: * {reason}",
                hook_message=f"vault: failed to derive Vault token: {reason}",
            )
            return False
        denied = [
            path for path in task.template_variables if path in self.behaviour.unreadable_variables
        ]
        if denied:
            # template.go handleFirstRender: the runner's error after nomad_retry's
            # attempts (12 by default) kills the task with SetFailsTask.
            self._fail_for_good(
                task,
                f"Template failed: nomad.var.block({denied[0]}@{self.namespace}.global): "
                "Unexpected response code: 403 (Permission denied) (exceeded maximum retries)",
            )
            return False
        missing = [
            path
            for path in task.template_variables
            if (self.namespace, path) not in self.behaviour.variables
        ]
        if missing:
            # consul-template's nomadVar blocks on a variable that does not exist: the
            # task waits, with a "Missing" event every few seconds (template.go).
            if not task.events or task.events[-1]["Type"] != "Template":
                task.event(
                    "Template",
                    f"Missing: nomad.var.block({missing[0]}@{self.namespace}.global)",
                )
            self.steps.append(functools.partial(self._retry_start, task))
            return False
        unreadable = [
            path for path in task.template_secrets if path in self.behaviour.unreadable_secrets
        ]
        if unreadable:
            # After consul-template's retries (12 by default, about 5 minutes).
            self._fail_for_good(
                task,
                f"Template failed: vault.read({unreadable[0]}): Error making API request. "
                "Code: 403. Errors: * permission denied (exceeded maximum retries)",
            )
            return False
        if task.name != INIT_TASK:
            task.stdout += self.behaviour.main_stdout
        else:
            task.run = self._next_run()
            if not task.run.starts:
                return False
            if task.run.live:
                output, valid = self._sidecar_pass(task, "start")
                task.stdout += output
                if not valid:
                    # run --watch exits 2 when its first file is invalid.
                    task.run = TaskRun(exit_code=2)
            task.stdout += task.run.stdout
            task.stderr += task.run.stderr
        task.event("Started", "Task started by client")
        task.set_state("running")
        return True

    def _next_run(self) -> TaskRun:
        if self.own_runs:
            return self.own_runs.pop(0) if len(self.own_runs) > 1 else self.own_runs[0]
        return self.behaviour.next_run()

    def _start_main_tasks(self) -> None:
        started = all(self._start(task) for task in self.tasks.values() if task.main)
        if not started:
            return
        init = self.tasks.get(INIT_TASK)
        if init is not None and init.main:
            # No postgres task in the job: the init task is its main task.
            self.steps.append(functools.partial(self._finish_run, init))
        if any(task.hook == "poststart" for task in self.tasks.values()):
            self.steps.append(self._start_poststart_tasks)

    def _start_poststart_tasks(self) -> None:
        for task in self.tasks.values():
            if task.hook == "poststart" and task.state == "pending" and self._start(task):
                self.steps.append(functools.partial(self._finish_run, task))

    def _retry_start(self, task: Task) -> None:
        if task.state == "pending" and self._start(task):
            self.steps.append(functools.partial(self._finish_run, task))

    def variable_changed(self, path: str) -> None:
        """A variable a running task's template reads was written: Nomad re-renders the
        template and, with change_mode = "signal", signals the task
        (client/allocrunner/taskrunner/template/template.go handleTemplateRerenders)."""
        for task in self.tasks.values():
            if (
                path in task.template_variables
                and task.state == "running"
                and task.signals_on_change
            ):
                if not self.behaviour.render_delay_steps:
                    self._rerendered(task)
                    continue
                waits = [lambda: None] * self.behaviour.render_delay_steps
                self.steps.extend([*waits, functools.partial(self._rerendered, task)])

    def _rerendered(self, task: Task) -> None:
        if task.state != "running":
            return  # a restarting task reads the file when it starts again
        # template.go: SetTaskSignal(s) (Go's name for SIGHUP) and its own display.
        task.event("Signaling", "Template re-rendered", task_signal="hangup")
        task.stdout += self._reload_output(task)

    def signal(self, task_name: str, signal: str) -> None:
        """POST /v1/client/allocation/:id/signal (alloc_runner.go Signal)."""
        task = self.tasks[task_name]
        # alloc_runner.go Signal: SetSignalText only, so Nomad's display message is
        # structs.go's "Task being sent a signal".
        task.event("Signaling", "Task being sent a signal", signal=signal)
        if signal == "SIGHUP":
            task.stdout += self._reload_output(task)

    def _reload_output(self, task: Task) -> str:
        if self.behaviour.reload_output is not None:
            return self.behaviour.reload_output
        return self._sidecar_pass(task, REASON_RELOAD)[0]

    def _sidecar_pass(self, task: Task, reason: str) -> tuple[str, bool]:
        """What `run --watch --services` logs for a pass over the services the task's
        template rendered from the variable, and whether the file was valid."""
        items = self.behaviour.variables.get((self.namespace, task.template_variables[0]), {})
        text = items.get(VARIABLE_ITEM, "") + "\n"  # the template's own newline
        when = "2026-11-21T23:30:00Z"
        try:
            services = loads_parts("", Path(TASK_CLUSTER_FILE), text, Path(TASK_SERVICES_FILE))
        except ConfigError as err:
            first = str(err)
            if reason == "start":
                return f"{when} ERROR {first}\n", False
            return f"{when} ERROR the new /local/pginit.toml {INVALID_NEW_FILE}: {first}\n", True
        count = len(services.services)
        return (
            f"{when} INFO {APPLYING} ({reason}): {count} services, fingerprint "
            f"{fingerprint(services.services)}\n"
            f"{when} INFO summary: ok: {count} services in sync (0 created, {count} unchanged)\n",
            True,
        )

    def _finish_run(self, task: Task) -> None:
        run = task.run
        assert run is not None
        if run.keeps_running:
            return
        code = str(run.exit_code)
        display = f"Exit Code: {code}"
        details = {"exit_code": code, "signal": "0", "oom_killed": "false"}
        if run.exit_code:
            details["exit_message"] = f"Docker container exited with non-zero exit code: {code}"
            display += f', Exit Message: "{details["exit_message"]}"'
        task.event("Terminated", display, **details)
        if run.exit_code == 0 and not task.restarts_on_success:
            task.set_state(
                "dead"
            )  # restarts.go: "Restart unnecessary as task terminated successfully"
            return
        self._apply_restart_policy(task)

    def _apply_restart_policy(self, task: Task) -> None:
        """restarts.go GetState for a failure (interval bookkeeping left out: one interval)."""
        policy = task.policy
        task.failures += 1
        if task.failures > policy.attempts:
            if policy.mode == "fail":
                reason = (
                    f"Exceeded allowed attempts {policy.attempts} in interval "
                    f'{_go_duration(policy.interval)} and mode is "fail"'
                )
                task.event("Not Restarting", reason, restart_reason=reason, fails_task="true")
                task.set_state("dead")
                self.steps.append(lambda: self._kill_siblings(task))
                return
            reason, delay = EXCEEDED_DELAY, policy.interval
        else:
            reason, delay = "Restart within policy", policy.delay
        in_ = f"Task restarting in {_go_duration(delay)}"
        display = in_ if reason == "Restart within policy" else f"{reason} - {in_}"
        task.event("Restarting", display, start_delay=str(delay), restart_reason=reason)
        task.set_state("pending")
        self.steps.append(lambda: self._restart(task))

    def _restart(self, task: Task) -> None:
        if self._start(task):
            self.steps.append(lambda: self._finish_run(task))

    # --- what the API asks ---------------------------------------------------------------

    def restart_all(self) -> None:
        """``PUT /v1/client/allocation/:id/restart`` with AllTasks (lifecycle.go restartImpl).

        The call returns once the running tasks have stopped; then every task
        restarts in lifecycle order, the poststart ones once main is running.
        """
        self.own_runs = None  # the run after a restart is what the test says now
        for task in self.tasks.values():
            if task.state == "pending":
                continue  # ErrTaskNotRunning, ignored by restartTasks
            was_running = task.state == "running"
            task.event("Restart Signaled", USER_RESTART, restart_reason=USER_RESTART)
            if was_running:
                task.event(
                    "Terminated", "Exit Code: 0", exit_code="0", signal="0", oom_killed="false"
                )
            task.event("Restarting", "Task restarting in 0s", start_delay="0", restart_reason="")
            task.set_state("pending")
        self.steps.clear()
        self.steps.append(self._start_main_tasks)

    def stop(self) -> None:
        """A newer version replaced this allocation: every live task is killed."""
        self.desired_status = "stop"
        for task in self._live():
            timeout = _go_duration(min(task.kill_timeout, 30_000_000_000))
            task.event(
                "Killing",
                f"Sent interrupt. Waiting {timeout} before force killing",
                kill_timeout=timeout,
            )
            if task.state == "running":
                task.event(
                    "Terminated", "Exit Code: 0", exit_code="0", signal="0", oom_killed="false"
                )
            task.event("Killed", "Task successfully killed")
            task.set_state("dead")
        self.steps.clear()
