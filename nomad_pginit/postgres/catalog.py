"""What makes a role more than a service's login, as SQL over the catalogs, and how the
admin's membership and rights are read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from psycopg import sql

from nomad_pginit.plan import sql_name
from nomad_pginit.postgres.logsettings import (
    _STATEMENT_LOG_SETTINGS,
    _TRANSIENT_SETTINGS,
    _would_keep_statement,
)
from nomad_pginit.spec import Service
from nomad_pginit.state import (
    MANAGED_COMMENT,
    MEMBER_OF_KEY,
    READERS_KEY,
    AdminState,
    ClusterState,
    DatabaseState,
    GroupState,
    RoleState,
    read_managed_comment,
)

if TYPE_CHECKING:  # session.py calls these with itself
    from nomad_pginit.postgres.session import AdminSession

log = logging.getLogger("nomad_pginit")

# Predefined roles that reach beyond one database: a service's role that is a member
# (directly or not) could read or write every tenant's data, or the server's files.
PRIVILEGED_ROLES: Final = (
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_signal_backend",
    "pg_create_subscription",
    "pg_checkpoint",
    "pg_read_all_stats",
    "pg_monitor",
    "pg_use_reserved_connections",
    "pg_maintain",  # PostgreSQL 17+
    "pg_signal_autovacuum_worker",  # PostgreSQL 18+
    # Superuser-only settings (primary_conninfo, with its password), and locks on any table.
    "pg_read_all_settings",
    "pg_stat_scan_tables",
)


# What makes role r more than a service's login, for the holder of its password:
# its own attributes; the roles it is a member of, directly or not, that are
# superusers, have such attributes, are privileged predefined roles (parameter
# "privileged": PRIVILEGED_ROLES) or are another service's role (parameter
# "users": every service's user); privileges on the system catalogs or their
# functions granted to it or those roles (pg_authid, pg_read_binary_file: read in
# the admin's database, where such grants matter); and members of its own, who
# would own the service's database through it (the admin aside).
# The roles a query judges (its "subjects", a WHERE clause on pg_roles r) and, for each,
# what makes it more than a service's login, in one pass over all of them (a WITH
# clause; the query then joins "elevated" on subject): reading the catalogs again for
# each role cost about a millisecond per role. Each row of "elevated" holds its
# reasons in the order they are told: attributes, memberships, privileges on the
# catalogs, members, privileges on parameters.
_ELEVATION: Final = """
    WITH RECURSIVE
    subjects AS MATERIALIZED (SELECT r.oid, r.rolname FROM pg_roles r WHERE {subjects}),
    -- Who holds privileges on the system catalogs or their functions.
    catalog_grants AS MATERIALIZED (
        SELECT c.relname::text AS name, a.grantee
        FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
        WHERE c.relnamespace = 'pg_catalog'::regnamespace AND a.grantee <> 0
        UNION ALL
        SELECT p.proname::text, a.grantee
        FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
        WHERE p.pronamespace = 'pg_catalog'::regnamespace AND a.grantee <> 0),
    -- The roles membership in which elevates: superusers, roles with those attributes,
    -- privileged predefined roles (%(privileged)s) and the services' roles (%(users)s).
    elevating_roles AS MATERIALIZED (
        SELECT g.oid, g.rolname, g.rolsuper, g.rolname = ANY(%(users)s) AS is_service
        FROM pg_roles g
        WHERE g.rolsuper OR g.rolcreatedb OR g.rolcreaterole OR g.rolreplication
              OR g.rolbypassrls OR g.rolname = ANY(%(privileged)s)
              OR g.rolname = ANY(%(users)s)),
    -- Every role each subject is a member of, directly or not. Not followed: the
    -- memberships a service asks for or was given by nomad-pginit (member_of: judged on
    -- their own), and %(unfollowed)s.
    up(subject, subject_name, roleid) AS (
        SELECT s.oid, s.rolname, s.oid FROM subjects s
        UNION
        SELECT up.subject, up.subject_name, m.roleid
        FROM pg_auth_members m JOIN up ON m.member = up.roleid
        WHERE pg_get_userbyid(m.roleid) <> ALL(%(unfollowed)s::text[])
          AND NOT (m.member = up.subject AND EXISTS (
              SELECT FROM unnest(%(asked_roles)s::text[], %(asked_groups)s::text[])
                          AS asked(role, grp)
              WHERE asked.role = up.subject_name AND asked.grp = pg_get_userbyid(m.roleid)))),
    reasons(subject, position, reason) AS (
        SELECT r.oid, 0, attribute
        FROM pg_roles r JOIN subjects s ON s.oid = r.oid
        CROSS JOIN LATERAL unnest(ARRAY[
            CASE WHEN r.rolcreatedb THEN 'has CREATEDB' END,
            CASE WHEN r.rolcreaterole THEN 'has CREATEROLE' END,
            CASE WHEN r.rolreplication THEN 'has REPLICATION' END,
            CASE WHEN r.rolbypassrls THEN 'has BYPASSRLS' END]) AS attribute
        WHERE attribute IS NOT NULL
        UNION ALL
        SELECT up.subject, 1, 'is a member of "' || g.rolname || '"' ||
               CASE WHEN g.rolsuper THEN ' (a superuser)'
                    WHEN g.is_service THEN ' (another service''s role)'
                    ELSE '' END
        FROM up JOIN elevating_roles g ON g.oid = up.roleid
        WHERE g.oid <> up.subject
        UNION ALL
        SELECT up.subject, 2, 'holds privileges on system catalog objects (' ||
               string_agg(DISTINCT granted.name, ', ' ORDER BY granted.name) || ')'
        FROM up JOIN catalog_grants AS granted ON granted.grantee = up.roleid
        GROUP BY up.subject
        UNION ALL
        SELECT m.roleid, 3,
               'has members (' || string_agg('"' || u.rolname || '"', ', ' ORDER BY u.rolname)
               || ') who would own the service''s database through it'
        FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
        WHERE m.roleid IN (SELECT oid FROM subjects) AND u.rolname <> current_user
        GROUP BY m.roleid
        {parameters}),
    elevated AS (
        SELECT subject, array_agg(reason ORDER BY position, reason) AS reasons
        FROM (SELECT DISTINCT subject, position, reason FROM reasons) AS distinct_reasons
        GROUP BY subject)
    """

# PostgreSQL 15+: SET or ALTER SYSTEM granted on a parameter (archive_command runs a
# shell command as the server), to the role or a role it inherits from.
_PARAMETER_PRIVILEGES: Final = """
        UNION ALL
        SELECT up.subject, 4, 'holds privileges on parameters (' ||
               string_agg(DISTINCT p.parname, ', ' ORDER BY p.parname) || ')'
        FROM up JOIN (SELECT p.parname, a.grantee
                      FROM pg_parameter_acl p CROSS JOIN LATERAL aclexplode(p.paracl) a) AS p
             ON p.grantee = up.roleid
        GROUP BY up.subject
"""


def _elevation(server_version: int, subjects: str) -> sql.SQL:
    """The WITH clause that judges the roles ``subjects`` (see _ELEVATION), on this
    version. ``subjects`` is fixed text of this module, never input."""
    parameters = _PARAMETER_PRIVILEGES if server_version >= 150000 else ""
    return sql.SQL(_ELEVATION.replace("{parameters}", parameters).replace("{subjects}", subjects))


# Who blocks each waiting backend; never their query, which may hold a password.
# Whether the admin may hand the role a database (CREATE/ALTER DATABASE ... OWNER)
# and act as the database's owner. Up to 15, membership. From 16 on, also the SET
# and INHERIT options of that membership: the one CREATE ROLE gives a CREATEROLE
# admin carries ADMIN OPTION alone (createrole_self_grant adds the others).
_ADMIN_IS_MEMBER: Final = sql.SQL("pg_has_role(current_user, r.oid, 'MEMBER')")


_ADMIN_IS_MEMBER_16: Final = sql.SQL(
    "pg_has_role(current_user, r.oid, 'SET') AND pg_has_role(current_user, r.oid, 'USAGE')"
)


# Whether the admin may ALTER, COMMENT ON and GRANT the role: from 16 on, a CREATEROLE
# admin needs ADMIN OPTION on it, which it holds on the roles it created.
_ADMIN_MAY_ALTER_16: Final = sql.SQL("pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION')")


# The admin's exposed settings already warned of (watch mode warns once, not per pass).
_WARNED: Final[set[tuple[str, ...]]] = set()


# Predefined roles that are as good as a superuser, or read or write every tenant's data
# (PostgreSQL's documentation of predefined roles calls the server-files ones
# equivalent to superuser): a leftover that is a member is never set NOLOGIN.
_SUPERUSER_LIKE_ROLES: Final = (
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_read_all_data",
    "pg_write_all_data",
)


# Monitoring: what an exporter asks for (member_of = ["pg_monitor"]), reading settings
# and statistics but acting on nothing.
_MONITORING_ROLES: Final = (
    "pg_monitor",
    "pg_read_all_settings",
    "pg_read_all_stats",
    "pg_stat_scan_tables",
)
# What member_of may name only with allow_privileged: a predefined role that reaches
# beyond one database, monitoring aside (ending other tenants' sessions, locking any
# table, checkpoints, subscriptions, reserved connections, the server's files, all data).
_BEYOND_ONE_DATABASE: Final = tuple(
    role for role in PRIVILEGED_ROLES if role not in _MONITORING_ROLES
) + tuple(role for role in _SUPERUSER_LIKE_ROLES if role not in PRIVILEGED_ROLES)


def observe_cluster(session: AdminSession, services: Sequence[Service]) -> ClusterState:
    """Read everything the planner needs about these services, in a few bulk queries."""
    admin = session.state
    users = [service.user for service in services]
    names = [name for service in services for name in service.databases]
    pairs = [(name, service.user) for service in services for name in service.databases]
    # The memberships a service asks for (member_of), and those nomad-pginit granted
    # (recorded in the role's comment), are judged on their own, not as elevation.
    recorded = _recorded_member_of(session, users)
    asked = sorted(
        {(service.user, group) for service in services for group in service.member_of}
        | {(role, group) for role, groups in recorded.items() for group in groups}
    )
    asked_params = {
        "asked_roles": [role for role, _ in asked],
        "asked_groups": [group for _, group in asked],
    }
    marker = MANAGED_COMMENT
    verifier_query = (
        sql.SQL("(SELECT a.rolpassword FROM pg_authid a WHERE a.oid = r.oid)")
        if admin.can_read_verifiers
        else sql.SQL("NULL::text")
    )
    query = sql.SQL(
        """
        {elevation}
        SELECT r.rolname, r.rolcanlogin, r.rolsuper, {verifier},
               {member},
               COALESCE(owned.names, ARRAY[]::text[]),
               r.rolconnlimit,
               shobj_description(r.oid, 'pg_authid'),
               CASE WHEN r.rolvaliduntil <> 'infinity' THEN r.rolvaliduntil::text END,
               r.rolvaliduntil < now(),
               COALESCE(elevated.reasons, ARRAY[]::text[]),
               ARRAY(SELECT DISTINCT d.datname::text
                     FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
                     WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = r.oid
                           AND s.deptype = 'o'
                     ORDER BY 1),
               {may_alter}
        FROM pg_roles r
        -- Grouped once: a scan of pg_database for each role cost as much as the rest.
        LEFT JOIN (SELECT datdba, array_agg(datname::text ORDER BY datname) AS names
                   FROM pg_database GROUP BY datdba) AS owned ON owned.datdba = r.oid
        LEFT JOIN elevated ON elevated.subject = r.oid
        WHERE r.rolname = ANY(%(users)s)
        """
    ).format(
        elevation=_elevation(session.server_version, "r.rolname = ANY(%(users)s)"),
        verifier=verifier_query,
        member=_ADMIN_IS_MEMBER_16 if session.server_version >= 160000 else _ADMIN_IS_MEMBER,
        may_alter=(_ADMIN_MAY_ALTER_16 if session.server_version >= 160000 else sql.SQL("true")),
    )
    roles: dict[str, RoleState] = {}
    params = {
        "marker": marker,
        "privileged": list(PRIVILEGED_ROLES),
        "users": users,
        "unfollowed": [],
        **asked_params,
    }
    for row in session.rows(query, params):
        name, login, superuser, verifier, member, owned, limit, comment = row[:8]
        managed, record = read_managed_comment(comment)
        valid_until, expired, elevated, owns_objects_in, may_alter = row[8:]
        roles[str(name)] = RoleState(
            name=str(name),
            can_login=bool(login),
            superuser=bool(superuser),
            verifier=str(verifier) if verifier is not None else None,
            admin_is_member=bool(member),
            admin_may_alter=bool(may_alter),
            owned_databases=tuple(owned) if isinstance(owned, list) else (),
            connection_limit=int(str(limit)),
            managed=managed,
            recorded_member_of=record.get(MEMBER_OF_KEY, frozenset()),
            valid_until=str(valid_until) if valid_until is not None else None,
            expired=bool(expired),
            elevated=tuple(str(item) for item in elevated) if isinstance(elevated, list) else (),
            owns_objects_in=tuple(str(item) for item in owns_objects_in)
            if isinstance(owns_objects_in, list)
            else (),
        )
    databases: dict[str, DatabaseState] = {}
    version = session.server_version
    # The locale provider came in 15 (daticulocale), its builtin kind in 17 (datlocale).
    provider = sql.SQL(
        "CASE d.datlocprovider WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' ELSE 'libc' END"
        if version >= 150000
        else "'libc'"
    )
    provider_locale = sql.SQL(
        "d.datlocale" if version >= 170000 else "d.daticulocale" if version >= 150000 else "NULL"
    )
    for name, owner, public, comment, encoding, collate, ctype, kind, locale in session.rows(
        sql.SQL(
            """
            SELECT d.datname, pg_get_userbyid(d.datdba),
                   ARRAY(SELECT DISTINCT a.privilege_type::text
                         FROM aclexplode(COALESCE(d.datacl, acldefault('d', d.datdba))) a
                         WHERE a.grantee = 0),
                   shobj_description(d.oid, 'pg_database'),
                   pg_encoding_to_char(d.encoding)::text, d.datcollate::text,
                   d.datctype::text, {provider}, {provider_locale}::text
            FROM pg_database d
            WHERE d.datname = ANY(%s)
            """
        ).format(provider=provider, provider_locale=provider_locale),
        (names,),
    ):
        managed, record = read_managed_comment(comment)
        databases[str(name)] = DatabaseState(
            name=str(name),
            owner=str(owner),
            public_privileges=frozenset(public) if isinstance(public, list) else frozenset(),
            managed=managed,
            recorded_readers=record.get(READERS_KEY, frozenset()),
            encoding=str(encoding),
            lc_collate=str(collate),
            lc_ctype=str(ctype),
            locale_provider=str(kind),
            provider_locale=str(locale) if locale is not None else None,
        )
    privileges: dict[tuple[str, str], frozenset[str]] = {}
    for database, role, create, connect, temporary in session.rows(
        sql.SQL(
            """
            SELECT p.db, p.role,
                   has_database_privilege(p.role, p.db, 'CREATE'),
                   has_database_privilege(p.role, p.db, 'CONNECT'),
                   has_database_privilege(p.role, p.db, 'TEMPORARY')
            FROM unnest(%s::text[], %s::text[]) AS p(db, role)
            WHERE EXISTS (SELECT FROM pg_roles WHERE rolname = p.role)
              AND EXISTS (SELECT FROM pg_database WHERE datname = p.db)
            """
        ),
        ([db for db, _ in pairs], [role for _, role in pairs]),
    ):
        held = {
            privilege
            for privilege, has in (
                ("CREATE", create),
                ("CONNECT", connect),
                ("TEMPORARY", temporary),
            )
            if has
        }
        privileges[(str(database), str(role))] = frozenset(held)
    available: frozenset[str] = frozenset()
    if any(service.extensions for service in services):
        available = frozenset(
            str(row[0]) for row in session.rows(sql.SQL("SELECT name FROM pg_available_extensions"))
        )
    managed_roles: dict[str, bool] = {}
    protected: dict[str, str] = {}
    leftover_sessions: dict[str, int] = {}
    for name, login, superuser, is_admin, group, elevated, connected in session.rows(
        sql.SQL(
            """
            {elevation}
            SELECT r.rolname, r.rolcanlogin, r.rolsuper, r.rolname = current_user,
                   EXISTS (SELECT FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member
                           WHERE m.roleid = r.oid AND u.rolname <> current_user),
                   COALESCE(elevated.reasons, ARRAY[]::text[]),
                   (SELECT count(*) FROM pg_stat_activity a
                    WHERE a.usesysid = r.oid AND a.pid <> pg_backend_pid())
            FROM subjects s JOIN pg_roles r ON r.oid = s.oid
            LEFT JOIN elevated ON elevated.subject = r.oid
            """
        ).format(
            elevation=_elevation(
                session.server_version,
                "(shobj_description(r.oid, 'pg_authid') = %(marker)s "
                "OR starts_with(shobj_description(r.oid, 'pg_authid'), %(marker_prefix)s))",
            ),
        ),
        {
            "marker": marker,
            "marker_prefix": marker + "; ",
            "privileged": list(PRIVILEGED_ROLES),
            "users": users,
            "asked_roles": [],
            "asked_groups": [],
            # Setting a leftover NOLOGIN takes powers away: one that monitors (pg_monitor,
            # an exporter's member_of) may lose its login, a superuser-like one never.
            "unfollowed": [r for r in PRIVILEGED_ROLES if r not in _SUPERUSER_LIKE_ROLES],
        },
    ):
        managed_roles[str(name)] = bool(login)
        leftover_sessions[str(name)] = int(str(connected))
        # The comment alone proves nothing: anyone may have put it there.
        if superuser:
            protected[str(name)] = "it is a superuser"
        elif is_admin:
            protected[str(name)] = "it is the admin nomad-pginit logs in as"
        elif group:
            protected[str(name)] = "other roles are members of it (a group role)"
        elif isinstance(elevated, list) and elevated:
            protected[str(name)] = f"it {', '.join(str(item) for item in elevated)}"
    managed_databases = frozenset(
        str(row[0])
        for row in session.rows(
            sql.SQL("SELECT datname FROM pg_database d WHERE {}").format(
                _MANAGED.format(sql.SQL("shobj_description(d.oid, 'pg_database')"))
            ),
            {"marker": marker, "marker_prefix": marker + "; "},
        )
    )
    return ClusterState(
        **_observe_tenant_options(session, services, users, roles),
        server_version=version,
        admin=admin,
        roles=roles,
        databases=databases,
        database_privileges=privileges,
        available_extensions=available,
        managed_roles=managed_roles,
        managed_databases=managed_databases,
        protected_roles=protected,
        leftover_sessions=leftover_sessions,
    )


# A comment that marks an object as ours (state.managed_comment): the mark alone, or
# the mark and a record of what was granted.
_MANAGED: Final = sql.SQL("({0} = %(marker)s OR starts_with({0}, %(marker_prefix)s))")


def _recorded_member_of(session: AdminSession, users: list[str]) -> dict[str, frozenset[str]]:
    """The groups each of these roles was made a member of by nomad-pginit (member_of)."""
    recorded: dict[str, frozenset[str]] = {}
    for name, comment in session.rows(
        sql.SQL(
            "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
            "WHERE rolname = ANY(%s)"
        ),
        (users,),
    ):
        _, record = read_managed_comment(comment)
        if groups := record.get(MEMBER_OF_KEY):
            recorded[str(name)] = groups
    return recorded


def observe_admin(session: AdminSession) -> AdminState:
    """Who the admin is, what it may do, and which statement-logging settings it may
    switch off (warning, once per process, of those it may not)."""
    row = session.row(
        sql.SQL(
            "SELECT current_user, rolsuper, rolcreatedb, rolcreaterole, "
            "has_table_privilege('pg_authid', 'SELECT') "
            "FROM pg_roles WHERE rolname = current_user"
        )
    )
    name, superuser, createdb, createrole, read_authid = row
    # Who may set each: a superuser anything, anyone a "user" setting, others
    # what they were granted (GRANT SET ON PARAMETER, PostgreSQL 15+).
    granted = (
        sql.SQL("has_parameter_privilege(name, 'SET')")
        if session.server_version >= 150000
        else sql.SQL("false")
    )
    names = [*_STATEMENT_LOG_SETTINGS, "pg_stat_statements.track_utility"]
    settings: dict[str, str] = {}
    silenceable: set[str] = set()
    for setting, value, context, allowed in session.rows(
        sql.SQL("SELECT name, setting, context, {} FROM pg_settings WHERE name = ANY(%s)").format(
            granted
        ),
        (names,),
    ):
        settings[str(setting)] = str(value).lower()
        if setting in _STATEMENT_LOG_SETTINGS and (superuser or context == "user" or allowed):
            silenceable.add(str(setting))
    admin = AdminState(
        name=str(name),
        superuser=bool(superuser),
        createdb=bool(createdb),
        createrole=bool(createrole),
        can_read_verifiers=bool(read_authid),
        silenceable_settings=frozenset(silenceable),
    )
    exposed = [
        f"{setting} = {value}"
        for setting, value in settings.items()
        if setting in _STATEMENT_LOG_SETTINGS
        and setting not in silenceable
        and setting not in _TRANSIENT_SETTINGS
        and _would_keep_statement(setting, value, settings)
    ]
    if exposed and tuple(exposed) not in _WARNED:
        # Once per process: watch mode observes again at every pass.
        _WARNED.add(tuple(exposed))
        exposed_names = ", ".join(item.split(" = ")[0] for item in exposed)
        remedy = (
            f"GRANT SET ON PARAMETER {exposed_names} TO {name} avoids it"
            if session.server_version >= 150000
            # PostgreSQL 14 has no GRANT SET ON PARAMETER.
            else f"a superuser admin avoids it, or {exposed_names} set to keep no "
            f"statement (postgresql.conf, or ALTER ROLE {sql_name(str(name))} SET ...)"
        )
        log.warning(
            'the admin "%s" may not switch off %s: the statements that set passwords '
            "may be logged or stored with their SCRAM verifiers (never the passwords "
            "themselves); %s",
            name,
            ", ".join(exposed),
            remedy,
        )
    return admin


def _observe_tenant_options(
    session: AdminSession,
    services: Sequence[Service],
    users: list[str],
    roles: Mapping[str, RoleState],
) -> dict[str, Any]:
    """What settings, member_of and readers need, read only when a service asks for them."""
    found: dict[str, Any] = {}
    setting_names = sorted({name for service in services for name, _ in service.settings})
    if setting_names:
        found["setting_contexts"] = {
            str(name): str(context)
            for name, context in session.rows(
                sql.SQL("SELECT lower(name), context FROM pg_settings WHERE lower(name) = ANY(%s)"),
                (setting_names,),
            )
        }
    # Every setting of the services' roles in their databases: to compare and to report.
    role_settings: dict[tuple[str, str], dict[str, str]] = {}
    for database, role, config in session.rows(
        sql.SQL(
            """
            SELECT d.datname, r.rolname, s.setconfig
            FROM pg_db_role_setting s
            JOIN pg_database d ON d.oid = s.setdatabase
            JOIN pg_roles r ON r.oid = s.setrole
            WHERE r.rolname = ANY(%s)
            """
        ),
        (users,),
    ):
        entries = role_settings.setdefault((str(database), str(role)), {})
        for item in config if isinstance(config, list) else ():
            name, _, value = str(item).partition("=")
            entries[name.lower()] = value
    found["role_settings"] = role_settings
    groups = sorted({group for service in services for group in service.member_of})
    # Taken back when no longer listed: the memberships it recorded granting.
    recorded = sorted(
        {group for role in roles.values() for group in role.recorded_member_of} - set(groups)
    )
    if groups or recorded:
        found["groups"] = {
            str(name): GroupState(str(name), privileged=str(why or ""))
            for name, why in session.rows(
                sql.SQL(
                    """
                    SELECT g.rolname,
                           (WITH RECURSIVE up(roleid) AS (
                                SELECT g.oid
                                UNION
                                SELECT m.roleid FROM pg_auth_members m
                                JOIN up ON m.member = up.roleid),
                            why(roleid, reason) AS (
                                SELECT x.oid,
                                       CASE WHEN x.rolname = ANY(%(monitoring)s) THEN NULL
                                            WHEN x.rolsuper THEN 'a superuser'
                                            WHEN x.rolname = ANY(%(users)s)
                                                THEN 'another service''s role'
                                            WHEN x.rolname = ANY(%(like)s)
                                                THEN 'a predefined role that reaches beyond '
                                                     'one database'
                                            WHEN x.rolcreatedb OR x.rolcreaterole
                                                 OR x.rolreplication OR x.rolbypassrls
                                                THEN 'a role with CREATEDB, CREATEROLE, '
                                                     'REPLICATION or BYPASSRLS'
                                            WHEN {managed}
                                                THEN 'a role nomad-pginit manages for a '
                                                     'service (a removed one?)'
                                            WHEN EXISTS (SELECT FROM pg_database d
                                                         WHERE d.datdba = x.oid)
                                                THEN 'the owner of a database'
                                            WHEN EXISTS (
                                                    SELECT FROM pg_class c,
                                                         aclexplode(c.relacl) a
                                                    WHERE c.relnamespace
                                                          = 'pg_catalog'::regnamespace
                                                      AND a.grantee = x.oid)
                                                 OR EXISTS (
                                                    SELECT FROM pg_proc p,
                                                         aclexplode(p.proacl) a
                                                    WHERE p.pronamespace
                                                          = 'pg_catalog'::regnamespace
                                                      AND a.grantee = x.oid)
                                                THEN 'a holder of privileges on system '
                                                     'catalog objects'
                                            {parameters}
                                       END
                                FROM up JOIN pg_roles x ON x.oid = up.roleid)
                            SELECT CASE WHEN why.roleid = g.oid THEN 'is ' ELSE 'inherits from "'
                                        || pg_get_userbyid(why.roleid) || '", which is ' END
                                   || why.reason
                            FROM why WHERE why.reason IS NOT NULL
                            ORDER BY why.roleid <> g.oid, pg_get_userbyid(why.roleid) LIMIT 1)
                    FROM pg_roles g
                    WHERE g.rolname = ANY(%(groups)s)
                    """
                ).format(
                    managed=_MANAGED.format(sql.SQL("shobj_description(x.oid, 'pg_authid')")),
                    parameters=sql.SQL(
                        "WHEN EXISTS (SELECT FROM pg_parameter_acl p, aclexplode(p.paracl) a "
                        "WHERE a.grantee = x.oid) THEN 'a holder of privileges on parameters "
                        "(ALTER SYSTEM, SET)'"
                        if session.server_version >= 150000
                        else ""
                    ),
                ),
                {
                    "groups": groups,
                    "users": users,
                    "like": list(_BEYOND_ONE_DATABASE),
                    "marker": MANAGED_COMMENT,
                    "marker_prefix": MANAGED_COMMENT + "; ",
                    "monitoring": list(_MONITORING_ROLES),
                },
            )
        }
        found["memberships"] = frozenset(
            (str(role), str(group))
            for role, group in session.rows(
                sql.SQL(
                    """
                    SELECT pg_get_userbyid(m.member), pg_get_userbyid(m.roleid)
                    FROM pg_auth_members m
                    WHERE pg_get_userbyid(m.member) = ANY(%s)
                      AND pg_get_userbyid(m.roleid) = ANY(%s)
                    """
                ),
                (users, groups + recorded),
            )
        )
    readers = sorted({reader for service in services for reader in service.readers})
    if readers:
        found["existing_readers"] = frozenset(
            str(row[0])
            for row in session.rows(
                sql.SQL("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)"), (readers,)
            )
        )
    return found
