"""``nomad-pginit deploy``: submit the rendered job and follow init-databases to its end.

It replaces ``nomad job run`` followed by finding the allocation by hand: the
job goes through Nomad's own parser, then the command follows the evaluation
to the new allocation, shows each state change of the init task, prints its
log and exits 0 only if the task succeeded.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nomad_pginit import jobspec, render, spec, tasklog, verdicts
from nomad_pginit.commands import repository
from nomad_pginit.errors import ConfigError, ExitCode, NomadUnavailable, PginitError
from nomad_pginit.live import Publication, publish
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
# Task events that announce a kill someone asked for, not a failure of the task.
_REQUESTED_KILLS: Final = frozenset({"Restart Signaled", "Killing"})


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

    def sleep(self, interval: float, waiting_for: str) -> float:
        """Sleep before the next poll, or raise DeployFailed once the deadline has passed."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DeployFailed(f"gave up after {self.timeout:g}s (--timeout): {waiting_for}")
        time.sleep(min(interval, remaining))
        return min(interval * 1.5, MAX_POLL_SECONDS)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    parser = subparsers.add_parser(
        "deploy",
        parents=[common],
        help="submit the rendered job to Nomad and wait for init-databases to finish",
        description=(
            "Parse the rendered job with Nomad's own parser, register it, follow the "
            f"evaluation to the new allocation, wait for its {INIT_TASK} task to finish "
            "(one line per state change), print its log, and exit 0 only if it succeeded "
            "(live mode: publish the services file into the job's Nomad variable first, "
            "register the job only when it differs from the version Nomad runs, and wait for "
            "the sidecar's pass that applies the services; --now sends it SIGHUP when nothing "
            "changed). An unchanged oneshot job gets "
            "no new allocation, so the task does not run again: deploy says so and reports "
            "the last run; --rerun restarts every task of the running allocation (postgres "
            "too) to run it again. The job's variables come from --var-file, --var and "
            "NOMAD_VAR_<name>, as nomad job run takes them. Reads NOMAD_ADDR (http, https or "
            "unix://), NOMAD_TOKEN, NOMAD_NAMESPACE, NOMAD_REGION, NOMAD_CACERT, NOMAD_CAPATH, "
            "NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY, NOMAD_TLS_SERVER_NAME, NOMAD_SKIP_VERIFY, "
            "NOMAD_HTTP_AUTH. Exit codes: 0 the task succeeded, 1 it failed or did not finish "
            "in time, 2 invalid command line, variables, or a job file Nomad rejects, 5 Nomad "
            "unreachable or the token rejected."
        ),
    )
    repository.add_job_file_option(parser)
    parser.add_argument(
        "--var-file",
        metavar="PATH",
        action="append",
        default=[],
        dest="var_files",
        help="a file of job variables (HCL or JSON), as nomad job run -var-file; repeatable, "
        "a later file wins",
    )
    parser.add_argument(
        "--var",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        dest="var_args",
        help="one job variable, as nomad job run -var; repeatable, wins over --var-file and "
        "NOMAD_VAR_<name>",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        default=str(DEFAULT_TIMEOUT),
        help=f"how long to wait for {INIT_TASK} to finish (default: {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help=f"when the job is unchanged, restart every task of the running allocation "
        f"(as nomad alloc restart -all-tasks does: postgres restarts too) so that {INIT_TASK} "
        "runs again",
    )
    parser.add_argument(
        "--now",
        action="store_true",
        help=f'live mode ([job] mode = "live"): when neither the job nor the services changed, '
        f"send SIGHUP to the running {INIT_TASK} sidecar through Nomad's API so that it "
        "applies the services file again at once (a rotated password, without waiting for "
        "--interval); PostgreSQL is not restarted",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="live mode: let the publication remove services that the variable holds and "
        "the services file does not (refused otherwise: an older checkout would drop "
        "someone else's services)",
    )
    parser.set_defaults(handler=main)


def parse_timeout(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"--timeout must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--timeout must be more than zero seconds, not {raw!r}")
    return value


def main(args: argparse.Namespace) -> int:
    timeout = parse_timeout(args.timeout)
    path = repository.job_file(args)
    hcl = repository.read_job_file(path)
    _warn_if_stale(args, path, hcl)
    variables = jobspec.compose(
        hcl, str(path), [Path(item) for item in args.var_files], args.var_args, os.environ
    )
    client = Nomad.from_environ(os.environ)

    parsed = client.parse_job(hcl, str(path), variables)
    if variables.assignments:
        log.info("job variables: %s", variables.describe())
    deployment = Deployment(
        client=client,
        job_id=parsed.id,
        sidecar=parsed.init_sidecar,
        deadline=time.monotonic() + timeout,
        timeout=timeout,
        log_format=args.log_format,
        kill_timeout=parsed.kill_timeout,
    )
    live = _live_services(args, parsed)
    if args.now and live is None:
        raise ConfigError(
            '--now is for live mode ([job] mode = "live"), where init-databases keeps '
            "running; this job runs it once per allocation: deploy --rerun runs it again"
        )
    before = client.find_job(parsed.id)
    known = {alloc.id for alloc in client.allocations(parsed.id)} if before else set()
    if live is not None:
        return _deploy_live(
            deployment,
            parsed,
            live,
            before,
            known,
            now=args.now,
            rerun=args.rerun,
            prune=args.prune,
        )
    return _register_and_follow(deployment, parsed, before, known, rerun=args.rerun)


def _register_and_follow(
    deployment: Deployment, parsed: ParsedJob, before: Job | None, known: set[str], *, rerun: bool
) -> int:
    """Oneshot mode: register the job, then follow the init task of the new allocation."""
    evaluation = _register(deployment, parsed)
    allocation = _wait_for_new_allocation(deployment, evaluation, known)
    if allocation is not None:
        if rerun:
            log.info("a new allocation runs %s anyway: --rerun is not needed", INIT_TASK)
        return _follow_and_report(deployment, allocation)
    why, running = _still_running(deployment, before, evaluation)
    if not rerun:
        return _report_unchanged(deployment, running, why)
    return _rerun(deployment, running, why)


def _register(deployment: Deployment, parsed: ParsedJob) -> Evaluation:
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
    return _wait_for_evaluation(deployment, registration.eval_id)


def _still_running(
    deployment: Deployment, before: Job | None, evaluation: Evaluation
) -> tuple[str, Allocation]:
    """When the registration made no new allocation: why, and the one that runs."""
    client = deployment.client
    after = client.job(deployment.job_id)
    if before is not None and after.job_modify_index == before.job_modify_index:
        why = f"job {deployment.job_id} is unchanged (version {after.version})"
    else:
        why = f"Nomad updated job {deployment.job_id} (version {after.version}) in place"
    running = _running_allocation(client.allocations(deployment.job_id))
    if running is None:
        raise DeployFailed(
            f"{why} and has no running allocation: Nomad created none for evaluation "
            f"{evaluation.id[:8]} ({evaluation.status_description or evaluation.status}); "
            f"look at nomad job status {deployment.job_id}"
        )
    return why, running


# --- live mode -------------------------------------------------------------------------------


def _live_services(args: argparse.Namespace, parsed: ParsedJob) -> spec.Spec | None:
    """The services file to publish when the job is a live-mode job, else None.

    The job and the services file must agree: a live job reads the variable the
    services file names, and a live services file needs a job rendered live.
    """
    config = repository.services_file(args, os.environ)
    variable = parsed.services_variable
    if variable is None:
        if config.is_file():
            services = spec.load(config)
            if services.job.live:
                raise ConfigError(
                    f'{config} says [job] mode = "live", but the job file carries the services '
                    "file itself (a oneshot job): run nomad-pginit render, then deploy again"
                )
        return None
    if not config.is_file():
        raise ConfigError(
            f"the job reads its services file from Nomad variable {variable} (live mode), and "
            f"deploy publishes it there from the services file, but {config} does not exist: "
            "pass --config PATH"
        )
    services = spec.load(config)
    if not services.job.live:
        raise ConfigError(
            f"the job reads its services file from Nomad variable {variable} (live mode), but "
            f"{config} says [job] mode = {services.job.mode!r}: run nomad-pginit render, then "
            "deploy again"
        )
    if services.job.variable != variable:
        raise ConfigError(
            f"the job reads its services file from Nomad variable {variable}, but {config} "
            f"says [job] variable = {services.job.variable!r}: run nomad-pginit render, then "
            "deploy again"
        )
    return services


def _same_submission(client: Nomad, parsed: ParsedJob, before: Job | None) -> bool:
    """Whether Nomad runs this very job: the version it runs was registered from the
    same job file with the same variables (its submission record)."""
    if before is None or before.stop:
        return False
    submission = client.job_submission(parsed.id, before.version)
    if submission is None:
        return False  # no record to compare with: register, Nomad tells what changed
    return (
        submission.source == parsed.source
        and submission.variables == parsed.variables.submission_variables
        and dict(submission.variable_flags) == dict(parsed.variables.submission_flags)
    )


def _deploy_live(
    deployment: Deployment,
    parsed: ParsedJob,
    services: spec.Spec,
    before: Job | None,
    known: set[str],
    *,
    now: bool,
    rerun: bool,
    prune: bool,
) -> int:
    """Live mode: register the job only when it differs from the one Nomad runs,
    publish the services, and wait for the sidecar's pass that applies them.

    Registered first: a job Nomad refuses leaves the services as they were. The
    pass is recognised by the fingerprint of the services it applies, which the
    sidecar logs, not by its place in the log.
    """
    client = deployment.client
    templates = render.Templates(render.LOCAL_TEMPLATES)
    templates.services_part(services)  # a file the sidecar would refuse: exit 2, nothing done
    expected = spec.fingerprint(services.services)
    running = _running_allocation(client.allocations(parsed.id)) if before else None
    if rerun:
        _publish(client, services, templates, prune=prune)
        if running is not None:
            log.info(
                "--rerun restarts every task, postgres too; in live mode deploy --now applies "
                "the services again without a restart"
            )
        return _register_and_follow(deployment, parsed, before, known, rerun=True)
    target: Allocation | None = running
    if _same_submission(client, parsed, before) and running is not None:
        assert before is not None
        log.info(
            "job %s version %d was registered from this job file with these variables: not "
            "registered again; PostgreSQL keeps running",
            parsed.id,
            before.version,
        )
    else:
        evaluation = _register(deployment, parsed)
        target = _wait_for_new_allocation(deployment, evaluation, known)
        if target is None:
            _, target = _still_running(deployment, before, evaluation)
    assert target is not None
    previous = target.task(INIT_TASK)
    started = previous is not None and previous.started_at is not None
    earlier = client.task_log(target.id, INIT_TASK, "stdout") if started else ""
    publication = _publish(client, services, templates, prune=prune)
    applied = tasklog.last_finished(earlier)
    if now and previous is not None and previous.state == "running":
        if publication.changed:
            log.info("--now is not needed: Nomad signals %s when the file changes", INIT_TASK)
        else:
            _signal(deployment, target)
            return _wait_for_services(deployment, target, expected, previous, after=earlier)
    if (
        not publication.changed
        and applied is not None
        and applied.fingerprint == expected
        and not applied.refusals
    ):
        log.info(
            "neither the job nor the services changed, and %s applied these services in its "
            "last pass (it applies a password rotated in Vault within its interval by itself)",
            INIT_TASK,
        )
        return _report_last(
            deployment,
            target,
            "pass",
            f"to apply again at once: nomad-pginit deploy --now (sends SIGHUP to {INIT_TASK}; "
            "PostgreSQL keeps running)",
        )
    log.info(
        "waiting for %s in allocation %s to apply these %d services (fingerprint %s): Nomad "
        "renders the variable into its services file and signals it",
        INIT_TASK,
        target.short_id,
        len(services.services),
        expected,
    )
    return _wait_for_services(deployment, target, expected, previous, after=earlier)


def _publish(
    client: Nomad, services: spec.Spec, templates: render.Templates, *, prune: bool
) -> Publication:
    publication = publish(client, services, templates, prune=prune)
    if publication.changed:
        log.info(
            "published %d services to variable %s in %s (ModifyIndex %d)",
            len(services.services),
            publication.path,
            client.settings.where(),
            publication.modify_index,
        )
    else:
        log.info(
            "variable %s already holds these %d services", publication.path, len(services.services)
        )
    return publication


def _signal(deployment: Deployment, target: Allocation) -> None:
    try:
        deployment.client.signal_task(target.id, INIT_TASK, "SIGHUP")
    except NomadUnavailable as err:
        if "Task not running" not in str(err):
            raise
        raise DeployFailed(
            f"{INIT_TASK} in allocation {target.short_id} is not running (Nomad restarts it?): "
            "it reads the services file when it starts; nomad-pginit verify shows its state"
        ) from err
    log.info(
        "--now: sent SIGHUP to %s in allocation %s: it reads the services file again",
        INIT_TASK,
        target.short_id,
    )


def _wait_for_services(
    deployment: Deployment,
    target: Allocation,
    expected: str,
    previous: TaskState | None,
    *,
    after: str,
) -> int:
    """Wait until the sidecar's last finished pass applied the services whose fingerprint is
    ``expected`` (a pass that starts after ``after``, the log when deploy began, or any
    later one), then report it. A refusal of the file, or an attempt that exits with an
    error, ends the wait at once."""
    client = deployment.client
    interval = FIRST_POLL_SECONDS
    last_line = ""
    while True:
        allocation = next(
            (a for a in client.allocations(deployment.job_id) if a.id == target.id), None
        )
        if allocation is None:
            raise DeployFailed(
                f"allocation {target.short_id} disappeared from job {deployment.job_id}: look "
                f"at nomad job status {deployment.job_id}"
            )
        task = allocation.task(INIT_TASK)
        line = _progress(allocation, task)
        if line != last_line:
            log.info("%s", line)
            last_line = line
        stdout = client.task_log(allocation.id, INIT_TASK, "stdout")
        new = verdicts.without_prefix(stdout, after)
        finished = tasklog.last_finished(new)
        # The log can be ahead of the task's state: Nomad's clients report in batches.
        reported = task is not None and task.state in ("running", "dead")
        # A sidecar of an older image logs no fingerprint: its next pass is the best sign.
        applied = finished is not None and finished.fingerprint in (expected, None)
        if applied and reported:
            if finished is not None and finished.fingerprint is None:
                log.warning(
                    "%s logs no fingerprint of what it applies (an older image): this pass "
                    "may be over the services before this publication",
                    INIT_TASK,
                )
            verdict = verdicts.read_verdict(
                client, deployment.job_id, allocation, sidecar=True, expected=expected
            )
            verdicts.show_log("stdout", verdict.stdout, allocation, deployment.log_format)
            verdicts.show_log(
                "stderr", verdict.stderr, allocation, deployment.log_format, always=False
            )
            verdicts.report_checks(verdict)
            return verdicts.conclude(verdict, "deploy")
        refusals = tasklog.refusals(new)
        last = tasklog.last_finished(stdout)
        if not refusals and last is not None and last.fingerprint != expected:
            # Refused before this deploy began, and still: the same file is published.
            refusals = list(last.refusals)
        if refusals:
            log.error("%s", refusals[-1])
            raise DeployFailed(
                f"{INIT_TASK} in allocation {allocation.short_id} refused the published "
                "services file and keeps applying the last good one (is its image older than "
                "this nomad-pginit?): fix the file and deploy again"
            )
        crashed = task is not None and task.state != "running" and task.exit_code not in (None, 0)
        if task is not None and (_failed_attempt(previous, task) or crashed):
            text = verdicts.without_prefix(stdout, after) or stdout
            verdicts.show_log("stdout", text, allocation, deployment.log_format)
            raise DeployFailed(
                f"{INIT_TASK} in allocation {allocation.short_id} exited with code "
                f"{task.exit_code} and Nomad restarts it: its log above says why"
            )
        if allocation.client_status in ALLOC_DONE:
            raise DeployFailed(
                f"allocation {allocation.short_id} is {allocation.client_status}: {INIT_TASK} "
                f"will not apply the services; look at nomad alloc status {allocation.id}"
            )
        interval = deployment.sleep(
            interval,
            f"{INIT_TASK} in allocation {allocation.short_id} has not applied the published "
            f"services (fingerprint {expected}) yet. It may still: nomad-pginit verify says "
            f"whether its last pass did (or nomad alloc logs {allocation.id} {INIT_TASK})",
        )


def _warn_if_stale(args: argparse.Namespace, path: Path, hcl: str) -> None:
    """Say so when the services file changed since the job was rendered from it."""
    config = repository.services_file(args, os.environ)
    if not config.is_file() or path.resolve() != (config.parent / render.JOB_FILE_NAME).resolve():
        return
    try:
        expected = render.Templates(render.LOCAL_TEMPLATES).job(spec.load(config))
    except ConfigError as err:
        log.warning("cannot tell whether %s is current: %s", path, err)
        return
    if expected != hcl:
        log.warning(
            "%s is stale: %s or the templates changed since it was rendered; deploying it as "
            "it is (run nomad-pginit render, then deploy again, to deploy the change)",
            path,
            config,
        )


def _wait_for_evaluation(deployment: Deployment, eval_id: str) -> Evaluation:
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


def _wait_for_new_allocation(
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


def _running_allocation(allocations: list[Allocation]) -> Allocation | None:
    running = [
        alloc
        for alloc in allocations
        if alloc.desired_status == "run" and alloc.client_status == "running"
    ]
    return newest(running)


def _report_unchanged(deployment: Deployment, running: Allocation, why: str) -> int:
    log.info("%s: Nomad created no new allocation, so %s did not run again", why, INIT_TASK)
    return _report_last(
        deployment,
        running,
        "run",
        f"to run it again: nomad-pginit deploy --rerun (restarts every task of allocation "
        f"{running.short_id}, postgres too)",
    )


def _report_last(deployment: Deployment, running: Allocation, what: str, hint: str) -> int:
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


def _rerun(deployment: Deployment, running: Allocation, why: str) -> int:
    client = deployment.client
    previous = running.task(INIT_TASK)
    earlier = (
        client.task_log(running.id, INIT_TASK, "stdout"),
        client.task_log(running.id, INIT_TASK, "stderr"),
    )
    log.info(
        "%s: restarting every task of allocation %s (postgres too) so that %s runs again",
        why,
        running.short_id,
        INIT_TASK,
    )
    client.restart_all_tasks(running.id, deployment.kill_timeout)
    return _follow_and_report(deployment, running, previous=previous, earlier=earlier)


def _last_exit_time(state: TaskState | None) -> int:
    if state is None:
        return 0
    return max((event.time for event in state.events if event.type == "Terminated"), default=0)


def _ran_again(previous: TaskState | None, current: TaskState) -> bool:
    """Whether ``current`` is a later run than ``previous`` (for --rerun)."""
    if previous is None:
        return True
    later_exit = _last_exit_time(current) > _last_exit_time(previous)
    return later_exit or current.finished_at != previous.finished_at


def _failed_attempt(previous: TaskState | None, current: TaskState) -> bool:
    """Whether an attempt after ``previous`` exited non-zero by itself.

    The job's restart block (mode "delay") retries a failed init task forever
    rather than let Nomad kill postgres, so the task may never be dead: the
    first failed attempt is the answer. An exit after a kill that was asked
    for (--rerun's restart) is not a failure.
    """
    since = _last_exit_time(previous)
    requested = False
    for event in current.events:
        if event.time <= since:
            continue
        if event.type in _REQUESTED_KILLS:
            requested = True
        elif event.type == "Terminated":
            if event.exit_code not in (None, 0) and not requested:
                return True
            requested = False
    return False


def _progress(allocation: Allocation, task: TaskState | None) -> str:
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


def _follow_and_report(
    deployment: Deployment,
    allocation: Allocation,
    *,
    previous: TaskState | None = None,
    earlier: tuple[str, str] = ("", ""),
) -> int:
    finished = _follow(deployment, allocation, previous=previous, earlier_stdout=earlier[0])
    verdict = verdicts.read_verdict(
        deployment.client,
        deployment.job_id,
        finished,
        sidecar=deployment.sidecar,
        earlier_stdout=earlier[0],
        earlier_stderr=earlier[1],
    )
    verdicts.show_log("stdout", verdict.stdout, finished, deployment.log_format)
    verdicts.show_log("stderr", verdict.stderr, finished, deployment.log_format, always=False)
    verdicts.report_checks(verdict)
    return verdicts.conclude(verdict, "deploy")


def _follow(
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
    last_line = _progress(start, previous) if previous is not None else ""
    last_restarts = previous.restarts if previous is not None else 0
    last_policy_restart = (
        max((event.time for event in previous.events if event.type == "Restarting"), default=0)
        if previous is not None
        else 0
    )
    interval = FIRST_POLL_SECONDS
    while True:
        allocation = next(
            (a for a in client.allocations(deployment.job_id) if a.id == start.id), None
        )
        if allocation is None:
            raise DeployFailed(
                f"allocation {start.short_id} disappeared from job {deployment.job_id} (stopped "
                f"and garbage-collected?): look at nomad job status {deployment.job_id}"
            )
        task = allocation.task(INIT_TASK)
        line = _progress(allocation, task)
        if line != last_line:
            log.info("%s", line)
            last_line = line
        if task is not None and task.state == "dead" and _ran_again(previous, task):
            return allocation
        if task is not None and _failed_attempt(previous, task):
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
            # A restart someone asked for (--rerun) has no restart reason; one that
            # Nomad's restart policy made has the policy's words (restarts.go).
            by_policy = [
                event
                for event in task.events
                if event.type == "Restarting" and event.restart_reason
            ]
            if by_policy and by_policy[-1].time > last_policy_restart:
                event = by_policy[-1]
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
