"""Live mode: the services in a Nomad variable, applied by a sidecar without restarts.

render, publish, deploy and verify run as processes against the Nomad double,
which plays the sidecar's passes from the services its template reads (their
fingerprint included, as `run --watch --services` logs it). The sidecar itself
(a real ``run --watch`` that gets SIGHUP) is in test_watch and test_allocation.
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
SERVICES_ARGS = ["--services", render.TASK_SERVICES_FILE]


@pytest.fixture
def live_dir(job_dir: Path) -> Path:
    """The repository of job_dir with [job] mode = "live", its job rendered again."""
    write_live(job_dir, LIVE_TOML)
    return job_dir


@pytest.fixture
def live_nomad(nomad: NomadDouble) -> NomadDouble:
    """The double, whose init task is live mode's sidecar."""
    nomad.next_run = TaskRun.live_sidecar()
    return nomad


def write_live(job_dir: Path, text: str) -> spec.Spec:
    services = job_dir / "pginit.toml"
    services.write_text(text, encoding="utf-8")
    loaded = spec.load(services)
    (job_dir / render.JOB_FILE_NAME).write_text(render.Templates(None).job(loaded), "utf-8")
    return loaded


def services_part(job_dir: Path) -> str:
    """The services as publish writes them into the variable."""
    return render.Templates(None).services_part(spec.load(job_dir / "pginit.toml"))


def fingerprint_of(job_dir: Path) -> str:
    return spec.fingerprint(spec.load(job_dir / "pginit.toml").services)


def published_text(nomad: NomadDouble) -> str:
    items = nomad.variable_items(VARIABLE)
    assert items is not None
    return items[ITEM]


def init_task(job: dict[str, Any]) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = job["TaskGroups"][0]["Tasks"]
    return next(task for task in tasks if task["Name"] == "init-databases")


def var_writes(nomad: NomadDouble) -> list[Recorded]:
    return nomad.requests_to("PUT", f"/v1/var/{VARIABLE}")


def registrations(nomad: NomadDouble) -> list[Recorded]:
    return nomad.requests_at("POST", "/v1/jobs")


def deploy(nomad: NomadDouble, job_dir: Path, *extra: str) -> Any:
    return nomad_tool("deploy", job_dir, nomad_env(nomad), "--timeout", "20", *extra)


# --- the services file and render ------------------------------------------------------------


def test_the_live_job_does_not_depend_on_the_services(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    few = write_live(tmp_path / "a", LIVE_TOML)
    other = LIVE_TOML.replace('"grafana_db"', '"other_db"') + THIRD_SERVICE
    many = write_live(tmp_path / "b", other)
    assert few.services != many.services
    first = job_text(tmp_path / "a")
    assert first == job_text(tmp_path / "b")
    # Not one service is named in the job: they are all in the variable.
    for name in ("gitea", "grafana", "vaultwarden"):
        assert name not in first


def test_the_live_job_carries_where_to_connect_and_reads_the_services(live_dir: Path) -> None:
    init = init_task(parse_job(job_text(live_dir)))
    assert init["Lifecycle"] == {"Hook": "poststart", "Sidecar": True}
    assert init["Config"]["args"] == ["run", "--watch", "--interval", "10", *SERVICES_ARGS]
    assert init["Env"]["PGINIT_CONFIG"] == render.TASK_CLUSTER_FILE
    templates = {template["DestPath"]: template for template in init["Templates"]}
    assert set(templates) == {"local/cluster.toml", "local/pginit.toml"}
    # Where PostgreSQL and Vault are: in the job, fixed, and no services there.
    cluster = tomllib.loads(templates["local/cluster.toml"]["EmbeddedTmpl"])
    assert cluster["postgres"]["dsn"] == render.TASK_DSN
    assert "service" not in cluster
    assert templates["local/cluster.toml"]["ChangeMode"] == "noop"
    # The services: from the variable, and a change signals the task.
    services = templates["local/pginit.toml"]
    assert services["ChangeMode"] == "signal"
    assert services["ChangeSignal"] == "SIGHUP"
    assert f'nomadVar "{VARIABLE}"' in services["EmbeddedTmpl"]
    assert f".{ITEM}" in services["EmbeddedTmpl"]
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
    assert init["Config"]["args"] == ["run", "--watch", "--interval", "30", *SERVICES_ARGS]
    (services,) = [t for t in init["Templates"] if t["DestPath"] == "local/pginit.toml"]
    assert 'nomadVar "nomad/jobs/postgresql/postgresql"' in services["EmbeddedTmpl"]
    assert loaded.job.variable == "nomad/jobs/postgresql/postgresql"


@pytest.mark.parametrize(
    ("job_table", "expected"),
    [
        ("watch = true", 'write mode = "live"'),
        ("watch = false", 'write mode = "live"'),
        ('mode = "sidecar"', '\'mode\' must be "oneshot" or "live"'),
        # Below the job's own paths: its tasks may not read it without a policy.
        ('mode = "live"\nvariable = "nomad/jobs/postgresql/services"', "may read without an ACL"),
        ('mode = "live"\nvariable = "nomad/foo"', "may read without an ACL"),
        ('mode = "live"\nvariable = "nomad/jobs/../x"', "may read without an ACL"),
        ('mode = "live"\nvariable = ""', "may read without an ACL"),
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
    assert nomad.variable_items(VARIABLE) == {ITEM: services_part(live_dir)}
    assert f"published 2 services to variable {VARIABLE}" in result.stdout
    assert_every_request_authenticated(nomad)
    # Only the services: where to connect and how to read secrets stay in the job.
    published = tomllib.loads(published_text(nomad))
    assert set(published) == {"service"}
    assert [entry["name"] for entry in published["service"]] == ["gitea", "grafana"]


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
    nomad.set_variable(VARIABLE, {ITEM: services_part(live_dir)})
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")
    nomad.write_before_next_put(VARIABLE, theirs)

    result = nomad_tool("publish", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert f"variable {VARIABLE} changed" in result.stdout
    assert "nothing was overwritten" in result.stdout
    assert nomad.variable_items(VARIABLE) == theirs
    assert "Traceback" not in result.output


def test_publish_never_drops_services_it_does_not_know(nomad: NomadDouble, live_dir: Path) -> None:
    """An operator whose checkout predates someone else's publication."""
    newer = LIVE_TOML + '\n[[service]]\nname = "added_by_bob"\n'
    nomad.set_variable(
        VARIABLE, {ITEM: render.Templates(None).services_part(spec.loads(newer, Path("b.toml")))}
    )
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")
    before = published_text(nomad)

    refused = nomad_tool("publish", live_dir, nomad_env(nomad))
    pruned = nomad_tool("publish", live_dir, nomad_env(nomad), "--prune")

    assert refused.returncode == ExitCode.CONFIG, refused.output
    assert "does not list (added_by_bob)" in refused.stdout
    assert "--prune" in refused.stdout
    assert len(var_writes(nomad)) == 1  # the refused one wrote nothing: this is --prune's
    assert pruned.returncode == ExitCode.OK, pruned.output
    assert published_text(nomad) != before
    assert "added_by_bob" not in published_text(nomad)


def test_publish_keeps_the_variables_other_items(nomad: NomadDouble, live_dir: Path) -> None:
    nomad.set_variable(VARIABLE, {"backup_bucket": "s3://pg-backups"})

    result = nomad_tool("publish", live_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert nomad.variable_items(VARIABLE) == {
        "backup_bucket": "s3://pg-backups",
        ITEM: services_part(live_dir),
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
    assert nomad.variable_items(VARIABLE, namespace="databases") == {ITEM: services_part(live_dir)}
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
        assert nomad.variable_items(VARIABLE) == {ITEM: services_part(live_dir)}


# --- deploy ------------------------------------------------------------------------------------


def test_first_live_deploy_registers_publishes_and_waits_for_the_pass(
    live_nomad: NomadDouble, live_dir: Path
) -> None:
    result = deploy(live_nomad, live_dir)

    assert result.returncode == ExitCode.OK, result.output
    assert live_nomad.variable_items(VARIABLE) == {ITEM: services_part(live_dir)}
    assert len(registrations(live_nomad)) == 1
    # Registered first: a job Nomad refuses leaves the services as they were. The
    # sidecar's template waits for the variable meanwhile.
    order = [r.path for r in live_nomad.requests if r.method in ("PUT", "POST")]
    assert order.index("/v1/jobs") < order.index(f"/v1/var/{VARIABLE}")
    assert "[ok] task state: running" in result.stdout
    assert f"2 services, fingerprint {fingerprint_of(live_dir)}" in result.stdout
    assert "[ok] services: the last pass applied the services the variable holds" in (result.stdout)
    assert "deploy: ok:" in result.stdout


def test_adding_a_service_publishes_and_never_registers(
    live_nomad: NomadDouble, live_dir: Path
) -> None:
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    (alloc,) = live_nomad.allocation_ids("postgresql")
    live_nomad.behaviour.render_delay_steps = 3  # the client's template wait
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")

    result = deploy(live_nomad, live_dir)

    assert result.returncode == ExitCode.OK, result.output
    assert len(registrations(live_nomad)) == 1, "the job is unchanged: not registered again"
    assert live_nomad.allocation_ids("postgresql") == [alloc], "no new allocation"
    assert "vaultwarden" in published_text(live_nomad)
    assert "not registered again; PostgreSQL keeps running" in result.stdout
    # The pass that applied it, and only that one.
    assert f"3 services, fingerprint {fingerprint_of(live_dir)}" in result.stdout
    assert "applying (start)" not in result.stdout
    assert "summary: ok: 3 services in sync" in result.stdout
    events = live_nomad.allocation(alloc).tasks["init-databases"].events
    assert [e["DisplayMessage"] for e in events if e["Type"] == "Signaling"] == [
        "Template re-rendered"
    ]
    postgres = live_nomad.allocation(alloc).tasks["postgres"]
    assert postgres.restarts == 0
    assert postgres.state == "running"


def test_deploy_after_publish_waits_for_the_services_not_the_last_pass(
    live_nomad: NomadDouble, live_dir: Path
) -> None:
    """A pipeline publishes, then deploys: the last pass is the old services'."""
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    live_nomad.behaviour.render_delay_steps = 4
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")
    assert nomad_tool("publish", live_dir, nomad_env(live_nomad)).returncode == ExitCode.OK

    result = deploy(live_nomad, live_dir)

    assert result.returncode == ExitCode.OK, result.output
    assert "waiting for init-databases" in result.stdout
    assert "summary: ok: 3 services in sync" in result.stdout
    assert "summary: ok: 2 services in sync" not in result.stdout


def test_a_pass_over_the_old_file_is_not_taken_for_the_new_one(
    live_nomad: NomadDouble, live_dir: Path
) -> None:
    """Someone's SIGHUP during the client's template wait: the sidecar reads the old file."""
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    (alloc,) = live_nomad.allocation_ids("postgresql")
    live_nomad.behaviour.render_delay_steps = 6
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")
    assert nomad_tool("publish", live_dir, nomad_env(live_nomad)).returncode == ExitCode.OK
    # The double renders from the variable at once on a signal: play the old file.
    old = spec.fingerprint(spec.loads(LIVE_TOML, Path("old.toml")).services)
    live_nomad.behaviour.reload_output = (
        "2026-11-21T23:30:00Z INFO applying (SIGHUP: services file read again): 2 services, "
        f"fingerprint {old}\n2026-11-21T23:30:00Z INFO summary: ok: 2 services in sync "
        "(0 created, 2 unchanged)\n"
    )
    live_nomad.allocation(alloc).signal("init-databases", "SIGHUP")
    live_nomad.behaviour.reload_output = None

    result = deploy(live_nomad, live_dir)

    assert result.returncode == ExitCode.OK, result.output
    assert "summary: ok: 3 services in sync" in result.stdout
    verdict = result.stdout.split("--- init-databases stdout")[1]
    assert old not in verdict


def test_nothing_changed_reports_the_last_pass(live_nomad: NomadDouble, live_dir: Path) -> None:
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK

    result = deploy(live_nomad, live_dir)

    assert result.returncode == ExitCode.OK, result.output
    assert len(var_writes(live_nomad)) == 1
    assert len(registrations(live_nomad)) == 1
    assert "neither the job nor the services changed" in result.stdout
    assert "its last pass in allocation" in result.stdout
    assert "deploy --now" in result.stdout
    assert not live_nomad.requests_to("POST", "/v1/client/allocation/")


def test_deploy_now_signals_the_sidecar(live_nomad: NomadDouble, live_dir: Path) -> None:
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    (alloc,) = live_nomad.allocation_ids("postgresql")

    result = deploy(live_nomad, live_dir, "--now")

    assert result.returncode == ExitCode.OK, result.output
    (signal,) = live_nomad.requests_at("POST", f"/v1/client/allocation/{alloc}/signal")
    assert signal.json() == {"Signal": "SIGHUP", "Task": "init-databases"}
    assert "--now: sent SIGHUP" in result.stdout
    assert "applying (SIGHUP: services file read again)" in result.stdout
    assert live_nomad.allocation_ids("postgresql") == [alloc]
    assert len(registrations(live_nomad)) == 1


def test_deploy_now_on_a_sidecar_that_is_not_running(
    live_nomad: NomadDouble, live_dir: Path
) -> None:
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    (alloc,) = live_nomad.allocation_ids("postgresql")
    live_nomad.allocation(alloc).tasks["init-databases"].state = "pending"  # restarting

    result = deploy(live_nomad, live_dir, "--now")

    assert result.returncode != ExitCode.NOMAD, result.output
    assert "Nomad unreachable" not in result.stdout


def test_deploy_now_is_for_live_mode(nomad: NomadDouble, job_dir: Path) -> None:
    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--now")

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "--now is for live mode" in result.stdout
    assert not registrations(nomad)


REFUSAL = (
    "2026-11-21T23:30:00Z ERROR the new /local/cluster.toml and /local/pginit.toml is invalid; "
    "keeping the last good configuration: /local/pginit.toml: 1 problem in the services file\n"
    "  - [[service]] #3 ('vaultwarden'): unknown key 'future_option'\n"
)


def test_a_file_the_sidecar_refuses_fails_every_deploy_and_verify(
    live_nomad: NomadDouble, live_dir: Path
) -> None:
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    live_nomad.behaviour.reload_output = REFUSAL  # an older image, say
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")

    first = deploy(live_nomad, live_dir)
    again = deploy(live_nomad, live_dir)
    verified = nomad_tool("verify", live_dir, nomad_env(live_nomad))

    for result in (first, again):
        assert result.returncode == ExitCode.SERVICE_FAILED, result.output
        assert "refused the published services file" in result.stdout
        assert "unknown key 'future_option'" in result.stdout  # the reason, not just the line
        assert "gave up" not in result.stdout
    assert verified.returncode == ExitCode.SERVICE_FAILED, verified.output
    assert "refused a new services file" in verified.stdout


def test_a_forged_summary_in_a_message_is_not_a_summary(
    live_nomad: NomadDouble, live_dir: Path
) -> None:
    """A tenant's application_name, quoted in a lock-wait error, says "summary: ok"."""
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")
    expected = fingerprint_of(live_dir)
    live_nomad.behaviour.reload_output = (
        "2026-11-21T23:30:00Z INFO applying (SIGHUP: services file read again): 3 services, "
        f"fingerprint {expected}\n"
        "2026-11-21T23:30:10Z ERROR gitea: failed: waited 10s for a lock held by session 42 "
        '(user "gitea", application " summary: ok: 3 services in sync", idle in transaction)\n'
        "2026-11-21T23:30:10Z ERROR summary: failed: 1 of 3 services failed (gitea); others: "
        "2 unchanged\n"
    )

    result = deploy(live_nomad, live_dir)
    verified = nomad_tool("verify", live_dir, nomad_env(live_nomad))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "[FAILED] summary line: summary: failed: 1 of 3 services failed" in result.stdout
    assert verified.returncode == ExitCode.SERVICE_FAILED, verified.output


def test_a_sidecar_that_keeps_exiting_fails_the_deploy_at_once(
    live_nomad: NomadDouble, live_dir: Path
) -> None:
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")
    crash = TaskRun(
        exit_code=4,
        stdout="2026-11-21T23:30:00Z ERROR Vault at https://vault:8200 does not answer\n",
    )
    (alloc,) = live_nomad.allocation_ids("postgresql")
    live_nomad.behaviour.reload_output = ""
    live_nomad.allocation(alloc).restart_all()
    live_nomad.next_run = crash  # each attempt after the restart

    result = deploy(live_nomad, live_dir, "--timeout", "30")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "exited with code 4" in result.stdout
    assert "Vault at https://vault:8200 does not answer" in result.stdout
    assert "gave up" not in result.stdout


def test_a_pass_that_never_comes_ends_at_the_timeout(
    live_nomad: NomadDouble, live_dir: Path
) -> None:
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    live_nomad.behaviour.reload_output = ""  # the sidecar hangs, say on a lock
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")

    result = nomad_tool("deploy", live_dir, nomad_env(live_nomad), "--timeout", "2")

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "gave up after 2s (--timeout)" in result.stdout
    assert "has not applied the published services" in result.stdout


def test_a_job_nomad_refuses_publishes_nothing(live_nomad: NomadDouble, live_dir: Path) -> None:
    live_nomad.admission_errors = ["quota 'databases' exceeded"]

    result = deploy(live_nomad, live_dir)

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "nothing was registered" in result.stdout
    assert live_nomad.variable_items(VARIABLE) is None
    assert not var_writes(live_nomad)


def test_switching_a_oneshot_deployment_to_live(nomad: NomadDouble, job_dir: Path) -> None:
    old = nomad.seed(job_text(job_dir), TaskRun.ok())
    write_live(job_dir, LIVE_TOML)
    nomad.next_run = TaskRun.live_sidecar()

    result = deploy(nomad, job_dir)

    assert result.returncode == ExitCode.OK, result.output
    (new,) = set(nomad.allocation_ids("postgresql")) - {old}
    assert nomad.allocation(new).tasks["init-databases"].sidecar
    assert nomad.variable_items(VARIABLE) == {ITEM: services_part(job_dir)}


def test_a_variable_the_template_cannot_read_stops_postgres(
    live_nomad: NomadDouble, live_dir: Path
) -> None:
    """What docs/live-mode.md warns of: the template's retries end, the task fails for good."""
    live_nomad.behaviour.unreadable_variables.add(VARIABLE)

    result = deploy(live_nomad, live_dir)

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    (alloc,) = live_nomad.allocation_ids("postgresql")
    tasks = live_nomad.allocation(alloc).tasks
    assert tasks["init-databases"].failed
    assert tasks["postgres"].state == "dead"


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


def test_verify_shows_the_last_pass_only(live_nomad: NomadDouble, live_dir: Path) -> None:
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK

    result = nomad_tool("verify", live_dir, nomad_env(live_nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert "applying (start)" not in result.stdout
    assert "applying (SIGHUP: services file read again): 3 services" in result.stdout
    assert "[ok] summary line: summary: ok: 3 services in sync" in result.stdout
    assert "[ok] services: the last pass applied the services the variable holds" in (result.stdout)


def test_verify_judges_the_last_finished_pass(live_nomad: NomadDouble, live_dir: Path) -> None:
    """A pass in progress has no summary yet: the one before it is the verdict."""
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    (alloc,) = live_nomad.allocation_ids("postgresql")
    live_nomad.behaviour.reload_output = (
        "2026-11-21T23:30:00Z INFO applying (password rotated): 2 services, fingerprint "
        f"{fingerprint_of(live_dir)}\n"
    )
    live_nomad.allocation(alloc).signal("init-databases", "SIGHUP")

    result = nomad_tool("verify", live_dir, nomad_env(live_nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert "[ok] summary line: summary: ok: 2 services in sync" in result.stdout


def test_verify_says_when_the_variable_holds_services_not_applied_yet(
    live_nomad: NomadDouble, live_dir: Path
) -> None:
    assert deploy(live_nomad, live_dir).returncode == ExitCode.OK
    live_nomad.behaviour.render_delay_steps = 100
    (live_dir / "pginit.toml").write_text(LIVE_TOML + THIRD_SERVICE, encoding="utf-8")
    assert nomad_tool("publish", live_dir, nomad_env(live_nomad)).returncode == ExitCode.OK

    result = nomad_tool("verify", live_dir, nomad_env(live_nomad))

    assert result.returncode == ExitCode.SERVICE_FAILED, result.output
    assert "[FAILED] services: the variable holds services with fingerprint" in result.stdout
