"""deploy with [job] postgres = "external": the job is init-databases alone, against the
Nomad double, which plays a batch job's allocation to completion and a service job's
main task as a sidecar that keeps running (restarts.go NewRestartTracker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fix_nomad import nomad_env, nomad_tool
from nomad_double import NomadDouble, TaskRun

from nomad_pginit import render, spec
from nomad_pginit.errors import ExitCode

EXTERNAL = """\
[postgres]
dsn = "postgresql://postgres@db1.service.consul:5432,db2.service.consul:5432/postgres?target_session_attrs=read-write"

[job]
postgres = "external"
{mode}

[[service]]
name = "gitea"
"""


def external_dir(job_dir: Path, mode: str) -> Path:
    services = job_dir / "pginit.toml"
    services.write_text(EXTERNAL.format(mode=mode), encoding="utf-8")
    job = render.Templates(None).job(spec.load(services))
    (job_dir / render.JOB_FILE_NAME).write_text(job, encoding="utf-8")
    return job_dir


@pytest.fixture
def oneshot_dir(job_dir: Path) -> Path:
    return external_dir(job_dir, 'mode = "oneshot"')


def test_oneshot_runs_the_batch_job_to_completion(nomad: NomadDouble, oneshot_dir: Path) -> None:
    result = nomad_tool("deploy", oneshot_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    job = nomad.registered("postgresql")
    assert job["Type"] == "batch"
    assert [group["Name"] for group in job["TaskGroups"]] == ["init-databases"]
    assert "complete; init-databases: dead, exit code 0" in result.stdout
    assert "deploy: ok: init-databases succeeded" in result.stdout


def test_an_unchanged_batch_job_reports_its_last_run_and_how_to_run_it_again(
    nomad: NomadDouble, oneshot_dir: Path
) -> None:
    assert nomad_tool("deploy", oneshot_dir, nomad_env(nomad)).returncode == ExitCode.OK
    (allocation,) = nomad.allocation_ids("postgresql")

    again = nomad_tool("deploy", oneshot_dir, nomad_env(nomad))

    assert again.returncode == ExitCode.OK, again.output
    assert nomad.allocation_ids("postgresql") == [allocation]
    assert "its last run in allocation" in again.stdout
    assert "nomad job stop postgresql, then nomad-pginit deploy" in again.stdout

    # --rerun cannot restart a completed allocation: it says what will.
    rerun = nomad_tool("deploy", oneshot_dir, nomad_env(nomad), "--rerun")
    assert rerun.returncode == ExitCode.SERVICE_FAILED, rerun.output
    assert "a batch job" in rerun.output
    assert "nomad job stop postgresql, then nomad-pginit deploy" in rerun.output
    assert nomad.allocation_ids("postgresql") == [allocation]


def test_a_new_service_runs_the_batch_job_again(nomad: NomadDouble, oneshot_dir: Path) -> None:
    assert nomad_tool("deploy", oneshot_dir, nomad_env(nomad)).returncode == ExitCode.OK
    services = oneshot_dir / "pginit.toml"
    services.write_text(
        services.read_text(encoding="utf-8") + '\n[[service]]\nname = "grafana"\n', "utf-8"
    )
    job = render.Templates(None).job(spec.load(services))
    (oneshot_dir / render.JOB_FILE_NAME).write_text(job, encoding="utf-8")

    result = nomad_tool("deploy", oneshot_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert "new allocation" in result.stdout
    assert len(nomad.allocation_ids("postgresql")) == 2
    assert nomad.job_version("postgresql") == 1


def test_a_failing_run_is_retried_and_reported(nomad: NomadDouble, oneshot_dir: Path) -> None:
    nomad.next_run = TaskRun.failed()

    result = nomad_tool("deploy", oneshot_dir, nomad_env(nomad), "--timeout", "5")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "Nomad retries it as the job's restart block says" in result.output
    assert "[FAILED] exit code: 1, not 0" in result.output


def test_live_mode_publishes_and_waits_for_the_main_tasks_pass(
    nomad: NomadDouble, job_dir: Path
) -> None:
    live_dir = external_dir(job_dir, 'mode = "live"')
    nomad.next_run = TaskRun.live_sidecar()

    result = nomad_tool("deploy", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    job = nomad.registered("postgresql")
    assert job["Type"] == "service"
    (task,) = job["TaskGroups"][0]["Tasks"]
    assert task["Name"] == "init-databases"
    assert task.get("Lifecycle") is None
    assert "published 1 services to variable nomad/jobs/postgresql" in result.stdout
    assert "applied" in result.stdout or "summary: ok" in result.stdout


def test_verify_reads_the_completed_batch_run(nomad: NomadDouble, oneshot_dir: Path) -> None:
    assert nomad_tool("deploy", oneshot_dir, nomad_env(nomad)).returncode == ExitCode.OK

    result = nomad_tool("verify", oneshot_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert "[ok] task state: dead, not failed" in result.stdout
