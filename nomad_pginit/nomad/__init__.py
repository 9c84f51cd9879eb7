"""Nomad's HTTP API, the only package that imports python-nomad (checked by
``lint-imports``): ``types`` (what the API returns, typed), ``decoding`` (its JSON
read into them), ``client`` (the calls, with deadlines, and errors translated)."""

from nomad_pginit.nomad.client import RESTART_MARGIN_SECONDS, TIMEOUT_SECONDS, Nomad
from nomad_pginit.nomad.decoding import _task_state
from nomad_pginit.nomad.types import (
    ALLOC_DONE,
    DEFAULT_KILL_TIMEOUT_SECONDS,
    EVAL_DONE,
    INIT_TASK,
    REQUESTED_KILLS,
    Allocation,
    Evaluation,
    Job,
    LogStream,
    ParsedJob,
    Registration,
    Submission,
    TaskEvent,
    TaskState,
    Variable,
    init_is_sidecar,
    job_label,
    newest,
    services_variable,
)

__all__ = [
    "ALLOC_DONE",
    "DEFAULT_KILL_TIMEOUT_SECONDS",
    "EVAL_DONE",
    "INIT_TASK",
    "REQUESTED_KILLS",
    "RESTART_MARGIN_SECONDS",
    "TIMEOUT_SECONDS",
    "Allocation",
    "Evaluation",
    "Job",
    "LogStream",
    "Nomad",
    "ParsedJob",
    "Registration",
    "Submission",
    "TaskEvent",
    "TaskState",
    "Variable",
    "_task_state",
    "init_is_sidecar",
    "job_label",
    "newest",
    "services_variable",
]
