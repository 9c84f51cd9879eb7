"""Nomad's JSON, as python-nomad hands it back untyped, read into ``types``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nomad_pginit.nomad.types import Allocation, TaskEvent, TaskState, Variable, _mapping


def _variable(data: Mapping[str, Any], path: str) -> Variable:
    items = _mapping(data.get("Items"))
    return Variable(
        path=_str(data, "Path") or path,
        items={str(key): str(value) for key, value in items.items()},
        modify_index=_int(data, "ModifyIndex"),
    )


# --- JSON helpers -----------------------------------------------------------------------------


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    # Go's zero time means "never".
    if not isinstance(value, str) or value == "" or value.startswith("0001-01-01"):
        return None
    return value


def _task_state(data: Mapping[str, Any]) -> TaskState:
    events = []
    for raw in data.get("Events") or []:
        event = _mapping(raw)
        details = {str(key): str(value) for key, value in _mapping(event.get("Details")).items()}
        events.append(
            TaskEvent(
                type=_str(event, "Type"),
                time=_int(event, "Time"),
                exit_code=_exit_code(event, details),
                message=_str(event, "DisplayMessage") or _str(event, "Message"),
                details=details,
            )
        )
    return TaskState(
        state=_str(data, "State"),
        failed=bool(data.get("Failed")),
        restarts=_int(data, "Restarts"),
        started_at=_optional_str(data, "StartedAt"),
        finished_at=_optional_str(data, "FinishedAt"),
        events=tuple(events),
    )


def _exit_code(event: Mapping[str, Any], details: Mapping[str, str]) -> int | None:
    """Details["exit_code"]: the top-level ExitCode is deprecated (nomad/structs TaskEvent)."""
    if event.get("Type") != "Terminated":
        return None
    raw = details.get("exit_code")
    if raw is not None:
        try:
            return int(raw)
        except ValueError:
            return None
    legacy = event.get("ExitCode")
    return legacy if isinstance(legacy, int) and not isinstance(legacy, bool) else None


def _allocation(data: Mapping[str, Any]) -> Allocation:
    return Allocation(
        id=_str(data, "ID"),
        eval_id=_str(data, "EvalID"),
        name=_str(data, "Name"),
        job_version=_int(data, "JobVersion"),
        client_status=_str(data, "ClientStatus"),
        desired_status=_str(data, "DesiredStatus"),
        create_index=_int(data, "CreateIndex"),
        modify_index=_int(data, "ModifyIndex"),
        task_states={
            str(name): _task_state(_mapping(state))
            for name, state in _mapping(data.get("TaskStates")).items()
        },
    )


def _describe_placement_failure(metrics: Mapping[str, Any]) -> str:
    """What `nomad job run` says under "failed to place": nodes filtered and exhausted."""
    parts = [f"{_int(metrics, 'NodesEvaluated')} nodes evaluated"]
    for key, label in (
        ("ConstraintFiltered", "filtered by"),
        ("DimensionExhausted", "exhausted"),
        ("ClassExhausted", "class exhausted"),
    ):
        counts = _mapping(metrics.get(key))
        if counts:
            parts.append(f"{label} " + ", ".join(f"{name} ({n})" for name, n in counts.items()))
    available = _mapping(metrics.get("NodesAvailable"))  # datacenter -> ready nodes
    if "NodesAvailable" in metrics and not any(available.values()):
        parts.append("no ready node in the job's datacenters")
    return "; ".join(parts)
