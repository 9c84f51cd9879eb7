"""The settings that would keep a password statement somewhere (the server log,
pg_stat_statements, pg_stat_activity), and what each is switched to while one runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# Settings that would copy a password statement (its SCRAM verifier) somewhere it
# stays: the server log (log_*, and debug_print_* which print the parse tree,
# settable by anyone) or pg_stat_statements' table. Each is switched off for the
# statement's transaction, where the admin may set it.
_STATEMENT_LOG_SETTINGS: Final = {
    "log_statement": "none",
    "log_min_duration_statement": "-1",
    "log_min_error_statement": "panic",
    "log_min_duration_sample": "-1",
    "log_transaction_sample_rate": "0",
    # DEBUG2 logs each extended-protocol Parse with its text ("parse <unnamed>: ...").
    "log_min_messages": "warning",
    "debug_print_parse": "off",
    "debug_print_rewritten": "off",
    "debug_print_plan": "off",
    "pg_stat_statements.track": "none",
    # pg_stat_activity shows a running statement's text to monitoring roles
    # (pg_read_all_stats), and a deadlock report quotes it in the server log.
    "track_activities": "off",
}


# Settings decided when a transaction starts, not per statement: switched off for
# the session before BEGIN (and left off: our sessions need no sampling).
_SESSION_LOG_SETTINGS: Final = frozenset({"log_transaction_sample_rate"})


# Switched off when the admin may, but no reason for a warning when it may not:
# the text is visible only while the statement runs, to roles that monitor the server.
_TRANSIENT_SETTINGS: Final = frozenset({"track_activities"})


# log_min_messages at these levels logs the text of every statement parsed.
_LOGS_PARSED_STATEMENTS: Final = frozenset({"debug5", "debug4", "debug3", "debug2"})


# Levels at which log_min_error_statement logs a statement that fails with ERROR.
_LOGS_FAILED_STATEMENTS: Final = frozenset(
    {"debug5", "debug4", "debug3", "debug2", "debug1", "info", "notice", "warning", "error"}
)


def _would_keep_statement(name: str, value: str, settings: Mapping[str, str]) -> bool:
    """Whether ``name`` at ``value`` logs (or stores) a password statement."""
    match name:
        case "log_statement":
            return value in ("ddl", "mod", "all")
        case "log_min_duration_statement" | "log_min_duration_sample":
            return value != "-1"
        case "log_transaction_sample_rate":
            return value not in ("0", "0.0")
        case "log_min_error_statement":
            return value in _LOGS_FAILED_STATEMENTS  # when the statement fails
        case "log_min_messages":
            return value in _LOGS_PARSED_STATEMENTS
        case "track_activities":
            return False  # visible while it runs, kept nowhere
        case "pg_stat_statements.track":
            return value != "none" and settings.get("pg_stat_statements.track_utility") == "on"
    return value == "on"  # debug_print_*
