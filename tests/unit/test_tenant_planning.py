"""Tenants' options (issue 16) without a server: how the services file takes them, and
what the planner makes of hand-built cluster states."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from test_plan import PASSWORD, SERVICE, in_place, only, role, types

from nomad_pginit import spec
from nomad_pginit.errors import ConfigError
from nomad_pginit.plan import (
    CreateDatabase,
    GrantMembership,
    GrantReader,
    GrantRoleToAdmin,
    IsolateDatabase,
    RecordMemberOf,
    RecordReaders,
    Refusal,
    RevokeMembership,
    RevokeReader,
    SetRoleSetting,
    plan_cluster,
    plan_notes,
    plan_readers,
)
from nomad_pginit.plan.cluster import same_setting
from nomad_pginit.plan.options import creation_differences
from nomad_pginit.state import ClusterState, DatabaseState, GroupState, ReaderState, SchemaState

SOURCE = Path("pginit.toml")


def parse(**service: Any) -> spec.Service:
    return spec.parse({"service": [{"name": "app", **service}]}, SOURCE).services[0]


def problems(document: Mapping[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        spec.parse(document, SOURCE)
    return caught.value.problems


def service_problems(**service: Any) -> list[str]:
    return problems({"service": [{"name": "app", **service}]})


# --- the services file -------------------------------------------------------------


def test_creation_options_from_defaults_and_service() -> None:
    parsed = spec.parse(
        {
            "defaults": {"encoding": "UTF8", "template": "template0"},
            "service": [{"name": "synapse", "locale": "C"}, {"name": "gitea"}],
        },
        SOURCE,
    )
    synapse, gitea = parsed.services
    assert synapse.creation.given() == {"template": "template0", "encoding": "UTF8", "locale": "C"}
    assert gitea.creation.given() == {"template": "template0", "encoding": "UTF8"}


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"locale": "C", "lc_collate": "C"}, "either 'locale'"),
        ({"locale_provider": "glibc"}, "must be one of"),
        ({"icu_locale": "en-US"}, 'needs locale_provider = "icu"'),
        ({"locale_provider": "builtin"}, "needs 'locale'"),
        ({"encoding": ""}, "non-empty"),
        ({"template": "a\nb"}, "printable"),
    ],
)
def test_creation_options_checked(options: dict[str, str], words: str) -> None:
    found = service_problems(**options)
    assert any(words in problem for problem in found), found


def test_several_databases() -> None:
    radarr = parse(databases=["radarr-main", "radarr-log"])
    assert radarr.database == "radarr-main"
    assert radarr.databases == ("radarr-main", "radarr-log")


def test_database_and_databases_conflict_and_duplicates_are_reported_together() -> None:
    found = problems(
        {
            "service": [
                {"name": "a", "database": "x", "databases": ["y"]},
                {"name": "b", "databases": ["z", "z"]},
                {"name": "c", "databases": ["pg_bad", "y"]},
                {"name": "d", "databases": []},
            ]
        }
    )
    text = "\n".join(found)
    assert "either 'database' or 'databases'" in text
    assert "lists a database twice" in text
    assert "database 'pg_bad'" in text
    assert "database 'y' is already used by [[service]] #1" in text
    assert "already used by this service" not in text  # said once, as listed twice
    assert "one or more database names" in text


def test_settings_are_normalised_and_checked() -> None:
    app = parse(settings={"Statement_Timeout": "30s", "jit": False, "work_mem": 4096})
    assert app.settings == (("jit", "off"), ("statement_timeout", "30s"), ("work_mem", "4096"))
    found = service_problems(settings={"bad name": "x", "x": [1], "y": "a\x00b"})
    assert len(found) == 3, found


def test_service_settings_add_to_defaults() -> None:
    parsed = spec.parse(
        {
            "defaults": {"settings": {"statement_timeout": "30s", "work_mem": "4MB"}},
            "service": [{"name": "app", "settings": {"statement_timeout": "5s"}}],
        },
        SOURCE,
    )
    assert parsed.services[0].settings == (("statement_timeout", "5s"), ("work_mem", "4MB"))


def test_readers_and_member_of_checked() -> None:
    found = service_problems(readers=["app"], member_of=["pg_monitor", "pg_monitor"])
    text = "\n".join(found)
    assert "'readers' lists 'app', the service's own role" in text
    assert "'member_of' lists a role twice" in text
    assert "'member_of'" in "\n".join(problems({"defaults": {"member_of": ["x"]}, "service": []}))


def test_allow_privileged_needs_member_of() -> None:
    assert any("'member_of'" in p for p in service_problems(allow_privileged=True))


def test_fingerprint_unchanged_for_a_file_without_the_new_options() -> None:
    # What a sidecar of the previous release logs for the same file: deploy waits for it.
    services = spec.parse({"service": [{"name": "gitea"}]}, SOURCE).services
    assert spec.fingerprint(services) == "8528ac294f75"
    changed = spec.parse({"service": [{"name": "gitea", "readers": ["x"]}]}, SOURCE).services
    assert spec.fingerprint(changed) != spec.fingerprint(services)


# --- planning ---------------------------------------------------------------------


def with_options(**changes: Any) -> spec.Service:
    return dataclasses.replace(SERVICE, **changes)


def test_new_database_gets_its_creation_options() -> None:
    service = with_options(creation=spec.CreationOptions(template="template0", locale="C"))
    actions = plan_cluster(service, PASSWORD, nothing_yet())
    created = only(actions, CreateDatabase)
    assert isinstance(created, CreateDatabase)
    assert created.options == (("template", "template0"), ("locale", "C"))


def nothing_yet() -> ClusterState:
    return dataclasses.replace(in_place(), roles={}, databases={}, database_privileges={})


def test_each_database_of_a_service_is_planned() -> None:
    service = with_options(more_databases=("wiki_log",))
    actions = plan_cluster(service, PASSWORD, in_place())
    assert only(actions, CreateDatabase) == CreateDatabase("wiki", "wiki_log", "wiki_user")
    assert only(actions, IsolateDatabase) == IsolateDatabase("wiki", "wiki_log", "wiki_user")


def test_admin_membership_is_granted_once_for_several_databases() -> None:
    from test_plan import admin, cluster

    service = with_options(more_databases=("wiki_log",))
    actions = plan_cluster(service, PASSWORD, cluster(admin_state=admin(superuser=False)))
    assert types(actions).count(GrantRoleToAdmin) == 1


def test_existing_database_created_otherwise_is_a_note_not_an_action() -> None:
    service = with_options(creation=spec.CreationOptions(encoding="UTF8", locale="C"))
    state = in_place()
    existing = dataclasses.replace(
        state.databases[SERVICE.database],
        encoding="SQL_ASCII",
        lc_collate="en_US.UTF-8",
        lc_ctype="C",
    )
    state = dataclasses.replace(state, databases={SERVICE.database: existing})
    assert plan_cluster(service, PASSWORD, state) == []
    notes = plan_notes(service, state)
    assert len(notes) == 2, notes
    assert "encoding is 'SQL_ASCII', the services file asks for 'UTF8'" in notes[0]
    assert "lc_collate is 'en_US.UTF-8'" in notes[1]


@pytest.mark.parametrize(
    ("option", "have", "want"),
    [
        ("encoding", "UTF8", "utf-8"),
        ("encoding", "UTF8", "unicode"),
        ("lc_collate", "en_US.UTF-8", "en_US.utf8"),
    ],
)
def test_same_encoding_or_locale_spelled_otherwise_is_no_difference(
    option: str, have: str, want: str
) -> None:
    database = DatabaseState(name="d", owner="o", encoding=have, lc_collate=have, lc_ctype=have)
    service = with_options(creation=spec.CreationOptions(**{option: want}))
    assert creation_differences(service, database) == []


def test_locale_provider_needs_a_recent_server() -> None:
    service = with_options(creation=spec.CreationOptions(locale_provider="builtin", locale="C"))
    state = dataclasses.replace(nothing_yet(), server_version=160004)
    with pytest.raises(Refusal, match="PostgreSQL 17 or later; this server is 16"):
        plan_cluster(service, PASSWORD, state)


def test_settings_set_when_missing_or_different_and_unlisted_ones_noted() -> None:
    service = with_options(settings=(("search_path", "app,public"), ("statement_timeout", "30s")))
    state = dataclasses.replace(
        in_place(),
        setting_contexts={"search_path": "user", "statement_timeout": "user"},
        role_settings={
            (SERVICE.database, SERVICE.user): {
                "search_path": "app, public",  # as PostgreSQL stores it: the same
                "statement_timeout": "10s",
                "work_mem": "8MB",
            }
        },
    )
    actions = plan_cluster(service, PASSWORD, state)
    assert actions == [
        SetRoleSetting("wiki", "wiki_db", "wiki_user", "statement_timeout", "30s", "10s")
    ]
    (note,) = plan_notes(service, state)
    assert "work_mem = '8MB'" in note
    assert "does not list" in note


def test_list_settings_compare_item_by_item() -> None:
    assert same_setting("search_path", '"$user", public', "$user,public")
    assert not same_setting("search_path", "app, public", "public,app")
    assert not same_setting("statement_timeout", "30s", "30000")


@pytest.mark.parametrize(
    ("context", "words"),
    [(None, "not a parameter a role may set"), ("superuser", 'context is "superuser"')],
)
def test_settings_a_role_may_not_set_for_itself_are_refused(
    context: str | None, words: str
) -> None:
    service = with_options(settings=(("session_replication_role", "replica"),))
    contexts = {} if context is None else {"session_replication_role": context}
    state = dataclasses.replace(in_place(), setting_contexts=contexts)
    with pytest.raises(Refusal, match=words):
        plan_cluster(service, PASSWORD, state)


def test_custom_parameters_may_be_set() -> None:
    service = with_options(settings=(("app.tenant", "blue"),))
    actions = plan_cluster(service, PASSWORD, in_place())
    assert types(actions) == [SetRoleSetting]


def test_member_of_granted_when_missing_refused_when_privileged_or_missing() -> None:
    service = with_options(member_of=("pg_monitor",))
    state = dataclasses.replace(in_place(), groups={"pg_monitor": GroupState("pg_monitor")})
    assert plan_cluster(service, PASSWORD, state) == [
        GrantMembership("wiki", "wiki_user", "pg_monitor"),
        RecordMemberOf("wiki", "wiki_user", ("pg_monitor",)),
    ]
    recorded = role(recorded_member_of=frozenset({"pg_monitor"}))
    held = dataclasses.replace(
        state,
        memberships=frozenset({("wiki_user", "pg_monitor")}),
        roles={SERVICE.user: recorded},
    )
    assert plan_cluster(service, PASSWORD, held) == []
    # Gone from member_of: what it recorded granting is taken back, and the record too.
    removed = dataclasses.replace(service, member_of=())
    assert plan_cluster(removed, PASSWORD, held) == [
        RevokeMembership("wiki", "wiki_user", "pg_monitor"),
        RecordMemberOf("wiki", "wiki_user", ()),
    ]
    with pytest.raises(Refusal, match='"pg_monitor", which does not exist'):
        plan_cluster(service, PASSWORD, in_place())
    privileged = dataclasses.replace(
        state, groups={"pg_monitor": GroupState("pg_monitor", privileged="is a superuser")}
    )
    with pytest.raises(Refusal, match="allow_privileged = true"):
        plan_cluster(service, PASSWORD, privileged)
    allowed = dataclasses.replace(service, allow_privileged=True)
    assert types(plan_cluster(allowed, PASSWORD, privileged)) == [GrantMembership, RecordMemberOf]


def test_readers_must_exist_or_be_created_by_the_run() -> None:
    service = with_options(readers=("grafana",))
    with pytest.raises(Refusal, match='readers names "grafana", which no role is'):
        plan_cluster(service, PASSWORD, in_place())
    assert plan_cluster(service, PASSWORD, in_place(), service_users=frozenset({"grafana"})) == []


def schema(**changes: Any) -> SchemaState:
    return dataclasses.replace(
        SchemaState(database="wiki_db", exists=True, privileges=frozenset()), **changes
    )


def test_readers_granted_until_complete_and_only_recorded_ones_revoked() -> None:
    service = with_options(readers=("grafana", "metabase"))
    complete = ReaderState(True, True, (), (), True, True)
    partial = dataclasses.replace(complete, unreadable_tables=("items",))
    state = schema(
        readers={"grafana": complete, "metabase": partial, "old": complete, "wiki_user": complete},
        # "gone" no longer exists, and the service's own role is never a reader to revoke.
        recorded_readers=frozenset({"grafana", "metabase", "old", "gone", "wiki_user"}),
        owned_tables=("items", "logs"),
    )
    assert plan_readers(service, state) == [
        GrantReader("wiki", "wiki_db", "wiki_user", "metabase", ("items",), ()),
        RevokeReader("wiki", "wiki_db", "wiki_user", "old", ("items", "logs"), ()),
        RecordReaders("wiki", "wiki_db", ("grafana", "metabase")),
    ]
    # A role the tenant itself lets read (not recorded) is none of ours: never revoked.
    assert plan_readers(with_options(), schema(recorded_readers=frozenset())) == []


def test_readers_empty_list_overrides_defaults_and_skips_its_own_user() -> None:
    parsed = spec.parse(
        {
            "defaults": {"readers": ["grafana"]},
            "service": [{"name": "bi", "readers": []}, {"name": "grafana"}, {"name": "app"}],
        },
        SOURCE,
    )
    bi, grafana, app = parsed.services
    assert bi.readers == ()
    assert grafana.readers == ()
    assert app.readers == ("grafana",)


def test_template_that_is_a_services_database_refused() -> None:
    found = problems({"service": [{"name": "app"}, {"name": "bi", "template": "app"}]})
    assert any("'template' 'app' is the database of service 'app'" in p for p in found), found


def test_json_config_takes_the_options_too(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        '{"root_connection_string": "postgresql://postgres@db/postgres", "databases": '
        '[{"database": "synapse", "password": "x", "locale": "C", "readers": ["grafana"]}]}',
        encoding="utf-8",
    )
    (synapse,) = spec.load(path).services
    assert synapse.creation.locale == "C"
    assert synapse.readers == ("grafana",)
