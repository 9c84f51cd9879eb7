"""deploy submits the job ``nomad job run`` would, the way the nomad CLI reaches Nomad.

Against the Nomad double (``nomad_double``), which parses jobs with their
variables as /v1/jobs/parse does, enforces ACL namespaces, refuses jobs at
register as Nomad's admission checks do, and blocks a restart until the
running tasks have stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import tool_env
from fix_nomad import (
    NOMAD_TOKEN,
    SERVER_NAME,
    TlsFiles,
    job_text,
    lines_with,
    nomad_env,
    nomad_tool,
)
from nomad_double import WRITE, NomadDouble, TaskRun, Token

from nomad_pginit.errors import ExitCode
from nomad_pginit.nomad import _task_state

VARS_HCL = """\
# Site values, kept next to the job.
pginit_image = "registry.example.com/nomad-pginit:0.1.0"
vault_addr   = "https://vault.example.com:8200"
"""


def init_task(job: dict[str, object]) -> dict[str, object]:
    groups = job["TaskGroups"]
    assert isinstance(groups, list)
    (task,) = [task for task in groups[0]["Tasks"] if task["Name"] == "init-databases"]
    assert isinstance(task, dict)
    return task


# --- job variables, as nomad job run takes them -----------------------------------------------


def test_var_file_reaches_nomads_parser_and_the_registered_job(
    nomad: NomadDouble, job_dir: Path
) -> None:
    var_file = job_dir / "postgresql.vars.hcl"
    var_file.write_text(VARS_HCL, encoding="utf-8")

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--var-file", str(var_file))

    assert result.returncode == ExitCode.OK, result.output
    (parse,) = nomad.requests_to("POST", "/v1/jobs/parse")
    assert "registry.example.com/nomad-pginit:0.1.0" in parse.json()["Variables"]
    task = init_task(nomad.registered("postgresql"))
    # The job Nomad runs is the site's, not the defaults: no second job, no restart.
    assert task["Config"]["image"] == "registry.example.com/nomad-pginit:0.1.0"  # type: ignore[index]
    assert task["Env"]["VAULT_ADDR"] == "https://vault.example.com:8200"  # type: ignore[index]
    assert nomad.submission("postgresql") == {
        "Source": job_text(job_dir),
        "Format": "hcl2",
        "VariableFlags": {},
        "Variables": VARS_HCL + "\n",
    }
    assert "job variables: vault_addr (--var-file" in result.stdout or (
        "job variables: pginit_image (--var-file" in result.stdout
    )


def test_deploy_with_the_var_file_matches_what_nomad_job_run_registered(
    nomad: NomadDouble, job_dir: Path
) -> None:
    # nomad job run -var-file=postgresql.vars.hcl registered it; deploy must not change it.
    alloc_id = nomad.seed(job_text(job_dir), variables=VARS_HCL)
    var_file = job_dir / "postgresql.vars.hcl"
    var_file.write_text(VARS_HCL, encoding="utf-8")

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--var-file", str(var_file))

    assert result.returncode == ExitCode.OK, result.output
    assert "job postgresql is unchanged" in result.stdout
    assert nomad.allocation_ids("postgresql") == [alloc_id]
    # Without the var file it is another job: Nomad would replace the allocation.
    again = nomad_tool("deploy", job_dir, nomad_env(nomad))
    assert "new allocation" in again.stdout
    assert nomad.job_version("postgresql") == 1


def test_precedence_env_then_files_in_order_then_var(nomad: NomadDouble, job_dir: Path) -> None:
    first = job_dir / "a.hcl"
    first.write_text('pginit_image = "from-a"\npostgres_version = "15"\n', encoding="utf-8")
    second = job_dir / "b.json"
    second.write_text(json.dumps({"pginit_image": "from-b", "host_volume": "pg-b"}), "utf-8")
    env = nomad_env(
        nomad,
        NOMAD_VAR_pginit_image="from-env",
        NOMAD_VAR_vault_addr="https://env:8200",
        NOMAD_VAR_not_declared="ignored",
    )

    result = nomad_tool(
        "deploy",
        job_dir,
        env,
        "--var-file",
        str(first),
        "--var-file",
        str(second),
        "--var",
        "postgres_version=16",
        "--var",
        'datacenters=["dc1", "dc2"]',
    )

    assert result.returncode == ExitCode.OK, result.output
    job = nomad.registered("postgresql")
    task = init_task(job)
    assert task["Config"]["image"] == "from-b"  # type: ignore[index]
    assert task["Env"]["VAULT_ADDR"] == "https://env:8200"  # type: ignore[index]
    assert job["Datacenters"] == ["dc1", "dc2"]
    postgres = job["TaskGroups"][0]["Tasks"][0]
    assert postgres["Config"]["image"] == "postgres:16"
    assert job["TaskGroups"][0]["Volumes"]["data"]["Source"] == "pg-b"
    submission = nomad.submission("postgresql")
    assert submission is not None
    # Simple -var and NOMAD_VAR_ values as flags (all of them, as nomad job run sends them),
    # complex ones appended to the var files' text (jobspec2/parse.go separateVariables).
    assert submission["VariableFlags"] == {
        "not_declared": "ignored",
        "pginit_image": "from-env",
        "postgres_version": "16",
        "vault_addr": "https://env:8200",
    }
    assert submission["Variables"].endswith('datacenters = ["dc1", "dc2"]')


def test_a_var_value_is_a_literal_string_for_a_string_variable(
    nomad: NomadDouble, job_dir: Path
) -> None:
    image = 'reg.example.com/x:1 "quoted" ${not.interpolated} %{nor.this} back\\slash'

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--var", f"pginit_image={image}")

    assert result.returncode == ExitCode.OK, result.output
    assert init_task(nomad.registered("postgresql"))["Config"]["image"] == image  # type: ignore[index]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--var", "pginit_imagee=x"], '--var "pginit_imagee": '),
        (["--var", "no_equals_sign"], "--var must be NAME=VALUE"),
        (["--var-file", "{dir}/unknown.hcl"], 'sets "image", which'),
        (["--var-file", "{dir}/missing.hcl"], "cannot read the var file"),
        (["--var-file", "{dir}/block.hcl"], "may only set variables"),
        (["--var-file", "{dir}/broken.hcl"], "is not valid HCL"),
    ],
)
def test_bad_variables_are_refused_before_anything_is_sent(
    nomad: NomadDouble, job_dir: Path, args: list[str], message: str
) -> None:
    (job_dir / "unknown.hcl").write_text('image = "x"\n', encoding="utf-8")
    (job_dir / "block.hcl").write_text('variable "x" {\n  default = 1\n}\n', encoding="utf-8")
    (job_dir / "broken.hcl").write_text('pginit_image = "x\n', encoding="utf-8")
    args = [arg.replace("{dir}", str(job_dir)) for arg in args]

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), *args)

    assert result.returncode == ExitCode.CONFIG, result.output
    assert message in result.stdout
    assert not nomad.requests


# --- namespaces, regions and tokens -----------------------------------------------------------


def test_every_request_carries_the_namespace_a_scoped_token_needs(job_dir: Path) -> None:
    # A token that may do everything deploy needs, in namespace "databases" only.
    token = Token("scoped-secret", namespaces={"databases": WRITE})
    with NomadDouble(tokens=[token]) as nomad:
        nomad.add_namespace("databases")
        env = tool_env(
            None,
            NOMAD_ADDR=nomad.address,
            NOMAD_TOKEN="scoped-secret",
            NOMAD_NAMESPACE="databases",
            NOMAD_REGION="europe",
        )

        deployed = nomad_tool("deploy", job_dir, env)
        verified = nomad_tool("verify", job_dir, env)
        rerun = nomad_tool("deploy", job_dir, env, "--rerun")

    assert deployed.returncode == ExitCode.OK, deployed.output
    assert verified.returncode == ExitCode.OK, verified.output
    assert rerun.returncode == ExitCode.OK, rerun.output
    assert nomad.requests_to("GET", "/v1/evaluation/")
    for request in nomad.requests:
        assert request.query.get("namespace") == "databases", request.path
        assert request.query.get("region") == "europe", request.path
    assert nomad.registered("postgresql", namespace="databases")["Namespace"] == "databases"


def test_without_the_namespace_a_scoped_token_is_refused_with_a_hint(job_dir: Path) -> None:
    token = Token("scoped-secret", namespaces={"databases": WRITE})
    with NomadDouble(tokens=[token]) as nomad:
        env = tool_env(None, NOMAD_ADDR=nomad.address, NOMAD_TOKEN="scoped-secret")
        result = nomad_tool("deploy", job_dir, env)

    assert result.returncode == ExitCode.NOMAD, result.output
    assert "403 Permission denied" in result.stdout
    assert "NOMAD_NAMESPACE" in result.stdout
    assert "scoped-secret" not in result.output


def test_a_job_nomad_refuses_at_register_is_exit_2_with_its_reason(
    nomad: NomadDouble, job_dir: Path
) -> None:
    nomad.vault_enabled = False  # the agents have no vault block in their configuration

    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert 'Nomad refused job postgresql: Vault "default" not enabled but used in the job' in (
        result.stdout
    )
    assert "nothing was registered" in result.stdout
    assert "unreachable" not in result.stdout


def test_a_nonexistent_namespace_is_refused_at_register(nomad: NomadDouble, job_dir: Path) -> None:
    result = nomad_tool("deploy", job_dir, nomad_env(nomad, NOMAD_NAMESPACE="nope"))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert 'job "postgresql" is in nonexistent namespace "nope"' in result.stdout


# --- --rerun ----------------------------------------------------------------------------------


def test_rerun_waits_for_postgres_to_stop_and_reads_nomads_events(
    nomad: NomadDouble, job_dir: Path
) -> None:
    alloc_id = nomad.seed(job_text(job_dir))
    nomad.next_run = TaskRun.ok("summary: ok: 2 services in sync (1 created, 1 unchanged)")
    # PostgreSQL takes longer to stop than python-nomad's 10 s timeout.
    nomad.stop_seconds = 11

    started = time.monotonic()
    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--rerun")

    assert result.returncode == ExitCode.OK, result.output
    assert time.monotonic() - started >= 11
    assert "(1 created, 1 unchanged)" in result.stdout
    # A restart someone asked for is not Nomad's restart policy at work.
    assert "restarted by Nomad" not in result.stdout
    events = [event["Type"] for event in nomad.allocation(alloc_id).tasks["init-databases"].events]
    assert events[-4:] == ["Restart Signaled", "Restarting", "Started", "Terminated"]


def test_exit_code_comes_from_details() -> None:
    # TaskEvent.ExitCode is deprecated (nomad/structs): Details["exit_code"] is the truth.
    state = _task_state(
        {
            "State": "dead",
            "Events": [
                {"Type": "Started", "Time": 1, "Details": {}},
                {"Type": "Terminated", "Time": 2, "ExitCode": 0, "Details": {"exit_code": "3"}},
            ],
        }
    )
    assert state.exit_code == 3


# --- how deploy reaches Nomad: TLS, client certificates, unix sockets -------------------------


def test_tls_with_a_ca_a_server_name_and_a_client_certificate(
    job_dir: Path, tls_files: TlsFiles
) -> None:
    with NomadDouble(
        token=NOMAD_TOKEN,
        tls=(tls_files.server_cert, tls_files.server_key),
        client_ca=tls_files.ca,
    ) as nomad:
        base = {
            "NOMAD_ADDR": nomad.address,  # https://127.0.0.1:PORT: not the certificate's name
            "NOMAD_TOKEN": NOMAD_TOKEN,
            "NOMAD_CACERT": str(tls_files.ca),
            "NOMAD_CLIENT_CERT": str(tls_files.client_cert),
            "NOMAD_CLIENT_KEY": str(tls_files.client_key),
        }
        without_name = nomad_tool("verify", job_dir, tool_env(None, **base))
        with_name = nomad_tool(
            "deploy", job_dir, tool_env(None, **base, NOMAD_TLS_SERVER_NAME=SERVER_NAME)
        )
        no_client_cert = nomad_tool(
            "verify",
            job_dir,
            tool_env(
                None,
                NOMAD_ADDR=nomad.address,
                NOMAD_TOKEN=NOMAD_TOKEN,
                NOMAD_CACERT=str(tls_files.ca),
                NOMAD_TLS_SERVER_NAME=SERVER_NAME,
            ),
        )

    assert without_name.returncode == ExitCode.NOMAD, without_name.output
    assert "TLS" in without_name.stdout
    assert with_name.returncode == ExitCode.OK, with_name.output
    assert no_client_cert.returncode == ExitCode.NOMAD, no_client_cert.output


def test_half_a_client_certificate_is_a_usage_error(job_dir: Path, tls_files: TlsFiles) -> None:
    env = tool_env(None, NOMAD_CLIENT_CERT=str(tls_files.client_cert))

    result = nomad_tool("verify", job_dir, env)

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY go together" in result.stdout


def test_skip_verify_reaches_a_server_with_an_unknown_ca(
    job_dir: Path, tls_files: TlsFiles
) -> None:
    with NomadDouble(token=NOMAD_TOKEN, tls=(tls_files.server_cert, tls_files.server_key)) as nomad:
        refused = nomad_tool("verify", job_dir, nomad_env(nomad))
        allowed = nomad_tool("deploy", job_dir, nomad_env(nomad, NOMAD_SKIP_VERIFY="true"))

    assert refused.returncode == ExitCode.NOMAD, refused.output
    assert "NOMAD_CACERT" in refused.stdout
    assert allowed.returncode == ExitCode.OK, allowed.output


def test_a_unix_socket_address(job_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # The task API socket, or an agent listening on one: unix:///path.
    socket_path = tmp_path_factory.mktemp("sock") / "api.sock"
    with NomadDouble(token=NOMAD_TOKEN, socket_path=socket_path) as nomad:
        assert nomad.address == f"unix://{socket_path}"
        result = nomad_tool("deploy", job_dir, nomad_env(nomad))
        missing = nomad_tool(
            "verify",
            job_dir,
            tool_env(None, NOMAD_ADDR=f"unix://{socket_path}.gone", NOMAD_TOKEN=NOMAD_TOKEN),
        )

    assert result.returncode == ExitCode.OK, result.output
    assert lines_with(result.stdout, f"submitted to Nomad at unix://{socket_path}")
    assert {request.headers["host"] for request in nomad.requests} == {"127.0.0.1"}
    assert missing.returncode == ExitCode.NOMAD, missing.output
    assert "unreachable" in missing.stdout


# --- what the review found ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        ("NOMAD_CACERT", "NOMAD_CACERT=/nonexistent is not a file"),
        ("NOMAD_CAPATH", "NOMAD_CAPATH=/nonexistent is not a directory"),
        ("NOMAD_CLIENT_CERT", "NOMAD_CLIENT_CERT=/nonexistent is not a file"),
    ],
)
def test_a_missing_tls_file_is_a_usage_error(
    job_dir: Path, tls_files: TlsFiles, variable: str, message: str
) -> None:
    env = tool_env(None, NOMAD_ADDR="https://127.0.0.1:1", **{variable: "/nonexistent"})
    if variable == "NOMAD_CLIENT_CERT":
        env["NOMAD_CLIENT_KEY"] = str(tls_files.client_key)

    result = nomad_tool("verify", job_dir, env)

    assert result.returncode == ExitCode.CONFIG, result.output
    assert message in result.stdout
    assert "Traceback" not in result.output


def test_a_ca_directory_works_as_the_nomad_cli_reads_it(
    job_dir: Path, tls_files: TlsFiles, tmp_path: Path
) -> None:
    # Any file name: the nomad CLI loads every file (go-rootcerts), no c_rehash links.
    capath = tmp_path / "cas"
    capath.mkdir()
    (capath / "our-ca.pem").write_bytes(tls_files.ca.read_bytes())
    with NomadDouble(token=NOMAD_TOKEN, tls=(tls_files.server_cert, tls_files.server_key)) as nomad:
        result = nomad_tool(
            "deploy",
            job_dir,
            nomad_env(nomad, NOMAD_CAPATH=str(capath), NOMAD_TLS_SERVER_NAME=SERVER_NAME),
        )

    assert result.returncode == ExitCode.OK, result.output


def test_a_validation_error_mentioning_a_timeout_is_still_the_jobs(
    nomad: NomadDouble, job_dir: Path
) -> None:
    nomad.admission_errors.append(
        "Task group postgresql validation failed: service check validation failed: "
        "timeout (500ms) is lower than required minimum timeout 1s"
    )

    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "Nomad refused job postgresql: Task group postgresql validation failed" in result.stdout


@pytest.mark.parametrize("trouble", ["leadership lost while committing log", "No cluster leader"])
def test_the_clusters_own_trouble_at_register_is_exit_5(
    nomad: NomadDouble, job_dir: Path, trouble: str
) -> None:
    nomad.register_trouble = trouble

    result = nomad_tool("deploy", job_dir, nomad_env(nomad))

    assert result.returncode == ExitCode.NOMAD, result.output
    assert trouble in result.stdout
    assert "fix the job file" not in result.stdout


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ('pginit_image = "a"\npginit_image = "b"\n', [], 'sets "pginit_image" twice'),
        ('{"pginit_image": "a", "pginit_image": "b"}', [], 'sets "pginit_image" twice'),
        (
            "",
            ["--var", 'datacenters=["dc1"]\npginit_image = "evil"'],
            "one HCL expression and nothing after it",
        ),
    ],
)
def test_variable_inputs_nomad_job_run_refuses_are_refused(
    nomad: NomadDouble, job_dir: Path, content: str, args: list[str], message: str
) -> None:
    var_file = job_dir / "site.hcl"
    var_file.write_text(content, encoding="utf-8")

    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--var-file", str(var_file), *args)

    assert result.returncode == ExitCode.CONFIG, result.output
    assert message in result.stdout
    assert not nomad.requests_at("POST", "/v1/jobs")


def test_a_var_value_that_is_not_a_constant_is_refused_by_nomads_parser(
    nomad: NomadDouble, job_dir: Path
) -> None:
    result = nomad_tool("deploy", job_dir, nomad_env(nomad), "--var", "datacenters=garbage")

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "Variables not allowed" in result.stdout
