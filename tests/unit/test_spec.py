"""The services file: defaults, names, and every problem reported at once."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomad_pginit import spec
from nomad_pginit.errors import ConfigError, ExitCode

SOURCE = Path("pginit.toml")


def parse(document: Mapping[str, Any]) -> spec.Spec:
    return spec.parse(document, SOURCE)


def problems_of(document: Mapping[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(document)
    assert caught.value.exit_code is ExitCode.CONFIG
    assert int(caught.value.exit_code) == 2
    return caught.value.problems


def only_problem(document: Mapping[str, Any]) -> str:
    problems = problems_of(document)
    assert len(problems) == 1, problems
    return problems[0]


# --- defaults -----------------------------------------------------------------------


def test_defaults() -> None:
    parsed = parse({"service": [{"name": "gitea"}]})
    assert parsed.source == SOURCE
    assert parsed.services == (spec.Service(name="gitea", database="gitea", user="gitea"),)
    assert parsed.services[0].password is None
    assert parsed.postgres == spec.PostgresSettings(dsn="", password_file=None)
    assert parsed.vault == spec.VaultSettings(
        mount="secret", path="postgres/{service}", key="password"
    )


def test_vault_paths() -> None:
    vault = spec.VaultSettings()
    assert vault.secret_path("gitea") == "postgres/gitea"
    assert vault.cli_path("gitea") == "secret/postgres/gitea"
    custom = spec.VaultSettings(mount="kv", path="apps/{service}/db", key="pw")
    assert custom.cli_path("wiki") == "kv/apps/wiki/db"


def test_explicit_settings() -> None:
    parsed = parse(
        {
            "postgres": {"dsn": "host=db port=5433", "password_file": "/run/pw"},
            "vault": {"mount": "kv", "path": "db/{service}", "key": "pw"},
            "service": [
                {"name": "gitea", "database": "gitea_db", "user": "gitea_user"},
                {"name": "wiki"},
            ],
        }
    )
    assert parsed.postgres == spec.PostgresSettings(
        dsn="host=db port=5433", password_file=Path("/run/pw")
    )
    assert parsed.vault == spec.VaultSettings(mount="kv", path="db/{service}", key="pw")
    assert [(s.name, s.database, s.user) for s in parsed.services] == [
        ("gitea", "gitea_db", "gitea_user"),
        ("wiki", "wiki", "wiki"),
    ]


@pytest.mark.parametrize("name", ["uptime-kuma", "MixedCase", "\u65e5\u672c\u8a9e", "a b", 'q"t'])
def test_names_that_need_quoting_are_valid(name: str) -> None:
    assert spec.name_problem(name) is None
    (service,) = parse({"service": [{"name": name}]}).services
    assert (service.name, service.database, service.user) == (name, name, name)


def test_password_file_expands_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMAD_SECRETS_DIR", "/alloc/secrets")
    monkeypatch.setenv("PW_NAME", "pg_admin")
    parsed = parse(
        {
            "postgres": {"password_file": "$NOMAD_SECRETS_DIR/${PW_NAME}.txt"},
            "service": [{"name": "gitea"}],
        }
    )
    assert parsed.postgres.password_file == Path("/alloc/secrets/pg_admin.txt")


def test_empty_password_file_means_none() -> None:
    parsed = parse({"postgres": {"password_file": ""}, "service": [{"name": "gitea"}]})
    assert parsed.postgres.password_file is None


# --- every problem at once ----------------------------------------------------------


def test_every_problem_is_reported_at_once_with_its_location() -> None:
    document: dict[str, Any] = {
        "databases": {},  # unknown top-level key
        "vault": {"path": "postgres/shared"},  # no {service}
        "service": [
            {"name": "gitea", "databse": "x"},  # unknown key, with a suggestion
            {"name": "gitea", "database": "gitea2", "user": "gitea2"},  # duplicate name
            {"name": "wiki", "database": "gitea", "user": "wiki"},  # duplicate database
            {"name": "a" * 64, "database": "long_db", "user": "long_user"},  # 64 bytes
            {"name": "five", "user": "postgres"},  # reserved
            {"name": "bell\x07", "database": "bell_db", "user": "bell_user"},  # control char
            {"name": "typed", "database": 5},  # wrong type
            {"user": "nameless"},  # missing name
        ],
    }
    problems = problems_of(document)
    expected = [
        ("pginit.toml: ", "unknown key 'databases'"),
        ("[vault]: ", "must contain {service}"),
        ("[[service]] #1 ('gitea'): ", "unknown key 'databse' (did you mean 'database'?)"),
        ("[[service]] #2 ('gitea'): ", "name 'gitea' is already used by [[service]] #1"),
        ("[[service]] #3 ('wiki'): ", "database 'gitea' is already used by [[service]] #1"),
        (f"[[service]] #4 ('{'a' * 64}'): ", "is 64 bytes long"),
        ("[[service]] #5 ('five'): ", "user 'postgres' is reserved"),
        ("[[service]] #6 ('bell\\x07'): ", "must not contain control characters"),
        ("[[service]] #7 ('typed'): ", "'database' must be a string"),
        ("[[service]] #8: ", "'name' is required"),
    ]
    assert len(problems) == len(expected), problems
    for where, message in expected:
        matching = [p for p in problems if p.startswith(where) and message in p]
        assert len(matching) == 1, (where, message, problems)


def test_config_error_message_counts_problems_and_lists_them() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"service": [{"name": "postgres"}, {"nam": "x"}]})
    error = caught.value
    text = str(error)
    assert text.startswith(f"{SOURCE}: {len(error.problems)} problems in the services file")
    assert "nothing was read from Vault or written to PostgreSQL" in text
    for problem in error.problems:
        assert f"  - {problem}" in text


def test_unknown_top_key_lists_known_keys() -> None:
    problem = only_problem({"servce": [], "service": [{"name": "gitea"}]})
    assert problem.startswith("pginit.toml: unknown key 'servce' (did you mean 'service'?)")
    known = problem.split("known keys: ", 1)[1].split(", ")
    assert {"postgres", "service", "vault"} <= set(known)
    assert known == sorted(known)


def test_unknown_key_without_close_match_has_no_suggestion() -> None:
    problem = only_problem({"service": [{"name": "gitea", "zzzzzz": 1}]})
    assert "unknown key 'zzzzzz'" in problem
    assert "did you mean" not in problem
    known = problem.split("known keys: ", 1)[1].split(", ")
    assert {"database", "name", "user"} <= set(known)


def test_duplicate_user_is_reported() -> None:
    problem = only_problem(
        {"service": [{"name": "a", "user": "shared"}, {"name": "b", "user": "shared"}]}
    )
    assert problem.startswith("[[service]] #2 ('b'): user 'shared' is already used by")


@pytest.mark.parametrize(
    "second",
    [
        {"name": "gitea"},  # database and user default to the duplicate name
        {"name": "a" * 64},  # one over-long name, database and user defaulting to it
    ],
    ids=["duplicate-name", "long-name"],
)
def test_one_mistake_defaulted_into_database_and_user_is_one_problem(
    second: dict[str, str],
) -> None:
    # One wrong `name = ...` line should be reported once, not three times over
    # (name, database and user), since database and user merely default to it.
    problems = problems_of({"service": [{"name": "gitea"}, second]})
    assert len(problems) == 1, problems


def test_no_services_is_a_problem() -> None:
    assert "no [[service]] entries" in only_problem({})
    assert "no [[service]] entries" in only_problem({"service": []})


def test_service_that_is_not_a_table() -> None:
    assert only_problem({"service": ["gitea"]}) == "[[service]] #1: must be a table"


def test_wrong_type_of_a_table() -> None:
    problem = only_problem({"vault": "secret", "service": [{"name": "gitea"}]})
    assert problem == "pginit.toml: 'vault' must be a table"


def test_wrong_type_of_name_is_not_also_missing() -> None:
    problem = only_problem({"service": [{"name": 5}]})
    assert problem == "[[service]] #1: 'name' must be a string"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("postgres/shared", "must contain {service}"),
        ("postgres/{service}/{env}", "only the placeholder {service}"),
        ("/postgres/{service}", "without '/data/'"),
        ("secret/data/postgres/{service}", "without '/data/'"),
    ],
)
def test_bad_vault_path(path: str, message: str) -> None:
    problem = only_problem({"vault": {"path": path}, "service": [{"name": "gitea"}]})
    assert problem.startswith("[vault]: ")
    assert message in problem


@pytest.mark.parametrize("key", ["mount", "key"])
def test_empty_vault_mount_or_key(key: str) -> None:
    problem = only_problem({"vault": {key: ""}, "service": [{"name": "gitea"}]})
    assert problem == f"[vault]: '{key}' must not be empty"


# --- names --------------------------------------------------------------------------


def test_63_bytes_is_fine_64_is_not() -> None:
    assert spec.name_problem("a" * 63) is None
    problem = spec.name_problem("a" * 64)
    assert problem is not None
    assert "64 bytes" in problem
    assert "63" in problem


def test_multibyte_name_is_measured_in_bytes() -> None:
    name = "\u65e5" * 21  # 3 bytes each: 63 bytes, 21 characters
    assert len(name.encode("utf-8")) == 63
    assert spec.name_problem(name) is None
    assert parse({"service": [{"name": name}]}).services[0].name == name
    longer = name + "a"
    assert len(longer) == 22
    problem = spec.name_problem(longer)
    assert problem is not None
    assert "64 bytes" in problem


def test_64_byte_service_name_fails_parse() -> None:
    name = "\u00e9" * 32  # 2 bytes each
    problem = only_problem({"service": [{"name": name, "database": "db", "user": "u"}]})
    assert "is 64 bytes long" in problem


@pytest.mark.parametrize(
    "name",
    ["postgres", "template0", "template1", "public", "PG_x", "pg_stat", "Postgres", "none"],
)
def test_reserved_names(name: str) -> None:
    problem = spec.name_problem(name)
    assert problem is not None
    assert "reserve" in problem
    assert "reserve" in only_problem({"service": [{"name": "ok", "database": name}]})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        ("nul\x00", "NUL"),
        ("tab\there", "control characters"),
        ("new\nline", "control characters"),
        ("del\x7f", "control characters"),
        ("c1\x85", "control characters"),
        ("surrogate\ud800", "control characters"),
    ],
)
def test_bad_characters(name: str, message: str) -> None:
    problem = spec.name_problem(name)
    assert problem is not None
    assert message in problem


@given(st.text(max_size=80))
def test_property_name_problem(name: str) -> None:
    problem = spec.name_problem(name)
    if problem is None:
        assert name != ""
        assert len(name.encode("utf-8")) <= spec.MAX_NAME_BYTES
        assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name)
        assert name.lower() not in spec.RESERVED_NAMES
        assert not name.lower().startswith("pg_")
    else:
        assert isinstance(problem, str)
        assert problem != ""


@given(
    st.text(
        alphabet=st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=30
    ).filter(
        lambda name: (
            len(name.encode("utf-8")) <= 63
            and name.lower() not in spec.RESERVED_NAMES
            and not name.lower().startswith("pg_")
            and "/" not in name
            and name not in (".", "..")
            and name.isprintable()
        )
    )
)
def test_property_acceptable_names_have_no_problem(name: str) -> None:
    assert spec.name_problem(name) is None


@pytest.mark.parametrize("name", ["../admin", "a/b", ".", "..", "/"])
def test_names_that_would_escape_the_vault_path_are_refused(name: str) -> None:
    problem = spec.name_problem(name)
    assert problem is not None
    assert "Vault path" in problem


# --- loading ------------------------------------------------------------------------


def test_load_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "pginit.toml"
    path.write_text(
        '[vault]\nmount = "kv"\n\n[[service]]\nname = "uptime-kuma"\n\n'
        '[[service]]\nname = "\u65e5\u672c\u8a9e"\nuser = "jp"\n',
        encoding="utf-8",
    )
    loaded = spec.load(path)
    assert loaded.source == path
    assert loaded.vault.mount == "kv"
    assert [(s.name, s.user) for s in loaded.services] == [
        ("uptime-kuma", "uptime-kuma"),
        ("\u65e5\u672c\u8a9e", "jp"),
    ]


def test_load_reports_problems_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "pginit.toml"
    path.write_text('[[service]]\nname = "ok"\nuser = "postgres"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        spec.load(path)
    assert str(path) in str(caught.value)
    assert len(caught.value.problems) == 1


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "pginit.toml"
    path.write_text('[[service]\nname = "gitea"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        spec.load(path)
    assert str(path) in str(caught.value)
    assert "not valid TOML" in str(caught.value)
    assert caught.value.exit_code == ExitCode.CONFIG


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        spec.load(path)
    assert str(path) in str(caught.value)
    assert "does not exist" in str(caught.value)
    assert caught.value.exit_code == ExitCode.CONFIG


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "pginit.toml"
    path.write_bytes(b'[[service]]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match="cannot read services file"):
        spec.load(path)


def test_config_path() -> None:
    assert spec.config_path("a.toml", {"PGINIT_CONFIG": "b.toml"}) == Path("a.toml")
    assert spec.config_path(None, {"PGINIT_CONFIG": "b.toml"}) == Path("b.toml")
    # The standalone provisioner's variable and default still work.
    assert spec.config_path(None, {"CONFIG_PATH": "c.json"}) == Path("c.json")
    assert spec.config_path(None, {"PGINIT_CONFIG": "b.toml", "CONFIG_PATH": "c.json"}) == Path(
        "b.toml"
    )
    assert spec.config_path(None, {}) == Path("/config/config.json")
    assert spec.config_path("", {"PGINIT_CONFIG": ""}) == Path("/config/config.json")


def test_missing_default_file_says_how_to_name_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PGINIT_CONFIG") as caught:
        spec.load(tmp_path / "config.json")
    assert caught.value.exit_code == ExitCode.CONFIG
