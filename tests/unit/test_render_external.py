"""[job] postgres = "external": the job is the init task alone, in a group of its own,
against a cluster outside it (Patroni on Nomad, a managed PostgreSQL)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from nomad_double.jobspec import parse_job
from test_render import (
    labelled,
    parse_hcl,
    pginit,
    single,
    templates_by_destination,
    write_services,
)

from nomad_pginit import render, spec
from nomad_pginit.errors import ConfigError

PATRONI_DSN = (
    "postgresql://postgres@db1.service.consul:5432,db2.service.consul:5432/postgres"
    "?target_session_attrs=read-write"
)


def rendered(tmp_path: Path, body: str) -> tuple[str, spec.Spec]:
    services = spec.load(write_services(tmp_path, body))
    return render.Templates(local_dir=None).job(services), services


def init_task(text: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(job, group, task) of an external job: one group, one task, both init-databases."""
    jobs = labelled(parse_hcl(text), "job")
    job = jobs[render.JOB_NAME]
    groups = labelled(job, "group")
    assert list(groups) == ["init-databases"]
    tasks = labelled(groups["init-databases"], "task")
    assert list(tasks) == ["init-databases"]
    return job, groups["init-databases"], tasks["init-databases"]


def delivered(task: dict[str, Any], destination: str) -> dict[str, Any]:
    data = templates_by_destination(task)[destination]["data"]
    document: dict[str, Any] = tomllib.loads(data)
    return document


def test_oneshot_is_a_batch_job_with_the_init_task_alone(tmp_path: Path) -> None:
    text, _ = rendered(
        tmp_path,
        f'[postgres]\ndsn = "{PATRONI_DSN}"\npassword_secret = "postgres/patroni-admin"\n\n'
        '[job]\npostgres = "external"\n\n[[service]]\nname = "gitea"\n',
    )
    job, group, task = init_task(text)
    assert job["type"] == "batch"
    # Nothing of the postgres task: no image, no volume, no port, no service.
    for block in ("network", "volume", "service", "update"):
        assert block not in group
    assert "postgres_version" not in text
    assert "host_volume" not in text
    assert "lifecycle" not in task
    assert single(task, "restart")["mode"] == "delay"
    assert single(task, "config")["args"] == ["run"]
    # The services file carries the DSN as written, and the admin's password is Vault's.
    document = delivered(task, "local/pginit.toml")
    assert document["postgres"] == {
        "dsn": PATRONI_DSN,
        "password_secret": "postgres/patroni-admin",
    }
    assert [service["name"] for service in document["service"]] == ["gitea"]
    # Nomad's parser takes it, with the shape deploy registers.
    parsed = parse_job(text)
    assert parsed["Type"] == "batch"
    assert [group["Name"] for group in parsed["TaskGroups"]] == ["init-databases"]


def test_live_is_a_service_job_whose_main_task_watches(tmp_path: Path) -> None:
    text, _ = rendered(
        tmp_path,
        f'[postgres]\ndsn = "{PATRONI_DSN}"\n\n'
        '[job]\npostgres = "external"\nmode = "live"\n'
        'variable = "nomad/jobs/postgresql/init-databases"\n\n[[service]]\nname = "gitea"\n',
    )
    job, _, task = init_task(text)
    assert job["type"] == "service"
    assert "lifecycle" not in task
    assert single(task, "config")["args"][:2] == ["run", "--watch"]
    variable = templates_by_destination(task)["local/pginit.toml"]["data"]
    assert 'nomadVar "nomad/jobs/postgresql/init-databases"' in variable
    assert delivered(task, "local/cluster.toml")["postgres"]["dsn"] == PATRONI_DSN
    assert parse_job(text)["TaskGroups"][0]["Tasks"][0]["Name"] == "init-databases"


@pytest.mark.parametrize(("provider", "lookup"), [("consul", "service"), ("nomad", "nomadService")])
def test_the_primary_from_a_service_lookup(tmp_path: Path, provider: str, lookup: str) -> None:
    """Patroni registers its primary with the tag master: the job finds it through a
    template that writes libpq's PGHOST and PGPORT, and restarts the task when it moves."""
    text, _ = rendered(
        tmp_path,
        '[postgres]\ndsn = "postgresql://pginit_admin@ignored:5432/postgres?sslmode=require"\n\n'
        '[job]\npostgres = "external"\nprimary_service = "master.patroni"\n'
        f'primary_provider = "{provider}"\n\n[[service]]\nname = "gitea"\n',
    )
    _, _, task = init_task(text)
    primary = templates_by_destination(task)["secrets/primary.env"]
    assert primary["env"] is True
    assert primary["change_mode"] == "restart"
    assert f'{lookup} "master.patroni"' in primary["data"]
    assert "PGTARGETSESSIONATTRS=read-write" in primary["data"]
    # The DSN keeps who and how, and leaves where to the environment.
    dsn = delivered(task, "local/pginit.toml")["postgres"]["dsn"]
    assert "ignored" not in dsn
    assert "user=pginit_admin" in dsn
    assert "sslmode=require" in dsn


def test_the_job_mode_is_unchanged_by_default(tmp_path: Path) -> None:
    text, _ = rendered(tmp_path, '[job]\npostgres = "job"\n\n[[service]]\nname = "gitea"\n')
    same, _ = rendered(tmp_path, '[[service]]\nname = "gitea"\n')
    assert text == same
    assert 'group "postgresql"' in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[job]\npostgres = "external"\n', "[postgres] dsn must say where the cluster is"),
        (
            '[postgres]\ndsn = "postgresql://postgres:hunter2@db1/postgres"\n'
            '[job]\npostgres = "external"\n',
            "[postgres] dsn holds a password",
        ),
    ],
)
def test_an_external_job_that_cannot_work_is_refused(
    tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        rendered(tmp_path, body + '\n[[service]]\nname = "gitea"\n')
    assert message in str(raised.value)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ('postgres = "patroni"', "'postgres' must be \"job\""),
        ('primary_service = "master.patroni"', 'it needs postgres = "external"'),
        (
            'postgres = "external"\nprimary_service = "master.patroni\\"}}"',
            "'primary_service' is a service name",
        ),
        (
            'postgres = "external"\nprimary_service = "x"\nprimary_provider = "dns"',
            "'primary_provider' must be",
        ),
        (
            'postgres = "external"\nmode = "live"\nvariable = "nomad/jobs/postgresql/postgresql"',
            "nomad/jobs/postgresql/init-databases",
        ),
    ],
)
def test_job_settings_for_an_external_cluster_are_checked(
    tmp_path: Path, job: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        spec.load(write_services(tmp_path, f'[job]\n{job}\n\n[[service]]\nname = "gitea"\n'))
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres:s3cret-marker@db1/postgres",
        "host=db1 user=postgres password=s3cret-marker",
        "postgresql://postgres@db1/postgres?sslpassword=s3cret-marker",
    ],
)
def test_render_never_prints_a_password_of_the_dsn(tmp_path: Path, dsn: str) -> None:
    for job in ('postgres = "external"', 'postgres = "external"\nprimary_service = "pg"'):
        write_services(
            tmp_path, f'[postgres]\ndsn = "{dsn}"\n\n[job]\n{job}\n\n[[service]]\nname = "a"\n'
        )
        result = pginit(["render", "--config", "pginit.toml"], tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "s3cret-marker" not in result.stdout + result.stderr
        assert "holds a password" in result.stdout + result.stderr


def test_an_external_dsn_as_written_is_not_warned_about(tmp_path: Path) -> None:
    write_services(
        tmp_path,
        f'[postgres]\ndsn = "{PATRONI_DSN}"\n\n[job]\npostgres = "external"\n\n'
        '[[service]]\nname = "a"\n',
    )
    result = pginit(["render", "--config", "pginit.toml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "differs from what the job gives" not in result.stdout + result.stderr


def test_an_admin_password_file_is_said_to_become_vaults_in_the_job(tmp_path: Path) -> None:
    (tmp_path / "admin").write_text("x\n", encoding="utf-8")
    write_services(
        tmp_path,
        f'[postgres]\ndsn = "{PATRONI_DSN}"\npassword_file = "admin"\n\n'
        '[job]\npostgres = "external"\n\n[[service]]\nname = "a"\n',
    )
    result = pginit(["render", "--config", "pginit.toml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "password_secret = postgres/admin" in result.stdout + result.stderr
