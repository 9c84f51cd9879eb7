"""The init task's own Vault login: a JWT from its identity block, against real OpenBao.

Nomad fails a task whose vault block cannot log in, or whose template cannot
read Vault, with no restart, and then stops PostgreSQL beside it. So the task
has neither: nomad-pginit logs in with the JWT Nomad writes for its identity
block, and a refusal is an ordinary exit (4) that the restart block retries.
The JWT auth method here trusts a key the test session made, and the JWTs
carry Nomad's claims (``sandbox.WorkloadIdentities``).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import psycopg
import pytest
from conftest import (
    Cluster,
    Result,
    Vault,
    communicate,
    run_tool,
    start_tool,
    tool_env,
    write_services_file,
)

from nomad_pginit import spec
from nomad_pginit.errors import ExitCode
from sandbox import WorkloadIdentities

JWT_SETTINGS = """
[vault]
jwt_role = "postgresql"
"""


@dataclass
class Task:
    """The init task's view of Nomad: its secrets dir, its identity's JWT, its environment."""

    vault: Vault
    identities: WorkloadIdentities
    secrets_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        """VAULT_ADDR and the secrets dir, no Vault token (unless given)."""
        return tool_env(
            None, VAULT_ADDR=self.vault.addr, NOMAD_SECRETS_DIR=str(self.secrets_dir), **extra
        )

    def write_jwt(self, token: str | None = None) -> str:
        """What Nomad does for identity { file = true }: the JWT in secrets/nomad_<name>.jwt."""
        token = self.identities.sign() if token is None else token
        path = self.secrets_dir / f"nomad_{spec.IDENTITY_NAME}.jwt"
        path.write_text(token, encoding="utf-8")
        return token


@pytest.fixture
def task(tmp_path: Path, vault: Vault, identities: WorkloadIdentities) -> Task:
    directory = tmp_path / "secrets"
    directory.mkdir()
    return Task(vault, identities, directory)


def run(config: Path, env: dict[str, str], *extra: str) -> Result:
    return run_tool(["run", "--config", str(config), *extra], env)


def can_login(pg: Cluster, user: str, password: str) -> bool:
    try:
        pg.login(user, password)
    except psycopg.OperationalError:
        return False
    return True


# --- logging in ---------------------------------------------------------------------


def test_the_task_logs_in_with_its_identity_and_provisions(
    tmp_path: Path, pg: Cluster, vault: Vault, task: Task
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"], extra=JWT_SETTINGS)
    jwt = task.write_jwt()

    result = run(config, task.env())

    assert result.returncode == ExitCode.OK, result.output
    assert "a JWT login to auth/jwt-nomad as role 'postgresql'" in result.stdout
    assert jwt not in result.output
    assert can_login(pg, "gitea", "gitea-pw")


def test_the_jwt_file_exists_so_no_role_is_needed_for_the_default_role(
    tmp_path: Path, pg: Cluster, vault: Vault, task: Task
) -> None:
    # Without jwt_role the JWT file alone means "log in", to the auth method's default_role.
    client = hvac.Client(url=vault.addr, token=vault.token)
    task.identities.configure(client, default_role="postgresql")
    try:
        vault.put("gitea", "gitea-pw")
        config = write_services_file(tmp_path, pg, ["gitea"])
        task.write_jwt()

        result = run(config, task.env())
    finally:
        task.identities.configure(client)  # back to the session's settings

    assert result.returncode == ExitCode.OK, result.output
    assert "as its default role" in result.stdout


def test_jwt_file_setting_with_variables(
    tmp_path: Path, pg: Cluster, vault: Vault, identities: WorkloadIdentities
) -> None:
    vault.put("gitea", "gitea-pw")
    elsewhere = tmp_path / "identity"
    elsewhere.mkdir()
    (elsewhere / "token.jwt").write_text(identities.sign() + "\n", encoding="utf-8")
    config = write_services_file(
        tmp_path,
        pg,
        ["gitea"],
        extra='[vault]\njwt_role = "postgresql"\njwt_file = "${IDENTITY_DIR}/token.jwt"\n',
    )
    env = tool_env(None, VAULT_ADDR=vault.addr, IDENTITY_DIR=str(elsewhere))

    result = run(config, env)

    assert result.returncode == ExitCode.OK, result.output
    assert f"(JWT from {elsewhere}/token.jwt)" in result.stdout


def test_vault_token_comes_before_the_jwt(
    tmp_path: Path, pg: Cluster, vault: Vault, task: Task
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"], extra=JWT_SETTINGS)
    task.write_jwt("not-even-a-jwt")

    result = run(config, task.env(VAULT_TOKEN=vault.token))

    assert result.returncode == ExitCode.OK, result.output
    assert "with the token in $VAULT_TOKEN" in result.stdout


def test_outside_nomad_a_jwt_role_does_not_stop_vault_login(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    # An operator runs by hand with the services file that names the task's role:
    # no NOMAD_SECRETS_DIR, no jwt_file, so the JWT login is not for them.
    vault.put("gitea", "gitea-pw")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".vault-token").write_text(vault.token, encoding="utf-8")
    config = write_services_file(tmp_path, pg, ["gitea"], extra=JWT_SETTINGS)

    result = run(config, tool_env(None, VAULT_ADDR=vault.addr, HOME=str(home)))

    assert result.returncode == ExitCode.OK, result.output
    assert f"with the token in {home}/.vault-token" in result.stdout


# --- refused logins: exit 4, Vault's reason, the role and the path, no traceback ------------


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong audience", "audience claim does not match"),
        ("another job", 'claim "nomad_job_id" does not match'),
        ("expired", "token is expired"),
        ("unknown key", "no known key successfully validated"),
        ("missing role", 'role "nobody" could not be found'),
        ("missing auth mount", "permission denied"),
    ],
)
def test_a_refused_login_is_exit_4_with_vaults_reason(
    tmp_path: Path, pg: Cluster, task: Task, case: str, reason: str
) -> None:
    task.vault.put("gitea", "gitea-pw")
    identities = task.identities
    role, path = "postgresql", "jwt-nomad"
    token = identities.sign()
    if case == "wrong audience":
        token = identities.sign(audience=("nomadproject.io",))
    elif case == "another job":
        token = identities.sign(job="web")
    elif case == "expired":
        token = identities.sign(ttl=-60, iat=int(time.time()) - 120, nbf=int(time.time()) - 120)
    elif case == "unknown key":
        token = identities.sign(key=WorkloadIdentities().key)
    elif case == "missing role":
        role = "nobody"
    else:
        path = "jwt-elsewhere"
    config = write_services_file(
        tmp_path, pg, ["gitea"], extra=f'[vault]\njwt_role = "{role}"\njwt_path = "{path}"\n'
    )
    task.write_jwt(token)
    offset = pg.log_offset()

    result = run(config, task.env())

    assert result.returncode == ExitCode.VAULT, result.output
    assert reason in result.stdout
    assert f"auth/{path}" in result.stdout
    assert f"role '{role}'" in result.stdout
    assert "Traceback" not in result.output
    assert token not in result.output
    assert "summary: failed: Vault not available; nothing was changed" in result.stdout
    assert "gitea" not in pg.log_since(offset)


def test_a_task_without_its_jwt_says_what_is_missing(
    tmp_path: Path, pg: Cluster, vault: Vault, task: Task
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"], extra=JWT_SETTINGS)

    result = run(config, task.env())

    assert result.returncode == ExitCode.VAULT, result.output
    assert f"no JWT at {task.secrets_dir}/nomad_{spec.IDENTITY_NAME}.jwt" in result.stdout
    assert "identity" in result.stdout


# --- the admin's password from Vault ------------------------------------------------------


def test_admin_password_from_vault(tmp_path: Path, pg: Cluster, vault: Vault, task: Task) -> None:
    vault.put("gitea", "gitea-pw")
    vault.put("admin", pg.server.password)
    config = write_services_file(
        tmp_path, pg, ["gitea"], admin_secret="postgres/admin", extra=JWT_SETTINGS
    )
    task.write_jwt()

    result = run(config, task.env())

    assert result.returncode == ExitCode.OK, result.output
    assert pg.server.password not in result.output
    assert can_login(pg, "gitea", "gitea-pw")
    # check reads it the same way.
    checked = run_tool(["check", "--config", str(config)], task.env())
    assert checked.returncode == ExitCode.OK, checked.output


@pytest.mark.parametrize("case", ["missing", "wrong"])
def test_admin_password_missing_or_wrong(
    tmp_path: Path, pg: Cluster, vault: Vault, case: str
) -> None:
    vault.put("gitea", "gitea-pw")
    if case == "wrong":
        vault.put("admin", "not-the-admin-password")
    config = write_services_file(tmp_path, pg, ["gitea"], admin_secret="postgres/admin")

    result = run(config, tool_env(vault))

    if case == "missing":
        assert result.returncode == ExitCode.VAULT, result.output
        assert "[postgres] password_secret" in result.stdout
        assert "no secret at secret/postgres/admin" in result.stdout
    else:
        assert result.returncode == ExitCode.POSTGRES, result.output
        assert "password_secret" in result.stdout
    assert "not-the-admin-password" not in result.output


def test_password_file_and_password_secret_are_exclusive(tmp_path: Path, pg: Cluster) -> None:
    config = write_services_file(tmp_path, pg, ["gitea"])
    text = config.read_text(encoding="utf-8").replace(
        "[postgres]\n", '[postgres]\npassword_secret = "postgres/admin"\n', 1
    )
    config.write_text(text, encoding="utf-8")

    result = run(config, tool_env(None))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "either 'password_file' or 'password_secret'" in result.stdout


# --- a sidecar that runs for days ---------------------------------------------------------


@pytest.fixture
def short_lived_role(vault: Vault, identities: WorkloadIdentities) -> Iterator[str]:
    """A role whose tokens live 2 s and can be renewed up to 4 s: a day, sped up."""
    client = hvac.Client(url=vault.addr, token=vault.token)
    identities.configure(
        client,
        role="short-lived",
        token_settings={"token_ttl": "2s", "token_max_ttl": "4s", "token_period": 0},
    )
    yield "short-lived"
    client.delete(f"auth/{'jwt-nomad'}/role/short-lived")


def test_watch_mode_keeps_a_working_token_as_the_jwt_is_rewritten(
    tmp_path: Path, pg: Cluster, task: Task, short_lived_role: str
) -> None:
    vault, identities = task.vault, task.identities
    vault.put("gitea", "first-pw")
    config = write_services_file(
        tmp_path, pg, ["gitea"], extra=f'[vault]\njwt_role = "{short_lived_role}"\n'
    )
    # Nomad renews an identity at half its TTL and rewrites the file: here every
    # second, each JWT valid for 3 s, so only a fresh read of the file can log in.
    task.write_jwt(identities.sign(ttl=3))
    done = threading.Event()

    def nomad_renews_the_identity() -> None:
        while not done.wait(1.0):
            task.write_jwt(identities.sign(ttl=3))

    renewer = threading.Thread(target=nomad_renews_the_identity, daemon=True)
    renewer.start()
    tool = start_tool(
        ["run", "--watch", "--interval", "0.5", "--config", str(config)],
        task.env(),
    )
    try:
        time.sleep(9)  # more than twice the token's max TTL, and the first JWT long expired
        vault.put("gitea", "second-pw")
        deadline = time.monotonic() + 20
        while not can_login(pg, "gitea", "second-pw") and time.monotonic() < deadline:
            time.sleep(0.3)
        rotated = can_login(pg, "gitea", "second-pw")
        tool.send_signal(signal.SIGTERM)
        result = communicate(tool, timeout=30)
    finally:
        done.set()
        renewer.join()
        if tool.poll() is None:
            tool.kill()
            tool.communicate()

    assert rotated, result.output
    assert result.returncode == 0, result.output
    assert "logged in to Vault at" in result.stdout
    assert "again" in result.stdout
    assert "ERROR" not in result.stdout, result.stdout


# --- what the review found ---------------------------------------------------------------------


def test_a_missing_vault_ca_file_is_exit_4_without_a_traceback(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    config = write_services_file(tmp_path, pg, ["gitea"])
    env = tool_env(vault, VAULT_ADDR="https://127.0.0.1:1", VAULT_CACERT="/nonexistent")

    result = run(config, env)

    assert result.returncode == ExitCode.VAULT, result.output
    assert "VAULT_CACERT=/nonexistent does not exist" in result.stdout
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("postgres", "vault_table", "message"),
    [
        ('password_secret = "../../sys/health"', "", "'password_secret' must not contain"),
        ('password_secret = "postgres/admin/"', "", "'password_secret' must not start or end"),
        ('password_secret = "postgres//admin"', "", "'password_secret' must not contain"),
        ("", 'path = "postgres/../{service}"', "'path' must not contain"),
        ("", 'mount = "secret/"', "'mount' must not start or end"),
    ],
)
def test_vault_paths_that_would_name_another_secret_are_refused(
    tmp_path: Path, pg: Cluster, postgres: str, vault_table: str, message: str
) -> None:
    config = write_services_file(tmp_path, pg, ["gitea"], extra=f"[vault]\n{vault_table}\n")
    if postgres:
        text = config.read_text(encoding="utf-8")
        text = re.sub(r"password_file = .*\n", postgres + "\n", text)
        config.write_text(text, encoding="utf-8")

    result = run(config, tool_env(None))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert message in result.stdout


def test_a_service_may_not_get_the_superusers_password(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    vault.put("admin", pg.server.password)
    config = write_services_file(tmp_path, pg, ["admin"], admin_secret="postgres/admin")

    result = run(config, tool_env(vault))

    assert result.returncode == ExitCode.CONFIG, result.output
    assert "is the PostgreSQL superuser's password" in result.stdout
    assert not pg.connect().execute("SELECT 1 FROM pg_roles WHERE rolname = 'admin'").fetchone()


def test_add_service_keeps_an_existing_secret_with_a_read_only_token(
    tmp_path: Path, pg: Cluster, vault: Vault, task: Task
) -> None:
    # The job's own policy reads secret/data/postgres/*, and nothing else.
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"], extra=JWT_SETTINGS)
    task.write_jwt()

    # From the test's own directory: add-service renders the job next to the file.
    result = run_tool(["add-service", "gitea", "--config", str(config)], task.env(), cwd=tmp_path)

    assert result.returncode == ExitCode.OK, result.output
    assert "a secret already exists in Vault at secret/postgres/gitea" in result.stdout
    assert "kept it" in result.stdout


def test_a_blank_vault_token_is_no_token(
    tmp_path: Path, pg: Cluster, vault: Vault, task: Task
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"], extra=JWT_SETTINGS)
    task.write_jwt()

    result = run(config, task.env(VAULT_TOKEN="   "))

    assert result.returncode == ExitCode.OK, result.output
    assert "a JWT login to auth/jwt-nomad" in result.stdout


def test_a_jwt_file_naming_an_unset_variable_is_not_looked_for(
    tmp_path: Path, pg: Cluster, vault: Vault
) -> None:
    # The README's jwt_file, run by hand: no NOMAD_SECRETS_DIR, so the token comes
    # from the next source (here ~/.vault-token).
    vault.put("gitea", "gitea-pw")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".vault-token").write_text(vault.token, encoding="utf-8")
    config = write_services_file(
        tmp_path,
        pg,
        ["gitea"],
        extra=(
            '[vault]\njwt_role = "postgresql"\njwt_file = "${NOMAD_SECRETS_DIR}/nomad_vault.jwt"\n'
        ),
    )

    result = run(config, tool_env(None, VAULT_ADDR=vault.addr, HOME=str(home)))

    assert result.returncode == ExitCode.OK, result.output


def test_a_jwt_path_that_is_not_a_file(
    tmp_path: Path, pg: Cluster, vault: Vault, task: Task
) -> None:
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"], extra=JWT_SETTINGS)
    os.mkfifo(task.secrets_dir / f"nomad_{spec.IDENTITY_NAME}.jwt")

    result = run_tool(["run", "--config", str(config)], task.env(), timeout=30)

    assert result.returncode == ExitCode.VAULT, result.output
    assert "is not a regular file" in result.stdout


@pytest.mark.parametrize(("value", "code"), [("maybe", ExitCode.CONFIG), ("true", ExitCode.OK)])
def test_vault_skip_verify_is_read_as_the_vault_cli_reads_it(
    pg: Cluster, vault: Vault, tmp_path: Path, value: str, code: ExitCode
) -> None:
    # strconv.ParseBool: true/false/1/0/t/f; anything else is an error, not "false".
    vault.put("gitea", "gitea-pw")
    config = write_services_file(tmp_path, pg, ["gitea"])
    result = run_tool(["run", "--config", str(config)], tool_env(vault, VAULT_SKIP_VERIFY=value))
    assert result.returncode == code, result.output
    if code == ExitCode.CONFIG:
        assert "VAULT_SKIP_VERIFY must be true or false, not 'maybe'" in result.output
