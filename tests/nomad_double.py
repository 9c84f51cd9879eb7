"""A test double of Nomad's HTTP API, for the operator commands' tests.

A Nomad agent cannot run here, so this is a ``ThreadingHTTPServer`` on
127.0.0.1 (a free port, in a thread) that serves only the endpoints that
deploy and verify call, with the request and response shapes of Nomad's API:

- ``POST /v1/jobs/parse``: the Job JSON, built from the submitted HCL with
  python-hcl2 (ID and Name from the job label); a 400 when it does not parse
- ``POST /v1/jobs``: registers; an unchanged job gets an evaluation but no
  new allocation, as in Nomad
- ``GET /v1/job/:id`` (404 ``job not found``), ``GET /v1/job/:id/allocations``
- ``GET /v1/evaluation/:id``
- ``GET /v1/client/fs/logs/:alloc?task=&type=&origin=&plain=``
- ``PUT|POST /v1/client/allocation/:id/restart``

It is not a simulator: each allocation follows a scripted timeline, one step
per listing of the job's allocations. Every request is recorded so that tests
can assert on headers and bodies.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

import hcl2
from hcl2 import SerializationOptions

INIT_TASK = "init-databases"
MAIN_TASK = "postgres"

_PLAIN = SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False, preserve_heredocs=False
)


@dataclass(frozen=True)
class TaskRun:
    """What one run of init-databases does."""

    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    # False: the allocation never gets as far as starting the task.
    starts: bool = True
    # True: after a non-zero exit Nomad restarts it (restart mode "delay"), never dead.
    restarts: bool = False
    # True: watch mode, a sidecar that keeps running after it logged its summary.
    keeps_running: bool = False

    @classmethod
    def ok(cls, summary: str = "summary: ok: 2 services in sync (0 created, 2 unchanged)") -> Self:
        return cls(
            exit_code=0,
            stdout=(
                "2026-11-21T23:24:21Z INFO nomad-pginit: 2 services in /local/pginit.toml\n"
                "2026-11-21T23:24:21Z INFO gitea: unchanged\n"
                f"2026-11-21T23:24:22Z INFO {summary}\n"
            ),
        )

    @classmethod
    def watching(cls, summary: str = "summary: ok: 2 services in sync (2 unchanged)") -> Self:
        return cls(
            stdout=(
                "2026-11-21T23:24:21Z INFO watching /local/pginit.toml and the Vault secrets "
                "every 10s\n"
                f"2026-11-21T23:24:22Z INFO {summary}\n"
            ),
            keeps_running=True,
        )

    @classmethod
    def failed(cls, *, restarts: bool = False) -> Self:
        return cls(
            exit_code=1,
            stdout=(
                "2026-11-21T23:24:21Z ERROR freshrss: failed: no secret at "
                "secret/postgres/freshrss in Vault\n"
                "2026-11-21T23:24:22Z ERROR summary: failed: 1 of 2 services failed (freshrss); "
                "others: 1 unchanged\n"
            ),
            stderr="",
            restarts=restarts,
        )


@dataclass(frozen=True)
class Recorded:
    """One request as the double received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Frame:
    client_status: str
    init: dict[str, Any] | None  # the init task's TaskState, None before it exists
    runs_logged: int  # how many runs' output the logs show


@dataclass
class _Alloc:
    id: str
    eval_id: str
    job_id: str
    job_version: int
    create_index: int
    modify_index: int
    desired_status: str = "run"
    runs: list[TaskRun] = field(default_factory=list)
    frames: list[_Frame] = field(default_factory=list)
    position: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def frame(self) -> _Frame:
        return self.frames[min(self.position, len(self.frames) - 1)]

    def stub(self) -> dict[str, Any]:
        frame = self.frame
        states: dict[str, Any] = {
            MAIN_TASK: {
                "State": "running" if frame.client_status == "running" else "pending",
                "Failed": False,
                "Restarts": 0,
                "Events": [],
            }
        }
        if frame.init is not None:
            states[INIT_TASK] = frame.init
        return {
            "ID": self.id,
            "EvalID": self.eval_id,
            "Name": f"{self.job_id}.postgresql[0]",
            "JobID": self.job_id,
            "JobVersion": self.job_version,
            "TaskGroup": "postgresql",
            "DesiredStatus": self.desired_status,
            "ClientStatus": frame.client_status,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
            "CreateTime": self.create_index * 1_000_000_000,
            "ModifyTime": self.modify_index * 1_000_000_000,
            "TaskStates": states,
        }

    def log(self, stream: str) -> str:
        runs = self.runs[: self.frame.runs_logged]
        return "".join(run.stdout if stream == "stdout" else run.stderr for run in runs)


@dataclass
class _Job:
    body: dict[str, Any]
    version: int
    job_modify_index: int
    create_index: int


@dataclass
class _Eval:
    id: str
    job_id: str
    polls_left: int  # "pending" until it has been read this many times
    failed_groups: dict[str, Any] | None = None
    blocked_eval: str = ""


class NomadDouble:
    """A test double of the Nomad HTTP API; see the module docstring."""

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        # What the next new allocation (or restart with AllTasks) runs.
        self.next_run = TaskRun.ok()
        # False: the scheduler cannot place the next allocation (no capacity).
        self.can_place = True
        self.requests: list[Recorded] = []
        self._jobs: dict[str, _Job] = {}
        self._allocs: dict[str, _Alloc] = {}
        self._evals: dict[str, _Eval] = {}
        self._index = 10
        self._clock = 1_700_000_000_000_000_000
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- lifecycle ------------------------------------------------------------------

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- what tests arrange and inspect -----------------------------------------------

    def seed(self, hcl: str, run: TaskRun | None = None) -> str:
        """A registered job, parsed from ``hcl``, whose allocation already ran ``run``.

        Returns the allocation ID. Registering the same HCL again changes nothing.
        """
        with self._lock:
            body = parse_job(hcl)
            job_id = body["ID"]
            index = self._next_index()
            self._jobs[job_id] = _Job(body, version=0, job_modify_index=index, create_index=index)
            alloc = self._new_alloc(job_id, f"seed-{uuid.uuid4()}", run or TaskRun.ok())
            alloc.position = len(alloc.frames) - 1  # finished long ago
            return alloc.id

    def seed_job_without_allocations(self, job_id: str) -> None:
        with self._lock:
            index = self._next_index()
            body = {"ID": job_id, "Name": job_id, "Type": "service", "TaskGroups": []}
            self._jobs[job_id] = _Job(body, version=0, job_modify_index=index, create_index=index)

    def allocation_ids(self, job_id: str) -> list[str]:
        with self._lock:
            return [alloc.id for alloc in self._allocs.values() if alloc.job_id == job_id]

    def job_version(self, job_id: str) -> int:
        with self._lock:
            return self._jobs[job_id].version

    def requests_at(self, method: str, path: str) -> list[Recorded]:
        """The requests to exactly this path."""
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def requests_to(self, method: str, path_prefix: str) -> list[Recorded]:
        """The requests to every path under this prefix."""
        with self._lock:
            return [
                request
                for request in self.requests
                if request.method == method and request.path.startswith(path_prefix)
            ]

    # --- the API -----------------------------------------------------------------------

    def handle(self, request: Recorded) -> tuple[int, Any]:
        """(status, body): str and bytes bodies are sent as text, anything else as JSON."""
        with self._lock:
            self.requests.append(request)
            if self.token is not None and request.headers.get("x-nomad-token") != self.token:
                return 403, "Permission denied"
            parts = [unquote(part) for part in request.path.strip("/").split("/")]
            match (request.method, parts):
                case ("POST" | "PUT", ["v1", "jobs", "parse"]):
                    return self._parse(request)
                case ("POST" | "PUT", ["v1", "jobs"]):
                    return self._register(request)
                case ("GET", ["v1", "job", job_id]):
                    return self._job(job_id)
                case ("GET", ["v1", "job", job_id, "allocations"]):
                    return self._allocations(job_id)
                case ("GET", ["v1", "evaluation", eval_id]):
                    return self._evaluation(eval_id)
                case ("GET", ["v1", "client", "fs", "logs", alloc_id]):
                    return self._logs(alloc_id, request.query)
                case ("POST" | "PUT", ["v1", "client", "allocation", alloc_id, "restart"]):
                    return self._restart(alloc_id, request)
            return 404, "Invalid URL"

    def _parse(self, request: Recorded) -> tuple[int, Any]:
        try:
            hcl = request.json()["JobHCL"]
        except (ValueError, KeyError, TypeError):
            return 400, "Unable to decode request body: JobHCL is required"
        try:
            return 200, parse_job(hcl)
        except Exception as err:  # any parse failure is a 400, as in Nomad
            return 400, f"error parsing: {err}"

    def _register(self, request: Recorded) -> tuple[int, Any]:
        try:
            body = request.json()["Job"]
            job_id = body["ID"]
        except (ValueError, KeyError, TypeError):
            return 400, "Job must be specified"
        index = self._next_index()
        eval_id = str(uuid.uuid4())
        existing = self._jobs.get(job_id)
        changed = existing is None or existing.body != body
        if existing is None:
            self._jobs[job_id] = _Job(body, version=0, job_modify_index=index, create_index=index)
        elif changed:
            existing.body = body
            existing.version += 1
            existing.job_modify_index = index
        evaluation = _Eval(eval_id, job_id, polls_left=1)
        self._evals[eval_id] = evaluation
        if changed:
            if self.can_place:
                for alloc in self._allocs.values():
                    if alloc.job_id == job_id and alloc.desired_status == "run":
                        alloc.desired_status = "stop"
                        alloc.frames.append(_Frame("complete", alloc.frame.init, len(alloc.runs)))
                        alloc.position = len(alloc.frames) - 1
                self._new_alloc(job_id, eval_id, self.next_run)
            else:
                evaluation.failed_groups = {
                    "postgresql": {
                        "NodesEvaluated": 1,
                        "NodesAvailable": {"dc1": 1},
                        "DimensionExhausted": {"memory": 1},
                        "CoalescedFailures": 0,
                    }
                }
                evaluation.blocked_eval = str(uuid.uuid4())
        return 200, {
            "EvalID": eval_id,
            "EvalCreateIndex": index,
            "JobModifyIndex": index,  # the raft index of this write, as Nomad answers
            "Warnings": "",
            "Index": index,
            "LastContact": 0,
            "KnownLeader": False,
        }

    def _job(self, job_id: str) -> tuple[int, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            return 404, "job not found"
        return 200, {
            **job.body,
            "Version": job.version,
            "JobModifyIndex": job.job_modify_index,
            "CreateIndex": job.create_index,
            "ModifyIndex": self._index,
            "Status": "running",
            "Stop": False,
        }

    def _allocations(self, job_id: str) -> tuple[int, Any]:
        stubs = []
        for alloc in self._allocs.values():
            if alloc.job_id != job_id:
                continue
            stubs.append(alloc.stub())
            alloc.position = min(alloc.position + 1, len(alloc.frames) - 1)
        return 200, stubs  # Nomad lists nothing, rather than a 404, for an unknown job

    def _evaluation(self, eval_id: str) -> tuple[int, Any]:
        evaluation = self._evals.get(eval_id)
        if evaluation is None:
            return 404, "eval not found"
        status = "pending" if evaluation.polls_left > 0 else "complete"
        evaluation.polls_left -= 1
        return 200, {
            "ID": evaluation.id,
            "JobID": evaluation.job_id,
            "Namespace": "default",
            "Type": "service",
            "TriggeredBy": "job-register",
            "Status": status,
            "StatusDescription": "",
            "FailedTGAllocs": evaluation.failed_groups if status == "complete" else None,
            "BlockedEval": evaluation.blocked_eval if status == "complete" else "",
        }

    def _logs(self, alloc_id: str, query: dict[str, str]) -> tuple[int, Any]:
        task, stream = query.get("task"), query.get("type")
        if not task:
            return 400, "must provide task name"
        if stream not in ("stdout", "stderr"):
            return 400, "must provide log type (stdout/stderr)"
        alloc = self._allocs.get(alloc_id)
        if alloc is None:
            return 404, "Unknown allocation"
        text = alloc.log(stream) if task == INIT_TASK else ""
        if query.get("plain", "").lower() == "true":
            return 200, text.encode("utf-8")  # sent without a charset, as raw bytes
        frame = {"File": f"alloc/logs/{task}.{stream}.0", "Offset": len(text.encode())}
        frame["Data"] = base64.b64encode(text.encode()).decode()
        return 200, frame

    def _restart(self, alloc_id: str, request: Recorded) -> tuple[int, Any]:
        alloc = self._allocs.get(alloc_id)
        if alloc is None:
            return 404, "Unknown allocation"
        try:
            body = request.json() if request.body else {}
        except ValueError:
            return 400, "Unable to decode request body"
        if body.get("AllTasks") and body.get("TaskName"):
            return 400, "task name and all tasks options are mutually exclusive"
        if body.get("AllTasks"):
            # Only -all-tasks re-runs a dead poststart task; other restarts leave it dead.
            alloc.position = len(alloc.frames) - 1
            self._add_run(alloc, self.next_run)
        return 200, {}

    # --- timelines ------------------------------------------------------------------------

    @property
    def index(self) -> int:
        return self._index

    def _next_index(self) -> int:
        self._index += 1
        return self._index

    def _tick(self) -> int:
        self._clock += 1_000_000_000
        return self._clock

    def _new_alloc(self, job_id: str, eval_id: str, run: TaskRun) -> _Alloc:
        index = self._next_index()
        alloc = _Alloc(
            id=str(uuid.uuid4()),
            eval_id=eval_id,
            job_id=job_id,
            job_version=self._jobs[job_id].version,
            create_index=index,
            modify_index=index,
        )
        alloc.frames.append(_Frame("pending", None, 0))
        self._allocs[alloc.id] = alloc
        self._add_run(alloc, run)
        return alloc

    def _add_run(self, alloc: _Alloc, run: TaskRun) -> None:
        """Append the frames of one run of the init task to the allocation's timeline."""
        if not run.starts:
            alloc.frames.append(_Frame("pending", None, len(alloc.runs)))
            return
        previous = alloc.frame.init
        restarts = previous["Restarts"] if previous else 0
        if previous is not None:
            alloc.events.append(self._event("Restart Signaled", "User requested restart"))
            if previous["State"] == "running":
                # A running sidecar is killed first; its exit code is the signal's.
                alloc.events.append(
                    {**self._event("Terminated", "Exit Code: 143"), "ExitCode": 143}
                )
                alloc.events.append(self._event("Restarting", "Task restarting in 0s"))
            alloc.frames.append(
                _Frame("running", self._state("pending", alloc, restarts), len(alloc.runs))
            )
        alloc.runs.append(run)
        started = self._tick()
        alloc.events.append(self._event("Started", "Task started by client", started))
        alloc.frames.append(
            _Frame("running", self._state("running", alloc, restarts), len(alloc.runs))
        )
        if run.keeps_running:
            return
        finished = self._tick()
        alloc.events.append(
            {
                **self._event("Terminated", f"Exit Code: {run.exit_code}", finished),
                "ExitCode": run.exit_code,
            }
        )
        if run.restarts and run.exit_code != 0:
            alloc.events.append(self._event("Restarting", "Task restarting in 30s"))
            state = self._state("pending", alloc, restarts + 1)
        else:
            state = self._state("dead", alloc, restarts, finished=finished)
            state["Failed"] = run.exit_code != 0
        alloc.frames.append(_Frame("running", state, len(alloc.runs)))

    def _event(self, kind: str, message: str, when: int | None = None) -> dict[str, Any]:
        return {
            "Type": kind,
            "Time": when if when is not None else self._tick(),
            "DisplayMessage": message,
            "Details": {},
        }

    def _state(
        self, state: str, alloc: _Alloc, restarts: int, *, finished: int | None = None
    ) -> dict[str, Any]:
        return {
            "State": state,
            "Failed": False,
            "Restarts": restarts,
            "StartedAt": _rfc3339(alloc.events[-1]["Time"]),
            "FinishedAt": _rfc3339(finished) if finished else None,
            "Events": [dict(event) for event in alloc.events[-10:]],
        }


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_job(hcl: str) -> dict[str, Any]:
    """A Job JSON in Nomad's shape, from a jobspec: enough for deploy, not Nomad's evaluation."""
    document = hcl2.loads(hcl, serialization_options=_PLAIN)
    jobs = document.get("job") or []
    if len(jobs) != 1:
        raise ValueError("exactly one job block is required")
    ((name, body),) = jobs[0].items()
    groups = []
    for group_block in body.get("group", []):
        ((group_name, group),) = group_block.items()
        tasks = []
        for task_block in group.get("task", []):
            ((task_name, task),) = task_block.items()
            tasks.append(
                {
                    "Name": task_name,
                    "Driver": task.get("driver"),
                    "Config": (task.get("config") or [{}])[0],
                    "Env": (task.get("env") or [{}])[0],
                    "Templates": [
                        {"DestPath": item.get("destination"), "EmbeddedTmpl": item.get("data")}
                        for item in task.get("template", [])
                    ],
                    "Lifecycle": _lifecycle(task),
                }
            )
        groups.append({"Name": group_name, "Count": group.get("count", 1), "Tasks": tasks})
    return {
        "ID": name,
        "Name": name,
        "Type": body.get("type", "service"),
        "Datacenters": body.get("datacenters"),
        "TaskGroups": groups,
    }


def _lifecycle(task: dict[str, Any]) -> dict[str, Any] | None:
    blocks = task.get("lifecycle") or []
    if not blocks:
        return None
    block = blocks[0]
    sidecar = block.get("sidecar", False)
    return {"Hook": block.get("hook"), "Sidecar": sidecar in (True, "true")}


def _handler(double: NomadDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Recorded(
                method=self.command,
                path=url.path,
                query={key: values[-1] for key, values in parse_qs(url.query).items()},
                headers={key.lower(): value for key, value in self.headers.items()},
                body=self.rfile.read(length) if length else b"",
            )
            status, body = double.handle(request)
            if isinstance(body, bytes):
                payload, kind = body, "text/plain"
            elif isinstance(body, str):
                payload, kind = body.encode("utf-8"), "text/plain; charset=utf-8"
            else:
                payload, kind = json.dumps(body).encode("utf-8"), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Nomad-Index", str(double.index))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest's output clean

    return Handler
