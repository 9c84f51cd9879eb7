"""The postgresql job, the snippets and the README table, parsed back with python-hcl2.

No Nomad agent runs here: these tests check the structure that Nomad relies
on (lifecycle, restart policy, vault, network) and that the job carries
exactly the services of the services file and never a secret.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import envparse
import hcl2
import pytest
from conftest import tool_env
from hypothesis import given, settings
from hypothesis import strategies as st

from nomad_pginit import render, spec
from nomad_pginit.errors import ConfigError
from nomad_pginit.secret import Secret

ROOT = Path(__file__).resolve().parents[2]
SERVICES_FILE = ROOT / render.DEFAULT_SERVICES_FILE
JOB_FILE = SERVICES_FILE.parent / render.JOB_FILE_NAME
TODAYS_SERVICES = [
    "authelia",
    "freshrss",
    "gitea",
    "grafana",
    "speedtest",
    "uptimekuma",
    "vaultwarden",
]
PASSWORD_MARKER = "pw-marker-render-7f3a"

# ---- helpers -----------------------------------------------------------------


def parse_hcl(text: str) -> dict[str, Any]:
    options = hcl2.SerializationOptions(
        strip_string_quotes=True,
        explicit_blocks=False,
        with_comments=False,
        preserve_heredocs=False,
    )
    parsed: dict[str, Any] = hcl2.loads(text, serialization_options=options)
    return parsed


def labelled(body: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """Blocks with one label (job "x", task "y"), by label."""
    blocks: dict[str, dict[str, Any]] = {}
    for entry in body.get(kind, []):
        ((label, block),) = entry.items()
        assert label not in blocks, f"two {kind} blocks labelled {label!r}"
        blocks[label] = block
    return blocks


def single(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The one unlabelled block of a kind (network, lifecycle, restart)."""
    blocks = body.get(kind, [])
    assert len(blocks) == 1, f"expected one {kind} block, found {len(blocks)}"
    block: dict[str, Any] = blocks[0]
    return block


def templates_by_destination(task: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {block["destination"]: block for block in task.get("template", [])}


def job_parts(text: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """(job, group, tasks by name) of a rendered job."""
    jobs = labelled(parse_hcl(text), "job")
    assert list(jobs) == [render.JOB_NAME]
    job = jobs[render.JOB_NAME]
    groups = labelled(job, "group")
    assert len(groups) == 1, "postgres and its init task must share one group (one namespace)"
    (group,) = groups.values()
    return job, group, labelled(group, "task")


def write_services(directory: Path, body: str) -> Path:
    path = directory / "pginit.toml"
    path.write_text(body, encoding="utf-8")
    return path


def pginit(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a process, as an operator would, in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "nomad_pginit", *args],
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def committed() -> spec.Spec:
    return spec.load(SERVICES_FILE)


@pytest.fixture(scope="module")
def job_text(committed: spec.Spec) -> str:
    return render.Templates(local_dir=None).job(committed)


# ---- the committed files -------------------------------------------------------


def test_committed_services_file_lists_todays_services(committed: spec.Spec) -> None:
    assert [service.name for service in committed.services] == TODAYS_SERVICES
    assert committed.vault == spec.VaultSettings(
        mount="secret", path="postgres/{service}", key="password", jwt_role="postgresql"
    )
    assert committed.postgres.password_secret == render.ADMIN_VAULT_PATH


def test_committed_job_is_current() -> None:
    result = pginit(["render", "--check"], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


def test_repository_templates_dir_overrides_nothing() -> None:
    # The committed job must be what `pip install nomad-pginit` users render.
    assert not list((ROOT / render.LOCAL_TEMPLATES).glob("*.j2"))


def test_templates_ship_in_the_package() -> None:
    packaged = Path(render.__file__).parent / "templates"
    names = {path.name for path in packaged.glob("*.j2")}
    assert names == {
        render.JOB_TEMPLATE,
        render.SERVICES_FILE_TEMPLATE,
        render.SNIPPET_TEMPLATE,
        render.TABLE_TEMPLATE,
    }


# ---- the job's structure -------------------------------------------------------


def test_job_has_one_bridge_group_with_the_database_port(job_text: str) -> None:
    _, group, tasks = job_parts(job_text)
    network = single(group, "network")
    assert network["mode"] == "bridge"
    assert labelled(network, "port")["db"]["to"] == 5432
    assert set(tasks) == {"postgres", "init-databases"}
    (volume,) = labelled(group, "volume").values()
    assert volume["type"] == "host"


def test_postgres_task_runs_the_official_image_on_the_host_volume(job_text: str) -> None:
    _, _, tasks = job_parts(job_text)
    postgres = tasks["postgres"]
    assert postgres["driver"] == "docker"
    assert single(postgres, "config")["image"] == "postgres:${var.postgres_version}"
    assert single(postgres, "volume_mount")["destination"] == "/var/lib/postgresql/data"
    env = single(postgres, "env")
    assert env["POSTGRES_PASSWORD_FILE"] == "/secrets/pg_admin_password"
    assert "POSTGRES_PASSWORD" not in env
    admin = templates_by_destination(postgres)["secrets/pg_admin_password"]
    assert 'secret "secret/data/postgres/admin"' in admin["data"]
    # Nomad logs in for the template only: no token in PostgreSQL's environment or files.
    assert single(postgres, "vault") == {
        "role": "postgresql",
        "change_mode": "noop",
        "env": False,
        "disable_file": True,
    }


def test_init_task_is_a_poststart_task_that_never_fails_for_good(job_text: str) -> None:
    _, _, tasks = job_parts(job_text)
    init = tasks["init-databases"]
    assert single(init, "lifecycle") == {"hook": "poststart", "sidecar": False}
    restart = single(init, "restart")
    # "fail" would let one tenant's missing secret make Nomad kill postgres.
    assert restart["mode"] == "delay"
    assert restart["attempts"] >= 1
    # A vault block or a template reading Vault fails the task for good when Vault
    # refuses it (no restart), and Nomad then stops postgres: neither is allowed.
    assert "vault" not in init
    for block in init.get("template", []):
        # No consul-template action at all: nothing that can fail to render.
        assert "{{" not in block["data"]
        assert "secrets/" not in block["destination"]
    assert single(init, "identity") == {
        "name": spec.IDENTITY_NAME,
        "aud": ["vault.io"],
        "file": True,
        "ttl": "1h",
    }
    assert single(init, "config")["image"] == "${var.pginit_image}"
    assert single(init, "config")["args"] == ["run"]
    assert single(init, "env")["PGINIT_CONFIG"] == render.TASK_SERVICES_FILE
    resources = single(init, "resources")
    assert resources["cpu"] > 0
    assert resources["memory"] > 0
    destinations = set(templates_by_destination(init))
    assert destinations == {"local/pginit.toml"}


def test_live_mode_runs_the_init_task_as_a_watching_sidecar(tmp_path: Path) -> None:
    path = write_services(
        tmp_path,
        '[job]\nmode = "live"\ninterval = 15\n\n[[service]]\nname = "gitea"\n',
    )
    text = render.Templates(local_dir=None).job(spec.load(path))
    _, _, tasks = job_parts(text)
    init = tasks["init-databases"]
    assert single(init, "lifecycle") == {"hook": "poststart", "sidecar": True}
    assert single(init, "config")["args"] == [
        "run",
        "--watch",
        "--interval",
        "15",
        "--services",
        render.TASK_SERVICES_FILE,
    ]
    # A sidecar that fails is restarted the same way: never for good.
    assert single(init, "restart")["mode"] == "delay"


def test_delivered_services_file_lists_the_same_services(
    job_text: str, committed: spec.Spec
) -> None:
    _, _, tasks = job_parts(job_text)
    data = templates_by_destination(tasks["init-databases"])["local/pginit.toml"]["data"]
    delivered = spec.parse(tomllib.loads(data), Path(render.TASK_SERVICES_FILE))
    assert delivered.services == committed.services
    assert delivered.postgres == spec.PostgresSettings(
        dsn=render.TASK_DSN, password_secret="postgres/admin"
    )
    # The task logs in to Vault itself, with its identity's JWT where Nomad writes it.
    assert delivered.vault.jwt_role == "postgresql"
    assert delivered.vault.jwt_path == "jwt-nomad"
    assert delivered.vault.jwt_file == ""
    # One Vault path per service, the one the services file gives it.
    assert {s.name: delivered.vault.cli_path(s.name) for s in delivered.services} == {
        name: f"secret/postgres/{name}" for name in TODAYS_SERVICES
    }


def test_delivered_services_file_is_normalized(tmp_path: Path) -> None:
    source = write_services(
        tmp_path,
        """
        [vault]
        path = "kv-postgres/{service}"

        [[service]]
        user = "gitea"
        name = "gitea"   # user repeats the default

        [[service]]
        name = "uptime-kuma"
        database = "uptimekuma"
        """,
    )
    text = render.Templates(local_dir=None).services_file(spec.load(source))
    entries = tomllib.loads(text)["service"]
    assert entries == [{"name": "gitea"}, {"name": "uptime-kuma", "database": "uptimekuma"}]
    assert tomllib.loads(text)["vault"] == {
        "mount": "secret",
        "path": "kv-postgres/{service}",
        "key": "password",
        "jwt_role": render.DEFAULT_VAULT_ROLE,
    }
    assert tomllib.loads(text)["postgres"] == {
        "dsn": render.TASK_DSN,
        "password_secret": render.ADMIN_VAULT_PATH,
    }


def test_no_secret_anywhere_in_the_job(committed: spec.Spec) -> None:
    with_passwords = replace(
        committed,
        services=tuple(
            replace(service, password=Secret(f"{PASSWORD_MARKER}-{service.name}"))
            for service in committed.services
        ),
    )
    text = render.Templates(local_dir=None).job(with_passwords)
    assert PASSWORD_MARKER not in text
    assert "SCRAM-SHA-256$" not in text
    # No attribute or TOML key that carries a credential itself.
    assert not re.search(r"(?im)^\s*\w*(password|token|secret_id)\s*=", text)
    assert "VAULT_TOKEN" not in text
    assert "PGPASSWORD" not in text
    # Vault is read only by the postgres task's template, into secrets/.
    _, _, tasks = job_parts(text)
    for name, task in tasks.items():
        for destination, block in templates_by_destination(task).items():
            if "{{ with secret" in block["data"]:
                assert (name, destination) == ("postgres", "secrets/pg_admin_password")


def test_services_that_consul_template_would_execute_are_refused(tmp_path: Path) -> None:
    source = write_services(tmp_path, '[[service]]\nname = "a{{ env \\"HOME\\" }}"\n')
    with pytest.raises(ConfigError, match="consul-template"):
        render.Templates(local_dir=None).job(spec.load(source))


def test_a_service_may_not_share_the_admin_secret(tmp_path: Path) -> None:
    source = write_services(tmp_path, '[[service]]\nname = "admin"\n')
    with pytest.raises(ConfigError) as caught:
        render.Templates(local_dir=None).job(spec.load(source))
    assert "superuser" in str(caught.value)


def test_values_are_quoted_for_hcl_toml_and_go() -> None:
    assert render.hcl_string('a"b\\c${d}%{e}\n') == '"a\\"b\\\\c$${d}%%{e}\\u000a"'
    assert render.hcl_heredoc("x = ${y}\n") == "x = $${y}\n"
    assert tomllib.loads("v = " + render.toml_value('a"\\\x01b'))["v"] == 'a"\\\x01b'
    assert render.toml_value(["a", 1, True]) == '["a", 1, true]'
    assert render.go_string('p"q') == '"p\\"q"'
    assert render.markdown_cell("a|b") == "a\\|b"
    with pytest.raises(ConfigError, match="end marker"):
        render.hcl_heredoc("a\nEOT\nb")


# ---- templates ---------------------------------------------------------------


def test_templates_are_strict_about_undefined_variables(
    tmp_path: Path, committed: spec.Spec
) -> None:
    local = tmp_path / "templates"
    local.mkdir()
    (local / render.JOB_TEMPLATE).write_text('job "x" {\n  meta = {= no_such_variable =}\n}\n')
    with pytest.raises(ConfigError) as caught:
        render.Templates(local).job(committed)
    message = str(caught.value)
    assert "'no_such_variable' is undefined" in message
    assert f"{render.JOB_TEMPLATE}:2" in message  # file and line


def test_a_local_templates_dir_overrides_the_packaged_one(
    tmp_path: Path, committed: spec.Spec
) -> None:
    local = tmp_path / "templates"
    local.mkdir()
    (local / render.JOB_TEMPLATE).write_text('job "{= job_name =}" {\n  # local override\n}\n')
    templates = render.Templates(local)
    assert "# local override" in templates.job(committed)
    assert [override.name for override in templates.overrides()] == [render.JOB_TEMPLATE]
    # The other templates still come from the package.
    assert "DB_DATABASE" in templates.snippet(committed, "gitea")

    # The CLI looks in ./templates of the directory it runs in.
    output = tmp_path / "out.nomad.hcl"
    result = pginit(["render", "--config", str(SERVICES_FILE), "--output", str(output)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# local override" in output.read_text()
    assert "instead of the packaged one" in result.stdout


# ---- render and render --check ---------------------------------------------------


def test_render_check_reports_a_stale_job_with_a_diff(tmp_path: Path) -> None:
    config = tmp_path / "pginit.toml"
    job = tmp_path / render.JOB_FILE_NAME
    shutil.copy(SERVICES_FILE, config)
    shutil.copy(JOB_FILE, job)
    assert pginit(["render", "--check", "--config", str(config)], tmp_path).returncode == 0

    with config.open("a", encoding="utf-8") as handle:
        handle.write('\n[[service]]\nname = "nextcloud"\n')
    stale = pginit(["render", "--check", "--config", str(config)], tmp_path)
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert f"--- {job} (committed)" in stale.stdout
    assert f"+++ {job} (rendered)" in stale.stdout
    assert '+name = "nextcloud"' in stale.stdout
    assert "stale" in stale.stdout

    written = pginit(["render", "--config", str(config)], tmp_path)
    assert written.returncode == 0, written.stdout + written.stderr
    assert 'name = "nextcloud"' in job.read_text()
    assert pginit(["render", "--check", "--config", str(config)], tmp_path).returncode == 0


def test_render_check_on_a_missing_job_fails(tmp_path: Path) -> None:
    shutil.copy(SERVICES_FILE, tmp_path / "pginit.toml")
    result = pginit(["render", "--check", "--config", "pginit.toml"], tmp_path)
    assert result.returncode == 1
    assert not (tmp_path / render.JOB_FILE_NAME).exists()


README_TEXT = """# Infra

## Current services

<!-- services:begin -->
| Service | Database | User | Vault path |
| --- | --- | --- | --- |
| gitea | gitea | gitea | `secret/postgres/gitea` |
<!-- services:end -->

## More
"""


def _services_in_a_subdirectory(root: Path) -> Path:
    """The services file in jobs/postgresql/ of ``root``, as an infrastructure repository has."""
    directory = root / "jobs" / "postgresql"
    directory.mkdir(parents=True)
    shutil.copy(SERVICES_FILE, directory / "pginit.toml")
    return directory


def test_render_keeps_the_table_of_the_readme_next_to_the_services_file(tmp_path: Path) -> None:
    readme = _services_in_a_subdirectory(tmp_path) / "README.md"
    readme.write_text(README_TEXT, encoding="utf-8")
    args = ["render", "--config", "jobs/postgresql/pginit.toml"]

    stale = pginit([*args, "--check"], tmp_path)
    assert stale.returncode == 1
    assert "+| vaultwarden | vaultwarden | vaultwarden | `secret/postgres/vaultwarden` |" in (
        stale.stdout
    )
    assert "jobs/postgresql/README.md" in stale.stdout

    written = pginit(args, tmp_path)
    assert written.returncode == 0, written.stdout + written.stderr
    assert "wrote jobs/postgresql/README.md (7 services)" in written.stdout
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Infra\n\n## Current services\n\n<!-- services:begin -->\n")
    assert text.endswith("<!-- services:end -->\n\n## More\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == TODAYS_SERVICES
    assert pginit([*args, "--check"], tmp_path).returncode == 0


def test_a_table_left_in_the_readme_here_is_not_updated_and_render_says_so(
    tmp_path: Path,
) -> None:
    # Before, render kept ./README.md's table; now the table lives next to the services file.
    _services_in_a_subdirectory(tmp_path)
    here = tmp_path / "README.md"
    here.write_text(README_TEXT, encoding="utf-8")
    args = ["render", "--config", "jobs/postgresql/pginit.toml"]

    result = pginit(args, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert here.read_text(encoding="utf-8") == README_TEXT
    assert "README.md has a services table, which is no longer updated" in result.stdout
    assert "jobs/postgresql/README.md next to the services file" in result.stdout
    assert not (tmp_path / "jobs" / "postgresql" / "README.md").exists()

    named = pginit([*args, "--readme", "README.md"], tmp_path)
    assert named.returncode == 0, named.stdout + named.stderr
    assert "vaultwarden" in here.read_text(encoding="utf-8")
    assert "no longer updated" not in named.stdout


def test_an_explicit_readme_needs_the_markers(tmp_path: Path) -> None:
    shutil.copy(SERVICES_FILE, tmp_path / "pginit.toml")
    (tmp_path / "notes.md").write_text("# no table here\n", encoding="utf-8")
    result = pginit(["render", "--config", "pginit.toml", "--readme", "notes.md"], tmp_path)
    assert result.returncode == 2
    assert "services:begin" in result.stdout + result.stderr


def test_a_readme_without_markers_is_left_alone(tmp_path: Path) -> None:
    shutil.copy(SERVICES_FILE, tmp_path / "pginit.toml")
    readme = tmp_path / "README.md"
    readme.write_text("# Infra\n", encoding="utf-8")
    assert pginit(["render", "--config", "pginit.toml"], tmp_path).returncode == 0
    assert readme.read_text(encoding="utf-8") == "# Infra\n"


# ---- snippet -----------------------------------------------------------------


def snippet_parts(text: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(the env file's lines as a dict, the env block) of a snippet."""
    parsed = parse_hcl(text)
    template = single(parsed, "template")
    assert template["destination"].startswith("secrets/")
    assert template["env"] is True
    assert template["error_on_missing_key"] is True
    lines = dict(line.split("=", 1) for line in template["data"].splitlines())
    return lines, single(parsed, "env")


def test_snippet_for_a_service_whose_database_has_another_name(tmp_path: Path) -> None:
    write_services(
        tmp_path,
        '[[service]]\nname = "gitea"\n\n'
        '[[service]]\nname = "uptime-kuma"\ndatabase = "uptimekuma"\nuser = "kuma"\n',
    )
    result = pginit(["snippet", "uptime-kuma", "--config", "pginit.toml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    env_file, env = snippet_parts(result.stdout)
    assert env == {"DB_DATABASE": "uptimekuma", "DB_USERNAME": "kuma"}
    assert env_file == {
        "DB_HOST": '{{ range nomadService "postgresql" }}{{ .Address }}{{ end }}',
        "DB_PORT": '{{ range nomadService "postgresql" }}{{ .Port }}{{ end }}',
        "DB_PASSWORD": (
            '{{ with secret "secret/data/postgres/uptime-kuma" }}'
            "{{ .Data.data.password | toJSON }}{{ end }}"
        ),
    }


def test_snippet_follows_the_vault_settings_and_consul(tmp_path: Path) -> None:
    write_services(
        tmp_path,
        '[vault]\nmount = "kv"\npath = "db/{service}/creds"\nkey = "db-password"\n\n'
        '[[service]]\nname = "grafana"\n',
    )
    result = pginit(["snippet", "grafana", "--consul", "--config", "pginit.toml"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    env_file, _ = snippet_parts(result.stdout)
    assert env_file["DB_HOST"] == '{{ range service "postgresql" }}{{ .Address }}{{ end }}'
    assert env_file["DB_PASSWORD"] == (
        '{{ with secret "kv/data/db/grafana/creds" }}'
        '{{ with index .Data.data "db-password" }}{{ . | toJSON }}{{ end }}{{ end }}'
    )


_PASSWORD_ACTION = re.compile(
    r"\{\{ with secret \"[^\"]+\" \}\}(?:\{\{ \.Data\.data\.\w+ \| toJSON \}\}|"
    r"\{\{ with index \.Data\.data \"[^\"]+\" \}\}\{\{ \. \| toJSON \}\}\{\{ end \}\})"
    r"\{\{ end \}\}"
)


@settings(max_examples=300, deadline=None)
@given(password=st.text(st.characters(codec="utf-8", blacklist_characters="\x00"), min_size=1))
def test_snippet_passes_any_password_through_the_env_file_whole(password: str) -> None:
    # What consul-template renders (toJSON is Go's json.Marshal) and what Nomad's env
    # file parser (go-envparse) makes of it: the task gets the password exactly.
    snippet = render.Templates(None).snippet(spec.load(SERVICES_FILE), "gitea")
    env_file, _ = snippet_parts(snippet)
    line = env_file["DB_PASSWORD"]
    rendered = _PASSWORD_ACTION.sub(lambda _: envparse.go_json_string(password), line)
    output = f"DB_HOST=10.0.0.60\nDB_PASSWORD={rendered}\nDB_PORT=5432\n".encode()
    assert envparse.parse(output) == {
        "DB_HOST": "10.0.0.60",
        "DB_PASSWORD": password,
        "DB_PORT": "5432",
    }


def test_snippet_for_a_committed_service() -> None:
    result = pginit(["snippet", "uptimekuma"], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    env_file, env = snippet_parts(result.stdout)
    assert env == {"DB_DATABASE": "uptimekuma", "DB_USERNAME": "uptimekuma"}
    assert 'secret "secret/data/postgres/uptimekuma"' in env_file["DB_PASSWORD"]


def test_snippet_for_an_unknown_service_lists_the_known_ones() -> None:
    result = pginit(["snippet", "uptime-kuma"], ROOT)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "no service 'uptime-kuma'" in output
    assert "did you mean 'uptimekuma'?" in output
    assert ", ".join(TODAYS_SERVICES) in output


def test_render_with_output_leaves_the_readme_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Another project\n\n{render.TABLE_BEGIN}\nold\n{render.TABLE_END}\n")
    write_services(tmp_path, '[[service]]\nname = "gitea"\n')

    result = pginit(["render", "--config", "pginit.toml", "--output", "job.hcl"], tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "job.hcl").is_file()
    assert "old" in readme.read_text(encoding="utf-8")
