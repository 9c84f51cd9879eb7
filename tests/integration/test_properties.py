"""Property-based proof against the real servers: any name the validator accepts works,
any name it rejects is refused up front, and any printable password works and stays secret.

The tool runs in-process (``nomad_pginit.cli.main``) for speed, with the same clean
environment a subprocess would get; the cluster is reset between examples.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import re
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hvac.exceptions
import psycopg
import pytest
from conftest import (
    PASSWORD_MARKER,
    Cluster,
    Vault,
    reset_cluster,
    tool_env,
    write_services_file,
)
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import nomad_pginit
from nomad_pginit import cli
from nomad_pginit.spec import MAX_NAME_BYTES, RESERVED_NAMES, name_problem
from sandbox import free_port

# Every character a services file can carry in a string, bar control characters.
PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs"))
NAMES = st.text(alphabet=PRINTABLE, min_size=1, max_size=20)
PASSWORDS = st.text(alphabet=PRINTABLE, min_size=1, max_size=1000)

EXAMPLES = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# The session cluster's log_line_prefix: "%m [%p] app=%a user=%u db=%d ".
_SERVER_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[\d+\] ", re.MULTILINE)
_WRITES = re.compile(
    r"\b(?:statement|execute [^:]*): \s*(CREATE|ALTER|GRANT|REVOKE|COMMENT|DROP|SET\s+LOCAL)\b",
    re.IGNORECASE,
)


# --- running the tool in-process ------------------------------------------------------------


@contextlib.contextmanager
def tool_process_state() -> Iterator[None]:
    """What cli.main changes in the process (logging, signal handlers), put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    signals = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for signum, handler in signals.items():
            signal.signal(signum, handler)


def run_in_process(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str], *args: str
) -> tuple[int, str]:
    """``nomad-pginit ARGS`` in this process: its exit code and everything it printed."""
    for key in list(os.environ):
        if key not in env or key == "WATCH_MODE":
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    stdout, stderr = io.StringIO(), io.StringIO()
    with (
        tool_process_state(),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        code = cli.main(list(args))
    return code, stdout.getvalue() + stderr.getvalue()


def tool_writes(server_log: str) -> list[str]:
    """Write statements sent by nomad-pginit connections, from the server log."""
    found: list[str] = []
    starts = [match.start() for match in _SERVER_ENTRY.finditer(server_log)]
    for begin, end in zip(starts, [*starts[1:], len(server_log)], strict=True):
        entry = server_log[begin:end]
        if "app=nomad-pginit" in entry.split("\n", 1)[0] and _WRITES.search(entry):
            found.append(entry)
    return found


def tool_entries(server_log: str) -> int:
    return sum(
        1
        for line in server_log.splitlines()
        if _SERVER_ENTRY.match(line) and "app=nomad-pginit" in line
    )


def service_messages(output: str, name: str) -> list[str]:
    """``name: ...`` log messages, without the timestamp and level."""
    messages: list[str] = []
    for line in output.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[2].startswith(f"{name}: "):
            messages.append(parts[2])
    return messages


def assert_plan_in_sync(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str], config: Path
) -> None:
    code, output = run_in_process(monkeypatch, env, "plan", "--config", str(config), "--json")
    assert code == 0, output
    start = output.index("{\n")
    document: dict[str, Any] = json.JSONDecoder().raw_decode(output[start:])[0]
    assert document["in_sync"] is True, document
    assert all(entry["actions"] == [] for entry in document["services"]), document


def login_and_write(pg: Cluster, user: str, password: str, dbname: str) -> None:
    conninfo = pg.server.conninfo(dbname=dbname, user=user, password=password)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
        assert row == (user, dbname)
        conn.execute("CREATE TABLE public.property_probe (value text)")
        conn.execute("INSERT INTO public.property_probe VALUES (%s)", (user,))
        conn.execute("DROP TABLE public.property_probe")


def is_secret_enough(password: str) -> bool:
    """Long and varied enough that finding it in a log cannot be a coincidence, and not
    a piece of the tool's own text: Hypothesis draws strings from the constants of the
    code under test, and the tool's queries name, say, pg_read_server_files."""
    return len(password) >= 16 and len(set(password)) >= 8 and password not in _package_source()


@functools.cache
def _package_source() -> str:
    package = Path(nomad_pginit.__file__).parent
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(package.rglob("*.py")))


# --- names the validator accepts --------------------------------------------------------------


@settings(EXAMPLES, max_examples=15)
@given(name=NAMES.filter(lambda name: name_problem(name) is None))
@example(name="uptime-kuma")
@example(name='Quote"And\\Back slash')
@example(name="日本語-データ")
@example(name="ǅ" * 31)  # 62 bytes: just under the limit
@example(name="...")
@example(name=" leading and trailing spaces ")
def test_accepted_names_round_trip_to_a_working_login(
    pg: Cluster, vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Any accepted name, as a role and a database, logs in to its own database."""
    if name_problem(name) is not None:
        return  # an explicit example the validator has come to reject: nothing to prove
    reset_cluster(pg.server)
    password = f"{PASSWORD_MARKER}accepted"
    vault.put("prop-svc", password)
    config = write_services_file(
        tmp_path, pg, [{"name": "prop-svc", "database": name, "user": name}]
    )
    env = tool_env(vault)

    code, output = run_in_process(monkeypatch, env, "run", "--config", str(config))

    assert code == 0, output
    assert f'prop-svc: role "{name}" created' in service_messages(output, "prop-svc"), output
    login_and_write(pg, name, password, name)
    with pg.connect() as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    assert owner == (name,)
    assert_plan_in_sync(monkeypatch, env, config)


@settings(EXAMPLES, max_examples=15)
@given(name=NAMES.filter(lambda name: name_problem(name) is None))
@example(name="gitea")
@example(name=".")
@example(name="\u00a0")
@example(name="soft\u00adhyphen")
def test_accepted_service_names_can_have_their_secret_in_vault(
    pg: Cluster, vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The service name is also a Vault path segment: an accepted name must work there too,
    or the validator must refuse it (exit 2) instead of sending the operator to
    `vault kv put` a secret that Vault cannot store."""
    reset_cluster(pg.server)
    password = f"{PASSWORD_MARKER}service-name"
    config = write_services_file(tmp_path, pg, [name])
    try:
        vault.put(name, password)
    except hvac.exceptions.InvalidRequest as err:
        refused: str | None = str(err.args[0] if err.args else "") or "an empty error"
    else:
        refused = None
    if refused is not None:
        # Vault cannot hold it: then the tool must refuse the name before anything else.
        env = tool_env(vault, VAULT_ADDR=f"http://127.0.0.1:{free_port()}")
        code, output = run_in_process(monkeypatch, env, "run", "--config", str(config))
        assert code == 2, (
            f"the validator accepts the service name {name!r}, but Vault cannot store its "
            f"secret at secret/postgres/{name} ({refused}), so no operator can ever "
            f"provision it: it should be refused up front\n{output}"
        )
        return
    env = tool_env(vault)

    code, output = run_in_process(monkeypatch, env, "run", "--config", str(config))

    assert code == 0, output
    login_and_write(pg, name, password, name)
    assert_plan_in_sync(monkeypatch, env, config)


# --- names the validator rejects --------------------------------------------------------------


def _any_case(word: str) -> st.SearchStrategy[str]:
    return st.tuples(*[st.sampled_from([ch.lower(), ch.upper()]) for ch in word]).map("".join)


def _too_long(text: str) -> bool:
    return len(text.encode("utf-8")) > MAX_NAME_BYTES


REJECTED = st.one_of(
    st.sampled_from(["", ".", ".."]),
    st.tuples(
        st.text(alphabet=PRINTABLE, max_size=8),
        st.just("/"),
        st.text(alphabet=PRINTABLE, max_size=8),
    ).map("".join),
    st.sampled_from(sorted(RESERVED_NAMES)).flatmap(_any_case),
    st.tuples(_any_case("pg_"), st.text(alphabet=PRINTABLE, max_size=10)).map("".join),
    st.text(alphabet=PRINTABLE, min_size=16, max_size=70).filter(_too_long),
    st.tuples(
        st.text(alphabet=PRINTABLE, max_size=8),
        st.characters(categories=["Cc"]),
        st.text(alphabet=PRINTABLE, max_size=8),
    ).map("".join),
)


def toml_escaped(value: str) -> str:
    """A TOML basic string that holds ``value`` exactly, control characters included."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


@EXAMPLES
@given(name=REJECTED, where=st.sampled_from(["name", "database", "user"]))
def test_rejected_names_are_reported_and_nothing_is_written(
    pg: Cluster,
    vault: Vault,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    name: str,
    where: str,
) -> None:
    problem = name_problem(name)
    assume(problem is not None)
    assert problem is not None
    vault.put("fine", f"{PASSWORD_MARKER}fine")
    config = write_services_file(tmp_path, pg, ["fine"])
    entry = {"name": "rejected-svc", where: name}
    lines = ["[[service]]", *(f"{key} = {toml_escaped(value)}" for key, value in entry.items())]
    with config.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    # Vault where nobody listens: contacting it would exit 4, not 2.
    env = tool_env(vault, VAULT_ADDR=f"http://127.0.0.1:{free_port()}")
    offset = pg.log_offset()

    code, output = run_in_process(monkeypatch, env, "run", "--config", str(config))

    assert code == 2, output
    assert f"{where} {name!r} {problem}" in output, output
    assert "nothing was read from Vault or written to PostgreSQL" in output
    assert tool_entries(pg.log_since(offset)) == 0, "the tool connected to PostgreSQL"
    # PostgreSQL cannot even hold a name with NUL: only look for the others.
    names = ["fine"] if "\x00" in name else ["fine", name]
    with pg.connect() as conn:
        rows = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) "
            "UNION ALL SELECT datname FROM pg_database WHERE datname = ANY(%s)",
            (names, names),
        ).fetchall()
    assert rows == []


# --- passwords --------------------------------------------------------------------------------


@settings(EXAMPLES, max_examples=25)
@given(password=PASSWORDS)
@example(password=" ")
# SASLprep maps non-ASCII spaces and NFKC-normalises (fullwidth letters, a ligature).
@example(password="\u00a0non-breaking \uff46\uff55\uff4c\uff4c \u216b \ufb01")
@example(password="\u05d0\u05d1c")  # bidi rule broken: used as it is
@example(password="\ufeffmapped\u00adto nothing\u200d")  # SASLprep B.1: removed
@example(password="😀" * 250)
def test_any_printable_password_logs_in_stays_secret_and_is_unchanged_next_run(
    pg: Cluster, vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    vault.put("pw-prop", password)
    config = write_services_file(tmp_path, pg, ["pw-prop"])
    env = tool_env(vault)
    offset = pg.log_offset()

    code, first = run_in_process(monkeypatch, env, "run", "--config", str(config))

    assert code == 0, first
    login_and_write(pg, "pw-prop", password, "pw-prop")
    middle = pg.log_offset()
    code, second = run_in_process(monkeypatch, env, "run", "--config", str(config))
    assert code == 0, second
    assert service_messages(second, "pw-prop") == ["pw-prop: unchanged"], second
    assert tool_writes(pg.log_since(middle)) == [], "an unchanged run wrote something"
    assert_plan_in_sync(monkeypatch, env, config)

    with pg.connect() as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'pw-prop'").fetchone()
    assert row is not None
    verifier = str(row[0])
    assert verifier.startswith("SCRAM-SHA-256$")
    server_log = pg.log_since(offset)
    for text in (server_log, first, second):
        assert verifier not in text
        if is_secret_enough(password):
            assert password not in text


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("zero\u200bwidth space", id="inside"),
        pytest.param("\u200b", id="alone"),
    ],
)
def test_password_with_zero_width_space_is_unchanged_on_the_next_run(
    pg: Cluster, vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    """U+200B is in both SASLprep tables (RFC 3454 C.1.2 under Unicode 3.2, and B.1):
    PostgreSQL's pg_saslprep maps it to a space because it checks non-ASCII spaces
    first; the tool's saslprep() drops it. Their verifiers then never agree."""
    vault.put("zwsp", password)
    config = write_services_file(tmp_path, pg, ["zwsp"])
    env = tool_env(vault)
    code, first = run_in_process(monkeypatch, env, "run", "--config", str(config))
    assert code == 0, first
    login_and_write(pg, "zwsp", password, "zwsp")
    offset = pg.log_offset()

    code, second = run_in_process(monkeypatch, env, "run", "--config", str(config))

    assert code == 0, second
    assert tool_writes(pg.log_since(offset)) == [], "an unchanged run wrote something"
    assert service_messages(second, "zwsp") == ["zwsp: unchanged"], second
