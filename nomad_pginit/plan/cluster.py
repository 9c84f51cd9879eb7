"""Planning a service's role and databases, and the leftovers of services removed."""

from __future__ import annotations

from collections.abc import Sequence

from nomad_pginit.plan.actions import (
    Action,
    ChangeDatabaseOwner,
    ClearValidUntil,
    CreateDatabase,
    CreateRole,
    DisableRole,
    EndSessions,
    GrantDatabase,
    GrantMembership,
    GrantRoleToAdmin,
    IsolateDatabase,
    MarkDatabase,
    MarkRole,
    RecordMemberOf,
    Refusal,
    RestoreLogin,
    RevokeMembership,
    SetConnectionLimit,
    SetPassword,
    SetRoleSetting,
    sql_name,
)
from nomad_pginit.scram import verifier_matches
from nomad_pginit.secret import Secret
from nomad_pginit.spec import Service
from nomad_pginit.state import (
    DATABASE_PRIVILEGES,
    PUBLIC_DATABASE_PRIVILEGES,
    ClusterState,
)


def plan_cluster(
    service: Service,
    password: Secret,
    cluster: ClusterState,
    *,
    password_verified: bool | None = None,
    service_databases: frozenset[str] = frozenset(),
    service_users: frozenset[str] = frozenset(),
) -> list[Action]:
    """The role- and database-level actions one service needs, in the order to run them.

    ``password_verified`` says whether the role's password already equals
    Vault's, when observe found out (from the stored verifier, or by logging in
    as the role); None lets the planner compare the verifier itself, where it
    can. ``service_databases`` are every service's databases in this run: a role
    that owns one of them is not foreign because of it, as the run hands it to
    its own service; ``service_users`` their roles, which readers may name before
    they exist. Raises Refusal when the service must not be touched.
    """
    missing = [name for name in service.extensions if name not in cluster.available_extensions]
    if missing:
        listed = ", ".join(f'"{name}"' for name in missing)
        raise Refusal(
            f"extension {listed} is not available on this server (pg_available_extensions): "
            "install the package that provides it on the PostgreSQL host, or remove it from "
            "the service's extensions"
        )
    unknown = [
        name
        for name in service.readers
        if name not in cluster.existing_readers and name not in service_users
    ]
    if unknown:
        listed = ", ".join(f'"{name}"' for name in unknown)
        raise Refusal(
            f"readers names {listed}, which no role is: create the role, or list a service's user"
        )
    _refuse_unavailable_options(service, cluster)
    _refuse_settings(service, cluster)
    actions: list[Action] = []
    role_actions = _plan_role(service, password, cluster, password_verified, service_databases)
    membership_actions = _plan_memberships(service, cluster)
    actions += role_actions + membership_actions
    admin = cluster.admin
    role = cluster.roles.get(service.user)
    if not admin.superuser and (role is None or not role.admin_is_member):
        # A non-superuser admin must be a member of the role to hand it a database,
        # and to act on that database afterwards as its owner.
        actions.append(GrantRoleToAdmin(service.name, service.user, admin.name))
    for database in service.databases:
        actions += _plan_database(service, database, cluster)
    actions += _plan_settings(service, cluster)
    return actions


def _refuse_unavailable_options(service: Service, cluster: ClusterState) -> None:
    """CREATE DATABASE options this server does not have, said before anything is done."""
    given = service.creation.given()
    template = given.get("template")
    if template is not None and template in cluster.managed_databases:
        raise Refusal(
            f'template "{template}" is a database nomad-pginit made for a service (one removed '
            "from the services file?): its tables and data would be copied, owned by that "
            'service\'s role; use "template0", "template1" or a template database of your own'
        )
    version = cluster.server_version
    if not given or not version or all(name in cluster.databases for name in service.databases):
        return
    major = version // 10000
    if major < 15 and (given.get("locale_provider", "libc") != "libc" or "icu_locale" in given):
        raise Refusal(
            f"locale_provider and icu_locale need PostgreSQL 15 or later; this server is "
            f"{major}: leave them out (libc locales: locale, lc_collate, lc_ctype)"
        )
    if major < 17 and given.get("locale_provider") == "builtin":
        raise Refusal(
            f'locale_provider = "builtin" needs PostgreSQL 17 or later; this server is {major}: '
            'use "libc" with locale = "C" instead'
        )


def _refuse_settings(service: Service, cluster: ClusterState) -> None:
    """Only parameters any role may set for its own sessions: the admin sets them with its
    own rights, which could give a tenant what only a superuser may set (hiding its
    statements from the log, or turning off triggers with session_replication_role)."""
    for name, _ in service.settings:
        context = cluster.setting_contexts.get(name)
        if context is None and "." not in name:
            raise Refusal(
                f'settings: "{name}" is not a parameter a role may set for itself (pg_settings '
                "lists those nomad-pginit sets): fix its name, or leave it out"
            )
        if context not in (None, "user"):
            raise Refusal(
                f'settings: "{name}" is not for a role to set for itself (its context is '
                f'"{context}"): nomad-pginit sets only parameters whose context is "user"; '
                "set it in postgresql.conf, or by hand as a superuser if that is intended"
            )


def _plan_memberships(service: Service, cluster: ClusterState) -> list[Action]:
    actions: list[Action] = []
    for name in service.member_of:
        group = cluster.groups.get(name)
        if name == "pg_database_owner":
            raise Refusal(
                'member_of names "pg_database_owner", which PostgreSQL gives each database\'s '
                "owner by itself and which cannot have members: leave it out"
            )
        if group is None:
            raise Refusal(
                f'member_of names role "{name}", which does not exist: create it, or name a '
                "predefined role such as pg_monitor"
            )
        if group.privileged and not service.allow_privileged:
            raise Refusal(
                f'member_of names role "{name}", which {group.privileged}: its members reach '
                "beyond the service's own databases; set allow_privileged = true under its "
                "[[service]] if that is intended"
            )
        if (service.user, name) not in cluster.memberships:
            actions.append(GrantMembership(service.name, service.user, name))
    role = cluster.roles.get(service.user)
    recorded = role.recorded_member_of if role is not None else frozenset()
    # Only what it recorded granting is taken back: a membership given by hand stays.
    for name in sorted(recorded - set(service.member_of)):
        if (service.user, name) in cluster.memberships:
            actions.append(RevokeMembership(service.name, service.user, name))
    if set(service.member_of) != recorded:
        actions.append(RecordMemberOf(service.name, service.user, tuple(sorted(service.member_of))))
    return actions


def _plan_settings(service: Service, cluster: ClusterState) -> list[Action]:
    actions: list[Action] = []
    for database in service.databases:
        current = cluster.role_settings.get((database, service.user), {})
        for name, value in service.settings:
            now = current.get(name)
            if now is None or not same_setting(name, now, value):
                actions.append(
                    SetRoleSetting(service.name, database, service.user, name, value, now)
                )
    return actions


# Parameters whose value is a list (GUC_LIST_INPUT in PostgreSQL's guc_tables.c): stored
# as items joined by ", ", each quoted as an identifier where it needs to be.
LIST_SETTINGS = frozenset(
    {
        "search_path",
        "temp_tablespaces",
        "datestyle",
        "local_preload_libraries",
        "session_preload_libraries",
    }
)


def setting_items(name: str, value: str) -> list[str]:
    """A list parameter's items (quotes taken off), or the value alone."""
    if name not in LIST_SETTINGS:
        return [value]
    items: list[str] = []
    for raw in value.split(","):
        item = raw.strip()
        if len(item) >= 2 and item.startswith('"') and item.endswith('"'):
            item = item[1:-1].replace('""', '"')
        items.append(item)
    return items


def same_setting(name: str, stored: str, wanted: str) -> bool:
    return setting_items(name, stored) == setting_items(name, wanted)


def _plan_role(
    service: Service,
    password: Secret,
    cluster: ClusterState,
    password_verified: bool | None,
    service_databases: frozenset[str],
) -> list[Action]:
    actions: list[Action] = []
    admin = cluster.admin
    role = cluster.roles.get(service.user)
    if role is None:
        actions.append(CreateRole(service.name, service.user, password))
        if service.connection_limit not in (None, -1):
            actions.append(SetConnectionLimit(service.name, service.user, service.connection_limit))
        return actions
    _refuse_foreign_role(service, cluster, service_databases)
    if not role.can_login:
        actions.append(RestoreLogin(service.name, service.user))
    if role.valid_until is not None:
        actions.append(ClearValidUntil(service.name, service.user, role.valid_until, role.expired))
    matches = password_verified
    if matches is None and admin.can_read_verifiers:
        matches = verifier_matches(role.verifier, password.reveal())
    if matches is False:
        actions.append(SetPassword(service.name, service.user, password, "differs from Vault"))
    elif matches is None:
        reason = (
            f'not compared: the admin "{admin.name}" cannot read pg_authid and could not '
            "log in as the role to check it, so it is set again"
        )
        actions.append(SetPassword(service.name, service.user, password, reason))
    limit = service.connection_limit
    if limit is not None and limit != role.connection_limit:
        actions.append(SetConnectionLimit(service.name, service.user, limit))
    if not role.managed:
        actions.append(MarkRole(service.name, service.user))
    needs_membership = not admin.superuser and not role.admin_is_member
    if (actions or needs_membership) and not admin.superuser and not role.admin_may_alter:
        # PostgreSQL 16+: CREATEROLE is no longer enough for a role someone else made.
        raise Refusal(
            f'the admin "{admin.name}" may not alter role "{service.user}": from PostgreSQL '
            "16 on, a CREATEROLE admin needs ADMIN OPTION on a role it did not create; "
            f"as a superuser, GRANT {sql_name(service.user)} TO {sql_name(admin.name)} "
            "WITH ADMIN OPTION, then run again"
        )
    return actions


def _plan_database(service: Service, name: str, cluster: ClusterState) -> list[Action]:
    actions: list[Action] = []
    database = cluster.databases.get(name)
    if database is None:
        # A new database's owner holds every privilege on it: nothing to grant.
        options = tuple(
            (key, value)
            for key, value in service.creation.given().items()
            # Before 15 libc is the only provider, and CREATE DATABASE has no such option.
            if not (
                key == "locale_provider"
                and value == "libc"
                and cluster.server_version
                and cluster.server_version < 150000
            )
        )
        actions.append(CreateDatabase(service.name, name, service.user, options))
        if service.isolate:
            actions.append(IsolateDatabase(service.name, name, service.user))
        return actions

    if database.owner != service.user:
        actions.append(ChangeDatabaseOwner(service.name, name, service.user, database.owner))
        # What the new owner holds depends on the old ACL: grant rather than guess.
        actions.append(GrantDatabase(service.name, name, service.user))
    else:
        held = cluster.database_privileges.get((name, service.user), frozenset())
        if not held >= DATABASE_PRIVILEGES:
            actions.append(GrantDatabase(service.name, name, service.user))
    if not database.managed:
        actions.append(MarkDatabase(service.name, name))
    if service.isolate and database.public_privileges & PUBLIC_DATABASE_PRIVILEGES:
        actions.append(IsolateDatabase(service.name, name, service.user))
    return actions


def plan_leftovers(
    services: Sequence[Service], cluster: ClusterState, *, disable: bool
) -> tuple[list[str], list[Action]]:
    """Roles and databases we manage whose service left the file: never dropped.

    Returns what to report, and (with ``disable``) the roles to set NOLOGIN.
    """
    users = {service.user for service in services}
    databases = {name for service in services for name in service.databases}
    notes: list[str] = []
    actions: list[Action] = []
    for role, can_login in sorted(cluster.managed_roles.items()):
        if role in users:
            continue
        note = f'leftover role "{role}": no longer in the services file, kept'
        protected = cluster.protected_roles.get(role)
        sessions = cluster.leftover_sessions.get(role, 0)
        if not can_login:
            note += " (NOLOGIN)"
            if sessions and protected is None and disable:
                actions.append(EndSessions(role, role, sessions))
            elif sessions and protected is None:
                note += (
                    f", but {sessions} session(s) of it are still open: run --disable-removed "
                    "to end them"
                )
        elif protected is not None:
            # It carries our comment, but so could anything: never lock out the admin.
            note += f"; never set NOLOGIN by nomad-pginit: {protected}"
        elif disable:
            actions.append(DisableRole(role, role))
        else:
            note += "; it can still log in: run --disable-removed to set it NOLOGIN"
        notes.append(note)
    notes.extend(
        f'leftover database "{name}": no longer in the services file, kept'
        for name in sorted(cluster.managed_databases - databases)
    )
    return notes, actions


def _refuse_foreign_role(
    service: Service, cluster: ClusterState, service_databases: frozenset[str]
) -> None:
    role = cluster.roles[service.user]
    if role.superuser:
        raise Refusal(
            f'role "{service.user}" already exists and is a superuser; nomad-pginit will not '
            "manage it or change its password: give the service another user "
            f'(user = "..." under its [[service]]), or remove SUPERUSER from the role by hand'
        )
    if role.elevated and not service.allow_privileged_role:
        raise Refusal(
            f'role "{service.user}" already exists and {", ".join(role.elevated)}: a '
            "service's password and database would hand those powers to whoever has the "
            "password, so nomad-pginit leaves the role untouched: give the service another "
            "user, take them away by hand, or set allow_privileged_role = true under its "
            "[[service]] if that is intended"
        )
    # A database of another service in this run is handed to that service's own role.
    others = [
        name
        for name in role.owned_databases
        if name not in service.databases and name not in service_databases
    ]
    if others:
        listed = ", ".join(f'"{name}"' for name in sorted(others))
        raise Refusal(
            f'role "{service.user}" already exists and owns other databases ({listed}); '
            "nomad-pginit will not take it over: give the service another user, or change "
            "the owner of those databases by hand"
        )
    elsewhere = [name for name in role.owns_objects_in if name not in service.databases]
    if elsewhere:
        listed = ", ".join(f'"{name}"' for name in sorted(elsewhere))
        raise Refusal(
            f'role "{service.user}" already exists and owns objects in other databases '
            f"({listed}): whoever has the service's password would own them; nomad-pginit "
            "will not take it over: give the service another user, or hand those objects to "
            f'their owner by hand (REASSIGN OWNED BY "{service.user}" TO ..., in each)'
        )
