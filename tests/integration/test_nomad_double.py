"""The Nomad double answers as Nomad does: its behaviours, each checked on its own.

deploy and verify are only as right as the double they are tested against.
Each test names what in hashicorp/nomad it follows; the double's modules say
the same in their docstrings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from fix_nomad import NOMAD_TOKEN, job_text, nomad_env, nomad_tool
from nomad_double import WRITE, JobspecError, NomadDouble, TaskRun, Token, parse_job
from nomad_double.jobspec import check_schema

from nomad_pginit import render, spec
from nomad_pginit.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
COMMITTED_JOB = ROOT / "jobs/services/databases/postgresql/postgresql.nomad.hcl"


def call(nomad: NomadDouble, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"X-Nomad-Token": NOMAD_TOKEN}
    return requests.request(method, nomad.address + path, headers=headers, timeout=10, **kwargs)


# --- /v1/jobs/parse (command/agent/job_endpoint.go, jobspec2) ---------------------------------


def test_the_rendered_jobs_use_only_what_nomads_job_specification_has(tmp_path: Path) -> None:
    for mode in spec.MODES:
        services = tmp_path / "pginit.toml"
        services.write_text(f'[job]\nmode = "{mode}"\n\n[[service]]\nname = "gitea"\n', "utf-8")
        parse_job(render.Templates(None).job(spec.load(services)))
    job = parse_job(COMMITTED_JOB.read_text(encoding="utf-8"))
    assert job["ID"] == "postgresql"


@pytest.mark.parametrize(
    ("change", "diagnostic"),
    [
        (("    count = 1\n", "    count = 1\n    replicas = 2\n"), 'argument named "replicas"'),
        (("      identity {", "      identities {"), 'Blocks of type "identities"'),
        (("        file = true\n", '        file = true\n        path = "x"\n'), '"path"'),
        (
            ('      driver = "docker"\n', '      driver = "docker"\n      vault_role = "x"\n'),
            '"vault_role"',
        ),
    ],
)
def test_parse_refuses_what_nomad_does_not_know(change: tuple[str, str], diagnostic: str) -> None:
    text = COMMITTED_JOB.read_text(encoding="utf-8")
    changed = text.replace(*change, 1)
    assert changed != text

    with pytest.raises(JobspecError) as caught:
        parse_job(changed)

    assert "input.hcl:" in str(caught.value)
    assert diagnostic in str(caught.value)


def test_parse_endpoint_status_codes_and_variables(nomad: NomadDouble) -> None:
    hcl = COMMITTED_JOB.read_text(encoding="utf-8")

    ok = call(nomad, "POST", "/v1/jobs/parse", json={"JobHCL": hcl, "Variables": "x = 1\n"})
    redefined = call(
        nomad,
        "POST",
        "/v1/jobs/parse",
        json={"JobHCL": hcl, "Variables": 'vault_addr = "a"\nvault_addr = "b"\n'},
    )
    empty = call(nomad, "POST", "/v1/jobs/parse", json={"JobHCL": ""})
    wrong_method = call(nomad, "GET", "/v1/jobs/parse")

    # An undeclared variable is a warning the agent drops (Strict is false there).
    assert ok.status_code == 200
    assert redefined.status_code == 400
    assert redefined.text.startswith("Failed to parse job: unable to parse var content: ")
    assert "Attribute redefined" in redefined.text
    assert (empty.status_code, empty.text) == (400, "Job spec is empty")
    assert wrong_method.status_code == 405


# --- register (nomad/job_endpoint.go) ---------------------------------------------------------


def test_an_unchanged_register_gets_an_evaluation_and_the_jobs_modify_index(
    nomad: NomadDouble,
) -> None:
    hcl = COMMITTED_JOB.read_text(encoding="utf-8")
    alloc_id = nomad.seed(hcl)
    before = call(nomad, "GET", "/v1/job/postgresql").json()
    job = {**parse_job(hcl), "Namespace": "default"}

    answer = call(nomad, "POST", "/v1/jobs", json={"Job": job}).json()

    after = call(nomad, "GET", "/v1/job/postgresql").json()
    assert answer["EvalID"]  # "Force an eval for service/batch jobs"
    assert answer["JobModifyIndex"] == before["ModifyIndex"]
    assert after["Version"] == before["Version"]
    assert nomad.allocation_ids("postgresql") == [alloc_id]


def test_a_vault_identity_without_a_vault_block_is_a_warning(nomad: NomadDouble) -> None:
    hcl = COMMITTED_JOB.read_text(encoding="utf-8").replace(
        f'name = "{spec.IDENTITY_NAME}"', 'name = "vault_default"'
    )
    job = parse_job(hcl)

    answer = call(nomad, "POST", "/v1/jobs", json={"Job": job}).json()

    assert answer["Warnings"] == (
        "1 warning:\n\n* Task init-databases has an identity called vault_default but no "
        "vault block"
    )


def test_admission_errors_are_500_in_go_multierror_form(nomad: NomadDouble) -> None:
    nomad.vault_enabled = False
    job = parse_job(COMMITTED_JOB.read_text(encoding="utf-8"))

    answer = call(nomad, "POST", "/v1/jobs", json={"Job": job})

    assert answer.status_code == 500
    assert answer.text == (
        '1 error occurred:\n\t* Vault "default" not enabled but used in the job\n\n'
    )


# --- ACLs (command/agent/http.go, nomad/*_endpoint.go) ----------------------------------------


def test_a_namespace_scoped_token(tmp_path: Path) -> None:
    token = Token("scoped", namespaces={"databases": WRITE})
    with NomadDouble(tokens=[token]) as nomad:
        nomad.add_namespace("databases")
        hcl = COMMITTED_JOB.read_text(encoding="utf-8")
        headers = {"X-Nomad-Token": "scoped"}
        job = parse_job(hcl)
        registered = requests.post(
            nomad.address + "/v1/jobs?namespace=databases",
            json={"Job": job},
            headers=headers,
            timeout=10,
        ).json()
        eval_path = f"/v1/evaluation/{registered['EvalID']}"
        results = {
            "job, no namespace": requests.get(
                nomad.address + "/v1/job/postgresql", headers=headers, timeout=10
            ),
            "job": requests.get(
                nomad.address + "/v1/job/postgresql?namespace=databases",
                headers=headers,
                timeout=10,
            ),
            "eval, no namespace": requests.get(
                nomad.address + eval_path, headers=headers, timeout=10
            ),
            "eval": requests.get(
                nomad.address + eval_path + "?namespace=databases", headers=headers, timeout=10
            ),
            "unknown token": requests.get(
                nomad.address + "/v1/job/postgresql?namespace=databases",
                headers={"X-Nomad-Token": "nope"},
                timeout=10,
            ),
        }

    assert {name: answer.status_code for name, answer in results.items()} == {
        "job, no namespace": 403,
        "job": 200,
        "eval, no namespace": 403,
        "eval": 200,
        "unknown token": 403,
    }
    assert results["job, no namespace"].text == "Permission denied"


# --- allocations (client/allocrunner) ---------------------------------------------------------


def test_every_task_is_pending_from_the_start(nomad: NomadDouble, job_dir: Path) -> None:
    job = parse_job(job_text(job_dir))
    call(nomad, "POST", "/v1/jobs", json={"Job": job})

    (first, *_) = call(nomad, "GET", "/v1/job/postgresql/allocations").json()

    assert first["ClientStatus"] == "pending"
    assert {name: state["State"] for name, state in first["TaskStates"].items()} == {
        "postgres": "pending",
        "init-databases": "pending",
    }
    for state in first["TaskStates"].values():
        assert [event["Type"] for event in state["Events"]] == ["Received"]
        assert state["StartedAt"] == "0001-01-01T00:00:00Z"


def test_logs_of_an_unknown_or_unstarted_task(nomad: NomadDouble, job_dir: Path) -> None:
    nomad.next_run = TaskRun(starts=False)
    call(nomad, "POST", "/v1/jobs", json={"Job": parse_job(job_text(job_dir))})
    (alloc_id,) = nomad.allocation_ids("postgresql")
    base = f"/v1/client/fs/logs/{alloc_id}"

    unknown = call(nomad, "GET", base, params={"task": "web", "type": "stdout"})
    not_started = call(nomad, "GET", base, params={"task": "init-databases", "type": "stdout"})
    no_type = call(nomad, "GET", base, params={"task": "init-databases"})
    no_task = call(nomad, "GET", base, params={"type": "stdout"})

    assert (unknown.status_code, unknown.text) == (400, 'unknown task name "web"')
    assert (not_started.status_code, not_started.text) == (
        404,
        'task "init-databases" not started yet. No logs available',
    )
    assert (no_type.status_code, no_type.text) == (400, "must provide log type (stdout/stderr)")
    assert (no_task.status_code, no_task.text) == (400, "must provide task name")


def old_style_init_task(job: str) -> str:
    """The init task as it was: a vault block of its own, and a template reading Vault."""
    changed = job.replace(
        "      identity {",
        '      vault {\n        role = "pginit"\n      }\n\n'
        "      template {\n"
        '        destination = "secrets/pg_admin_password"\n'
        "        data        = <<EOT\n"
        '{{ with secret "secret/data/postgres/pginit-admin" }}{{ .Data.data.password }}{{ end }}\n'
        "EOT\n"
        "      }\n\n"
        "      identity {",
    )
    assert changed != job
    return changed


@pytest.mark.parametrize("refused", ["vault login", "template read"])
def test_a_vault_refusal_fails_an_old_style_init_task_for_good_and_kills_postgres(
    nomad: NomadDouble, job_dir: Path, refused: str
) -> None:
    # Why init-databases has neither: Nomad fails such a task with no restart when
    # Vault refuses its login (vault_hook.go) or a template's read (template.go),
    # whatever its restart block says, then kills its siblings (alloc_runner.go).
    if refused == "vault login":
        nomad.behaviour.refused_vault_roles.add("pginit")
        message = "Vault: failed to derive vault token"
    else:
        nomad.behaviour.unreadable_secrets.add("secret/data/postgres/pginit-admin")
        message = "Template failed: vault.read(secret/data/postgres/pginit-admin)"

    alloc_id = nomad.seed(old_style_init_task(job_text(job_dir)))

    allocation = nomad.allocation(alloc_id)
    assert allocation.client_status == "failed"
    init = allocation.tasks["init-databases"]
    assert init.failed
    assert any(event["DisplayMessage"].startswith(message) for event in init.events)
    postgres = allocation.tasks["postgres"]
    assert postgres.state == "dead"
    assert "Sibling Task Failed" in [event["Type"] for event in postgres.events]


def test_the_rendered_job_retries_a_refused_vault_login_and_keeps_postgres(
    nomad: NomadDouble, job_dir: Path
) -> None:
    # nomad-pginit's own login refused: exit 4, which the restart block retries.
    alloc_id = nomad.seed(job_text(job_dir), TaskRun(exit_code=4))
    allocation = nomad.allocation(alloc_id)

    assert allocation.client_status == "running"
    assert allocation.tasks["postgres"].state == "running"
    init = allocation.tasks["init-databases"]
    assert not init.failed
    reasons = [
        event["Details"].get("restart_reason")
        for event in init.events
        if event["Type"] == "Restarting"
    ]
    # Three restarts within the policy, then the wait of mode "delay" (restarts.go).
    assert reasons[-1] == "Exceeded allowed attempts, applying a delay"


def test_deploy_logs_nomads_warnings(nomad: NomadDouble, job_dir: Path) -> None:
    text = job_text(job_dir).replace(f'name = "{spec.IDENTITY_NAME}"', 'name = "vault_x"')
    (job_dir / render.JOB_FILE_NAME).write_text(text, encoding="utf-8")

    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.OK, result.output
    assert "Nomad warns: * Task init-databases has an identity called vault_x" in result.stdout


def test_the_schema_covers_the_blocks_the_job_renders() -> None:
    from hcl2.api import parses_to_tree

    tree = parses_to_tree(COMMITTED_JOB.read_text(encoding="utf-8"))
    assert check_schema("", tree.children[0]) == []


@pytest.mark.parametrize(
    ("variables", "refusal"),
    [
        ('datacenters = "dc1"\n', "list of string required"),
        ("datacenters = garbage\n", "Variables not allowed"),
        ('pginit_image = "${upper("x")}"\n', "Function calls not allowed"),
    ],
)
def test_variables_must_be_constants_of_the_declared_type(variables: str, refusal: str) -> None:
    # jobspec2 evaluates var-file values with no context (no variables, no
    # functions) and converts them to the variable's type (types.variables.go).
    with pytest.raises(JobspecError, match=refusal):
        parse_job(COMMITTED_JOB.read_text(encoding="utf-8"), variables)


@pytest.mark.parametrize(
    ("variables", "image"),
    [
        ("postgres_version = true\n", "postgres:true"),
        ("postgres_version = 1e3\n", "postgres:1000"),
        ('pginit_image = "a$${x}"\n', "a${x}"),
        ('{"pginit_image": "a${x}"}', "a${x}"),
    ],
)
def test_variables_are_converted_as_cty_converts_them(variables: str, image: str) -> None:
    job = parse_job(COMMITTED_JOB.read_text(encoding="utf-8"), variables)
    tasks = job["TaskGroups"][0]["Tasks"]
    assert image in (tasks[0]["Config"]["image"], tasks[1]["Config"]["image"])
