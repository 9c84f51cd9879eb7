"""Reading the test cluster's server log: which statements nomad-pginit sent.

The session cluster runs with log_statement = 'all' and the log_line_prefix of
conftest.LOGGED_SETTINGS ("%m [%p] app=%a user=%u db=%d ").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_SERVER_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[\d+\] ", re.MULTILINE)
_STATEMENT = re.compile(r"\b(?:statement|execute [^:]*): (?P<sql>.*)", re.DOTALL)
# What changes something. Statement logging is switched off with
# set_config(..., true), the SET LOCAL of a SELECT.
_WRITES = re.compile(
    r"^\s*(CREATE|ALTER|GRANT|REVOKE|COMMENT|DROP|SET\s+LOCAL|SELECT\s+set_config)\b",
    re.IGNORECASE,
)


def tool_statements(server_log: str) -> list[str]:
    """Every SQL statement that a nomad-pginit connection sent, as the server logged it."""
    statements: list[str] = []
    starts = [match.start() for match in _SERVER_ENTRY.finditer(server_log)]
    for begin, end in zip(starts, [*starts[1:], len(server_log)], strict=True):
        entry = server_log[begin:end]
        if "app=nomad-pginit" not in entry.split("\n", 1)[0]:
            continue
        match = _STATEMENT.search(entry)
        if match:
            statements.append(match["sql"].strip())
    return statements


def writes(statements: Sequence[str]) -> list[str]:
    """The statements that change something (or switch statement logging off)."""
    return [statement for statement in statements if _WRITES.match(statement)]
