"""An allocation of the rendered job, played the way Nomad plays it.

No Nomad agent can run here, so the test does what the client would: it
renders the task's template blocks into ``local/``, writes the JWT of the
task's identity block to ``secrets/nomad_<name>.jwt`` (file = true), sets the
environment Nomad gives a task, and starts the init task as soon as the
postgres task is "running" — before the server accepts connections. The task
logs in to the real OpenBao with that JWT and reads the admin's password
itself: Nomad hands it no Vault token.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import psycopg
import pytest
from conftest import Vault, run_tool, tool_env
from fix_nomad import nomad_env
from nomad_double import NomadDouble
from test_watch import LineReader

from nomad_pginit import render, spec
from sandbox import ThrowawayPostgres, WorkloadIdentities

JOB_FILE = (
    Path(__file__).resolve().parents[2] / "jobs/services/databases/postgresql/postgresql.nomad.hcl"
)


def init_task_templates() -> dict[str, str]:
    """The init-databases task's template blocks: destination -> data, as plain text."""
    options = hcl2.SerializationOptions(
        strip_string_quotes=True,
        explicit_blocks=False,
        with_comments=False,
        preserve_heredocs=False,
    )
    job: dict[str, Any] = hcl2.loads(
        JOB_FILE.read_text(encoding="utf-8"), serialization_options=options
    )
    found: dict[str, str] = {}
    for job_block in job["job"]:
        for body in job_block.values():
            for group_block in body["group"]:
                for group in group_block.values():
                    for task_block in group["task"]:
                        for name, task in task_block.items():
                            if name.strip('"') != "init-databases":
                                continue
                            for template in task["template"]:
                                found[template["destination"]] = str(template["data"])
    return found


@pytest.fixture
def cluster() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    server.init()
    try:
        yield server
    finally:
        server.cleanup()


def test_init_task_in_an_allocation(
    tmp_path: Path, cluster: ThrowawayPostgres, vault: Vault, identities: WorkloadIdentities
) -> None:
    templates = init_task_templates()
    services_text = templates["local/pginit.toml"]
    names = re.findall(r'^name = "([^"]+)"$', services_text, re.M)
    assert names, "the job delivers the services file"
    passwords = {name: f"{name}-Vault-pw'\"$$" for name in names}
    for name, password in passwords.items():
        vault.put(name, password)

    # Nomad's layout for the task, and what its template blocks render there.
    alloc_dir = tmp_path / "alloc"
    task_dir = tmp_path / "init-databases" / "local"
    secrets_dir = tmp_path / "init-databases" / "secrets"
    for directory in (alloc_dir, task_dir, secrets_dir):
        directory.mkdir(parents=True)
    assert set(templates) == {"local/pginit.toml"}, "no template reads Vault"
    # The admin's password is in Vault, where the postgres task's template reads it.
    vault.put("admin", cluster.password)
    # identity { file = true }: Nomad writes the signed JWT into the secrets dir.
    jwt_file = secrets_dir / f"nomad_{spec.IDENTITY_NAME}.jwt"
    jwt_file.write_text(identities.sign(), encoding="utf-8")
    # In the bridge network postgres is 127.0.0.1:5432; here the cluster has its own port.
    task_view = services_text.replace(":5432/", f":{cluster.port}/")
    (task_dir / "pginit.toml").write_text(task_view, encoding="utf-8")

    env = tool_env(None)
    env.pop("VAULT_TOKEN", None)  # the task logs in with its JWT
    env |= {
        "VAULT_ADDR": vault.addr,
        "PGINIT_CONFIG": str(task_dir / "pginit.toml"),
        "NOMAD_ALLOC_ID": "0b2cbd3e-9f1a-4bd2-a6f0-6f3f8f1d2c11",
        "NOMAD_SHORT_ALLOC_ID": "0b2cbd3e",
        "NOMAD_ALLOC_DIR": str(alloc_dir),
        "NOMAD_TASK_DIR": str(task_dir),
        "NOMAD_SECRETS_DIR": str(secrets_dir),
        "NOMAD_TASK_NAME": "init-databases",
        "NOMAD_GROUP_NAME": "postgresql",
        "NOMAD_JOB_NAME": "postgresql",
        "NOMAD_JOB_ID": "postgresql",
    }
    assert "VAULT_TOKEN" not in env

    # poststart: the task starts once postgres is "running", before it accepts connections.
    task = subprocess.Popen(
        [sys.executable, "-m", "nomad_pginit", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Nomad starts poststart tasks once the main task runs; here the server starts
    # once the task is up, so that the task surely meets a server not accepting yet.
    assert task.stdout is not None
    early: list[str] = []
    for line in task.stdout:
        early.append(line)
        if "from Vault" in line:
            break
    cluster.start_process_only()
    rest, stderr = task.communicate(timeout=120)
    stdout = "".join(early) + rest

    assert task.returncode == 0, stdout + stderr
    lines = stdout.splitlines()
    assert any("waiting for PostgreSQL" in line for line in lines)
    for name in names:
        assert any(f'{name}: role "{name}" created' in line for line in lines)
        assert any(f'{name}: database "{name}" created' in line for line in lines)
    assert lines[-1].split(" ", 2)[2].startswith(f"summary: ok: {len(names)} services in sync")
    for password in [cluster.password, *passwords.values()]:
        assert password not in stdout + stderr

    for name, password in passwords.items():
        conninfo = cluster.conninfo(dbname=name, user=name, password=password)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.alloc_probe (id int)")

    # The allocation restarted (nomad alloc restart -all-tasks): nothing to do.
    again = subprocess.run(
        [sys.executable, "-m", "nomad_pginit", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0
    assert all(f"{name}: unchanged" in again.stdout for name in names)


# --- live mode: the sidecar, the variable, and the template re-render ---------------------------

# consul-template reads the variable's item: the only shape render writes.
_LIVE_TEMPLATE = re.compile(
    r'^\{\{ with nomadVar "([^"]+)" \}\}\{\{ \.(\w+) \}\}\{\{ end \}\}(\n?)$'
)


def render_live_template(data: str, items: dict[str, str] | None) -> str:
    """What Nomad's template runner writes for the live job's template."""
    match = _LIVE_TEMPLATE.match(data)
    assert match, f"the live template changed shape: {data!r}"
    assert items is not None, "nomadVar blocks until the variable exists"
    # A missing item is the zero NomadVarItem, which prints as "" (nomad_var_structs.go).
    return items.get(match.group(2), "") + match.group(3)


def live_job(services: Path) -> tuple[list[str], dict[str, str], str]:
    """The live job rendered from ``services``: the init task's args, its templates'
    data by destination, and the variable its services template reads."""
    options = hcl2.SerializationOptions(
        strip_string_quotes=True,
        explicit_blocks=False,
        with_comments=False,
        preserve_heredocs=False,
    )
    text = render.Templates(None).job(spec.load(services))
    job: dict[str, Any] = hcl2.loads(text, serialization_options=options)
    for job_block in job["job"]:
        for body in job_block.values():
            for group_block in body["group"]:
                for group in group_block.values():
                    for task_block in group["task"]:
                        for name, task in task_block.items():
                            if name.strip('"') == "init-databases":
                                data = {
                                    str(template["destination"]): str(template["data"])
                                    for template in task["template"]
                                }
                                variable = re.findall(
                                    r'nomadVar "([^"]+)"', data["local/pginit.toml"]
                                )[0]
                                return list(task["config"][0]["args"]), data, variable
    raise AssertionError("no init-databases task")


def postmaster(cluster: ThrowawayPostgres) -> tuple[str, object]:
    """The postmaster's PID and start time: the same while PostgreSQL never restarted."""
    pid = (cluster.datadir / "postmaster.pid").read_text(encoding="utf-8").split("\n", 1)[0]
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return pid, row[0]


def test_live_sidecar_applies_a_published_service_without_restarting_postgres(
    tmp_path: Path,
    cluster: ThrowawayPostgres,
    vault: Vault,
    identities: WorkloadIdentities,
    nomad: NomadDouble,
) -> None:
    cluster.start()
    repo = tmp_path / "repo"
    repo.mkdir()
    services = repo / "pginit.toml"
    committed = (JOB_FILE.parent / "pginit.toml").read_text(encoding="utf-8")
    assert 'mode = "oneshot"' in committed
    services.write_text(committed.replace('mode = "oneshot"', 'mode = "live"'), "utf-8")
    args, templates, variable = live_job(services)
    assert args[:2] == ["run", "--watch"]
    data = templates["local/pginit.toml"]
    names = [s.name for s in spec.load(services).services]
    for name in names:
        vault.put(name, f"{name}-pw")
    vault.put("admin", cluster.password)

    def publish() -> None:
        result = run_tool(["publish", "--config", str(services)], nomad_env(nomad))
        assert result.returncode == 0, result.output

    task_dir = tmp_path / "init-databases" / "local"
    secrets_dir = tmp_path / "init-databases" / "secrets"
    task_dir.mkdir(parents=True)
    secrets_dir.mkdir(parents=True)
    destination = task_dir / "pginit.toml"

    def template_render() -> None:
        """As the template runner does: render to a temporary file, rename into place."""
        text = render_live_template(data, nomad.variable_items(variable))
        staging = task_dir / ".pginit.toml.tmp"
        staging.write_text(text.replace(":5432/", f":{cluster.port}/"), encoding="utf-8")
        os.replace(staging, destination)

    publish()
    template_render()
    # Where PostgreSQL and Vault are: the job's own template, rendered once.
    cluster_file = task_dir / "cluster.toml"
    cluster_file.write_text(
        templates["local/cluster.toml"].replace(":5432/", f":{cluster.port}/"), "utf-8"
    )
    (secrets_dir / f"nomad_{spec.IDENTITY_NAME}.jwt").write_text(identities.sign(), "utf-8")
    env = tool_env(None)
    env.pop("VAULT_TOKEN", None)
    env |= {
        "VAULT_ADDR": vault.addr,
        "PGINIT_CONFIG": str(cluster_file),
        "NOMAD_TASK_DIR": str(task_dir),
        "NOMAD_SECRETS_DIR": str(secrets_dir),
        "NOMAD_TASK_NAME": "init-databases",
        "NOMAD_JOB_ID": "postgresql",
    }
    before = postmaster(cluster)
    # The job's args name the task's paths; here the task directory is elsewhere.
    args = [str(destination) if arg == render.TASK_SERVICES_FILE else arg for arg in args]
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "nomad_pginit", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = LineReader(sidecar)
    try:
        log.wait_for(lambda line: "summary: ok" in line, timeout=120)

        # The operator adds a service: its secret in Vault, its entry, publish.
        vault.put("newcomer", "newcomer-pw")
        services.write_text(
            services.read_text(encoding="utf-8") + '\n[[service]]\nname = "newcomer"\n', "utf-8"
        )
        publish()
        # Nomad's template watcher sees the new ModifyIndex, re-renders, signals.
        template_render()
        sidecar.send_signal(signal.SIGHUP)

        log.wait_for(lambda line: "applying (SIGHUP: services file read again)" in line)
        log.wait_for(lambda line: 'newcomer: role "newcomer" created' in line)
        log.wait_for(lambda line: "summary: ok" in line)
        conninfo = cluster.conninfo(dbname="newcomer", user="newcomer", password="newcomer-pw")
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.live_probe (id int)")
        assert postmaster(cluster) == before, "PostgreSQL was restarted"
        assert sidecar.poll() is None, "the sidecar keeps running"
    finally:
        sidecar.send_signal(signal.SIGTERM)
        code = sidecar.wait(timeout=60)
    assert code == 0
    output = log.drain()
    for secret in ("newcomer-pw", cluster.password, *(f"{n}-pw" for n in names)):
        assert secret not in output
