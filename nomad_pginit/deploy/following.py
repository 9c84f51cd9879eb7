"""Following a deploy in Nomad: the evaluation, the new allocation, the init task's states.

What ``deploy`` does after it registers a job, in either mode: poll with a
deadline (``Deployment.sleep``), one log line per state change, and judge
the init task's result through ``verdicts``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

from nomad_pginit import tasklog, verdicts
from nomad_pginit.errors import ExitCode, PginitError
from nomad_pginit.nomad import (
    ALLOC_DONE,
    EVAL_DONE,
    INIT_TASK,
    Allocation,
    Evaluation,
    Job,
    Nomad,
    ParsedJob,
    TaskState,
    newest,
)

log = logging.getLogger("nomad_pginit")

DEFAULT_TIMEOUT: Final = 300.0
# Polling starts fast (a task that finishes at once is reported at once) and
# slows down to this, so a long wait does not hammer the Nomad servers.
FIRST_POLL_SECONDS: Final = 0.2
MAX_POLL_SECONDS: Final = 2.0


class DeployFailed(PginitError):
    """The job was submitted, but the init task did not run to a result in time."""

    exit_code = ExitCode.SERVICE_FAILED


@dataclass(frozen=True)
class Deployment:
    """One deploy: where, which job, and until when."""

    client: Nomad
    job_id: str
    # Watch mode: init-databases keeps running, and each pass logs a summary.
    sidecar: bool
    deadline: float
    timeout: float
    log_format: str
    # The longest kill_timeout of the job's tasks: how long a restart may take.
    kill_timeout: float = 30.0
    # A batch job (an external cluster's oneshot mode): its allocation completes.
    batch: bool = False

    def sleep(self, interval: float, waiting_for: str) -> float:
        """Sleep before the next poll, or raise DeployFailed once the deadline has passed."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeployFailed(f"gave up after {self.timeout:g}s (--timeout): {waiting_for}")
        time.sleep(min(interval, remaining))
        return min(interval * 1.5, MAX_POLL_SECONDS)


def register_job(deployment: Deployment, parsed: ParsedJob) -> Evaluation:
    """Register the job and wait until the scheduler is done with its evaluation."""
    client = deployment.client
    registration = client.register_job(parsed)
    log.info(
        "job %s submitted to %s: evaluation %s",
        parsed.id,
        client.settings.where(),
        registration.eval_id[:8],
    )
    for warning in filter(None, registration.warnings.splitlines()):
        log.warning("Nomad warns: %s", warning.strip())
    return wait_for_evaluation(deployment, registration.eval_id)


def still_running(
    deployment: Deployment, before: Job | None, evaluation: Evaluation
) -> tuple[str, Allocation]:
    """When the registration made no new allocation: why, and the one that runs."""
    client = deployment.client
    after = client.job(deployment.job_id)
    if before is not None and after.job_modify_index == before.job_modify_index:
        why = f"job {deployment.job_id} is unchanged (version {after.version})"
    else:
        why = f"Nomad updated job {deployment.job_id} (version {after.version}) in place"
    allocations = client.allocations(deployment.job_id)
    running = (
        newest([alloc for alloc in allocations if alloc.desired_status == "run"])
        if deployment.batch
        else running_allocation(allocations)
    )
    if running is None:
        raise DeployFailed(
            f"{why} and has no running allocation: Nomad created none for evaluation "
            f"{evaluation.id[:8]} ({evaluation.status_description or evaluation.status}); "
            f"look at nomad job status {deployment.job_id}"
        )
    return why, running


def wait_for_evaluation(deployment: Deployment, eval_id: str) -> Evaluation:
    """Poll the evaluation until the scheduler is done with it."""
    last_status = ""
    interval = FIRST_POLL_SECONDS
    while True:
        evaluation = deployment.client.evaluation(eval_id)
        if evaluation.status != last_status:
            log.info("evaluation %s: %s", eval_id[:8], evaluation.status)
            last_status = evaluation.status
        if evaluation.status in ("failed", "canceled"):
            raise DeployFailed(
                f"evaluation {eval_id[:8]} {evaluation.status}: "
                f"{evaluation.status_description or 'no reason given'}; look at "
                f"nomad eval status {eval_id}"
            )
        if evaluation.status in EVAL_DONE:
            for group, reason in sorted(evaluation.placement_failures.items()):
                log.warning(
                    "Nomad could not place task group %s: %s; it waits for capacity%s",
                    group,
                    reason,
                    f" (evaluation {evaluation.blocked_eval[:8]})"
                    if evaluation.blocked_eval
                    else "",
                )
            return evaluation
        interval = deployment.sleep(interval, f"evaluation {eval_id[:8]} is {last_status}")


def wait_for_new_allocation(
    deployment: Deployment, evaluation: Evaluation, known: set[str]
) -> Allocation | None:
    """The allocation that this evaluation (or the one it blocked on) created, if any."""
    evals = {evaluation.id} | ({evaluation.blocked_eval} if evaluation.blocked_eval else set())
    interval = FIRST_POLL_SECONDS
    while True:
        created = [
            alloc
            for alloc in deployment.client.allocations(deployment.job_id)
            if alloc.id not in known and alloc.eval_id in evals
        ]
        found = newest(created)
        if found is not None:
            log.info("new allocation %s (job version %d)", found.id, found.job_version)
            return found
        if not evaluation.placement_failures:
            return None  # the scheduler is done and placed nothing new
        reasons = "; ".join(
            f"{group}: {reason}" for group, reason in sorted(evaluation.placement_failures.items())
        )
        interval = deployment.sleep(
            interval, f"Nomad placed no allocation for job {deployment.job_id} ({reasons})"
        )


def running_allocation(allocations: list[Allocation]) -> Allocation | None:
    running = [
        alloc
        for alloc in allocations
        if alloc.desired_status == "run" and alloc.client_status == "running"
    ]
    return newest(running)


def report_last(deployment: Deployment, running: Allocation, what: str, hint: str) -> int:
    """Judge the init task's last run (oneshot) or last pass (live) in ``running``."""
    verdict = verdicts.read_verdict(
        deployment.client, deployment.job_id, running, sidecar=deployment.sidecar
    )
    if verdict.ok:
        log.info(
            "its last %s in allocation %s succeeded: %s; %s",
            what,
            running.short_id,
            verdict.summary,
            hint,
        )
        return int(ExitCode.OK)
    log.error(
        "its last %s in allocation %s did not succeed: %s; nomad-pginit verify shows its log; %s",
        what,
        running.short_id,
        verdict.failures(),
        hint,
    )
    return int(ExitCode.SERVICE_FAILED)


def progress(allocation: Allocation, task: TaskState | None) -> str:
    if task is None or task.state == "":
        state = "not started"
    elif task.state == "pending" and task.started_at is None:
        # Nomad lists every task as pending from the start (task_runner.go NewTaskRunner).
        state = "pending, not started yet"
    else:
        state = task.state
        if task.state == "dead":
            state += ", failed" if task.failed else ""
            code = task.exit_code
            state += f", exit code {code}" if code is not None else ""
        if task.restarts:
            state += f" (restarts: {task.restarts})"
    return f"allocation {allocation.short_id}: {allocation.client_status}; {INIT_TASK}: {state}"


def poll_init_task(
    deployment: Deployment, start: Allocation, last_line: str
) -> tuple[Allocation, TaskState | None, str]:
    """The allocation ``start`` as Nomad lists it now, its init task, and the line
    that describes them (logged when it differs from ``last_line``)."""
    allocation = next(
        (a for a in deployment.client.allocations(deployment.job_id) if a.id == start.id), None
    )
    if allocation is None:
        raise DeployFailed(
            f"allocation {start.short_id} disappeared from job {deployment.job_id} (stopped "
            f"and garbage-collected?): look at nomad job status {deployment.job_id}"
        )
    task = allocation.task(INIT_TASK)
    line = progress(allocation, task)
    if line != last_line:
        log.info("%s", line)
    return allocation, task, line


def follow_and_report(
    deployment: Deployment,
    allocation: Allocation,
    *,
    previous: TaskState | None = None,
    earlier: tuple[str, str] = ("", ""),
) -> int:
    finished = follow(deployment, allocation, previous=previous, earlier_stdout=earlier[0])
    verdict = verdicts.read_verdict(
        deployment.client,
        deployment.job_id,
        finished,
        sidecar=deployment.sidecar,
        earlier_stdout=earlier[0],
        earlier_stderr=earlier[1],
    )
    return verdicts.present(verdict, deployment.log_format, "deploy", always_stderr=False)


def follow(
    deployment: Deployment,
    start: Allocation,
    *,
    previous: TaskState | None,
    earlier_stdout: str,
) -> Allocation:
    """Wait until the init task has a result (after ``previous``), one line per state change.

    The result: the task is dead; or it failed and Nomad restarts it; or, in
    watch mode, it is running and its first pass has logged its summary.
    """
    client = deployment.client
    # On --rerun the state before the restart was already reported.
    last_line = progress(start, previous) if previous is not None else ""
    last_restarts = previous.restarts if previous is not None else 0
    seen_restart = previous.last_policy_restart if previous is not None else None
    last_policy_restart = seen_restart.time if seen_restart is not None else 0
    interval = FIRST_POLL_SECONDS
    while True:
        allocation, task, last_line = poll_init_task(deployment, start, last_line)
        if task is not None and task.state == "dead" and task.ran_after(previous):
            return allocation
        if task is not None and task.failed_after(previous):
            log.warning(
                "%s exited with code %s; Nomad retries it as the job's restart block says, "
                "and this attempt's log tells what to fix",
                INIT_TASK,
                task.exit_code,
            )
            return allocation
        if deployment.sidecar and task is not None and task.state == "running":
            text = client.task_log(allocation.id, INIT_TASK, "stdout")
            if tasklog.summary_line(verdicts.without_prefix(text, earlier_stdout)) is not None:
                return allocation
        if task is not None and task.restarts > last_restarts:
            # A restart someone asked for (--rerun) is not reported as Nomad's doing.
            event = task.last_policy_restart
            if event is not None and event.time > last_policy_restart:
                log.warning(
                    "%s was restarted by Nomad (restart %d): %s",
                    INIT_TASK,
                    task.restarts,
                    event.message or event.restart_reason,
                )
                last_policy_restart = event.time
            last_restarts = task.restarts
        if allocation.client_status in ALLOC_DONE and (task is None or task.state != "running"):
            # Nothing will start the task any more (postgres failed first, for one).
            return allocation
        state = task.state if task and task.state else "not started"
        interval = deployment.sleep(
            interval,
            f"{INIT_TASK} did not finish: allocation {allocation.short_id} is "
            f"{allocation.client_status}, {INIT_TASK} is {state}. It may still finish: "
            f"nomad-pginit verify shows the result later (or nomad alloc status {allocation.id})",
        )
