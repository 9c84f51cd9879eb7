"""The planner, from hand-built cluster states: no server."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import typing

import pytest

from nomad_pginit import plan
from nomad_pginit.plan import (
    Action,
    ChangeDatabaseOwner,
    CreateDatabase,
    CreateRole,
    GrantDatabase,
    GrantRoleToAdmin,
    GrantSchema,
    Refusal,
    RestoreLogin,
    SetPassword,
    plan_cluster,
    plan_schema,
)
from nomad_pginit.secret import Secret
from nomad_pginit.spec import Service
from nomad_pginit.state import (
    DATABASE_PRIVILEGES,
    SCHEMA_PRIVILEGES,
    AdminState,
    ClusterState,
    DatabaseState,
    RoleState,
    SchemaState,
)

PASSWORD_TEXT = "pw-marker-Vault-s3cret"
PASSWORD = Secret(PASSWORD_TEXT)
# Name, database and user all differ, so that a mix-up between them shows.
SERVICE = Service(name="wiki", database="wiki_db", user="wiki_user")


def scram_verifier(password: str, salt: bytes = b"fixed-test-salt!", iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier (RFC 5802/7677) for an ASCII password."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


MATCHING_VERIFIER = scram_verifier(PASSWORD_TEXT)


def admin(*, superuser: bool = True, can_read_verifiers: bool | None = None) -> AdminState:
    return AdminState(
        name="postgres" if superuser else "pginit",
        superuser=superuser,
        createdb=True,
        createrole=True,
        can_read_verifiers=superuser if can_read_verifiers is None else can_read_verifiers,
    )


def role(**changes: typing.Any) -> RoleState:
    """The service's role as nomad-pginit leaves it."""
    base = RoleState(
        name=SERVICE.user,
        can_login=True,
        superuser=False,
        verifier=MATCHING_VERIFIER,
        admin_is_member=True,
        owned_databases=(SERVICE.database,),
        managed=True,
    )
    return dataclasses.replace(base, **changes)


def database(**changes: typing.Any) -> DatabaseState:
    """The service's database as nomad-pginit leaves it."""
    base = DatabaseState(
        name=SERVICE.database, owner=SERVICE.user, public_privileges=frozenset(), managed=True
    )
    return dataclasses.replace(base, **changes)


def cluster(
    *,
    admin_state: AdminState | None = None,
    role_state: RoleState | None = None,
    database_state: DatabaseState | None = None,
    privileges: frozenset[str] = DATABASE_PRIVILEGES,
) -> ClusterState:
    roles = {} if role_state is None else {role_state.name: role_state}
    databases = {} if database_state is None else {database_state.name: database_state}
    held = {}
    if role_state is not None and database_state is not None:
        held = {(database_state.name, role_state.name): privileges}
    return ClusterState(
        admin=admin_state or admin(),
        roles=roles,
        databases=databases,
        database_privileges=held,
    )


def in_place(**changes: typing.Any) -> ClusterState:
    return cluster(role_state=role(**changes), database_state=database())


def types(actions: list[Action]) -> list[type[Action]]:
    return [type(action) for action in actions]


def only(actions: list[Action], kind: type[Action]) -> Action:
    found = [action for action in actions if isinstance(action, kind)]
    assert len(found) == 1, actions
    return found[0]


# --- plan_cluster -------------------------------------------------------------------


def test_nothing_exists_creates_role_then_database_without_grant() -> None:
    actions = plan_cluster(SERVICE, PASSWORD, cluster())
    kinds = types(actions)
    assert kinds.index(CreateRole) < kinds.index(CreateDatabase)
    assert only(actions, CreateRole) == CreateRole("wiki", "wiki_user", PASSWORD)
    assert only(actions, CreateDatabase) == CreateDatabase("wiki", "wiki_db", "wiki_user")
    for absent in (GrantDatabase, GrantRoleToAdmin, SetPassword, ChangeDatabaseOwner):
        assert absent not in kinds
    assert all(action.service == "wiki" for action in actions)


def test_everything_in_place_is_empty() -> None:
    assert plan_cluster(SERVICE, PASSWORD, in_place()) == []


def test_verifier_mismatch_sets_password() -> None:
    state = in_place(verifier=scram_verifier("an older password"))
    assert plan_cluster(SERVICE, PASSWORD, state) == [
        SetPassword("wiki", "wiki_user", PASSWORD, "differs from Vault")
    ]


@pytest.mark.parametrize(
    "verifier",
    [None, "md5" + "0" * 32, scram_verifier(PASSWORD_TEXT, iterations=1) + "x"],
)
def test_missing_or_foreign_verifier_sets_password(verifier: str | None) -> None:
    actions = plan_cluster(SERVICE, PASSWORD, in_place(verifier=verifier))
    assert actions == [SetPassword("wiki", "wiki_user", PASSWORD, "differs from Vault")]


def test_admin_that_cannot_read_verifiers_sets_password_and_says_why() -> None:
    state = cluster(
        admin_state=admin(superuser=False),
        role_state=role(verifier=None),
        database_state=database(),
    )
    (action,) = plan_cluster(SERVICE, PASSWORD, state)
    assert isinstance(action, SetPassword)
    assert action.role == "wiki_user"
    assert action.password == PASSWORD
    assert "cannot read pg_authid" in action.reason
    assert '"pginit"' in action.reason
    assert "cannot read pg_authid" in action.describe()


@pytest.mark.parametrize(
    ("verified", "expected_reasons"),
    [(True, []), (False, ["differs from Vault"])],
)
def test_login_check_replaces_verifier_comparison(
    verified: bool, expected_reasons: list[str]
) -> None:
    state = cluster(
        admin_state=admin(superuser=False),
        role_state=role(verifier=None),
        database_state=database(),
    )
    actions = plan_cluster(SERVICE, PASSWORD, state, password_verified=verified)
    assert [a.reason for a in actions if isinstance(a, SetPassword)] == expected_reasons
    assert types(actions) == [SetPassword] * len(expected_reasons)


def test_what_observe_found_about_the_password_is_used_as_it_is() -> None:
    """provision compares the verifiers in parallel and hands the planner the answer."""
    assert plan_cluster(SERVICE, PASSWORD, in_place(), password_verified=True) == []
    assert types(plan_cluster(SERVICE, PASSWORD, in_place(), password_verified=False)) == [
        SetPassword
    ]


def test_nologin_role_gets_login_back() -> None:
    assert plan_cluster(SERVICE, PASSWORD, in_place(can_login=False)) == [
        RestoreLogin("wiki", "wiki_user")
    ]


def test_database_owned_by_postgres_changes_owner_then_grants() -> None:
    state = cluster(
        role_state=role(owned_databases=()),
        database_state=database(owner="postgres"),
        privileges=frozenset(),
    )
    actions = plan_cluster(SERVICE, PASSWORD, state)
    kinds = types(actions)
    assert only(actions, ChangeDatabaseOwner) == ChangeDatabaseOwner(
        "wiki", "wiki_db", "wiki_user", "postgres"
    )
    assert kinds.index(ChangeDatabaseOwner) < kinds.index(GrantDatabase)
    assert only(actions, GrantDatabase) == GrantDatabase("wiki", "wiki_db", "wiki_user")
    assert CreateDatabase not in kinds
    assert CreateRole not in kinds


@pytest.mark.parametrize(
    "held", [frozenset(), frozenset({"CONNECT"}), frozenset({"CONNECT", "TEMPORARY"})]
)
def test_missing_database_privileges_are_granted(held: frozenset[str]) -> None:
    state = cluster(role_state=role(), database_state=database(), privileges=held)
    assert plan_cluster(SERVICE, PASSWORD, state) == [GrantDatabase("wiki", "wiki_db", "wiki_user")]


def test_extra_database_privileges_are_fine() -> None:
    state = cluster(
        role_state=role(),
        database_state=database(),
        privileges=DATABASE_PRIVILEGES | {"SOMETHING_ELSE"},
    )
    assert plan_cluster(SERVICE, PASSWORD, state) == []


def test_superuser_role_is_refused() -> None:
    with pytest.raises(Refusal, match=r'role "wiki_user" already exists and is a superuser'):
        plan_cluster(SERVICE, PASSWORD, in_place(superuser=True))


def test_role_owning_other_databases_is_refused() -> None:
    state = in_place(owned_databases=("zeta", SERVICE.database, "alpha"))
    with pytest.raises(Refusal) as caught:
        plan_cluster(SERVICE, PASSWORD, state)
    message = str(caught.value)
    assert '"alpha", "zeta"' in message
    assert f'"{SERVICE.database}"' not in message
    assert "owns other databases" in message


def test_role_owning_only_its_own_database_is_not_refused() -> None:
    assert plan_cluster(SERVICE, PASSWORD, in_place(owned_databases=(SERVICE.database,))) == []


def test_non_superuser_admin_joins_new_role_before_creating_database() -> None:
    non_superuser = admin(superuser=False, can_read_verifiers=False)
    actions = plan_cluster(SERVICE, PASSWORD, cluster(admin_state=non_superuser))
    kinds = types(actions)
    assert kinds.index(CreateRole) < kinds.index(GrantRoleToAdmin) < kinds.index(CreateDatabase)
    assert only(actions, GrantRoleToAdmin) == GrantRoleToAdmin("wiki", "wiki_user", "pginit")


def test_non_superuser_admin_joins_existing_role_before_creating_database() -> None:
    state = cluster(
        admin_state=admin(superuser=False, can_read_verifiers=True),
        role_state=role(admin_is_member=False, owned_databases=()),
    )
    actions = plan_cluster(SERVICE, PASSWORD, state)
    kinds = types(actions)
    assert kinds.index(GrantRoleToAdmin) < kinds.index(CreateDatabase)
    assert CreateRole not in kinds
    assert SetPassword not in kinds


def test_non_superuser_admin_already_member_is_not_granted_again() -> None:
    state = cluster(
        admin_state=admin(superuser=False, can_read_verifiers=True),
        role_state=role(owned_databases=()),
    )
    actions = plan_cluster(SERVICE, PASSWORD, state)
    assert GrantRoleToAdmin not in types(actions)
    assert CreateDatabase in types(actions)


def test_superuser_admin_never_needs_membership() -> None:
    actions = plan_cluster(SERVICE, PASSWORD, in_place(admin_is_member=False))
    assert actions == []


# --- plan_schema --------------------------------------------------------------------


def schema(**changes: typing.Any) -> SchemaState:
    base = SchemaState(database=SERVICE.database, exists=True, privileges=SCHEMA_PRIVILEGES)
    return dataclasses.replace(base, **changes)


def test_schema_privileges_held() -> None:
    assert plan_schema(SERVICE, schema(), owner_changes=False) == []
    assert plan_schema(SERVICE, schema(), owner_changes=True) == []


@pytest.mark.parametrize("held", [frozenset({"USAGE"}), frozenset()])
def test_schema_missing_create_is_granted(held: frozenset[str]) -> None:
    assert plan_schema(SERVICE, schema(privileges=held), owner_changes=False) == [
        GrantSchema("wiki", "wiki_db", "wiki_user")
    ]


def test_owner_change_predicts_database_owner_holds_public() -> None:
    state = schema(privileges=frozenset(), owned_by_database_owner=True)
    assert plan_schema(SERVICE, state, owner_changes=True) == []
    # Without an owner change, the observed privileges are what counts.
    assert plan_schema(SERVICE, state, owner_changes=False) == [
        GrantSchema("wiki", "wiki_db", "wiki_user")
    ]


def test_owner_change_without_pg_database_owner_still_grants() -> None:
    state = schema(privileges=frozenset(), owned_by_database_owner=False)
    assert types(plan_schema(SERVICE, state, owner_changes=True)) == [GrantSchema]


def test_missing_schema_is_refused() -> None:
    with pytest.raises(Refusal, match="has no schema public") as caught:
        plan_schema(SERVICE, schema(exists=False), owner_changes=False)
    assert '"wiki_db"' in str(caught.value)
    assert "CREATE SCHEMA public" in str(caught.value)


# --- no password anywhere -----------------------------------------------------------


def test_repr_of_password_actions_hides_password() -> None:
    for action in (
        CreateRole("wiki", "wiki_user", PASSWORD),
        SetPassword("wiki", "wiki_user", PASSWORD, "differs from Vault"),
    ):
        assert PASSWORD_TEXT not in repr(action)
        assert PASSWORD_TEXT not in str(action)
        assert PASSWORD_TEXT not in f"{action} {action!r} {[action]}"
        assert "wiki_user" in repr(action)


def test_repr_of_role_state_hides_verifier() -> None:
    state = in_place()
    assert MATCHING_VERIFIER not in repr(state)
    assert MATCHING_VERIFIER.split("$")[2] not in repr(state)


def _example(kind: type[Action]) -> Action:
    """An instance of any action, whatever its fields, with the password wherever one goes."""
    hints = typing.get_type_hints(kind)
    values: dict[str, typing.Any] = {}
    for item in dataclasses.fields(kind):
        hint = hints[item.name]
        if hint is str:
            values[item.name] = f"{item.name}-x"
        elif hint is int:
            values[item.name] = 7
        elif hint is bool:
            values[item.name] = True
        elif hint is Secret:
            values[item.name] = PASSWORD
        elif hint == str | None:
            values[item.name] = f"{item.name}-x"
        elif hint == tuple[tuple[str, str], ...]:
            values[item.name] = (("locale", "C"),)
        elif hint == tuple[str, ...]:
            values[item.name] = (f"{item.name}-x",)
        else:
            pytest.fail(f"{kind.__name__}.{item.name}: no example for {hint!r}")
    return kind(**values)


def _all_actions() -> list[type[Action]]:
    found: list[type[Action]] = []
    pending = list(Action.__subclasses__())
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending.extend(kind.__subclasses__())
    return sorted(found, key=lambda kind: kind.__name__)


ALL_ACTIONS = _all_actions()


def test_known_actions_are_all_covered() -> None:
    names = {kind.__name__ for kind in ALL_ACTIONS}
    assert {
        "CreateRole",
        "SetPassword",
        "RestoreLogin",
        "GrantRoleToAdmin",
        "CreateDatabase",
        "ChangeDatabaseOwner",
        "GrantDatabase",
        "GrantSchema",
    } <= names
    assert all(getattr(plan, name) is kind for name, kind in ((k.__name__, k) for k in ALL_ACTIONS))


@pytest.mark.parametrize("kind", ALL_ACTIONS, ids=lambda kind: kind.__name__)
def test_every_action_describes_itself_without_password(kind: type[Action]) -> None:
    action = _example(kind)
    for text in (action.describe(), action.done(), repr(action)):
        assert isinstance(text, str)
        assert text.strip() != ""
        assert PASSWORD_TEXT not in text
    assert action.describe() != action.done()
    assert action.verb in {"created", "updated", "granted"}
