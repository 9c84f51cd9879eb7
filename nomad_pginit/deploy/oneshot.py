"""Deploying a oneshot job: register it, then follow the init task of the new allocation.

An unchanged job gets no new allocation, so the task does not run again:
report its last run, or (``--rerun``) restart the allocation's tasks and
follow the run that follows.
"""

from __future__ import annotations

import logging

from nomad_pginit.deploy import following
from nomad_pginit.deploy.following import Deployment
from nomad_pginit.nomad import INIT_TASK, Allocation, Job, ParsedJob

log = logging.getLogger("nomad_pginit")


def register_and_follow(
    deployment: Deployment, parsed: ParsedJob, before: Job | None, known: set[str], *, rerun: bool
) -> int:
    """Oneshot mode: register the job, then follow the init task of the new allocation."""
    evaluation = following.register_job(deployment, parsed)
    allocation = following.wait_for_new_allocation(deployment, evaluation, known)
    if allocation is not None:
        if rerun:
            log.info("a new allocation runs %s anyway: --rerun is not needed", INIT_TASK)
        return following.follow_and_report(deployment, allocation)
    why, running = following.still_running(deployment, before, evaluation)
    if rerun and deployment.batch:
        raise following.DeployFailed(
            f'--rerun: {why}, a batch job ([job] postgres = "external"), which Nomad runs '
            f"again only as a new version, and its allocation {running.short_id} is "
            f"{running.client_status}: {_batch_rerun(deployment.job_id)}"
        )
    if not rerun:
        return report_unchanged(deployment, running, why)
    return restart_and_follow(deployment, running, why)


def _batch_rerun(job_id: str) -> str:
    # A stopped job registered again is a new version (Stop is part of the spec that
    # nomad/structs/structs.go Job.SpecChanged compares), so a new allocation runs.
    return f"to run it again, nomad job stop {job_id}, then nomad-pginit deploy"


def report_unchanged(deployment: Deployment, running: Allocation, why: str) -> int:
    log.info("%s: Nomad created no new allocation, so %s did not run again", why, INIT_TASK)
    hint = (
        _batch_rerun(deployment.job_id)
        if deployment.batch
        else (
            f"to run it again: nomad-pginit deploy --rerun (restarts every task of "
            f"allocation {running.short_id}, postgres too)"
        )
    )
    return following.report_last(deployment, running, "run", hint)


def restart_and_follow(deployment: Deployment, running: Allocation, why: str) -> int:
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
    return following.follow_and_report(deployment, running, previous=previous, earlier=earlier)
