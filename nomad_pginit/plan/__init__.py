"""Decide what to change: pure functions from (spec, secrets, observed state) to actions.

No I/O here. ``nomad-pginit plan`` prints these actions; ``nomad-pginit run``
hands the same actions to the PostgreSQL package, so the two cannot disagree.

- ``actions``: the kinds of change, each describing itself.
- ``cluster``: a service's role, its databases, member_of and settings; leftovers.
- ``schema``: inside each database: schema public, extensions, readers.
- ``options``: what cannot be repaired (how a database was created) or is not ours
  to reset (settings the file does not list): said, never changed.
"""

from nomad_pginit.plan.actions import (
    Action,
    ChangeDatabaseOwner,
    ClearValidUntil,
    CreateDatabase,
    CreateExtension,
    CreateRole,
    DisableRole,
    EndSessions,
    GrantDatabase,
    GrantMembership,
    GrantReader,
    GrantRoleToAdmin,
    GrantSchema,
    IsolateDatabase,
    MarkDatabase,
    MarkRole,
    RecordMemberOf,
    RecordReaders,
    Refusal,
    RestoreLogin,
    RevokeCreateFromPublic,
    RevokeMembership,
    RevokeReader,
    SetConnectionLimit,
    SetPassword,
    SetRoleSetting,
    sql_name,
)
from nomad_pginit.plan.cluster import plan_cluster, plan_leftovers, setting_items
from nomad_pginit.plan.options import plan_notes
from nomad_pginit.plan.schema import plan_readers, plan_schema

__all__ = [
    "Action",
    "ChangeDatabaseOwner",
    "ClearValidUntil",
    "CreateDatabase",
    "CreateExtension",
    "CreateRole",
    "DisableRole",
    "EndSessions",
    "GrantDatabase",
    "GrantMembership",
    "GrantReader",
    "GrantRoleToAdmin",
    "GrantSchema",
    "IsolateDatabase",
    "MarkDatabase",
    "MarkRole",
    "RecordMemberOf",
    "RecordReaders",
    "Refusal",
    "RestoreLogin",
    "RevokeCreateFromPublic",
    "RevokeMembership",
    "RevokeReader",
    "SetConnectionLimit",
    "SetPassword",
    "SetRoleSetting",
    "plan_cluster",
    "plan_leftovers",
    "plan_notes",
    "plan_readers",
    "plan_schema",
    "setting_items",
    "sql_name",
]
