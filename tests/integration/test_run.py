"""``nomad-pginit run`` end to end: a real process against real PostgreSQL and OpenBao.

Every test runs the tool as Nomad would (``python -m nomad_pginit run --config FILE``)
and then checks the cluster itself: roles log in over TCP with their Vault
password, own their database and can create tables in it.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psycopg
import pytest
from catalog import database_exists, database_owner, role_exists, scalar
from conftest import (
    PASSWORD_MARKER,
    Cluster,
    Result,
    Vault,
    communicate,
    run_tool,
    start_tool,
    tool_env,
    write_services_file,
)
from server_log import tool_statements, writes

from nomad_pginit import __version__
from sandbox import ThrowawayPostgres, free_port

THREE = ("gitea", "uptime-kuma", "MixedCase")

# "2026-11-21T22:50:01Z INFO gitea: role "gitea" created"
_TOOL_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?P<level>[A-Z]+) (?P<message>.*)$")


# --- helpers ---------------------------------------------------------------------


def run(config: Path, env: Mapping[str, str], *extra: str) -> Result:
    return run_tool(["run", "--config", str(config), *extra], env)


def messages(stdout: str) -> list[tuple[str, str]]:
    """(level, message) of every plain log line; continuation lines join their message."""
    entries: list[tuple[str, str]] = []
    for line in stdout.splitlines():
        match = _TOOL_LINE.match(line)
        if match:
            entries.append((match["level"], match["message"]))
        elif entries:
            level, message = entries[-1]
            entries[-1] = (level, f"{message}\n{line}")
        else:
            entries.append(("", line))
    return entries


def texts(stdout: str) -> list[str]:
    return [message for _, message in messages(stdout)]


def service_lines(stdout: str, name: str) -> list[str]:
    return [message for message in texts(stdout) if message.startswith(f"{name}: ")]


def summary(stdout: str) -> str:
    lines = texts(stdout)
    assert lines, "the tool printed nothing"
    return lines[-1]


def created_lines(name: str) -> list[str]:
    return [
        f'{name}: role "{name}" created',
        f'{name}: database "{name}" created, owned by "{name}"',
    ]


def assert_created(lines: Sequence[str], name: str) -> None:
    """A new service's log: one line per action, creating its role and database once each."""
    for expected in created_lines(name):
        assert lines.count(expected) == 1, lines
    assert len(set(lines)) == len(lines), f"an action was logged twice: {lines}"
    for line in lines:
        assert line != f"{name}: unchanged", lines
        assert not line.startswith(f"{name}: failed"), lines
        assert not line.endswith("(another run did it first)"), lines


def rolpassword(pg: Cluster, name: str) -> object:
    return scalar(pg, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", name)


def assert_login_fails(pg: Cluster, user: str, password: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        pg.login(user, password)


def provisioned(pg: Cluster, vault: Vault, tmp_path: Path, names: Sequence[str]) -> Path:
    """A services file for ``names``, each with its password in Vault."""
    for name in names:
        vault.put(name, password_for(name))
    return write_services_file(tmp_path, pg, list(names))


def password_for(name: str, generation: int = 1) -> str:
    return f"{PASSWORD_MARKER}{name}-{generation}-Xq7"


def with_port(config: Path, old: int, new: int) -> None:
    text = config.read_text(encoding="utf-8")
    assert f"@127.0.0.1:{old}/" in text
    config.write_text(text.replace(f"@127.0.0.1:{old}/", f"@127.0.0.1:{new}/"), encoding="utf-8")


# --- 1, 2, 3: first run, second run, rotation ------------------------------------------


def test_first_run_provisions_every_service(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = provisioned(pg, vault, tmp_path, THREE)

    result = run(config, tool_env(vault))

    assert result.returncode == 0, result.output
    assert result.stderr == "", "everything goes to stdout, in order"
    for name in THREE:
        assert_created(service_lines(result.stdout, name), name)
        assert database_owner(pg, name) == name
        pg.login(name, password_for(name))
    assert summary(result.stdout).startswith("summary: ok"), result.stdout
    assert "3 created" in summary(result.stdout)


def test_second_run_changes_nothing(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = provisioned(pg, vault, tmp_path, THREE)
    env = tool_env(vault)

    first_offset = pg.log_offset()
    first = run(config, env)
    assert first.returncode == 0, first.output
    first_writes = writes(tool_statements(pg.log_since(first_offset)))
    # The log parser sees the first run's writes, so an empty list below means something.
    assert any(s.upper().startswith("CREATE DATABASE") for s in first_writes), first_writes
    assert any(s.upper().startswith("SELECT SET_CONFIG") for s in first_writes), first_writes

    offset = pg.log_offset()
    second = run(config, env)
    second_statements = tool_statements(pg.log_since(offset))

    assert second.returncode == 0, second.output
    for name in THREE:
        assert service_lines(second.stdout, name) == [f"{name}: unchanged"], second.stdout
    assert summary(second.stdout).startswith("summary: ok"), second.stdout
    assert "3 unchanged" in summary(second.stdout)
    assert second_statements, "the second run's statements should be in the server log"
    assert writes(second_statements) == []
    for name in THREE:
        pg.login(name, password_for(name))


def test_rotated_password_is_set(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = provisioned(pg, vault, tmp_path, THREE)
    env = tool_env(vault)
    assert run(config, env).returncode == 0

    old, new = password_for("uptime-kuma"), password_for("uptime-kuma", 2)
    vault.put("uptime-kuma", new)
    result = run(config, env)

    assert result.returncode == 0, result.output
    assert service_lines(result.stdout, "uptime-kuma") == [
        'uptime-kuma: password of role "uptime-kuma" updated (differs from Vault)'
    ], result.stdout
    for name in ("gitea", "MixedCase"):
        assert service_lines(result.stdout, name) == [f"{name}: unchanged"]
    assert summary(result.stdout).startswith("summary: ok: 3 services in sync (1 updated")
    pg.login("uptime-kuma", new)
    assert_login_fails(pg, "uptime-kuma", old)


# --- 4: taking over what the old psql script left -----------------------------------


def test_takes_over_database_left_by_the_old_script(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE ROLE gitea LOGIN PASSWORD 'old'")
        conn.execute("CREATE DATABASE gitea")
    assert database_owner(pg, "gitea") == "postgres"
    config = provisioned(pg, vault, tmp_path, ["gitea"])
    env = tool_env(vault)

    result = run(config, env)

    assert result.returncode == 0, result.output
    lines = service_lines(result.stdout, "gitea")
    assert 'gitea: password of role "gitea" updated (differs from Vault)' in lines, lines
    assert 'gitea: owner of database "gitea" updated from "postgres" to "gitea"' in lines
    assert not any("created" in line for line in lines), lines
    assert database_owner(pg, "gitea") == "gitea"
    pg.login("gitea", password_for("gitea"))
    assert_login_fails(pg, "gitea", "old")

    again = run(config, env)
    assert again.returncode == 0, again.output
    assert service_lines(again.stdout, "gitea") == ["gitea: unchanged"], again.stdout
    assert "1 unchanged" in summary(again.stdout)


# --- 5: missing or incomplete secrets ----------------------------------------------


def test_missing_secret_fails_only_that_service(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    vault.put("gitea", password_for("gitea"))
    vault.put("MixedCase", password_for("MixedCase"))
    config = write_services_file(tmp_path, pg, list(THREE))

    result = run(config, tool_env(vault))

    assert result.returncode == 1, result.output
    for name in ("gitea", "MixedCase"):
        assert_created(service_lines(result.stdout, name), name)
        pg.login(name, password_for(name))
    failure = service_lines(result.stdout, "uptime-kuma")
    assert len(failure) == 1, failure
    assert failure[0].startswith("uptime-kuma: failed: ")
    assert "vault kv put secret/postgres/uptime-kuma" in failure[0]
    last = summary(result.stdout)
    assert last.startswith("summary: failed"), last
    assert "(uptime-kuma)" in last
    assert not role_exists(pg, "uptime-kuma")
    assert not database_exists(pg, "uptime-kuma")


def test_secret_without_password_key_names_the_key(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    vault.put("gitea", password_for("gitea"), key="pasword")
    config = write_services_file(tmp_path, pg, ["gitea"])

    result = run(config, tool_env(vault))

    assert result.returncode == 1, result.output
    (failure,) = service_lines(result.stdout, "gitea")
    assert "secret/postgres/gitea" in failure
    assert "'password'" in failure, failure
    assert "pasword" in failure, "the message lists the keys that are there"
    assert password_for("gitea") not in result.output
    assert summary(result.stdout).startswith("summary: failed")
    assert not role_exists(pg, "gitea")


def test_missing_secret_leaves_existing_role_alone(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    with pg.connect() as conn:
        conn.execute("CREATE ROLE gitea LOGIN PASSWORD 'known-password'")
    before = rolpassword(pg, "gitea")
    assert isinstance(before, str)
    assert before.startswith("SCRAM-SHA-256$")
    vault.put("MixedCase", password_for("MixedCase"))
    config = write_services_file(tmp_path, pg, ["gitea", "MixedCase"])

    result = run(config, tool_env(vault))

    assert result.returncode == 1, result.output
    assert rolpassword(pg, "gitea") == before
    assert not database_exists(pg, "gitea")
    assert_created(service_lines(result.stdout, "MixedCase"), "MixedCase")
    assert summary(result.stdout).startswith("summary: failed: 1 of 2 services failed (gitea)")


# --- 6, 7, 8: waiting for PostgreSQL ---------------------------------------------------


@pytest.mark.slow
def test_waits_for_postgres_that_starts_late(
    vault: Vault, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    server = ThrowawayPostgres()
    try:
        server.init()
        late = Cluster(server)
        vault.put("gitea", password_for("gitea"))
        config = write_services_file(tmp_path, late, ["gitea"])
        proc = start_tool(["run", "--config", str(config), "--wait-timeout", "60"], tool_env(vault))
        processes.append(proc)
        time.sleep(2)
        assert proc.poll() is None, "the tool gave up before PostgreSQL started"
        server.start()
        result = communicate(proc)

        assert result.returncode == 0, result.output
        waiting = [line for line in texts(result.stdout) if "waiting for PostgreSQL" in line]
        assert waiting, result.stdout
        assert "no response" in waiting[0]
        assert any("is ready after" in line for line in texts(result.stdout)), result.stdout
        assert_created(service_lines(result.stdout, "gitea"), "gitea")
        late.login("gitea", password_for("gitea"))
    finally:
        server.cleanup()


def test_postgres_never_comes(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = provisioned(pg, vault, tmp_path, ["gitea"])
    with_port(config, pg.port, free_port())

    started = time.monotonic()
    result = run(config, tool_env(vault), "--wait-timeout", "2")
    elapsed = time.monotonic() - started

    assert result.returncode == 3, result.output
    assert "was not ready within 2s" in result.stdout, result.stdout
    assert elapsed >= 2

    from_env = run(config, tool_env(vault, PGINIT_WAIT_TIMEOUT="1"))
    assert from_env.returncode == 3, from_env.output
    assert "was not ready within 1s" in from_env.stdout, from_env.stdout


def test_wrong_admin_password_fails_fast(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    wrong = f"{PASSWORD_MARKER}wrong-admin"
    password_file = tmp_path / "wrong_admin_password"
    password_file.write_text(wrong + "\n", encoding="utf-8")
    vault.put("gitea", password_for("gitea"))
    config = write_services_file(tmp_path, pg, ["gitea"], password_file=password_file)

    started = time.monotonic()
    result = run(config, tool_env(vault), "--wait-timeout", "60")
    elapsed = time.monotonic() - started

    assert result.returncode == 3, result.output
    assert elapsed < 15, f"took {elapsed:.1f}s: the tool waited instead of failing"
    assert "the admin cannot log in" in result.stdout, result.stdout
    assert wrong not in result.output
    assert PASSWORD_MARKER not in result.output
    assert not role_exists(pg, "gitea")


# --- 9, 10: Vault ---------------------------------------------------------------------


def test_vault_unreachable(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = provisioned(pg, vault, tmp_path, THREE)
    offset = pg.log_offset()

    result = run(config, tool_env(vault, VAULT_ADDR=f"http://127.0.0.1:{free_port()}"))

    assert result.returncode == 4, result.output
    assert "VAULT_ADDR" in result.stdout, result.stdout
    assert_nothing_created(pg, THREE, offset)


def test_vault_token_rejected(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = provisioned(pg, vault, tmp_path, THREE)
    offset = pg.log_offset()

    result = run(config, tool_env(vault, VAULT_TOKEN="bogus"))

    assert result.returncode == 4, result.output
    assert "rejected" in result.stdout, result.stdout
    assert "bogus" not in result.output
    assert_nothing_created(pg, THREE, offset)


def assert_nothing_created(pg: Cluster, names: Sequence[str], offset: int) -> None:
    for name in names:
        assert not role_exists(pg, name)
        assert not database_exists(pg, name)
    assert tool_statements(pg.log_since(offset)) == []


def test_token_from_nomad_secrets_dir(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = provisioned(pg, vault, tmp_path, ["gitea"])
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    env = tool_env(vault, NOMAD_SECRETS_DIR=str(secrets))
    del env["VAULT_TOKEN"]

    # Without the file there is no token at all: the file is what makes it work.
    without = run(config, env)
    assert without.returncode == 4, without.output
    assert "no Vault token" in without.stdout

    (secrets / "vault_token").write_text(vault.token + "\n", encoding="utf-8")
    result = run(config, env)

    assert result.returncode == 0, result.output
    assert_created(service_lines(result.stdout, "gitea"), "gitea")
    pg.login("gitea", password_for("gitea"))


def test_approle_login(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = provisioned(pg, vault, tmp_path, ["gitea"])
    client = vault.client
    policy = "pginit-test-read-postgres"
    client.sys.enable_auth_method(method_type="approle", path="approle")
    try:
        client.sys.create_or_update_policy(
            name=policy,
            policy='path "secret/data/postgres/*" { capabilities = ["read"] }',
        )
        client.auth.approle.create_or_update_approle(
            role_name="pginit", token_policies=[policy], mount_point="approle"
        )
        role_id = client.auth.approle.read_role_id(role_name="pginit", mount_point="approle")
        secret_id = client.auth.approle.generate_secret_id(
            role_name="pginit", mount_point="approle"
        )
        env = tool_env(
            vault,
            VAULT_ROLE_ID=str(role_id["data"]["role_id"]),
            VAULT_SECRET_ID=str(secret_id["data"]["secret_id"]),
        )
        del env["VAULT_TOKEN"]

        result = run(config, env)

        assert result.returncode == 0, result.output
        assert_created(service_lines(result.stdout, "gitea"), "gitea")
        pg.login("gitea", password_for("gitea"))
    finally:
        # The typed equivalents of sys.disable_auth_method and sys.delete_policy.
        client.adapter.delete("/v1/sys/auth/approle")
        client.adapter.delete(f"/v1/sys/policies/acl/{policy}")


# --- 11: concurrent runs ----------------------------------------------------------------


def test_concurrent_runs_create_each_service_once(
    pg: Cluster, vault: Vault, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    names = ("gitea", "uptime-kuma", "MixedCase", "grafana", "nextcloud")
    config = provisioned(pg, vault, tmp_path, names)
    env = tool_env(vault)

    processes.extend(start_tool(["run", "--config", str(config)], env) for _ in range(3))
    results = [communicate(proc) for proc in processes]

    for result in results:
        assert result.returncode == 0, result.output
        assert summary(result.stdout).startswith("summary: ok"), result.stdout
    for name in names:
        everything = [line for result in results for line in service_lines(result.stdout, name)]
        for line in created_lines(name):
            assert everything.count(line) == 1, everything
        for result in results:
            lines = service_lines(result.stdout, name)
            assert lines, result.stdout
            if created_lines(name)[0] in lines:
                assert_created(lines, name)
            else:
                assert all(
                    line == f"{name}: unchanged" or line.endswith("(another run did it first)")
                    for line in lines
                ), lines
        assert database_owner(pg, name) == name
        pg.login(name, password_for(name))


# --- 12: passwords that SQL and shells hate ----------------------------------------------


HOSTILE = f"{PASSWORD_MARKER}\"'\\ \\\\ $$ $body$ '; DROP TABLE x; -- é 日本\u00a0"


@pytest.mark.parametrize(
    "password",
    [
        pytest.param(f"{HOSTILE}😀 end", id="emoji-saslprep-prohibited"),
        pytest.param(f"{HOSTILE}end", id="saslprep-normalised"),
        # U+200B is both a non-ASCII space (RFC 3454 C.1.2) and "mapped to nothing"
        # (B.1); PostgreSQL's pg_saslprep maps it to a space.
        pytest.param(f"{HOSTILE}zero\u200bwidth", id="zero-width-space"),
    ],
)
def test_hostile_password(pg: Cluster, vault: Vault, tmp_path: Path, password: str) -> None:
    vault.put("gitea", password)
    config = write_services_file(tmp_path, pg, ["gitea"])
    env = tool_env(vault)
    offset = pg.log_offset()

    first = run(config, env)
    assert first.returncode == 0, first.output
    pg.login("gitea", password)
    second = run(config, env)

    assert second.returncode == 0, second.output
    assert service_lines(second.stdout, "gitea") == ["gitea: unchanged"], second.stdout
    server_log = pg.log_since(offset)
    for output in (first.output, second.output, server_log):
        assert password not in output
        assert PASSWORD_MARKER not in output
        assert "DROP TABLE x" not in output


# --- 13: invalid services file -------------------------------------------------------------


def test_invalid_services_file_reports_everything_and_touches_nothing(
    pg: Cluster, vault: Vault, tmp_path: Path
) -> None:
    vault.put("gitea", password_for("gitea"))
    config = write_services_file(
        tmp_path,
        pg,
        [{"name": "gitea", "colour": "blue"}, "gitea", "a" * 64, "postgres", "pg_foo", "fine"],
    )
    offset = pg.log_offset()

    # Vault at a port nobody listens on: contacting it would exit 4, not 2.
    result = run(config, tool_env(vault, VAULT_ADDR=f"http://127.0.0.1:{free_port()}"))

    assert result.returncode == 2, result.output
    output = result.stdout
    assert "unknown key 'colour'" in output, output
    assert "name 'gitea' is already used by [[service]] #1" in output
    assert "is 64 bytes long" in output
    assert "name 'postgres' is reserved" in output
    assert "name 'pg_foo' starts with 'pg_'" in output
    header = re.search(r"(\d+) problems in the services file", output)
    assert header, output
    listed = [line for line in output.splitlines() if line.startswith("  - ")]
    assert len(listed) == int(header[1]) >= 5
    assert "nothing was read from Vault or written to PostgreSQL" in output
    for name in ("gitea", "fine"):
        assert not role_exists(pg, name)
        assert not database_exists(pg, name)
    assert tool_statements(pg.log_since(offset)) == []


# --- 14, 15: output format and the command line -------------------------------------------


def test_json_log_format(pg: Cluster, vault: Vault, tmp_path: Path) -> None:
    config = provisioned(pg, vault, tmp_path, THREE)

    result = run(config, tool_env(vault), "--log-format", "json")

    assert result.returncode == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) >= 7, result.stdout
    entries = [json.loads(line) for line in lines]
    for entry in entries:
        assert isinstance(entry, dict)
        assert {"time", "level", "message"} <= entry.keys(), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    last = entries[-1]
    assert last["event"] == "summary"
    assert last["status"] == "ok"
    assert last["message"].startswith("summary: ok")
    assert last["counts"]["created"] == 3
    assert last["failed"] == []
    for name in THREE:
        actions = [entry["action"] for entry in entries if entry.get("service") == name]
        assert {"CreateRole", "CreateDatabase"} <= set(actions), actions
        assert len(set(actions)) == len(actions), f"one line per action: {actions}"


def test_version() -> None:
    result = run_tool(["--version"], tool_env())

    assert result.returncode == 0, result.output
    assert result.stdout.strip() == f"nomad-pginit {__version__}"


def test_run_help_mentions_exit_codes() -> None:
    result = run_tool(["run", "--help"], tool_env())

    assert result.returncode == 0, result.output
    text = " ".join(result.stdout.split())
    assert "Exit codes" in text
    for code in ("0 every service in sync", "1 a service failed", "2 invalid configuration"):
        assert code in text, text
    assert "3 PostgreSQL" in text
    assert "4 Vault" in text
    assert "--wait-timeout" in text
