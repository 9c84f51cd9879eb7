"""Deploying a live-mode job: publish the services and wait for the sidecar's pass.

The job is registered only when it differs from the version Nomad runs (its
submission record), so PostgreSQL keeps running; the services go into the
job's Nomad variable, and the pass that applies them is recognised by the
fingerprint the sidecar logs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nomad_pginit import render, spec, tasklog, verdicts
from nomad_pginit.deploy import following, oneshot
from nomad_pginit.deploy.following import FIRST_POLL_SECONDS, DeployFailed, Deployment
from nomad_pginit.deploy.publication import publish
from nomad_pginit.errors import ConfigError, NomadUnavailable
from nomad_pginit.nomad import ALLOC_DONE, INIT_TASK, Allocation, Job, Nomad, ParsedJob, TaskState

log = logging.getLogger("nomad_pginit")


def services_to_publish(config: Path, parsed: ParsedJob) -> spec.Spec | None:
    """The services file ``config`` when the job is a live-mode job, else None.

    The job and the services file must agree: a live job reads the variable the
    services file names, and a live services file needs a job rendered live.
    """
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


def same_submission(client: Nomad, parsed: ParsedJob, before: Job | None) -> bool:
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


def deploy_live(
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
    running = following.running_allocation(client.allocations(parsed.id)) if before else None
    if rerun:
        publish(client, services, templates, prune=prune)
        if running is not None:
            log.info(
                "--rerun restarts every task, postgres too; in live mode deploy --now applies "
                "the services again without a restart"
            )
        return oneshot.register_and_follow(deployment, parsed, before, known, rerun=True)
    target: Allocation | None = running
    if same_submission(client, parsed, before) and running is not None:
        assert before is not None
        log.info(
            "job %s version %d was registered from this job file with these variables: not "
            "registered again; PostgreSQL keeps running",
            parsed.id,
            before.version,
        )
    else:
        evaluation = following.register_job(deployment, parsed)
        target = following.wait_for_new_allocation(deployment, evaluation, known)
        if target is None:
            _, target = following.still_running(deployment, before, evaluation)
    assert target is not None
    previous = target.task(INIT_TASK)
    started = previous is not None and previous.started_at is not None
    earlier = client.task_log(target.id, INIT_TASK, "stdout") if started else ""
    publication = publish(client, services, templates, prune=prune)
    applied = tasklog.last_finished(earlier)
    if now and previous is not None and previous.state == "running":
        if publication.changed:
            log.info("--now is not needed: Nomad signals %s when the file changes", INIT_TASK)
        else:
            signal_sidecar(deployment, target)
            return wait_for_services(deployment, target, expected, previous, after=earlier)
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
        return following.report_last(
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
    return wait_for_services(deployment, target, expected, previous, after=earlier)


def signal_sidecar(deployment: Deployment, target: Allocation) -> None:
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


def wait_for_services(
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
        allocation, task, last_line = following.poll_init_task(deployment, target, last_line)
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
            return verdicts.present(verdict, deployment.log_format, "deploy", always_stderr=False)
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
        if task is not None and (task.failed_after(previous) or crashed):
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
