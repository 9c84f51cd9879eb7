"""Planning inside one of a service's databases: schema public, extensions, readers."""

from __future__ import annotations

from nomad_pginit.plan.actions import (
    Action,
    CreateExtension,
    GrantReader,
    GrantSchema,
    RecordReaders,
    Refusal,
    RevokeCreateFromPublic,
    RevokeReader,
    sql_name,
)
from nomad_pginit.spec import Service
from nomad_pginit.state import SCHEMA_PRIVILEGES, SchemaState


def plan_schema(service: Service, schema: SchemaState, *, owner_changes: bool) -> list[Action]:
    """The actions needed inside one of the service's databases (``schema.database``):
    schema public and the extensions, then the readers."""
    return _plan_public(service, schema, owner_changes=owner_changes) + plan_readers(
        service, schema
    )


def plan_readers(service: Service, schema: SchemaState) -> list[Action]:
    """Each listed reader that lacks part of its read-only access gets all of it; a
    reader the owner's default privileges still serve, and no longer listed, loses it."""
    actions: list[Action] = []
    if service.readers and schema.public_may_create:
        if not schema.admin_may_grant:
            raise Refusal(
                f'every role may create in schema public of database "{schema.database}" '
                "(PostgreSQL 14's default), so its readers could write, and only the schema's "
                "owner may revoke that: as a superuser, in that database, GRANT ALL ON SCHEMA "
                f"public TO {sql_name(service.user)}; REVOKE CREATE ON SCHEMA public FROM "
                "PUBLIC (or provision with a superuser admin)"
            )
        actions.append(RevokeCreateFromPublic(service.name, schema.database))
    for reader in service.readers:
        held = schema.readers.get(reader)
        if held is None:  # a role this run creates: nothing held yet, everything to grant
            tables, sequences, usage = schema.owned_tables, schema.owned_sequences, True
        elif not held.complete or reader not in schema.recorded_readers:
            tables, sequences = held.unreadable_tables, held.unreadable_sequences
            usage = not held.usage or schema.admin_may_grant
        else:
            continue
        actions.append(
            GrantReader(
                service.name, schema.database, service.user, reader, tables, sequences, usage
            )
        )
    # Only the readers it recorded giving access (a grant the tenant made is its own),
    # never the service's own role, and none that is gone (the record is rewritten).
    formers = schema.recorded_readers - set(service.readers) - {service.user}
    for former in sorted(name for name in formers if name in schema.readers):
        actions.append(
            RevokeReader(
                service.name,
                schema.database,
                service.user,
                former,
                schema.owned_tables,
                schema.owned_sequences,
                schema.admin_may_grant,
            )
        )
    if set(service.readers) != schema.recorded_readers:
        actions.append(RecordReaders(service.name, schema.database, tuple(sorted(service.readers))))
    return actions


def _plan_public(service: Service, schema: SchemaState, *, owner_changes: bool) -> list[Action]:
    """The actions needed inside the service's own database.

    ``owner_changes`` says that the cluster-level plan hands the database to the
    service's role, which then holds public through pg_database_owner: a dry run
    must predict that, as ``run`` observes it after the change.
    """
    if not schema.exists:
        raise Refusal(
            f'database "{schema.database}" has no schema public: create it there '
            f"(CREATE SCHEMA public AUTHORIZATION pg_database_owner), then run again"
        )
    actions: list[Action] = [
        CreateExtension(service.name, schema.database, name)
        for name in service.extensions
        if name not in schema.extensions
    ]
    held = schema.privileges >= SCHEMA_PRIVILEGES
    if held or (owner_changes and schema.owned_by_database_owner):
        return actions
    if schema.admin_may_grant:
        actions.append(GrantSchema(service.name, schema.database, service.user))
    elif schema.privileges_with_public < SCHEMA_PRIVILEGES:
        raise Refusal(
            f'the admin may not grant on schema public in database "{schema.database}" '
            f'(only its owner, or a superuser), and "{service.user}" may not use it: '
            f"GRANT ALL ON SCHEMA public TO {sql_name(service.user)} there as its owner, or "
            "provision with a superuser admin"
        )
    # Else PostgreSQL 14's default, public the bootstrap superuser's with CREATE for
    # PUBLIC, and an admin that is no superuser: the service works through PUBLIC,
    # which only the owner can change. Granting would do nothing (a warning).
    return actions
