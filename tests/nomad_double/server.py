"""The Nomad double's HTTP API: the endpoints deploy and verify call, as Nomad answers them.

A Nomad agent cannot run here, so this is a ``ThreadingHTTPServer`` (a free
port on 127.0.0.1, optionally TLS with a client certificate required, or a
unix socket) with the request and response shapes, status codes and texts of
Nomad 2.0 (paths in hashicorp/nomad):

- every error is text/plain with the message as the body, 500 unless the
  error carries a code; "Permission denied" is 403 (command/agent/http.go wrap);
- ACLs: a token is a set of capabilities per namespace, or management; the
  request's namespace is ``?namespace=``, else "default" (http.go
  parseNamespace). Reads check ``read-job`` there (nomad/job_endpoint.go
  GetJob, Allocations); an evaluation is found in any namespace but needs
  ``read-job`` in the request's namespace and in its own
  (nomad/eval_endpoint.go GetEval); logs need ``read-logs`` and restarts
  ``alloc-lifecycle`` in the allocation's namespace
  (client/fs_endpoint.go, client/alloc_endpoint.go);
- ``PUT|POST /v1/jobs/parse``: ``jobspec.parse_job`` (command/agent/job_endpoint.go
  jobsParseRequest), ``parse-job`` or ``submit-job``;
- ``PUT|POST /v1/jobs``: the namespace is ``?namespace=``, else the job's
  (job_endpoint.go namespaceForJob); admission errors are 500 with
  go-multierror's text (nomad/job_endpoint.go doRegister, job_endpoint_hooks.go);
  an unchanged job gets a new evaluation and no allocation, and the answer's
  JobModifyIndex is the job's ModifyIndex (nomad/job_endpoint.go, "if
  !specChanged"); a changed one a new version, and a new allocation in place
  of the old;
- ``GET /v1/job/:id`` (404 ``job not found``), ``GET /v1/job/:id/allocations``
  (``[]`` for an unknown job), ``GET /v1/evaluation/:id`` (404 ``eval not found``);
- ``GET /v1/client/fs/logs/:alloc``: 400 ``must provide task name``, 400
  ``unknown task name "<t>"``, 404 ``task "<t>" not started yet. No logs
  available`` (client/fs_endpoint.go logs), raw bytes with ``plain=true``;
- ``PUT|POST /v1/client/allocation/:id/restart``: returns once the running
  tasks have stopped (``stop_seconds``), ``{"Index": 0}``
  (command/agent/alloc_endpoint.go allocRestart, taskrunner/lifecycle.go).

Allocations move one step per listing of the job's allocations
(``allocations.Allocation``). Every request is recorded so that tests can
assert on headers and bodies.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socketserver
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qs, unquote, urlsplit

from .allocations import INIT_TASK, Allocation, Behaviour, Clock, TaskRun
from .jobspec import JobspecError, parse_job

PERMISSION_DENIED: Final = "Permission denied"
DEFAULT_NAMESPACE: Final = "default"
# Capabilities of a namespace rule's policy = "write" (acl/policy.go expandNamespacePolicy).
WRITE: Final = frozenset(
    {
        "parse-job",
        "submit-job",
        "read-job",
        "read-logs",
        "alloc-lifecycle",
        "list-jobs",
    }
)
# A variables block's capabilities (acl/policy.go VariablesPolicy): namespace
# policy "write" does not include them. The double grants them per namespace,
# not per path.
VARIABLES: Final = frozenset({"variables-read", "variables-write"})


@dataclass(frozen=True)
class Token:
    """An ACL token: capabilities per namespace, or None for a management token."""

    secret: str
    namespaces: Mapping[str, frozenset[str]] | None = None

    def allows(self, namespace: str, capability: str) -> bool:
        if self.namespaces is None:
            return True
        return capability in self.namespaces.get(namespace, frozenset())


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
class _Job:
    namespace: str
    body: dict[str, Any]
    version: int
    job_modify_index: int
    modify_index: int
    create_index: int
    submission: dict[str, Any] | None = None
    # Each version's submission (GET /v1/job/:id/submission?version=N).
    submissions: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Eval:
    id: str
    namespace: str
    job_id: str
    polls_left: int  # "pending" until it has been read this many times
    failed_groups: dict[str, Any] | None = None
    blocked_eval: str = ""


class _Failure(Exception):
    """An error answer: a status and a text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass
class _Options:
    tls: tuple[Path, Path] | None = None  # certificate, key
    client_ca: Path | None = None  # require client certificates signed by this CA
    socket_path: Path | None = None
    namespaces: set[str] = field(default_factory=lambda: {DEFAULT_NAMESPACE})


class NomadDouble:
    """A test double of the Nomad HTTP API; see the module docstring."""

    def __init__(
        self,
        *,
        token: str | None = None,
        tokens: list[Token] | None = None,
        tls: tuple[Path, Path] | None = None,
        client_ca: Path | None = None,
        socket_path: Path | None = None,
    ) -> None:
        # token: one management token. tokens: any set of tokens. Neither: ACLs off.
        self._tokens = {item.secret: item for item in tokens or []}
        if token is not None:
            self._tokens[token] = Token(token)
        self.options = _Options(tls=tls, client_ca=client_ca, socket_path=socket_path)
        self.behaviour = Behaviour(runs=[TaskRun.ok()])
        # False: the scheduler cannot place the next allocation (no capacity).
        self.can_place = True
        # False: the agents have no Vault configured ("Vault ... not enabled").
        self.vault_enabled = True
        # How long a running task takes to stop on a restart: the call waits for it.
        self.stop_seconds = 0.0
        # The cluster's own trouble at register, e.g. "No cluster leader": a 500 with
        # that text (command/agent/http.go: an uncoded error is a 500).
        self.register_trouble: str | None = None
        # Extra admission errors, as validators add them (nomad/job_endpoint_hooks.go).
        self.admission_errors: list[str] = []
        self.requests: list[Recorded] = []
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._allocs: dict[str, Allocation] = {}
        self._evals: dict[str, _Eval] = {}
        # (namespace, path) -> (CreateIndex, ModifyIndex); the items are in the behaviour.
        self._variable_meta: dict[tuple[str, str], tuple[int, int]] = {}
        # Writes another operator makes just before the next PUT to a path (a race).
        self._racing_writes: dict[tuple[str, str], dict[str, str]] = {}
        self._index = 10
        self._clock = Clock()
        self._lock = threading.RLock()
        self._server = self._make_server()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- lifecycle -----------------------------------------------------------------------

    def _make_server(self) -> socketserver.BaseServer:
        handler = _handler(self)
        path = self.options.socket_path
        if path is not None:
            return _UnixHTTPServer(str(path), handler)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if self.options.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            certificate, key = self.options.tls
            context.load_cert_chain(certificate, key)
            if self.options.client_ca is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(self.options.client_ca)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        return server

    @property
    def address(self) -> str:
        if self.options.socket_path is not None:
            return f"unix://{self.options.socket_path}"
        assert isinstance(self._server, ThreadingHTTPServer)
        host, port = self._server.server_address[:2]
        scheme = "https" if self.options.tls is not None else "http"
        return f"{scheme}://{host!s}:{port}"

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
        if self.options.socket_path is not None:
            self.options.socket_path.unlink(missing_ok=True)

    # --- what tests arrange and inspect --------------------------------------------------

    @property
    def next_run(self) -> TaskRun:
        return self.behaviour.runs[0]

    @next_run.setter
    def next_run(self, run: TaskRun) -> None:
        """What the init task's next runs do (every one of them)."""
        self.behaviour.runs = [run]

    def add_namespace(self, name: str) -> None:
        self.options.namespaces.add(name)

    def seed(
        self,
        hcl: str,
        run: TaskRun | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        variables: str = "",
    ) -> str:
        """A registered job, parsed from ``hcl``, whose allocation ran ``run`` long ago.

        Returns the allocation ID. Registering the same job again changes nothing.
        """
        with self._lock:
            body = {**parse_job(hcl, variables), "Namespace": namespace}
            index = self._next_index()
            job = _Job(namespace, body, 0, index, index, index)
            self._jobs[(namespace, body["ID"])] = job
            alloc = self._new_alloc(job, f"seed-{uuid.uuid4()}")
            alloc.own_runs = [run or TaskRun.ok()]
            alloc.settle()
            return alloc.id

    def seed_job_without_allocations(self, job_id: str, namespace: str = DEFAULT_NAMESPACE) -> None:
        with self._lock:
            index = self._next_index()
            body = {"ID": job_id, "Name": job_id, "Type": "service", "TaskGroups": []}
            self._jobs[(namespace, job_id)] = _Job(namespace, body, 0, index, index, index)

    def registered(self, job_id: str, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
        """The job as registered (the api.Job that register received)."""
        with self._lock:
            return self._jobs[(namespace, job_id)].body

    def submission(self, job_id: str, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any] | None:
        with self._lock:
            return self._jobs[(namespace, job_id)].submission

    def allocation_ids(self, job_id: str) -> list[str]:
        with self._lock:
            return [alloc.id for alloc in self._allocs.values() if alloc.job_id == job_id]

    def allocation(self, alloc_id: str) -> Allocation:
        with self._lock:
            return self._allocs[alloc_id]

    def job_version(self, job_id: str, namespace: str = DEFAULT_NAMESPACE) -> int:
        with self._lock:
            return self._jobs[(namespace, job_id)].version

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

    # --- the API -------------------------------------------------------------------------

    def handle(self, request: Recorded) -> tuple[int, Any]:
        """(status, body): str and bytes bodies are sent as text, anything else as JSON."""
        with self._lock:
            self.requests.append(request)
        try:
            return self._route(request)
        except _Failure as failure:
            return failure.status, failure.text

    def _route(self, request: Recorded) -> tuple[int, Any]:
        parts = [unquote(part) for part in request.path.strip("/").split("/")]
        writes = ("POST", "PUT")
        match (request.method, parts):
            case (method, ["v1", "jobs", "parse"]):
                if method not in writes:
                    raise _Failure(405, "Invalid method")
                return self._parse(request)
            case (method, ["v1", "jobs"]) if method in writes:
                return self._register(request)
            case ("GET", ["v1", "job", job_id]):
                return self._job(request, job_id)
            case ("GET", ["v1", "job", job_id, "allocations"]):
                return self._allocations(request, job_id)
            case ("GET", ["v1", "evaluation", eval_id]):
                return self._evaluation(request, eval_id)
            case ("GET", ["v1", "client", "fs", "logs", alloc_id]):
                return self._logs(request, alloc_id)
            case (_, ["v1", "client", "allocation", alloc_id, "restart"]):
                return self._restart(request, alloc_id)
            case (method, ["v1", "client", "allocation", alloc_id, "signal"]) if method in writes:
                return self._signal(request, alloc_id)
            case ("GET", ["v1", "job", job_id, "submission"]):
                return self._submission(request, job_id)
            case ("GET", ["v1", "vars"]):
                return self._list_variables(request)
            case ("GET", ["v1", "var", *path]) if path:
                return self._read_variable(request, "/".join(path))
            case (method, ["v1", "var", *path]) if path and method in writes:
                return self._write_variable(request, "/".join(path))
        raise _Failure(404, "Invalid URL")

    # --- ACLs ----------------------------------------------------------------------------

    def _token(self, request: Recorded) -> Token | None:
        """The request's token; None when ACLs are off. 403 for an unknown one."""
        if not self._tokens:
            return None
        secret = request.headers.get("x-nomad-token", "").strip()
        if not secret:
            return Token("", namespaces={})  # anonymous: no policy here
        token = self._tokens.get(secret)
        if token is None:
            raise _Failure(403, PERMISSION_DENIED)  # "ACL token not found" maps to 403
        return token

    def _require(self, request: Recorded, namespace: str, capability: str) -> None:
        token = self._token(request)
        if token is not None and not token.allows(namespace, capability):
            raise _Failure(403, PERMISSION_DENIED)

    @staticmethod
    def _namespace(request: Recorded) -> str:
        return request.query.get("namespace") or DEFAULT_NAMESPACE

    # --- endpoints -----------------------------------------------------------------------

    def _parse(self, request: Recorded) -> tuple[int, Any]:
        namespace = self._namespace(request)
        token = self._token(request)
        if token is not None and not (
            token.allows(namespace, "parse-job") or token.allows(namespace, "submit-job")
        ):
            raise _Failure(403, PERMISSION_DENIED)
        try:
            args = request.json()
        except ValueError as err:
            raise _Failure(400, str(err)) from err
        hcl = args.get("JobHCL") or ""
        if not hcl:
            raise _Failure(400, "Job spec is empty")
        try:
            return 200, parse_job(hcl, args.get("Variables") or "")
        except JobspecError as err:
            raise _Failure(400, f"Failed to parse job: {err}") from err

    def _register(self, request: Recorded) -> tuple[int, Any]:
        try:
            args = request.json()
        except ValueError as err:
            raise _Failure(400, str(err)) from err
        body = args.get("Job")
        if not isinstance(body, dict):
            raise _Failure(400, "Job must be specified")
        if not body.get("ID"):
            raise _Failure(400, "Job ID hasn't been provided")
        namespace = (
            request.query.get("namespace")
            or args.get("Namespace")
            or body.get("Namespace")
            or DEFAULT_NAMESPACE
        )
        body = {**body, "Namespace": namespace}
        if self.register_trouble is not None:
            raise _Failure(500, self.register_trouble)
        errors, warnings = self._admission(body, namespace)
        errors = errors + self.admission_errors
        if errors:
            # go-multierror's format (job_endpoint_hooks.go validate)
            items = "\n\t".join(f"* {error}" for error in errors)
            count = "1 error occurred" if len(errors) == 1 else f"{len(errors)} errors occurred"
            raise _Failure(500, f"{count}:\n\t{items}\n\n")
        self._require(request, namespace, "submit-job")
        with self._lock:
            return 200, self._store(body, namespace, args.get("Submission"), warnings)

    def _admission(self, job: Mapping[str, Any], namespace: str) -> tuple[list[str], list[str]]:
        """The register's admission checks that our job can meet (nomad/job_endpoint_hooks.go)."""
        errors: list[str] = []
        warnings: list[str] = []
        if namespace not in self.options.namespaces:
            # nomad/job_endpoint_validators.go
            errors.append(f'job "{job["ID"]}" is in nonexistent namespace "{namespace}"')
        for group in job.get("TaskGroups") or []:
            for task in group.get("Tasks") or []:
                if task.get("Vault") is not None and not self.vault_enabled:
                    # nomad/job_endpoint_hook_vault.go
                    errors.append('Vault "default" not enabled but used in the job')
                for identity in task.get("Identities") or []:
                    name = identity.get("Name", "")
                    if name.startswith("vault_") and task.get("Vault") is None:
                        # nomad/job_endpoint_hooks.go
                        warnings.append(
                            f"Task {task['Name']} has an identity called {name} but no vault block"
                        )
                lifecycle = task.get("Lifecycle") or {}
                if lifecycle and lifecycle.get("Hook") not in ("prestart", "poststart", "poststop"):
                    errors.append(f"invalid hook: {lifecycle.get('Hook')}")
                policy = task.get("RestartPolicy") or {}
                if policy and policy.get("Mode") not in (None, "delay", "fail"):
                    errors.append(f"Unsupported restart mode: {policy.get('Mode')!r}")
        return errors, warnings

    def _store(
        self,
        body: dict[str, Any],
        namespace: str,
        submission: dict[str, Any] | None,
        warnings: list[str],
    ) -> dict[str, Any]:
        index = self._next_index()
        eval_id = str(uuid.uuid4())
        key = (namespace, body["ID"])
        existing = self._jobs.get(key)
        changed = existing is None or existing.body != body
        reply_index = index
        if existing is None:
            job = self._jobs[key] = _Job(namespace, body, 0, index, index, index, submission)
        elif changed:
            job = existing
            job.body, job.version, job.submission = body, job.version + 1, submission
            job.job_modify_index = job.modify_index = index
        else:
            job = existing
            reply_index = existing.modify_index  # not its JobModifyIndex: nomad/job_endpoint.go
        if changed and submission is not None:
            job.submissions[job.version] = submission
        evaluation = _Eval(eval_id, namespace, body["ID"], polls_left=1)
        self._evals[eval_id] = evaluation
        if changed:
            self._place(job, evaluation)
        text = ""
        if warnings:
            head = "1 warning:" if len(warnings) == 1 else f"{len(warnings)} warnings:"
            text = head + "\n\n" + "\n".join(f"* {warning}" for warning in warnings)
        return {
            "EvalID": eval_id,
            "EvalCreateIndex": index,
            "JobModifyIndex": reply_index,
            "Warnings": text,
            "Index": index,
            "LastContact": 0,
            "KnownLeader": False,
            "NextToken": "",
        }

    def _place(self, job: _Job, evaluation: _Eval) -> None:
        if not self.can_place:
            evaluation.failed_groups = {
                "postgresql": {
                    "NodesEvaluated": 1,
                    "NodesAvailable": {"dc1": 1},
                    "DimensionExhausted": {"memory": 1},
                    "CoalescedFailures": 0,
                }
            }
            evaluation.blocked_eval = str(uuid.uuid4())
            return
        for alloc in self._allocs.values():
            if (alloc.namespace, alloc.job_id) == (job.namespace, job.body["ID"]) and (
                alloc.desired_status == "run"
            ):
                alloc.stop()
                alloc.modify_index = self._next_index()
        self._new_alloc(job, evaluation.id)

    def _job(self, request: Recorded, job_id: str) -> tuple[int, Any]:
        namespace = self._namespace(request)
        self._require(request, namespace, "read-job")
        with self._lock:
            job = self._jobs.get((namespace, job_id))
            if job is None:
                raise _Failure(404, "job not found")
            return 200, {
                **job.body,
                "Version": job.version,
                "JobModifyIndex": job.job_modify_index,
                "CreateIndex": job.create_index,
                "ModifyIndex": job.modify_index,
                "Status": "running",
                "Stop": False,
            }

    def _allocations(self, request: Recorded, job_id: str) -> tuple[int, Any]:
        namespace = self._namespace(request)
        self._require(request, namespace, "read-job")
        with self._lock:
            stubs = []
            for alloc in self._allocs.values():
                if (alloc.namespace, alloc.job_id) != (namespace, job_id):
                    continue
                stubs.append(alloc.stub())
                alloc.advance()
            return 200, stubs  # Nomad lists nothing, rather than a 404, for an unknown job

    def _evaluation(self, request: Recorded, eval_id: str) -> tuple[int, Any]:
        namespace = self._namespace(request)
        self._require(request, namespace, "read-job")
        with self._lock:
            evaluation = self._evals.get(eval_id)
            if evaluation is None:
                raise _Failure(404, "eval not found")
            self._require(request, evaluation.namespace, "read-job")
            status = "pending" if evaluation.polls_left > 0 else "complete"
            evaluation.polls_left -= 1
            answer: dict[str, Any] = {
                "ID": evaluation.id,
                "Namespace": evaluation.namespace,
                "JobID": evaluation.job_id,
                "Type": "service",
                "TriggeredBy": "job-register",
                "Status": status,
            }
            if status == "complete" and evaluation.failed_groups:
                answer["FailedTGAllocs"] = evaluation.failed_groups
                answer["BlockedEval"] = evaluation.blocked_eval
            return 200, answer

    def _alloc_for(self, request: Recorded, alloc_id: str, capability: str) -> Allocation:
        with self._lock:
            alloc = self._allocs.get(alloc_id)
        if alloc is None:
            raise _Failure(404, f'Unknown allocation "{alloc_id}"')
        self._require(request, alloc.namespace, capability)
        return alloc

    def _logs(self, request: Recorded, alloc_id: str) -> tuple[int, Any]:
        query = request.query
        task_name, stream = query.get("task"), query.get("type")
        if not task_name:
            raise _Failure(400, "must provide task name")
        if stream not in ("stdout", "stderr"):
            raise _Failure(400, "must provide log type (stdout/stderr)")
        alloc = self._alloc_for(request, alloc_id, "read-logs")
        with self._lock:
            task = alloc.tasks.get(task_name)
            if task is None:
                raise _Failure(400, f'unknown task name "{task_name}"')
            if task.started_at.startswith("0001-01-01"):
                raise _Failure(404, f'task "{task_name}" not started yet. No logs available')
            text = task.stdout if stream == "stdout" else task.stderr
        if query.get("plain", "").lower() == "true":
            return 200, text.encode("utf-8")  # raw bytes, Content-Type text/plain
        frame = {
            "File": f"alloc/logs/{task_name}.{stream}.0",
            "Offset": len(text.encode()),
            "Data": base64.b64encode(text.encode()).decode(),
        }
        return 200, frame

    def _restart(self, request: Recorded, alloc_id: str) -> tuple[int, Any]:
        alloc = self._alloc_for(request, alloc_id, "alloc-lifecycle")
        try:
            body = request.json() if request.body else {}
        except ValueError as err:
            raise _Failure(400, str(err)) from err
        if body.get("AllTasks") and body.get("TaskName"):
            raise _Failure(500, "task name cannot be set when restarting all tasks")
        if alloc.client_status in ("complete", "failed", "lost"):
            raise _Failure(500, "restart of an alloc that should not run")
        if not body.get("AllTasks"):
            raise _Failure(500, "the double plays only restarts of all tasks")
        running = any(task.state == "running" for task in alloc.tasks.values())
        if running and self.stop_seconds:
            time.sleep(self.stop_seconds)  # the call returns once the running tasks have exited
        with self._lock:
            alloc.restart_all()
            alloc.modify_index = self._next_index()
        return 200, {"Index": 0}

    # --- live mode: variables, submissions, signals ----------------------------------------

    def _variable_document(self, namespace: str, path: str) -> dict[str, Any]:
        meta = self._variable_meta[(namespace, path)]
        return {
            "Namespace": namespace,
            "Path": path,
            "CreateIndex": meta[0],
            "ModifyIndex": meta[1],
            "CreateTime": meta[0] * 1_000_000_000,
            "ModifyTime": meta[1] * 1_000_000_000,
            "Items": dict(self.behaviour.variables[(namespace, path)]),
        }

    def _read_variable(self, request: Recorded, path: str) -> tuple[int, Any]:
        """GET /v1/var/:path (command/agent/variable_endpoint.go): 404 "variable not found"."""
        namespace = self._namespace(request)
        self._require(request, namespace, "variables-read")
        with self._lock:
            if (namespace, path) not in self.behaviour.variables:
                raise _Failure(404, "variable not found")
            return 200, self._variable_document(namespace, path)

    def _list_variables(self, request: Recorded) -> tuple[int, Any]:
        """GET /v1/vars?prefix= : metadata only, never the items."""
        namespace = self._namespace(request)
        prefix = request.query.get("prefix", "")
        token = self._token(request)
        with self._lock:
            listed = []
            for ns, path in sorted(self.behaviour.variables):
                if ns != namespace or not path.startswith(prefix):
                    continue
                if token is not None and not token.allows(ns, "variables-read"):
                    continue  # filtered per item, no 403 (nomad/variables_endpoint.go List)
                document = self._variable_document(ns, path)
                del document["Items"]
                listed.append(document)
            return 200, listed

    def _write_variable(self, request: Recorded, path: str) -> tuple[int, Any]:
        """PUT /v1/var/:path[?cas=N] (nomad/state/state_store_variables.go): cas=0 creates
        only; a stale cas is 409 with the current variable as the body."""
        try:
            body = request.json()
        except ValueError as err:
            raise _Failure(400, str(err)) from err
        items = body.get("Items") or {}
        if not isinstance(items, dict) or any(not isinstance(v, str) for v in items.values()):
            # decodeBody into VariableDecrypted, whose Items are map[string]string.
            raise _Failure(
                400,
                "json: cannot unmarshal number into Go struct field VariableDecrypted.Items "
                "of type string",
            )
        if not items:
            raise _Failure(400, "variable missing required Items object")
        cas_text = request.query.get("cas")
        if cas_text is not None and not cas_text.isdigit():
            # variable_endpoint.go parseCAS.
            raise _Failure(
                400, f'can not parse cas: strconv.ParseUint: parsing "{cas_text}": invalid syntax'
            )
        problem = _variable_path_problem(path)
        if problem is not None:
            # nomad/variables_endpoint.go Apply: NewErrRPCCoded(400, ...), which the
            # HTTP layer answers as its code and message (command/agent/http.go).
            raise _Failure(400, problem)
        # A Namespace in the body beats ?namespace= (variables_endpoint.go).
        namespace = body.get("Namespace") or self._namespace(request)
        self._require(request, namespace, "variables-write")
        size = sum(
            len(str(key).encode()) + len(str(value).encode()) for key, value in items.items()
        )
        if size > 64 * 1024:
            raise _Failure(400, "variables are limited to 64KiB in total size")
        with self._lock:
            key = (namespace, path)
            racing = self._racing_writes.pop(key, None)
            if racing is not None:
                self.set_variable(path, racing, namespace)
            cas = cas_text
            exists = key in self.behaviour.variables
            if cas is not None:
                current = self._variable_meta[key][1] if exists else 0
                if int(cas) != current:
                    if exists:
                        return 409, self._variable_document(namespace, path)
                    # state_store_variables.go varSetCASTxn: "a plausible zero value".
                    return 409, {
                        "Namespace": namespace,
                        "Path": path,
                        "CreateIndex": 0,
                        "CreateTime": 0,
                        "ModifyIndex": 0,
                        "ModifyTime": 0,
                        "Items": None,
                        "Lock": None,
                    }
            index = self._next_index()
            created = self._variable_meta[key][0] if exists else index
            self._variable_meta[key] = (created, index)
            self.behaviour.variables[key] = {str(k): str(v) for k, v in items.items()}
            for alloc in self._allocs.values():
                if alloc.namespace == namespace and alloc.desired_status == "run":
                    alloc.variable_changed(path)
            return 200, self._variable_document(namespace, path)

    def set_variable(
        self, path: str, items: dict[str, str], namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        """A variable someone wrote (a test's way of playing another operator)."""
        with self._lock:
            index = self._next_index()
            key = (namespace, path)
            created = self._variable_meta[key][0] if key in self._variable_meta else index
            self._variable_meta[key] = (created, index)
            self.behaviour.variables[key] = dict(items)
            for alloc in self._allocs.values():
                if alloc.namespace == namespace and alloc.desired_status == "run":
                    alloc.variable_changed(path)

    def write_before_next_put(
        self, path: str, items: dict[str, str], namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        """Someone else writes the variable between a client's read and its write."""
        with self._lock:
            self._racing_writes[(namespace, path)] = dict(items)

    def variable_items(
        self, path: str, namespace: str = DEFAULT_NAMESPACE
    ) -> dict[str, str] | None:
        with self._lock:
            items = self.behaviour.variables.get((namespace, path))
            return dict(items) if items is not None else None

    def _submission(self, request: Recorded, job_id: str) -> tuple[int, Any]:
        """GET /v1/job/:id/submission?version=N (command/agent/job_endpoint.go
        jobSubmissionCRUD): 400 without a version, 404 "job source not found"."""
        try:
            version = int(request.query.get("version", ""))
        except ValueError as err:
            raise _Failure(400, "Unable to parse job submission version parameter") from err
        namespace = self._namespace(request)
        self._require(request, namespace, "read-job")
        with self._lock:
            job = self._jobs.get((namespace, job_id))
            submission = job.submissions.get(version) if job is not None else None
            if submission is None:
                raise _Failure(404, "job source not found")
            return 200, {**submission, "Namespace": namespace, "JobID": job_id, "Version": version}

    def _signal(self, request: Recorded, alloc_id: str) -> tuple[int, Any]:
        """POST /v1/client/allocation/:id/signal (command/agent/alloc_endpoint.go)."""
        alloc = self._alloc_for(request, alloc_id, "alloc-lifecycle")
        try:
            body = request.json()
        except ValueError as err:
            raise _Failure(400, f"Failed to decode body: {err}") from err
        task_name = body.get("Task") or ""
        with self._lock:
            if task_name not in alloc.tasks:
                raise _Failure(500, "Task not found")
            if alloc.tasks[task_name].state != "running":
                raise _Failure(500, "Task not running")
            alloc.signal(task_name, body.get("Signal") or "SIGKILL")
        return 200, {"Index": 0}

    # --- helpers -------------------------------------------------------------------------

    @property
    def index(self) -> int:
        return self._index

    def _next_index(self) -> int:
        self._index += 1
        return self._index

    def _new_alloc(self, job: _Job, eval_id: str) -> Allocation:
        alloc = Allocation.create(
            job=job.body,
            namespace=job.namespace,
            eval_id=eval_id,
            job_version=job.version,
            index=self._next_index(),
            behaviour=self.behaviour,
            clock=self._clock,
        )
        self._allocs[alloc.id] = alloc
        return alloc


class _UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, handler: type[BaseHTTPRequestHandler]) -> None:
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, handler)


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

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def address_string(self) -> str:
            return (
                "unix" if isinstance(self.client_address, str | bytes) else super().address_string()
            )

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest's output clean

    return Handler


__all__ = ["INIT_TASK", "VARIABLES", "WRITE", "NomadDouble", "Recorded", "TaskRun", "Token"]


_VARIABLE_PATH: Final = re.compile(r"^[a-zA-Z0-9-_~/]{1,128}$")


def _variable_path_problem(path: str) -> str | None:
    """nomad/structs/variables.go ValidatePath: why Nomad refuses ``path``, or None."""
    if not path:
        return "variable requires path"
    if not _VARIABLE_PATH.match(path):
        return f'invalid path "{path}"'
    parts = path.split("/")
    if parts[0] != "nomad":
        return None
    if len(parts) == 1:
        return (
            '"nomad" is a reserved top-level directory path, but you may write variables to '
            '"nomad/jobs", "nomad/job-templates", "nomad/sentinel", or below'
        )
    if parts[1] in ("jobs", "sentinel"):
        return None
    if parts[1] == "job-templates" and len(parts) == 3:
        return None
    if parts[1] == "job-templates":
        return (
            '"nomad/job-templates" is a reserved directory path, but you may write variables '
            'at the level below it, for example, "nomad/job-templates/template-name"'
        )
    return (
        'only paths at "nomad/jobs" or "nomad/job-templates" and below are valid paths under '
        'the top-level "nomad" directory'
    )
