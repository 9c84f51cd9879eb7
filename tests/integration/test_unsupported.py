"""A PostgreSQL older than 14 is refused with what to do, before anything is changed.

Needs PostgreSQL 13's binaries: ``make test-matrix`` runs this file with
PG_BINDIR set to them (fetched by tests/postgres_majors.py); elsewhere it is
skipped, since the machine's own and the wheel's are newer.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from conftest import Vault, run_tool, tool_env

from nomad_pginit.errors import ExitCode
from sandbox import ThrowawayPostgres


def test_postgresql_13_is_refused_and_left_untouched(tmp_path: Path, vault: Vault) -> None:
    with ThrowawayPostgres() as server:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            version = conn.info.server_version
        if version >= 140000:
            pytest.skip("needs PostgreSQL 13 (make test-matrix runs it with PG_BINDIR)")
        vault.put("gitea", "gitea-pw")
        (tmp_path / "pw").write_text(server.password + "\n", encoding="utf-8")
        config = tmp_path / "pginit.toml"
        config.write_text(
            "[postgres]\n"
            f'dsn = "postgresql://postgres@127.0.0.1:{server.port}/postgres"\n'
            f'password_file = "{tmp_path / "pw"}"\n\n'
            '[[service]]\nname = "gitea"\n',
            encoding="utf-8",
        )

        result = run_tool(["run", "--config", str(config)], tool_env(vault))

        assert result.returncode == ExitCode.POSTGRES, result.output
        assert "is version 13: nomad-pginit supports PostgreSQL 14 to 18" in result.output
        assert "upgrade the server" in result.output
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            roles = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'gitea'")
            assert roles.fetchone() == (0,)
