"""Live mode: the services file in a Nomad variable, applied by a sidecar without restarts.

render, publish, deploy and verify run as processes against the Nomad double;
the sidecar itself (a real ``run --watch`` that gets SIGHUP) is in test_watch
and test_allocation.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import run_tool, tool_env
from fix_nomad import (
    SERVICES_TOML,
    assert_every_request_authenticated,
    job_text,
    lines_with,
    nomad_env,
    nomad_tool,
)
from nomad_double import VARIABLES, WRITE, NomadDouble, Recorded, TaskRun, Token, parse_job

from nomad_pginit import render, spec
from nomad_pginit.errors import ExitCode

VARIABLE = "nomad/jobs/postgresql"
ITEM = spec.VARIABLE_ITEM
LIVE_TOML = '[job]\nmode = "live"\n\n' + SERVICES_TOML
THIRD_SERVICE = '\n[[service]]\nname = "vaultwarden"\n'
# What the sidecar logs for a pass after SIGHUP, as the real one does.
RELOAD_PASS = (
    "2026-11-21T23:30:00Z INFO applying (SIGHUP: services file read again)\n"
    '2026-11-21T23:30:00Z INFO vaultwarden: role "vaultwarden" created\n'
    "2026-11-21T23:30:01Z INFO summary: ok: 3 services in sync (1 created, 2 unchanged)\n"
)


@pytest.fixture
def live_dir(job_dir: Path) -> Path:
    """The repository of job_dir with [job] mode = "live", its job rendered again."""
    write_live(job_dir, LIVE_TOML)
    return job_dir


def write_live(job_dir: Path, text: str) -> spec.Spec:
    services = job_dir / "pginit.toml"
    services.write_text(text, encoding="utf-8")
    loaded = spec.load(services)
    (job_dir / render.JOB_FILE_NAME).write_text(render.Templates(None).job(loaded), "utf-8")
    return loaded


def task_view(job_dir: Path) -> str:
    """The services file as the init task sees it: what publish writes into the variable."""
    return render.Templates(None).services_file(spec.load(job_dir / "pginit.toml"))


def init_task(job: dict[str, Any]) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = job["TaskGroups"][0]["Tasks"]
    return next(task for task in tasks if task["Name"] == "init-databases")


def published_text(nomad: NomadDouble) -> str:
    items = nomad.variable_items(VARIABLE)
    assert items is not None
    return items[ITEM]


def var_writes(nomad: NomadDouble) -> list[Recorded]:
    return nomad.requests_to("PUT", f"/v1/var/{VARIABLE}")


def registrations(nomad: NomadDouble) -> list[Recorded]:
    return nomad.requests_at("POST", "/v1/jobs")


# --- the services file and render ------------------------------------------------------------


def test_the_live_job_does_not_depend_on_the_services(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    few = write_live(tmp_path / "a", LIVE_TOML)
    many = write_live(
        tmp_path / "b", LIVE_TOML.replace('"grafana_db"', '"other_db"') + THIRD_SERVICE
    )
    assert few.services != many.services
    first = job_text(tmp_path / "a")
    assert first == job_text(tmp_path / "b")
    # Not one service is named in the job: they are all in the variable.
    for name in ("gitea", "grafana", "vaultwarden"):
        assert name not in first


def test_the_live_job_runs_a_sidecar_that_reads_the_variable(live_dir: Path) -> None:
    job = parse_job(job_text(live_dir))
    init = init_task(job)
    assert init["Lifecycle"] == {"Hook": "poststart", "Sidecar": True}
    assert init["Config"]["args"] == ["run", "--watch", "--interval", "10"]
    (template,) = init["Templates"]
    assert template["DestPath"] == "local/pginit.toml"
    assert template["ChangeMode"] == "signal"
    assert template["ChangeSignal"] == "SIGHUP"
    assert f'nomadVar "{VARIABLE}"' in template["EmbeddedTmpl"]
    assert f".{ITEM}" in template["EmbeddedTmpl"]
    # The oneshot job is today's: a poststart task that exits, the services inside.
    oneshot = parse_job(render.Templates(None).job(spec.loads(SERVICES_TOML, Path("p.toml"))))
    assert init_task(oneshot)["Lifecycle"] == {"Hook": "poststart", "Sidecar": False}
    assert "nomadVar" not in init_task(oneshot)["Templates"][0]["EmbeddedTmpl"]


def test_the_variable_and_interval_are_the_services_files(tmp_path: Path) -> None:
    loaded = write_live(
        tmp_path,
        '[job]\nmode = "live"\ninterval = 30\nvariable = "nomad/jobs/postgresql/postgresql"\n'
        + SERVICES_TOML,
    )
    init = init_task(parse_job(job_text(tmp_path)))
    assert init["Config"]["args"] == ["run", "--watch", "--interval", "30"]
    assert 'nomadVar "nomad/jobs/postgresql/postgresql"' in init["Templates"][0]["EmbeddedTmpl"]
    assert loaded.job.variable == "nomad/jobs/postgresql/postgresql"


@pytest.mark.parametrize(
    ("job_table", "expected"),
    [
        ("watch = true", 'write mode = "live"'),
        ("watch = false", 'write mode = "live"'),
        ('mode = "sidecar"', '\'mode\' must be "oneshot" or "live"'),
        ('mode = "live"\nvariable = "nomad/jobs/../x"', "'variable' must be a Nomad variable path"),
        ('mode = "live"\nvariable = "has space"', "'variable' must be a Nomad variable path"),
        ('mode = "live"\nvariable = ""', "'variable' must be a Nomad variable path"),
    ],
)
def test_bad_job_tables_are_refused(tmp_path: Path, job_table: str, expected: str) -> None:
    path = tmp_path / "pginit.toml"
    path.write_text(f"[job]\n{job_table}\n\n{SERVICES_TOML}", encoding="utf-8")

    result = run_tool(["check", "--config", str(path)], tool_env(None))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert expected in result.stdout


# --- publish -----------------------------------------------------------------------------------


def test_publish_creates_the_variable_with_cas_zero(nomad: NomadDouble, live_dir: Path) -> None:
    result = nomad_tool("publish", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    (write,) = var_writes(nomad)
    assert write.query["cas"] == "0"
    assert nomad.variable_items(VARIABLE) == {ITEM: task_view(live_dir)}
    assert f"published 2 services to variable {VARIABLE}" in result.stdout
    assert_every_request_authenticated(nomad)
    # What the task will read is a services file that lists the same services.
    published = spec.parse(tomllib.loads(task_view(live_dir)), Path("local/pginit.toml"))
    assert [s.name for s in published.services] == ["gitea", "grafana"]


def test_publish_of_the_same_content_writes_nothing(nomad: NomadDouble, live_dir: Path) -> None:
    assert nomad_tool("publish", live_dir, nomad_env(nomad)).returncode == ExitCode.OK

    result = nomad_tool("publish", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert len(var_writes(nomad)) == 1
    assert "is up to date" in result.stdout


def test_publish_updates_with_the_index_it_read(nomad: NomadDouble, live_dir: Path) -> None:
    assert nomad_tool("publish", live_dir, nomad_env(nomad)).returncode == ExitCode.OK
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")

    result = nomad_tool("publish", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    first, second = var_writes(nomad)
    assert int(second.query["cas"]) > int(first.query["cas"])
    assert "vaultwarden" in published_text(nomad)


def test_publish_never_overwrites_someone_elses_write(nomad: NomadDouble, live_dir: Path) -> None:
    theirs = {ITEM: "# someone else's services\n"}
    nomad.write_before_next_put(VARIABLE, theirs)

    result = nomad_tool("publish", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert f"variable {VARIABLE} changed" in result.stdout
    assert "nothing was overwritten" in result.stdout
    assert nomad.variable_items(VARIABLE) == theirs
    assert "Traceback" not in result.output


def test_publish_keeps_the_variables_other_items(nomad: NomadDouble, live_dir: Path) -> None:
    nomad.set_variable(VARIABLE, {"backup_bucket": "s3://pg-backups", ITEM: "old"})

    result = nomad_tool("publish", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert nomad.variable_items(VARIABLE) == {
        "backup_bucket": "s3://pg-backups",
        ITEM: task_view(live_dir),
    }


def test_publish_of_an_invalid_file_writes_nothing(nomad: NomadDouble, live_dir: Path) -> None:
    (live_dir / "pginit.toml").write_text(LIVE_TOML + '\n[[service]]\nnmae = "x"\n', "utf-8")

    result = nomad_tool("publish", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "did you mean 'name'" in result.stdout
    assert not nomad.requests_to("PUT", "/v1/var/")
    assert not nomad.requests_to("GET", "/v1/var/")


def test_publish_is_for_live_mode(nomad: NomadDouble, job_dir: Path) -> None:
    result = nomad_tool("publish", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert 'publish is for mode = "live"' in result.stdout
    assert not nomad.requests


def test_publish_refuses_a_file_too_large_for_a_variable(
    nomad: NomadDouble, live_dir: Path
) -> None:
    many = "".join(f'\n[[service]]\nname = "tenant_{n:05d}"\n' for n in range(2500))
    (live_dir / "pginit.toml").write_text(LIVE_TOML + many, encoding="utf-8")

    result = nomad_tool("publish", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "Nomad holds at most 65536 bytes" in result.stdout
    assert not var_writes(nomad)


def test_publish_writes_in_the_namespace(nomad: NomadDouble, live_dir: Path) -> None:
    result = nomad_tool("publish", live_dir, nomad_env(nomad, NOMAD_NAMESPACE="databases"))

    assert result.returncode == ExitCode.OK, result.output
    assert nomad.variable_items(VARIABLE, namespace="databases") == {ITEM: task_view(live_dir)}
    assert nomad.variable_items(VARIABLE) is None


def test_publish_needs_a_variables_policy(live_dir: Path) -> None:
    """Namespace policy "write" (enough for deploy in oneshot mode) has no variables rights."""
    scoped = Token("scoped-secret", namespaces={"default": WRITE})
    with NomadDouble(tokens=[scoped]) as nomad:
        env = nomad_env(nomad) | {"NOMAD_TOKEN": "scoped-secret"}
        refused = nomad_tool("publish", live_dir, env)
        assert refused.returncode == ExitCode.NOMAD, refused.output
        assert "variables read" in refused.stdout
        assert nomad.variable_items(VARIABLE) is None

    allowed = Token("scoped-secret", namespaces={"default": WRITE | VARIABLES})
    with NomadDouble(tokens=[allowed]) as nomad:
        env = nomad_env(nomad) | {"NOMAD_TOKEN": "scoped-secret"}
        published = nomad_tool("publish", live_dir, env)
        assert published.returncode == ExitCode.OK, published.output
        assert nomad.variable_items(VARIABLE) == {ITEM: task_view(live_dir)}


# --- deploy ------------------------------------------------------------------------------------


def test_first_live_deploy_publishes_then_registers(nomad: NomadDouble, live_dir: Path) -> None:
    nomad.next_run = TaskRun.watching()

    result = nomad_tool("deploy", live_dir, nomad_env(nomad), "--timeout", "20")

    assert result.returncode == ExitCode.OK, result.output
    assert nomad.variable_items(VARIABLE) == {ITEM: task_view(live_dir)}
    assert len(registrations(nomad)) == 1
    # Published before the job exists: the sidecar's template finds the variable.
    order = [r.path for r in nomad.requests if r.method in ("PUT", "POST")]
    assert order.index(f"/v1/var/{VARIABLE}") < order.index("/v1/jobs")
    assert "[ok] task state: running" in result.stdout
    assert "summary: ok: 2 services in sync" in result.stdout
    assert "deploy: ok:" in result.stdout


def test_adding_a_service_publishes_and_never_registers(nomad: NomadDouble, live_dir: Path) -> None:
    nomad.next_run = TaskRun.watching()
    assert nomad_tool("deploy", live_dir, nomad_env(nomad), "--timeout", "20").returncode == 0
    (alloc,) = nomad.allocation_ids("postgresql")
    nomad.behaviour.reload_output = RELOAD_PASS
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")

    result = nomad_tool("deploy", live_dir, nomad_env(nomad), "--timeout", "20")

    assert result.returncode == ExitCode.OK, result.output
    assert len(registrations(nomad)) == 1, "the job is unchanged: not registered again"
    assert nomad.allocation_ids("postgresql") == [alloc], "no new allocation"
    assert "vaultwarden" in published_text(nomad)
    assert "not registered again; PostgreSQL keeps running" in result.stdout
    # The pass that applied it, and not the first one.
    assert 'vaultwarden: role "vaultwarden" created' in result.stdout
    assert "summary: ok: 3 services in sync" in result.stdout
    assert "applying (start)" not in result.stdout
    assert "deploy: ok:" in result.stdout
    events = nomad.allocation(alloc).tasks["init-databases"].events
    assert [e["DisplayMessage"] for e in events if e["Type"] == "Signaling"] == [
        "Template re-rendered"
    ]
    postgres = nomad.allocation(alloc).tasks["postgres"]
    assert postgres.restarts == 0
    assert postgres.state == "running"


def test_nothing_changed_reports_the_last_pass(nomad: NomadDouble, live_dir: Path) -> None:
    nomad.next_run = TaskRun.watching()
    assert nomad_tool("deploy", live_dir, nomad_env(nomad), "--timeout", "20").returncode == 0

    result = nomad_tool("deploy", live_dir, nomad_env(nomad), "--timeout", "20")

    assert result.returncode == ExitCode.OK, result.output
    assert len(var_writes(nomad)) == 1
    assert len(registrations(nomad)) == 1
    assert "neither the job nor the services changed" in result.stdout
    assert "its last pass in allocation" in result.stdout
    assert "deploy --now" in result.stdout
    assert not nomad.requests_to("POST", "/v1/client/allocation/")


def test_deploy_now_signals_the_sidecar(nomad: NomadDouble, live_dir: Path) -> None:
    nomad.next_run = TaskRun.watching()
    assert nomad_tool("deploy", live_dir, nomad_env(nomad), "--timeout", "20").returncode == 0
    (alloc,) = nomad.allocation_ids("postgresql")
    nomad.behaviour.reload_output = RELOAD_PASS.replace("vaultwarden", "gitea")

    result = nomad_tool("deploy", live_dir, nomad_env(nomad), "--now", "--timeout", "20")

    assert result.returncode == ExitCode.OK, result.output
    (signal,) = nomad.requests_at("POST", f"/v1/client/allocation/{alloc}/signal")
    assert signal.json() == {"Signal": "SIGHUP", "Task": "init-databases"}
    assert "--now: sent SIGHUP" in result.stdout
    assert "applying (SIGHUP: services file read again)" in result.stdout
    assert nomad.allocation_ids("postgresql") == [alloc]
    assert len(registrations(nomad)) == 1


def test_deploy_now_is_for_live_mode(nomad: NomadDouble, job_dir: Path) -> None:
    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--now")

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "--now is for live mode" in result.stdout
    assert not registrations(nomad)


def test_a_file_the_sidecar_refuses_fails_the_deploy(nomad: NomadDouble, live_dir: Path) -> None:
    nomad.next_run = TaskRun.watching()
    assert nomad_tool("deploy", live_dir, nomad_env(nomad), "--timeout", "20").returncode == 0
    nomad.behaviour.reload_output = (
        "2026-11-21T23:30:00Z ERROR the new /local/pginit.toml is invalid; keeping the last "
        "good configuration: unknown key 'future_option'\n"
    )
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")

    result = nomad_tool("deploy", live_dir, nomad_env(nomad), "--timeout", "20")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "refused the published services file" in result.stdout
    assert "future_option" in result.stdout
    assert "gave up" not in result.stdout


def test_a_pass_that_never_comes_ends_at_the_timeout(nomad: NomadDouble, live_dir: Path) -> None:
    nomad.next_run = TaskRun.watching()
    assert nomad_tool("deploy", live_dir, nomad_env(nomad), "--timeout", "20").returncode == 0
    nomad.behaviour.reload_output = ""  # the sidecar hangs, say on a lock
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")

    result = nomad_tool("deploy", live_dir, nomad_env(nomad), "--timeout", "2")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "gave up after 2s (--timeout)" in result.stdout
    assert "has not logged a pass that applies the published services file" in result.stdout


def test_switching_a_oneshot_deployment_to_live(nomad: NomadDouble, job_dir: Path) -> None:
    old = nomad.seed(job_text(job_dir), TaskRun.ok())
    write_live(job_dir, LIVE_TOML)
    nomad.next_run = TaskRun.watching()

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--timeout", "20")

    assert result.returncode == ExitCode.OK, result.output
    (new,) = set(nomad.allocation_ids("postgresql")) - {old}
    assert nomad.allocation(new).tasks["init-databases"].sidecar
    assert nomad.variable_items(VARIABLE) == {ITEM: task_view(job_dir)}


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        # The services file went live, the job file was not rendered again.
        (LIVE_TOML, 'says [job] mode = "live", but the job file carries the services file'),
        # The job is live, the services file went back to oneshot without a render.
        (SERVICES_TOML, "says [job] mode = 'oneshot': run nomad-pginit render"),
    ],
)
def test_a_job_and_services_file_that_disagree_are_refused(
    nomad: NomadDouble, job_dir: Path, services: str, expected: str
) -> None:
    if services == SERVICES_TOML:
        write_live(job_dir, LIVE_TOML)
    (job_dir / "pginit.toml").write_text(services, encoding="utf-8")

    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert expected in result.stdout
    assert not registrations(nomad)
    assert not var_writes(nomad)


# --- verify ------------------------------------------------------------------------------------


def test_verify_shows_the_last_pass_only(nomad: NomadDouble, live_dir: Path) -> None:
    nomad.set_variable(VARIABLE, {ITEM: task_view(live_dir)})
    first = TaskRun.watching("summary: failed: 1 of 2 services failed (first pass)")
    nomad.seed(job_text(live_dir), first)
    (alloc,) = nomad.allocation_ids("postgresql")
    nomad.behaviour.reload_output = RELOAD_PASS
    nomad.set_variable(VARIABLE, {ITEM: task_view(live_dir) + "# touched\n"})
    assert "first pass" in nomad.allocation(alloc).tasks["init-databases"].stdout

    result = nomad_tool("verify", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert "first pass" not in result.stdout
    assert "applying (SIGHUP: services file read again)" in result.stdout
    assert "[ok] summary line: summary: ok: 3 services in sync" in result.stdout
    assert len(lines_with(result.stdout, "summary: ")) >= 1


def test_verify_judges_the_last_finished_pass(nomad: NomadDouble, live_dir: Path) -> None:
    """A pass in progress has no summary yet: the one before it is the verdict."""
    nomad.set_variable(VARIABLE, {ITEM: task_view(live_dir)})
    nomad.seed(job_text(live_dir), TaskRun.watching("summary: ok: 2 services in sync (done)"))
    (alloc,) = nomad.allocation_ids("postgresql")
    nomad.behaviour.reload_output = "2026-11-21T23:30:00Z INFO applying (password rotated)\n"
    nomad.set_variable(VARIABLE, {ITEM: task_view(live_dir) + "# touched\n"})
    del alloc

    result = nomad_tool("verify", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert "[ok] summary line: summary: ok: 2 services in sync (done)" in result.stdout
