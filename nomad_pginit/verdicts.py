"""Did a run of the init-databases task succeed? The checks on its allocation, its
exit and its log, as ``verify`` and ``deploy`` judge them, and how they are shown."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from nomad_pginit import tasklog
from nomad_pginit.errors import ConfigError, ExitCode, NomadUnavailable
from nomad_pginit.nomad import INIT_TASK, Allocation, Nomad, TaskState, newest
from nomad_pginit.report import SUMMARY_PREFIX
from nomad_pginit.spec import VARIABLE_ITEM, fingerprint, loads_parts
from nomad_pginit.tasklog import summary_line

log = logging.getLogger("nomad_pginit")

# --- the verdict ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One of the three things that must hold for a successful run."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    """What one run of init-databases left behind, and whether it succeeded."""

    job: str
    allocation: Allocation
    task: TaskState | None
    stdout: str
    stderr: str
    summary: str | None
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def failures(self) -> str:
        return "; ".join(f"{check.name}: {check.detail}" for check in self.checks if not check.ok)

    def document(self) -> dict[str, object]:
        """The verdict as the JSON object that --json prints."""
        return {
            "job": self.job,
            "alloc_id": self.allocation.id,
            "alloc_client_status": self.allocation.client_status,
            "task": INIT_TASK,
            "task_state": self.task.state if self.task else None,
            "task_failed": self.task.failed if self.task else None,
            "exit_code": self.task.exit_code if self.task else None,
            "summary_line": self.summary,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "ok": self.ok,
            "checks": [
                {"name": check.name, "ok": check.ok, "detail": check.detail}
                for check in self.checks
            ],
        }


def judge(
    job: str,
    allocation: Allocation,
    stdout: str,
    stderr: str,
    *,
    sidecar: bool = False,
    expected: str | None = None,
) -> Verdict:
    """Check the task's state, its exit code and its summary line. No I/O.

    ``sidecar``: live mode, where the task keeps running and each pass logs a
    summary; running is then the good state, there is no exit code yet, and the
    last finished pass is what is judged (and shown). ``expected``: the
    fingerprint of the services it should be applying (the variable's), checked
    against that pass's.
    """
    task = allocation.task(INIT_TASK)
    if not sidecar:
        summary = summary_line(stdout) or summary_line(stderr)
        oneshot = (
            _state_check(allocation, task, sidecar=False),
            _exit_check(task),
            _summary_check(summary, stdout, stderr),
        )
        return Verdict(job, allocation, task, stdout, stderr, summary, oneshot)
    finished = tasklog.last_finished(stdout)
    shown = stdout[finished.start :] if finished is not None else stdout
    summary = finished.summary if finished is not None else summary_line(stderr)
    summary_check = _summary_check(summary, shown, stderr)
    if finished is not None and finished.refusals and summary_check.ok:
        first = finished.refusals[-1].split("\n", 1)[0]
        summary_check = Check(
            "summary line",
            False,
            f"{summary}, but since then {INIT_TASK} refused a new services file and keeps "
            f"applying the last good one: {first}",
        )
    checks: list[Check]
    if task is not None and task.state == "running":
        checks = [
            Check("task state", True, "running (live mode: a sidecar that keeps running)"),
            Check("exit code", True, "none yet: the live-mode sidecar is still running"),
            summary_check,
        ]
    else:
        checks = [_state_check(allocation, task, sidecar=True), _exit_check(task), summary_check]
    if expected is not None:
        checks.append(_services_check(finished, expected))
    return Verdict(job, allocation, task, shown, stderr, summary, tuple(checks))


def _services_check(finished: tasklog.Pass | None, expected: str) -> Check:
    if finished is None:
        return Check("services", False, "no pass has finished yet")
    if finished.fingerprint is None:
        return Check(
            "services", True, "not compared: this sidecar does not log what it applies (older)"
        )
    if finished.fingerprint == expected:
        return Check(
            "services",
            True,
            f"the last pass applied the services the variable holds (fingerprint {expected})",
        )
    return Check(
        "services",
        False,
        f"the variable holds services with fingerprint {expected}, the last pass applied "
        f"{finished.fingerprint}: Nomad has not re-rendered the file yet, or {INIT_TASK} "
        "refused it (deploy waits for it and says which)",
    )


def _state_check(allocation: Allocation, task: TaskState | None, *, sidecar: bool) -> Check:
    if task is not None and task.state == "dead" and not task.failed and not sidecar:
        return Check("task state", True, "dead, not failed")
    if task is not None and task.state == "dead" and sidecar:
        detail = f"{INIT_TASK} runs in watch mode but is dead: it should keep running"
    elif task is None or task.state == "":
        detail = f"{INIT_TASK} has not started (allocation {allocation.client_status})"
    elif task.state != "dead":
        code = task.exit_code
        if code not in (None, 0):
            detail = (
                f"{INIT_TASK} exited with code {code} and Nomad restarts it "
                f"(restarts so far: {task.restarts}; now {task.state})"
            )
        else:
            detail = f"{INIT_TASK} is still {task.state}, not finished"
    else:
        restarts = f" after {task.restarts} restarts" if task.restarts else ""
        detail = f"{INIT_TASK} failed{restarts}"
        last = task.last_event
        if last is not None and last.message:
            detail += f" ({last.type}: {last.message})"
    others = [
        f"{name} {state.state}{', failed' if state.failed else ''}{_event_note(state)}"
        for name, state in sorted(allocation.task_states.items())
        if name != INIT_TASK and state.failed
    ]
    if allocation.client_status in ("failed", "lost"):
        detail += f"; the allocation is {allocation.client_status}"
    if others:
        detail += "; " + "; ".join(others)
    return Check("task state", False, detail)


def _event_note(state: TaskState) -> str:
    event = state.last_event
    return f" ({event.message})" if event is not None and event.message else ""


def _exit_check(task: TaskState | None) -> Check:
    code = task.exit_code if task is not None else None
    if code is None:
        return Check("exit code", False, "no exit code recorded: the task has not exited")
    if code != 0:
        return Check("exit code", False, f"{code}, not 0")
    return Check("exit code", True, "0")


def _summary_check(summary: str | None, stdout: str, stderr: str) -> Check:
    if summary is None:
        if not stdout.strip() and not stderr.strip():
            return Check(
                "summary line",
                False,
                "the log is empty: no summary line (the task wrote nothing, or Nomad no longer "
                "has its log)",
            )
        return Check(
            "summary line",
            False,
            f"no '{SUMMARY_PREFIX} ok' line in the log: the run did not finish, or the task "
            "does not run nomad-pginit run",
        )
    if summary.startswith(f"{SUMMARY_PREFIX} ok"):
        return Check("summary line", True, summary)
    return Check("summary line", False, summary)


def read_verdict(
    client: Nomad,
    job: str,
    allocation: Allocation,
    *,
    sidecar: bool = False,
    earlier_stdout: str = "",
    earlier_stderr: str = "",
    expected: str | None = None,
) -> Verdict:
    """Fetch the task's logs and judge. ``earlier_*``: log text of previous runs to leave out."""
    stdout = without_prefix(client.task_log(allocation.id, INIT_TASK, "stdout"), earlier_stdout)
    stderr = without_prefix(client.task_log(allocation.id, INIT_TASK, "stderr"), earlier_stderr)
    return judge(job, allocation, stdout, stderr, sidecar=sidecar, expected=expected)


def without_prefix(text: str, earlier: str) -> str:
    # A restarted task appends to the same log file.
    return text[len(earlier) :] if earlier and text.startswith(earlier) else text


# --- output ------------------------------------------------------------------------------------


def show_log(
    stream: str, text: str, allocation: Allocation, log_format: str, *, always: bool = True
) -> None:
    """The task's log as it is, between two marker lines; JSON logs get one record per line."""
    if not text and not always:
        return
    title = f"{INIT_TASK} {stream} (allocation {allocation.short_id})"
    if log_format == "json":
        for line in text.splitlines() or ["(empty)"]:
            log.info("%s", line, extra={"event": f"task_{stream}"})
        return
    body = (text if text.endswith("\n") else text + "\n") if text else "(empty)\n"
    sys.stdout.write(f"--- {title} ---\n{body}--- end of {stream} ---\n")
    sys.stdout.flush()


def report_checks(verdict: Verdict) -> None:
    for check in verdict.checks:
        level = logging.INFO if check.ok else logging.ERROR
        log.log(level, "[%s] %s: %s", "ok" if check.ok else "FAILED", check.name, check.detail)


# --- the verdict on a job's newest allocation ---------------------------------------------


def verify(client: Nomad, job: str) -> Verdict | None:
    """The verdict on the newest allocation of ``job``; None when it has none."""
    found = client.job(job)  # a clear "job not found" rather than an empty list
    allocation = newest(client.allocations(job))
    if allocation is None:
        return None
    expected = None
    if found.services_variable is not None:
        expected = published_fingerprint(client, found.services_variable)
    return read_verdict(client, job, allocation, sidecar=found.init_sidecar, expected=expected)


def published_fingerprint(client: Nomad, path: str) -> str | None:
    """The fingerprint of the services live mode's variable holds, or None when it cannot
    be read (no variables read on the token, say: the check is left out, and said so)."""
    try:
        variable = client.variable(path)
    except NomadUnavailable as err:
        log.info("not comparing the services with variable %s: %s", path, err)
        return None
    text = variable.items.get(VARIABLE_ITEM) if variable is not None else None
    if not text:
        return None
    try:
        held = loads_parts("", Path("(job)"), text, Path(path))
    except ConfigError as err:
        log.warning("variable %s holds services nomad-pginit cannot read: %s", path, err)
        return None
    return fingerprint(held.services)


def present(
    verdict: Verdict, log_format: str, command: str = "verify", *, always_stderr: bool = True
) -> int:
    """Show the task's log, each check and the conclusion; return the exit code."""
    show_log("stdout", verdict.stdout, verdict.allocation, log_format)
    show_log("stderr", verdict.stderr, verdict.allocation, log_format, always=always_stderr)
    report_checks(verdict)
    return conclude(verdict, command)


def conclude(verdict: Verdict, command: str = "verify") -> int:
    """Log the one-line conclusion and return the exit code."""
    alloc = verdict.allocation.short_id
    if verdict.ok:
        log.info(
            "%s: ok: %s succeeded in allocation %s (job %s version %d)",
            command,
            INIT_TASK,
            alloc,
            verdict.job,
            verdict.allocation.job_version,
        )
        return int(ExitCode.OK)
    failed = ", ".join(check.name for check in verdict.checks if not check.ok)
    log.error("%s: failed: %s in allocation %s: %s", command, INIT_TASK, alloc, failed)
    return int(ExitCode.SERVICE_FAILED)
