"""The SQL of each action, from the pure builders of the postgres package: no server."""

from __future__ import annotations

import pytest
from psycopg import sql
from test_plan import ALL_ACTIONS, _example

from nomad_pginit.plan import (
    CreateDatabase,
    CreateRole,
    EndSessions,
    GrantMembership,
    GrantReader,
    IsolateDatabase,
    RecordMemberOf,
    RecordReaders,
    RevokeReader,
    SetPassword,
    SetRoleSetting,
)
from nomad_pginit.postgres.databases import DATABASE_ACTIONS, database_statements
from nomad_pginit.postgres.roles import ROLE_ACTIONS, role_statement
from nomad_pginit.postgres.schema import SCHEMA_ACTIONS, schema_statements


def text(statement: sql.Composable) -> str:
    return statement.as_string()


@pytest.mark.parametrize("kind", ALL_ACTIONS, ids=lambda kind: kind.__name__)
def test_every_action_has_one_builder_and_says_what_the_admin_needs(kind: type) -> None:
    tables = [table for table in (ROLE_ACTIONS, DATABASE_ACTIONS, SCHEMA_ACTIONS) if kind in table]
    assert len(tables) == 1, kind
    assert tables[0][kind].strip()
    action = _example(kind)
    if kind in (CreateRole, SetPassword, EndSessions):
        return  # the verifier's statement (session._run_with_password); session._end_sessions
    statements: list[sql.Composable | sql.SQL]
    if kind in ROLE_ACTIONS:
        statements = [role_statement(action, 160000)]
    elif kind in DATABASE_ACTIONS:
        statements = list(database_statements(action))
    else:
        statements = list(schema_statements(action))
    assert statements
    for statement in statements:
        assert text(statement).strip()


def test_names_are_quoted_as_identifiers() -> None:
    (statement,) = database_statements(IsolateDatabase("s", 'we"ird db', "Role"))[1:]
    assert text(statement) == 'GRANT CONNECT ON DATABASE "we""ird db" TO "Role"'


def test_create_database_takes_its_options_as_strings_and_the_template_as_a_name() -> None:
    action = CreateDatabase(
        "s", "synapse", "synapse", (("template", "template0"), ("locale", "C'; DROP"))
    )
    create, _ = database_statements(action)
    assert text(create) == (
        'CREATE DATABASE "synapse" OWNER "synapse" TEMPLATE "template0" LOCALE \'C\'\'; DROP\''
    )


def test_a_list_setting_takes_each_item_as_a_literal() -> None:
    action = SetRoleSetting("s", "db", "app", "search_path", '"$user", app,public')
    assert text(role_statement(action, 150000)) == (
        "ALTER ROLE \"app\" IN DATABASE \"db\" SET \"search_path\" = '$user', 'app', 'public'"
    )
    custom = SetRoleSetting("s", "db", "app", "my.option", "a,b")
    assert text(role_statement(custom, 150000)) == (
        'ALTER ROLE "app" IN DATABASE "db" SET "my"."option" = \'a,b\''
    )


def test_membership_grant() -> None:
    action = GrantMembership("s", "exporter", "pg_monitor")
    assert text(role_statement(action, 170000)) == 'GRANT "pg_monitor" TO "exporter"'


def test_readers_get_read_only_grants_on_the_services_objects_and_lose_them() -> None:
    grant = GrantReader("s", "db", "owner", "grafana", ("items", "we ird"), ("items_id_seq",))
    granted = [text(s) for s in schema_statements(grant)]
    assert granted[0] == 'GRANT CONNECT ON DATABASE "db" TO "grafana"'
    assert 'GRANT SELECT ON TABLE "public"."items", "public"."we ird" TO "grafana"' in granted
    assert 'GRANT SELECT ON SEQUENCE "public"."items_id_seq" TO "grafana"' in granted
    assert (
        'ALTER DEFAULT PRIVILEGES FOR ROLE "owner" IN SCHEMA public GRANT SELECT ON TABLES '
        'TO "grafana"'
    ) in granted
    # Read-only: SELECT, USAGE and CONNECT, never a write or ALL PRIVILEGES.
    for statement in granted:
        for word in ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "CREATE", "ALL "):
            assert word not in statement
    revoke = RevokeReader("s", "db", "owner", "grafana", ("items",), ())
    revoked = [text(s) for s in schema_statements(revoke)]
    assert revoked[-1] == 'REVOKE CONNECT ON DATABASE "db" FROM "grafana"'
    assert all(s.startswith(("REVOKE", "ALTER DEFAULT PRIVILEGES")) for s in revoked)
    nothing_yet = schema_statements(GrantReader("s", "db", "owner", "grafana"))
    assert not any("ON TABLE " in text(s) for s in nothing_yet)
    without_usage = schema_statements(GrantReader("s", "db", "owner", "grafana", (), (), False))
    assert all("USAGE" not in text(s) for s in without_usage)


def test_records_go_in_the_comment_after_the_mark() -> None:
    (statement,) = schema_statements(RecordReaders("s", "db", ("grafana", "b")))
    assert text(statement) == (
        'COMMENT ON DATABASE "db" IS \'managed by nomad-pginit; {"readers": ["b", "grafana"]}\''
    )
    plain = role_statement(RecordMemberOf("s", "app", ()), 160000)
    assert text(plain) == "COMMENT ON ROLE \"app\" IS 'managed by nomad-pginit'"
