"""The reference: the psql script users run today, as the seed's init-databases task has it.

One "Adding a New Service" block per service, with the password from Vault substituted
as a SQL string literal, as consul-template renders the template before the task runs.
The script reconnects twice per service (``\\c postgres``, ``\\c <database>``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.lab import BenchError, clean_env, tail
from sandbox import ThrowawayPostgres, find_pg_bindir

# The seed's block, verbatim but for the names and the rendered password.
_BLOCK = """\
-- {name}
\\c postgres
SELECT 'CREATE DATABASE {database}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{database}')\\gexec
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{user}') THEN
    CREATE USER {user} WITH ENCRYPTED PASSWORD {password};
  END IF;
END
$$;
GRANT ALL PRIVILEGES ON DATABASE {database} TO {user};
\\c {database}
GRANT ALL ON SCHEMA public TO {user};
"""  # noqa: E501 - the seed's line
# The script pastes names into SQL unquoted, so only names that need no quoting work.
_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def string_literal(value: str) -> str:
    """``value`` as a SQL string literal (standard_conforming_strings is on since 9.1)."""
    if "\0" in value:
        raise BenchError("a password with a NUL byte cannot be written in SQL")
    if "$$" in value:
        # The literal sits inside the DO block's $$ ... $$ body, which it would end.
        raise BenchError("a password containing '$$' would break the script's DO block")
    return "'" + value.replace("'", "''") + "'"


def render(services: Sequence[str], passwords: Mapping[str, str]) -> str:
    """The whole script: one block per service (database and user named after it)."""
    blocks = []
    for name in services:
        if not _PLAIN_IDENTIFIER.fullmatch(name):
            raise BenchError(f"the reference script cannot handle the name {name!r}")
        literal = string_literal(passwords[name])
        blocks.append(_BLOCK.format(name=name, database=name, user=name, password=literal))
    return "\n".join(blocks)


def find_psql() -> Path:
    """psql next to the server binaries (behind a symlinked bindir too), else on PATH."""
    bindir = find_pg_bindir()
    for candidate in (bindir / "psql", (bindir / "initdb").resolve().parent / "psql"):
        if candidate.is_file():
            return candidate
    on_path = shutil.which("psql")
    if on_path is None:
        raise BenchError(f"psql not found next to {bindir} nor on PATH: install the client")
    return Path(on_path)


def run(psql: Path, cluster: ThrowawayPostgres, script: Path, log: Path) -> float:
    """Wall time of ``psql -f script`` over TCP with scram-sha-256; fails if psql does."""
    command = [
        str(psql),
        "-X",  # no ~/.psqlrc
        "-v",
        "ON_ERROR_STOP=1",  # a failed statement must fail the benchmark, not look fast
        "-h",
        cluster.host,
        "-p",
        str(cluster.port),
        "-U",
        cluster.superuser,
        "-d",
        "postgres",
        "-f",
        str(script),
    ]
    env = clean_env(script.parent, PGPASSWORD=cluster.password)
    with log.open("wb") as out:
        started = time.perf_counter()
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        output = log.read_text(encoding="utf-8", errors="replace")
        raise BenchError(f"psql -f {script} exited {result.returncode}:\n{tail(output)}")
    return seconds


def version(psql: Path) -> str:
    result = subprocess.run([str(psql), "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"
