"""Reading the init task's log, as Nomad hands it back: lines, passes, the summary.

`nomad-pginit run` writes one record per line (plain or JSON, report.py); an
error's detail lines follow it indented. Watch mode starts each pass with
``applying (<reason>): N services, fingerprint <digest>`` and ends it with the
summary line. deploy and verify read those records here, and only at the start
of a record: text that a tenant controls (an application_name quoted in an
error) can never pass for one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Final

from nomad_pginit.report import APPLYING, INVALID_NEW_FILE, SUMMARY_PREFIX

_PLAIN_RECORD: Final = re.compile(r"^\S+ (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<message>.*)$")
_SUMMARY: Final = re.compile(
    rf"^{re.escape(SUMMARY_PREFIX)} (?:ok|failed|stopped|changes pending)\b.*$"
)
# An older sidecar logs the reason alone; this one adds what it applies.
_PASS: Final = re.compile(
    rf"^{re.escape(APPLYING)} \((?P<reason>.*)\)"
    r"(?:: \d+ services?, fingerprint (?P<fingerprint>[0-9a-f]+))?$"
)


@dataclass(frozen=True)
class Record:
    """One log record: where it starts and ends in the text, and what it says."""

    start: int
    end: int
    message: str
    # JSON records say what they are; plain ones are recognised by their words.
    event: str | None = None

    @property
    def summary(self) -> str | None:
        if self.event is not None:
            return self.message if self.event == "summary" else None
        return self.message if _SUMMARY.match(self.message) else None

    @property
    def pass_start(self) -> re.Match[str] | None:
        first = self.message.split("\n", 1)[0]
        return _PASS.match(first)

    @property
    def refusal(self) -> bool:
        """Watch mode refused a new services file and kept the last good one."""
        return INVALID_NEW_FILE in self.message.split("\n", 1)[0]


def records(text: str) -> list[Record]:
    """The log's records, plain or JSON; indented lines belong to the record above."""
    found: list[Record] = []
    offset = 0
    for raw in text.splitlines(keepends=True):
        start, offset = offset, offset + len(raw)
        line = raw.rstrip("\r\n")
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and isinstance(entry.get("message"), str):
                event = entry.get("event")
                found.append(Record(start, offset, entry["message"], str(event) if event else ""))
                continue
        plain = _PLAIN_RECORD.match(line)
        if plain is not None:
            found.append(Record(start, offset, plain.group("message")))
        elif found and line[:1].isspace():
            # An error's detail lines ("  - [[service]] #3 ...").
            last = found[-1]
            found[-1] = Record(last.start, offset, f"{last.message}\n{line}", last.event)
        else:
            found.append(Record(start, offset, line, ""))  # not ours: never a summary
    return found


def summary_line(text: str) -> str | None:
    """The last summary line of a `nomad-pginit run` log, plain or JSON."""
    summaries = [record.summary for record in records(text) if record.summary is not None]
    return summaries[-1] if summaries else None


@dataclass(frozen=True)
class Pass:
    """One pass of watch mode: from its "applying" record to the next one."""

    start: int
    end: int
    reason: str
    fingerprint: str | None
    summary: str | None
    # The records in which a new services file was refused, during or after it.
    refusals: tuple[str, ...] = ()


def passes(text: str) -> list[Pass]:
    """Every pass that starts in ``text``, in order."""
    found: list[Pass] = []
    for record in records(text):
        started = record.pass_start
        if started is not None:
            found.append(
                Pass(
                    start=record.start,
                    end=len(text),
                    reason=started.group("reason"),
                    fingerprint=started.group("fingerprint"),
                    summary=None,
                )
            )
            if len(found) > 1:
                found[-2] = replace(found[-2], end=record.start)
        elif found:
            current = found[-1]
            if record.summary is not None and current.summary is None:
                found[-1] = replace(current, summary=record.summary)
            elif record.refusal:
                found[-1] = replace(current, refusals=(*current.refusals, record.message))
    return found


def last_finished(text: str) -> Pass | None:
    """The last pass that logged its summary (a pass under way has none yet)."""
    finished = [item for item in passes(text) if item.summary is not None]
    return finished[-1] if finished else None


def refusals(text: str) -> list[str]:
    """Every record in which watch mode refused a new services file."""
    return [record.message for record in records(text) if record.refusal]
