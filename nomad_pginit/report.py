"""How the tool speaks: log lines (plain or JSON) and the one summary line.

Everything goes to stdout, so that ``nomad alloc logs <alloc> init-databases``
shows the whole story in order without ``-stderr``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final, TextIO

from nomad_pginit.errors import PginitError
from nomad_pginit.outcome import Outcome, ServiceOutcome, Status
from nomad_pginit.plan import DisableRole, EndSessions

LOG_FORMATS: Final = ("plain", "json")
# The marker an operator (or `nomad-pginit verify`) greps for in the task's log.
SUMMARY_PREFIX: Final = "summary:"
# Watch mode starts each pass with "applying (<reason>)": deploy and verify find
# the passes in the sidecar's log by these words.
APPLYING: Final = "applying"
REASON_START: Final = "start"
REASON_RELOAD: Final = "SIGHUP: services file read again"
REASON_CHANGED: Final = "services file changed"
# The passes that read the services file anew: deploy waits for one after it publishes.
READING_REASONS: Final = (REASON_START, REASON_RELOAD, REASON_CHANGED)
# Logged when a new services file is refused and the last good one kept.
INVALID_NEW_FILE: Final = "is invalid; keeping the last good configuration"

# Fields that callers attach with `extra=` and that JSON lines carry as keys.
_EXTRA_FIELDS: Final = (
    "event",
    "service",
    "action",
    "result",
    "status",
    "counts",
    "failed",
    "not_finished",
    "fingerprint",
)


class PlainFormatter(logging.Formatter):
    """``2026-11-21T22:50:01Z INFO gitea: role "gitea" created``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        self.converter = time.gmtime


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for key in _EXTRA_FIELDS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(log_format: str, stream: TextIO | None = None) -> None:
    """Set up logging once, at the entry point."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # hvac and urllib3 are chatty at INFO and may print URLs with query strings.
    for noisy in ("urllib3", "hvac", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # psycopg says at WARNING what it ignored while ending a pipeline on a broken
    # connection ("error ignored terminating <psycopg.Pipeline [BAD] ...>"): its
    # internals, while the error itself reaches us and is said in our words.
    logging.getLogger("psycopg").setLevel(logging.ERROR)


def _names(outcomes: list[ServiceOutcome]) -> str:
    # Every one of them: the line is what an operator (or verify) reads to know.
    return ", ".join(item.service.name for item in outcomes)


def summary_line(outcome: Outcome) -> str:
    """The line that says, in one grep, whether every service is in sync."""
    total = len(outcome.services)
    counts = ", ".join(
        f"{outcome.count(status)} {status.value}"
        for status in (Status.CREATED, Status.UPDATED, Status.PENDING, Status.UNCHANGED)
        if outcome.count(status) or status is Status.UNCHANGED
    )
    failed, unfinished = outcome.failed, outcome.unfinished
    left = _leftovers_left(outcome)
    if failed or outcome.leftover_failures or (unfinished and not outcome.stopped):
        parts = []
        if failed:
            parts.append(f"{len(failed)} of {total} services failed ({_names(failed)})")
        if outcome.leftover_failures:
            parts.append(f"{_leftover_count(len(outcome.leftover_failures))} could not be disabled")
        if unfinished:
            parts.append(f"{len(unfinished)} not finished ({_names(unfinished)})")
        if left:
            parts.append(left)
        return f"{SUMMARY_PREFIX} failed: {'; '.join(parts)}; others: {counts}"
    if unfinished or left:
        parts = []
        if unfinished:
            parts.append(
                f"{len(unfinished)} of {total} services not finished ({_names(unfinished)})"
            )
        if left:
            parts.append(left)
        return (
            f"{SUMMARY_PREFIX} stopped: {'; '.join(parts)}, left for the next run; others: {counts}"
        )
    pending_leftovers = "" if outcome.applied else _pending_leftovers(outcome)
    if not outcome.applied and (outcome.count(Status.PENDING) or pending_leftovers):
        pending = outcome.count(Status.PENDING)
        return (
            f"{SUMMARY_PREFIX} changes pending for {pending} of {total} services ({counts})"
            f"{pending_leftovers}"
        )
    noun = "service" if total == 1 else "services"
    return f"{SUMMARY_PREFIX} ok: {total} {noun} in sync ({counts})"


def _leftover_count(number: int) -> str:
    return "1 leftover role" if number == 1 else f"{number} leftover roles"


def _leftovers_left(outcome: Outcome) -> str:
    """What a stop left undone of --disable-removed, or ""."""
    undone = outcome.leftovers_unfinished
    if not undone:
        return ""
    roles = ", ".join(str(getattr(action, "role", "")) for action in undone)
    return f"{_leftover_count(len(undone))} not disabled ({roles})"


def _pending_leftovers(outcome: Outcome) -> str:
    """A plan's leftover roles to disable (and, already NOLOGIN, whose open sessions to
    end), as the end of the pending summary, or ""."""
    parts = []
    disable = [a for a in outcome.leftover_actions if isinstance(a, DisableRole)]
    end = [a for a in outcome.leftover_actions if isinstance(a, EndSessions)]
    for actions, what in ((disable, "to disable"), (end, "whose open sessions to end")):
        if actions:
            roles = ", ".join(action.role for action in actions)
            parts.append(f"; {_leftover_count(len(actions))} {what} ({roles})")
    return "".join(parts)


def summary_status(outcome: Outcome) -> str:
    """ok, failed, stopped or pending: the summary's word, for JSON logs."""
    if outcome.failed or outcome.leftover_failures or (outcome.unfinished and not outcome.stopped):
        return "failed"
    if outcome.unfinished or outcome.leftovers_unfinished:
        return "stopped"
    if outcome.pending:
        return "pending"
    return "ok"


def log_end(outcome: Outcome, logger: logging.Logger) -> None:
    """How every run, plan and watch pass ends: the error that ended it, if one did,
    then the summary line."""
    if outcome.fatal is not None:
        logger.error("%s", outcome.fatal)
    log_summary(outcome, logger)


def log_summary(outcome: Outcome, logger: logging.Logger) -> None:
    """Log the summary line, with its counts as fields for JSON logs."""
    status = summary_status(outcome)
    extra = {
        "event": "summary",
        "status": status,
        "counts": {s.value: outcome.count(s) for s in Status},
        "failed": [item.service.name for item in outcome.failed],
        "not_finished": [item.service.name for item in outcome.unfinished],
    }
    level = logging.INFO if status in ("ok", "pending") else logging.ERROR
    logger.log(level, "%s", summary_line(outcome), extra=extra)


def log_error_summary(err: PginitError, logger: logging.Logger) -> None:
    """The summary line of a run that an error stopped before any service."""
    extra = {"event": "summary", "status": "failed", "counts": {}, "failed": []}
    logger.error("%s failed: %s", SUMMARY_PREFIX, err.summary, extra=extra)


def log_abandoned(fatal: PginitError | None, logger: logging.Logger) -> None:
    """The summary of a run whose work did not end after a stop or a failure (a thread
    stuck where nothing reaches it): said by the stop's last resort."""
    what = f"{fatal}" if fatal is not None else "asked to stop, and PostgreSQL did not answer"
    extra = {"event": "summary", "status": "failed" if fatal else "stopped"}
    logger.error(
        "%s %s: %s; what was under way could not finish and is left for the next run",
        SUMMARY_PREFIX,
        "failed" if fatal else "stopped",
        what,
        extra=extra,
    )
