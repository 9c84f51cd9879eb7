"""The operator commands: add-service, deploy, verify and check, each run as a real process.

Vault and PostgreSQL are the real servers of conftest. Nomad cannot run here,
so deploy and verify talk to ``nomad_double``, a test double of Nomad's HTTP
API that plays scripted scenarios and records every request.
"""

from __future__ import annotations

import json
import secrets
import tomllib
from pathlib import Path

import hvac
import pytest
from conftest import (
    PASSWORD_MARKER,
    Cluster,
    Result,
    Vault,
    run_tool,
    tool_env,
    write_services_file,
)
from fix_nomad import (
    NOMAD_TOKEN,
    SERVICES_TOML,
    assert_every_request_authenticated,
    job_text,
    lines_with,
    log_requests,
    nomad_env,
    nomad_tool,
)
from nomad_double import NomadDouble, TaskRun, parse_job
from psycopg import sql

from nomad_pginit import render, spec
from nomad_pginit.errors import ExitCode
from nomad_pginit.nomad import Allocation, TaskEvent, TaskState, job_label
from nomad_pginit.nomad_http import Settings
from nomad_pginit.tasklog import summary_line
from nomad_pginit.verdicts import judge

# --- deploy -------------------------------------------------------------------------------


def test_deploy_follows_the_new_allocation_and_prints_the_log(
    nomad: NomadDouble, job_dir: Path
) -> None:
    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    # Nomad's own parser gets the rendered file verbatim, then the job it returned.
    (parse,) = nomad.requests_to("POST", "/v1/jobs/parse")
    assert parse.json()["JobHCL"] == job_text(job_dir)
    (register,) = nomad.requests_at("POST", "/v1/jobs")
    assert register.json()["Job"] == parse_job(job_text(job_dir))
    # The submission record nomad job run sends with it (jobspec2/parse.go).
    assert register.json()["Submission"] == {
        "Source": job_text(job_dir),
        "Format": "hcl2",
        "VariableFlags": {},
        "Variables": "",
    }
    assert_every_request_authenticated(nomad)
    # One line per state change, each once.
    assert len(lines_with(result.stdout, "init-databases: running")) == 1
    assert len(lines_with(result.stdout, "init-databases: dead, exit code 0")) == 1
    # The task's log, then the verdict.
    assert "--- init-databases stdout" in result.stdout
    assert "INFO summary: ok: 2 services in sync" in result.stdout
    assert "deploy: ok: init-databases succeeded" in result.stdout
    stdout_request = log_requests(nomad)[0]
    assert stdout_request.query["task"] == "init-databases"
    assert stdout_request.query["type"] == "stdout"
    assert stdout_request.query["origin"] == "start"
    assert stdout_request.query["plain"].lower() == "true"


def test_deploy_reports_a_failed_attempt_without_waiting_for_restarts(
    nomad: NomadDouble, job_dir: Path
) -> None:
    # The rendered job's restart mode "delay" retries forever: the task is never dead.
    nomad.next_run = TaskRun.failed()

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--timeout", "30")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "init-databases exited with code 1; Nomad retries it" in result.stdout
    assert "ERROR summary: failed: 1 of 2 services failed (freshrss)" in result.stdout
    assert "[FAILED] exit code: 1, not 0" in result.stdout
    assert "deploy: failed: init-databases in allocation" in result.stdout
    assert "gave up" not in result.output


def fail_mode(job: str) -> str:
    """The job with Nomad's own default restart mode for the init task: "fail"."""
    changed = job.replace('mode     = "delay"', 'mode     = "fail"')
    assert changed != job
    return changed


def test_a_failed_init_task_with_mode_fail_would_stop_postgres(
    nomad: NomadDouble, job_dir: Path
) -> None:
    # Why the job's restart block says "delay": with "fail", Nomad gives up after
    # `attempts` restarts, the task is dead and failed, and postgres is killed.
    (job_dir / render.JOB_FILE_NAME).write_text(fail_mode(job_text(job_dir)), encoding="utf-8")
    alloc_id = nomad.seed(job_text(job_dir), TaskRun.failed())

    result = nomad_tool("verify", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "[FAILED] task state: init-databases failed after 3 restarts" in result.stdout
    allocation = nomad.allocation(alloc_id)
    postgres = allocation.tasks["postgres"]
    assert [event["Type"] for event in postgres.events][-4:] == [
        "Sibling Task Failed",
        "Killing",
        "Terminated",
        "Killed",
    ]
    assert postgres.state == "dead"
    assert allocation.client_status == "failed"


def test_deploy_times_out_when_the_allocation_never_starts(
    nomad: NomadDouble, job_dir: Path
) -> None:
    nomad.next_run = TaskRun(starts=False)

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--timeout", "1")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    # Nomad lists the task as pending from the start; postgres runs, the init task never does.
    assert lines_with(result.stdout, ": running; init-databases: pending, not started yet")
    (message,) = lines_with(result.stdout, "gave up after 1s (--timeout)")
    assert "init-databases is pending" in message
    assert "nomad-pginit verify" in message
    assert not log_requests(nomad)


def test_deploy_times_out_when_nomad_cannot_place_the_allocation(
    nomad: NomadDouble, job_dir: Path
) -> None:
    nomad.can_place = False

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--timeout", "1")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "could not place task group postgresql" in result.stdout
    assert "exhausted memory (1)" in result.stdout
    assert "Nomad placed no allocation for job postgresql" in result.stdout


def test_deploy_of_an_unchanged_job_says_so_and_offers_rerun(
    nomad: NomadDouble, job_dir: Path
) -> None:
    alloc_id = nomad.seed(job_text(job_dir))

    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert "job postgresql is unchanged (version 0)" in result.stdout
    assert "init-databases did not run again" in result.stdout
    assert f"its last run in allocation {alloc_id[:8]} succeeded" in result.stdout
    assert "nomad-pginit deploy --rerun" in result.stdout
    assert nomad.allocation_ids("postgresql") == [alloc_id]
    assert not nomad.requests_to("PUT", "/v1/client/allocation/")
    assert not nomad.requests_to("POST", "/v1/client/allocation/")


def test_deploy_of_an_unchanged_job_fails_when_the_last_run_failed(
    nomad: NomadDouble, job_dir: Path
) -> None:
    nomad.seed(job_text(job_dir), TaskRun.failed())

    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "did not succeed: task state" in result.stdout
    assert "--rerun" in result.stdout


def test_deploy_rerun_restarts_all_tasks_and_reports_the_new_run(
    nomad: NomadDouble, job_dir: Path
) -> None:
    alloc_id = nomad.seed(job_text(job_dir), TaskRun.ok("summary: ok: 2 services (old run)"))
    nomad.next_run = TaskRun.ok("summary: ok: 2 services in sync (1 created, 1 unchanged)")

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--rerun")

    assert result.returncode == ExitCode.OK, result.output
    (restart,) = nomad.requests_to("PUT", f"/v1/client/allocation/{alloc_id}/restart")
    assert restart.json()["AllTasks"] is True
    assert restart.headers["x-nomad-token"] == NOMAD_TOKEN
    assert "restarting every task of allocation" in result.stdout
    assert "init-databases: dead, exit code 0" in result.stdout
    # Only the new run's log: Nomad appends it to the old one.
    assert "(1 created, 1 unchanged)" in result.stdout
    assert "(old run)" not in result.stdout
    assert nomad.allocation_ids("postgresql") == [alloc_id]


def test_deploy_rerun_reports_a_failing_rerun(nomad: NomadDouble, job_dir: Path) -> None:
    nomad.seed(job_text(job_dir))
    nomad.next_run = TaskRun.failed()

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--rerun")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "summary: failed: 1 of 2 services failed" in result.stdout
    assert "INFO summary: ok" not in result.stdout


def test_deploy_of_a_changed_job_creates_a_new_allocation(
    nomad: NomadDouble, job_dir: Path
) -> None:
    old = nomad.seed(job_text(job_dir))
    services = job_dir / "pginit.toml"
    services.write_text(SERVICES_TOML + '\n[[service]]\nname = "vaultwarden"\n', "utf-8")
    assert run_tool(["render", "--config", str(services)], tool_env()).returncode == 0

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--rerun")

    assert result.returncode == ExitCode.OK, result.output
    assert "a new allocation runs init-databases anyway" in result.stdout
    assert nomad.job_version("postgresql") == 1
    assert len(nomad.allocation_ids("postgresql")) == 2
    assert old not in lines_with(result.stdout, "new allocation")[0]
    assert not nomad.requests_to("PUT", "/v1/client/allocation/")


def test_deploy_warns_when_the_job_file_is_stale(nomad: NomadDouble, job_dir: Path) -> None:
    services = job_dir / "pginit.toml"
    services.write_text(SERVICES_TOML + '\n[[service]]\nname = "vaultwarden"\n', "utf-8")

    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    (warning,) = lines_with(result.stdout, "is stale")
    assert "run nomad-pginit render" in warning


def test_deploy_refuses_a_job_file_that_nomad_cannot_parse(
    nomad: NomadDouble, job_dir: Path
) -> None:
    # HCL that parses, with an attribute Nomad's job specification does not have.
    text = job_text(job_dir).replace("    count = 1\n", "    count = 1\n    replicas = 2\n")
    (job_dir / render.JOB_FILE_NAME).write_text(text, encoding="utf-8")

    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "rejected the request to parse" in result.stdout
    assert 'Unsupported argument; An argument named "replicas" is not expected here' in (
        result.stdout
    )
    assert "nothing was submitted" in result.stdout
    assert nomad.requests_to("POST", "/v1/jobs/parse")
    assert not nomad.requests_at("POST", "/v1/jobs")


def test_deploy_refuses_a_job_file_that_is_not_hcl(nomad: NomadDouble, job_dir: Path) -> None:
    (job_dir / render.JOB_FILE_NAME).write_text('job "postgresql" {\n', encoding="utf-8")

    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "is not valid HCL" in result.stdout
    assert not nomad.requests_at("POST", "/v1/jobs")


def test_deploy_without_a_job_file_says_to_render(nomad: NomadDouble, job_dir: Path) -> None:
    (job_dir / render.JOB_FILE_NAME).unlink()

    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "nomad-pginit render" in result.stdout
    assert not nomad.requests


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan"])
def test_deploy_rejects_a_bad_timeout(nomad: NomadDouble, job_dir: Path, value: str) -> None:
    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--timeout", value)

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "--timeout" in result.stdout
    assert not nomad.requests


@pytest.fixture
def watch_job_dir(job_dir: Path) -> Path:
    """The same services in watch mode: init-databases becomes a sidecar that keeps running."""
    services = job_dir / "pginit.toml"
    services.write_text('[job]\nmode = "live"\n\n' + SERVICES_TOML, encoding="utf-8")
    job = render.Templates(None).job(spec.load(services))
    (job_dir / render.JOB_FILE_NAME).write_text(job, encoding="utf-8")
    assert parse_job(job)["TaskGroups"][0]["Tasks"][1]["Lifecycle"]["Sidecar"] is True
    return job_dir


def publish_services(nomad: NomadDouble, job_dir: Path) -> None:
    """The variable a live job's sidecar reads, as publish writes it."""
    view = render.Templates(None).services_part(spec.load(job_dir / "pginit.toml"))
    nomad.set_variable(spec.DEFAULT_VARIABLE, {spec.VARIABLE_ITEM: view})


def test_deploy_takes_the_pass_of_a_sidecar_too_old_to_log_fingerprints(
    nomad: NomadDouble, watch_job_dir: Path
) -> None:
    nomad.next_run = TaskRun.watching()

    result = nomad_tool("deploy", watch_job_dir, nomad_env(nomad), "--timeout", "20")

    assert result.returncode == ExitCode.OK, result.output
    assert "init-databases: running" in result.stdout
    assert "[ok] task state: running (live mode" in result.stdout
    assert "summary: ok: 2 services in sync" in result.stdout
    assert "logs no fingerprint of what it applies (an older image)" in result.stdout
    assert "[ok] services: not compared" in result.stdout
    assert "gave up" not in result.stdout


def test_deploy_rerun_in_watch_mode_is_not_fooled_by_the_kill(
    nomad: NomadDouble, watch_job_dir: Path
) -> None:
    publish_services(nomad, watch_job_dir)
    nomad.seed(job_text(watch_job_dir), TaskRun.watching("summary: ok: old pass"))
    nomad.next_run = TaskRun.watching("summary: ok: 2 services in sync (new pass)")

    result = nomad_tool("deploy", watch_job_dir, nomad_env(nomad), "--rerun", "--timeout", "20")

    assert result.returncode == ExitCode.OK, result.output
    assert "(new pass)" in result.stdout
    assert "old pass" not in result.stdout
    assert "exited with code 143" not in result.stdout


def test_verify_in_watch_mode(nomad: NomadDouble, watch_job_dir: Path) -> None:
    publish_services(nomad, watch_job_dir)
    nomad.seed(job_text(watch_job_dir), TaskRun.watching())

    result = nomad_tool("verify", watch_job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert "[ok] task state: running (live mode" in result.stdout
    assert "[ok] exit code: none yet" in result.stdout


# --- verify ---------------------------------------------------------------------------------


def test_verify_prints_the_logs_and_passes_three_checks(nomad: NomadDouble, job_dir: Path) -> None:
    run = TaskRun(stdout=TaskRun.ok().stdout, stderr="a warning on stderr\n")
    alloc_id = nomad.seed(job_text(job_dir), run)

    result = nomad_tool("verify", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert f"newest allocation {alloc_id}" in result.stdout
    assert "--- init-databases stdout" in result.stdout
    assert "--- init-databases stderr" in result.stdout
    assert "a warning on stderr" in result.stdout
    assert "[ok] task state: dead, not failed" in result.stdout
    assert "[ok] exit code: 0" in result.stdout
    assert "[ok] summary line: summary: ok: 2 services in sync" in result.stdout
    assert "verify: ok:" in result.stdout
    assert_every_request_authenticated(nomad)
    assert {r.query["type"] for r in log_requests(nomad)} == {"stdout", "stderr"}


def test_verify_picks_the_newest_allocation(nomad: NomadDouble, job_dir: Path) -> None:
    old = nomad.seed(job_text(job_dir), TaskRun.failed())
    services = job_dir / "pginit.toml"
    services.write_text(SERVICES_TOML + '\n[[service]]\nname = "vaultwarden"\n', "utf-8")
    assert run_tool(["render", "--config", str(services)], tool_env()).returncode == 0
    assert nomad_tool("deploy", job_dir, nomad_env(nomad)).returncode == ExitCode.OK
    (new,) = set(nomad.allocation_ids("postgresql")) - {old}

    result = nomad_tool("verify", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert f"newest allocation {new}" in result.stdout


def test_verify_decodes_the_log_as_utf8(nomad: NomadDouble, job_dir: Path) -> None:
    log_text = TaskRun.ok().stdout.replace("gitea: unchanged", "café-crème: unchanged")
    nomad.seed(job_text(job_dir), TaskRun(stdout=log_text))

    result = nomad_tool("verify", job_dir, nomad_env(nomad), "--json")

    assert result.returncode == ExitCode.OK, result.output
    assert "café-crème: unchanged" in json.loads(result.stdout)["stdout"]


def test_verify_fails_on_a_failed_task(nomad: NomadDouble, job_dir: Path) -> None:
    nomad.seed(job_text(job_dir), TaskRun.failed())

    result = nomad_tool("verify", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert (
        "[FAILED] task state: init-databases exited with code 1 and Nomad restarts it"
        in result.stdout
    )
    assert "[FAILED] exit code: 1, not 0" in result.stdout
    assert "[FAILED] summary line: summary: failed: 1 of 2 services failed" in result.stdout
    assert "verify: failed: init-databases in allocation" in result.stdout
    assert "task state, exit code, summary line" in result.stdout


def test_verify_fails_on_an_empty_log(nomad: NomadDouble, job_dir: Path) -> None:
    nomad.seed(job_text(job_dir), TaskRun(exit_code=0, stdout=""))

    result = nomad_tool("verify", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "[ok] exit code: 0" in result.stdout
    assert "[FAILED] summary line: the log is empty: no summary line" in result.stdout
    assert "verify: failed: init-databases in allocation" in result.stdout


def test_verify_fails_on_a_log_without_summary(nomad: NomadDouble, job_dir: Path) -> None:
    nomad.seed(job_text(job_dir), TaskRun(stdout="Database initialization completed!\n"))

    result = nomad_tool("verify", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "[FAILED] summary line: no 'summary: ok' line in the log" in result.stdout


def test_verify_json(nomad: NomadDouble, job_dir: Path) -> None:
    alloc_id = nomad.seed(job_text(job_dir), TaskRun.failed())

    result = nomad_tool("verify", job_dir, nomad_env(nomad), "--json")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    document = json.loads(result.stdout)  # stdout holds the JSON object alone
    assert document["alloc_id"] == alloc_id
    # Restart mode "delay": after each failed run Nomad restarts it, never dead.
    assert document["task_state"] == "pending"
    assert document["task_failed"] is False
    assert document["exit_code"] == 1
    assert document["summary_line"].startswith("summary: failed: 1 of 2 services failed")
    assert "freshrss: failed" in document["stdout"]
    assert document["stderr"] == ""
    assert document["ok"] is False
    assert [check["ok"] for check in document["checks"]] == [False, False, False]
    assert "verify: failed" in result.stderr


def test_verify_json_ok(nomad: NomadDouble, job_dir: Path) -> None:
    nomad.seed(job_text(job_dir))

    result = nomad_tool("verify", job_dir, nomad_env(nomad), "--json")

    assert result.returncode == ExitCode.OK, result.output
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert document["exit_code"] == 0


def test_verify_unknown_job(nomad: NomadDouble, job_dir: Path) -> None:
    result = nomad_tool("verify", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.NOMAD, result.output
    (message,) = lines_with(result.stdout, "not found")
    assert "job 'postgresql' not found in Nomad at" in message
    assert "nomad-pginit deploy" in message
    assert nomad.requests_at("GET", "/v1/job/postgresql")


def test_verify_unknown_job_json(nomad: NomadDouble, job_dir: Path) -> None:
    result = nomad_tool("verify", job_dir, nomad_env(nomad), "--json")

    assert result.returncode == ExitCode.NOMAD, result.output
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert "not found" in document["error"]


def test_verify_job_without_allocations(nomad: NomadDouble, job_dir: Path) -> None:
    nomad.seed_job_without_allocations("postgresql")

    result = nomad_tool("verify", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "job postgresql has no allocations" in result.stdout


def test_verify_job_name_comes_from_the_job_file_and_job_overrides_it(
    nomad: NomadDouble, job_dir: Path
) -> None:
    path = job_dir / render.JOB_FILE_NAME
    path.write_text(job_text(job_dir).replace('job "postgresql"', 'job "pg-main"'), "utf-8")

    nomad_tool("verify", job_dir, nomad_env(nomad))
    nomad_tool("verify", job_dir, nomad_env(nomad), "--job", "other")

    assert nomad.requests_at("GET", "/v1/job/pg-main")
    assert nomad.requests_at("GET", "/v1/job/other")
    assert [r.path for r in nomad.requests_to("GET", "/v1/job/")] == [
        "/v1/job/pg-main",
        "/v1/job/other",
    ]


def test_verify_sends_namespace_and_region(nomad: NomadDouble, job_dir: Path) -> None:
    nomad.seed(job_text(job_dir))
    env = nomad_env(nomad, NOMAD_NAMESPACE="infra", NOMAD_REGION="eu")

    nomad_tool("verify", job_dir, env)

    (job_request,) = nomad.requests_at("GET", "/v1/job/postgresql")
    assert job_request.query == {"namespace": "infra", "region": "eu"}
    for request in log_requests(nomad):
        assert request.query["namespace"] == "infra"


@pytest.mark.parametrize("token", ["wrong-token-77", None])
def test_rejected_token(nomad: NomadDouble, job_dir: Path, token: str | None) -> None:
    env = tool_env(
        None, NOMAD_ADDR=nomad.address + "/", **({"NOMAD_TOKEN": token} if token else {})
    )

    result = nomad_tool("verify", job_dir, env)

    assert result.returncode == ExitCode.NOMAD, result.output
    assert "denied the request to read job postgresql (403 Permission denied)" in result.stdout
    assert "NOMAD_TOKEN" in result.stdout
    assert "wrong-token-77" not in result.output
    # A trailing slash in NOMAD_ADDR must not produce `//` paths.
    assert nomad.requests[0].path == "/v1/job/postgresql"


def test_unreachable_nomad(job_dir: Path) -> None:
    from sandbox import free_port

    env = tool_env(NOMAD_ADDR=f"http://127.0.0.1:{free_port()}")

    for command in ("verify", "deploy"):
        result = nomad_tool(command, job_dir, env)
        assert result.returncode == ExitCode.NOMAD, result.output
        assert "unreachable" in result.stdout
        assert "check NOMAD_ADDR" in result.stdout
        assert "Traceback" not in result.output


def test_nomad_addr_must_be_a_url(job_dir: Path) -> None:
    result = nomad_tool("verify", job_dir, tool_env(NOMAD_ADDR="127.0.0.1:4646"))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "NOMAD_ADDR" in result.stdout


# --- the pure parts of verify ----------------------------------------------------------------


def _allocation(task: TaskState | None) -> Allocation:
    return Allocation(
        id="0123456789abcdef",
        eval_id="e",
        name="postgresql.postgresql[0]",
        job_version=3,
        client_status="running",
        desired_status="run",
        create_index=5,
        modify_index=6,
        task_states={"init-databases": task} if task else {},
    )


def _dead(exit_code: int, *, failed: bool = False) -> TaskState:
    event = TaskEvent(type="Terminated", time=1, exit_code=exit_code, message="")
    return TaskState("dead", failed, 0, None, None, (event,))


def test_summary_line_takes_the_last_one_plain_or_json() -> None:
    plain = (
        "2026-11-21T23:24:21Z ERROR summary: failed: no secret at secret/postgres/summary\n"
        "2026-11-21T23:24:22Z INFO summary: ok: 1 services in sync (1 unchanged)\n"
    )
    assert summary_line(plain) == "summary: ok: 1 services in sync (1 unchanged)"
    as_json = json.dumps({"message": "summary: failed: 1 of 1", "event": "summary"})
    assert summary_line(f'{{"message": "gitea: unchanged"}}\n{as_json}\n') == (
        "summary: failed: 1 of 1"
    )
    # A service called "summary" never logs "summary: ok".
    assert summary_line("2026-11-21T23:24:21Z INFO summary: unchanged\n") is None
    assert summary_line("") is None


def test_judge_needs_all_three() -> None:
    ok_log = "2026-11-21T23:24:22Z INFO summary: ok: 1 services in sync\n"
    assert judge("postgresql", _allocation(_dead(0)), ok_log, "").ok
    assert not judge("postgresql", _allocation(_dead(0, failed=True)), ok_log, "").ok
    assert not judge("postgresql", _allocation(_dead(2)), ok_log, "").ok
    assert not judge("postgresql", _allocation(_dead(0)), "", "").ok
    running = TaskState("running", False, 0, None, None, ())
    verdict = judge("postgresql", _allocation(running), ok_log, "")
    assert [check.ok for check in verdict.checks] == [False, False, True]
    assert not judge("postgresql", _allocation(None), "", "").ok


def test_nomad_settings_from_the_environment(tmp_path: Path) -> None:
    default = Settings.from_environ({})
    assert default.address == "http://127.0.0.1:4646"
    assert default.verify is True  # python-nomad alone would not verify TLS
    assert default.token is None
    for name in ("ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_text("-", encoding="utf-8")
    settings = Settings.from_environ(
        {
            "NOMAD_ADDR": "https://nomad.example:4646/",
            "NOMAD_TOKEN": "abc-secret",
            "NOMAD_CACERT": str(tmp_path / "ca.pem"),
            "NOMAD_NAMESPACE": "infra",
            "NOMAD_REGION": "eu",
            "NOMAD_CLIENT_CERT": str(tmp_path / "c.pem"),
            "NOMAD_CLIENT_KEY": str(tmp_path / "k.pem"),
        }
    )
    assert settings.address == "https://nomad.example:4646"
    assert settings.verify == str(tmp_path / "ca.pem")
    assert settings.cert == (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    assert (settings.namespace, settings.region) == ("infra", "eu")
    assert "abc-secret" not in repr(settings)
    skip = {"NOMAD_CACERT": "/ca.pem", "NOMAD_SKIP_VERIFY": "true"}
    assert Settings.from_environ(skip).verify is False


def test_job_label() -> None:
    assert job_label('variable "x" {}\n\njob "postgresql" {\n') == "postgresql"
    assert job_label('  job "a\\"b" {') == 'a"b'
    assert job_label("# no job here\n") is None


# --- add-service ------------------------------------------------------------------------------


def _secret(vault: Vault, service: str) -> tuple[str, int]:
    response = vault.client.secrets.kv.v2.read_secret_version(
        path=f"postgres/{service}", mount_point="secret", raise_on_deleted_version=True
    )
    return response["data"]["data"]["password"], response["data"]["metadata"]["version"]


def _has_secret(vault: Vault, service: str) -> bool:
    try:
        _secret(vault, service)
    except hvac.exceptions.InvalidPath:
        return False
    return True


def _secret_names(vault: Vault) -> list[str]:
    try:
        listed = vault.client.secrets.kv.v2.list_secrets(path="postgres", mount_point="secret")
    except hvac.exceptions.InvalidPath:
        return []
    return [str(key) for key in listed["data"]["keys"]]


def add_service(job_dir: Path, vault: Vault, *args: str) -> Result:
    config = str(job_dir / "pginit.toml")
    return run_tool(["add-service", *args, "--config", config], tool_env(vault))


def test_add_service_writes_vault_appends_the_block_and_renders(
    vault: Vault, job_dir: Path
) -> None:
    services = job_dir / "pginit.toml"
    before = services.read_text(encoding="utf-8")

    result = add_service(job_dir, vault, "uptime-kuma")

    assert result.returncode == ExitCode.OK, result.output
    password, version = _secret(vault, "uptime-kuma")
    assert version == 1
    assert len(password) >= 43  # secrets.token_urlsafe(32)
    assert password not in result.output
    after = services.read_text(encoding="utf-8")
    assert after == before + '\n[[service]]\nname = "uptime-kuma"\n'  # comments and layout kept
    assert "uptime-kuma" in [s.name for s in spec.load(services).services]
    job = job_text(job_dir)
    assert 'name = \\"uptime-kuma\\"' in job or 'name = "uptime-kuma"' in job
    assert job == render.Templates(None).job(spec.load(services))
    assert "password created in Vault at secret/postgres/uptime-kuma (version 1" in result.stdout
    assert not list(job_dir.glob(".pginit.toml.*")), "a temporary file was left behind"


def test_add_service_renders_the_table_of_the_readme_next_to_the_services_file(
    vault: Vault, job_dir: Path
) -> None:
    # An infrastructure repository: the services file, its job and its README in a
    # subdirectory, the command run from the root, whose own README has no table.
    directory = job_dir / "jobs" / "postgresql"
    directory.mkdir(parents=True)
    for name in ("pginit.toml", render.JOB_FILE_NAME):
        (job_dir / name).rename(directory / name)
    readme = directory / "README.md"
    readme.write_text(
        f"# postgresql\n\n{render.TABLE_BEGIN}\n{render.TABLE_END}\n\nMore.\n", encoding="utf-8"
    )
    here = job_dir / "README.md"
    here.write_text("# Infra\n", encoding="utf-8")

    result = run_tool(
        ["add-service", "uptime-kuma", "--config", "jobs/postgresql/pginit.toml"],
        tool_env(vault),
        cwd=job_dir,
    )

    assert result.returncode == ExitCode.OK, result.output
    text = readme.read_text(encoding="utf-8")
    assert "| uptime-kuma | uptime-kuma | uptime-kuma | `secret/postgres/uptime-kuma` |" in text
    assert text.startswith(f"# postgresql\n\n{render.TABLE_BEGIN}\n")
    assert text.endswith(f"{render.TABLE_END}\n\nMore.\n")
    assert "rendered jobs/postgresql/README.md" in result.stdout
    assert here.read_text(encoding="utf-8") == "# Infra\n"


def test_add_service_twice_changes_nothing_the_second_time(vault: Vault, job_dir: Path) -> None:
    services = job_dir / "pginit.toml"
    job = job_dir / render.JOB_FILE_NAME
    assert add_service(job_dir, vault, "vaultwarden").returncode == ExitCode.OK
    first = (_secret(vault, "vaultwarden"), services.read_bytes(), job.read_bytes())
    mtimes = (services.stat().st_mtime_ns, job.stat().st_mtime_ns)

    result = add_service(job_dir, vault, "vaultwarden")

    assert result.returncode == ExitCode.OK, result.output
    assert (_secret(vault, "vaultwarden"), services.read_bytes(), job.read_bytes()) == first
    assert (services.stat().st_mtime_ns, job.stat().st_mtime_ns) == mtimes
    assert "kept it, not overwritten" in result.stdout
    assert "already in" in result.stdout
    assert "is up to date" in result.stdout


def test_add_service_keeps_an_existing_secret(vault: Vault, job_dir: Path) -> None:
    existing = f"{PASSWORD_MARKER}{secrets.token_hex(8)}"
    vault.put("freshrss", existing)

    result = add_service(job_dir, vault, "freshrss")

    assert result.returncode == ExitCode.OK, result.output
    assert _secret(vault, "freshrss") == (existing, 1)
    assert "a secret already exists in Vault at secret/postgres/freshrss (version 1)" in (
        result.stdout
    )
    assert "kept it, not overwritten" in result.stdout
    assert PASSWORD_MARKER not in result.output
    assert "freshrss" in [s.name for s in spec.load(job_dir / "pginit.toml").services]


def test_add_service_warns_about_an_unusable_existing_secret(vault: Vault, job_dir: Path) -> None:
    vault.put("freshrss", "x", key="pass")  # the wrong key

    result = add_service(job_dir, vault, "freshrss")

    assert result.returncode == ExitCode.OK, result.output
    (warning,) = lines_with(result.stdout, "WARNING")
    assert "init-databases cannot use it" in warning
    assert "has no key 'password'" in warning


def test_add_service_with_database_and_user(vault: Vault, job_dir: Path) -> None:
    result = add_service(job_dir, vault, "speedtest", "--database", "speed_db", "--user", "speedy")

    assert result.returncode == ExitCode.OK, result.output
    text = (job_dir / "pginit.toml").read_text(encoding="utf-8")
    assert text.endswith(
        '[[service]]\nname = "speedtest"\ndatabase = "speed_db"\nuser = "speedy"\n'
    )
    (service,) = [s for s in spec.load(job_dir / "pginit.toml").services if s.name == "speedtest"]
    assert (service.database, service.user) == ("speed_db", "speedy")


def test_add_service_quotes_names_for_toml(vault: Vault, job_dir: Path) -> None:
    result = add_service(job_dir, vault, 'we"ird\\name')

    assert result.returncode == ExitCode.OK, result.output
    names = [s.name for s in spec.load(job_dir / "pginit.toml").services]
    assert names[-1] == 'we"ird\\name'


@pytest.mark.parametrize(
    "args",
    [
        ["pg_stats"],
        ["postgres"],
        ["x" * 64],
        ["bad\x01name"],
        [""],
        ["fine", "--database", "template1"],
        ["fine", "--user", "pg_monitor"],
    ],
)
def test_add_service_refuses_a_bad_name_and_writes_nothing(
    vault: Vault, job_dir: Path, args: list[str]
) -> None:
    services = job_dir / "pginit.toml"
    before = (services.read_bytes(), job_text(job_dir))

    result = add_service(job_dir, vault, *args)

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "invalid service (nothing was written)" in result.stdout
    assert _secret_names(vault) == []
    assert (services.read_bytes(), job_text(job_dir)) == before


def test_add_service_refuses_a_duplicate_database(vault: Vault, job_dir: Path) -> None:
    services = job_dir / "pginit.toml"
    before = services.read_bytes()

    result = add_service(job_dir, vault, "newsvc", "--database", "gitea")

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "database 'gitea' is already used" in result.stdout
    assert not _has_secret(vault, "newsvc")
    assert services.read_bytes() == before


def test_add_service_refuses_to_change_an_existing_service(vault: Vault, job_dir: Path) -> None:
    result = add_service(job_dir, vault, "grafana", "--database", "grafana")

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "already in" in result.stdout
    assert "database 'grafana_db'" in result.stdout
    assert not _has_secret(vault, "grafana")


def test_add_service_of_a_listed_service_only_makes_sure_of_its_secret(
    vault: Vault, job_dir: Path
) -> None:
    services = job_dir / "pginit.toml"
    before = services.read_bytes()

    result = add_service(job_dir, vault, "grafana")

    assert result.returncode == ExitCode.OK, result.output
    assert _secret(vault, "grafana")[1] == 1
    assert services.read_bytes() == before


def test_add_service_without_vault_writes_nothing(job_dir: Path) -> None:
    services = job_dir / "pginit.toml"
    before = services.read_bytes()
    env = tool_env(VAULT_ADDR="http://127.0.0.1:9", VAULT_TOKEN="t")

    result = run_tool(["add-service", "newsvc", "--config", str(services)], env)

    assert result.returncode == ExitCode.VAULT, result.output
    assert services.read_bytes() == before


# --- check -----------------------------------------------------------------------------------


CHECKED = ("fine", "nodb", "norole", "nologin", "newpw", "nocreate", "nosecret")


@pytest.fixture
def provisioned(tmp_path: Path, pg: Cluster, vault: Vault) -> Path:
    """Every CHECKED service provisioned by a real run, each with its Vault password."""
    for name in CHECKED:
        vault.put(name, f"{PASSWORD_MARKER}{name}-{secrets.token_hex(6)}")
    config = write_services_file(tmp_path, pg, list(CHECKED))
    result = run_tool(["run", "--config", str(config)], tool_env(vault))
    assert result.returncode == ExitCode.OK, result.output
    return config


def check(config: Path, vault: Vault, *extra: str) -> Result:
    return run_tool(["check", "--config", str(config), *extra], tool_env(vault))


def test_check_after_run_is_ok(provisioned: Path, vault: Vault) -> None:
    result = check(provisioned, vault)

    assert result.returncode == ExitCode.OK, result.output
    for name in CHECKED:
        assert f"INFO {name}: ok" in result.stdout
    assert f"summary: ok: {len(CHECKED)} services OK" in result.stdout
    assert PASSWORD_MARKER not in result.output


def test_check_reports_each_failure_precisely(provisioned: Path, pg: Cluster, vault: Vault) -> None:
    with pg.connect() as conn:
        conn.execute("DROP DATABASE nodb WITH (FORCE)")
        conn.execute("ALTER DATABASE norole OWNER TO postgres")
        conn.execute("DROP OWNED BY norole")
        conn.execute("DROP ROLE norole")
        conn.execute("ALTER ROLE nologin NOLOGIN")
        conn.execute(
            sql.SQL("ALTER ROLE newpw PASSWORD {}").format(sql.Literal(f"{PASSWORD_MARKER}new"))
        )
    with pg.connect("nocreate") as conn:
        # The owner of a database owns schema public (pg_database_owner) unless it is
        # handed to someone else; then a REVOKE takes CREATE away.
        conn.execute("ALTER SCHEMA public OWNER TO postgres")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM nocreate, PUBLIC")
    vault.client.secrets.kv.v2.delete_metadata_and_all_versions(
        path="postgres/nosecret", mount_point="secret"
    )

    result = check(provisioned, vault)

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    out = result.stdout
    assert "INFO fine: ok" in out
    assert 'ERROR nodb: database "nodb" does not exist' in out
    assert 'ERROR norole: role "norole" does not exist' in out
    assert 'ERROR nologin: role "nologin" cannot log in (NOLOGIN)' in out
    assert (
        'ERROR newpw: the password of role "newpw" differs from Vault\'s (secret/postgres/newpw)'
        in out
    )
    assert 'ERROR nocreate: role "nocreate" cannot create in schema public of database' in out
    assert "ERROR nosecret: no secret at secret/postgres/nosecret in Vault" in out
    assert "summary: failed: 6 of 7 services have problems" in out
    assert PASSWORD_MARKER not in result.output


def test_check_json(provisioned: Path, pg: Cluster, vault: Vault) -> None:
    with pg.connect() as conn:
        conn.execute("ALTER ROLE nologin NOLOGIN")
        conn.execute("DROP DATABASE nodb WITH (FORCE)")

    result = check(provisioned, vault, "--json")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    document = json.loads(result.stdout)
    assert document["ok"] is False
    by_name = {entry["name"]: entry for entry in document["services"]}
    assert by_name["fine"] == {
        "name": "fine",
        "database": "fine",
        "databases": ["fine"],
        "user": "fine",
        "vault_path": "secret/postgres/fine",
        "ok": True,
        "problems": [],
    }
    assert [p["kind"] for p in by_name["nologin"]["problems"]] == ["nologin"]
    assert [p["kind"] for p in by_name["nodb"]["problems"]] == ["database_missing"]
    assert PASSWORD_MARKER not in result.output


def test_check_finds_a_changed_owner_and_a_missing_password(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    vault.put("solo", f"{PASSWORD_MARKER}solo")
    config = write_services_file(tmp_path, pg, ["solo"])
    assert run_tool(["run", "--config", str(config)], tool_env(vault)).returncode == 0
    with pg.connect() as conn:
        conn.execute("ALTER DATABASE solo OWNER TO postgres")
        conn.execute("ALTER ROLE solo PASSWORD NULL")

    result = check(config, vault, "--json")

    kinds = [p["kind"] for p in json.loads(result.stdout)["services"][0]["problems"]]
    assert kinds == ["wrong_owner", "password_differs"]


def test_check_with_postgres_down_fails_fast(tmp_path: Path, vault: Vault) -> None:
    from sandbox import free_port

    config = tmp_path / "pginit.toml"
    config.write_text(
        f'[postgres]\ndsn = "postgresql://postgres:pw@127.0.0.1:{free_port()}/postgres"\n'
        '\n[[service]]\nname = "gitea"\n',
        encoding="utf-8",
    )
    vault.put("gitea", f"{PASSWORD_MARKER}gitea")

    result = check(config, vault, "--wait-timeout", "0.5")

    assert result.returncode == ExitCode.POSTGRES, result.output


def test_check_dsn_overrides_the_services_file(tmp_path: Path, pg: Cluster, vault: Vault) -> None:
    vault.put("gitea", f"{PASSWORD_MARKER}gitea")
    config = write_services_file(tmp_path, pg, ["gitea"])
    assert run_tool(["run", "--config", str(config)], tool_env(vault)).returncode == 0
    # As on a workstation: the file names the task's address, the operator gives theirs.
    text = config.read_text(encoding="utf-8").replace(f":{pg.port}/", ":1/")
    config.write_text(text, encoding="utf-8")

    dsn = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    env = tool_env(vault, PGPASSWORD=pg.server.password)
    result = run_tool(["check", "--config", str(config), "--dsn", dsn], env)

    assert result.returncode == ExitCode.OK, result.output
    assert "INFO gitea: ok" in result.stdout


def test_nothing_toml_breaks_the_services_file() -> None:
    # append_service keeps the text valid TOML for every name spec accepts.
    from nomad_pginit.commands.add_service import append_service

    service = spec.Service(name='a"b\\c', database="d", user="u")
    text = append_service("[vault]\nmount = 'secret'", service)
    document = tomllib.loads(text)
    assert document["service"] == [{"name": 'a"b\\c', "database": "d", "user": "u"}]
