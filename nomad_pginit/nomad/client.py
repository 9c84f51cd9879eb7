"""The client of Nomad's HTTP API: python-nomad's calls, each with a deadline, turned
into the types of ``types`` and its exceptions into the project's errors, with a
message that says what to do. It never puts the ACL token in a message."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, Final
from urllib.parse import quote

import nomad
import nomad.api.exceptions
import requests

from nomad_pginit import nomad_http
from nomad_pginit.errors import ConfigError, NomadUnavailable, VariableChanged
from nomad_pginit.jobspec import JobVariables
from nomad_pginit.nomad.decoding import (
    _allocation,
    _describe_placement_failure,
    _int,
    _str,
    _variable,
)
from nomad_pginit.nomad.types import (
    Allocation,
    Evaluation,
    Job,
    LogStream,
    ParsedJob,
    Registration,
    Submission,
    Variable,
    _mapping,
    init_is_sidecar,
    services_variable,
)
from nomad_pginit.nomad_http import Settings

TIMEOUT_SECONDS: Final = 10
# A restart returns once the running tasks have stopped: up to their kill_timeout
# (capped by the client's max_kill_timeout, 30 s by default), plus this margin.
RESTART_MARGIN_SECONDS: Final = 30
# Register's admission checks refuse a job with go-multierror's text, "1 error
# occurred:\n\t* ..." (nomad/job_endpoint_hooks.go validate): HTTP 500, like the
# cluster's own trouble ("No cluster leader"), which has no such header.
_REFUSAL: Final = re.compile(r"^\d+ errors? occurred:")
# Error bodies can be long (HCL diagnostics); one readable line is enough.
_BODY_LIMIT: Final = 400


# --- the client -----------------------------------------------------------------------------


class Nomad:
    """The calls the operator commands make, with typed answers and translated errors."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._api = nomad.Nomad(
            address=settings.url,
            token=settings.token.reveal() if settings.token else None,
            namespace=settings.namespace,
            region=settings.region,
            timeout=TIMEOUT_SECONDS,
            verify=settings.verify,
            cert=settings.cert or (),
            session=nomad_http.session(settings),
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Nomad:
        """A client for NOMAD_ADDR with NOMAD_TOKEN; nothing is sent until the first call."""
        return cls(Settings.from_environ(environ))

    @property
    def address(self) -> str:
        return self.settings.address

    def parse_job(self, hcl: str, source: str, variables: JobVariables | None = None) -> ParsedJob:
        """Parse a jobspec with Nomad's own HCL2 evaluation (POST /v1/jobs/parse), with
        the job variables nomad job run would use (the server reads no var file)."""
        body: dict[str, Any] = {"JobHCL": hcl, "Canonicalize": False}
        if variables is not None and variables.text:
            body["Variables"] = variables.text
        with self._translate(f"parse {source}", capability="parse-job", bad_request_is_config=True):
            # jobs.parse() cannot send Variables (python-nomad 2.1).
            answer = self._api.jobs.request("parse", method="post", json=body).json()
        if not isinstance(answer, dict) or not isinstance(answer.get("ID"), str):
            raise NomadUnavailable(
                f"{self.settings.where()} answered the parse of {source} without a job ID: "
                "is NOMAD_ADDR a Nomad agent?"
            )
        return ParsedJob(
            id=answer["ID"], body=answer, source=hcl, variables=variables or JobVariables()
        )

    def register_job(self, job: ParsedJob) -> Registration:
        """Submit a parsed job (POST /v1/jobs) with its submission record, as `nomad job run`
        does (jobspec2/parse.go submissionFromJob)."""
        request = {
            "Job": dict(job.body),
            "Submission": {
                "Source": job.source,
                "Format": "hcl2",
                "VariableFlags": dict(job.variables.submission_flags),
                "Variables": job.variables.submission_variables,
            },
        }
        with self._translate(
            f"register job {job.id}",
            capability="submit-job",
            bad_request_is_config=True,
            refused=f"Nomad refused job {job.id}",
        ):
            body = self._api.jobs.register_job(request)
        answer = _mapping(body)
        return Registration(
            eval_id=_str(answer, "EvalID"),
            job_modify_index=_int(answer, "JobModifyIndex"),
            warnings=_str(answer, "Warnings"),
        )

    def find_job(self, job_id: str) -> Job | None:
        """The registered job, or None when Nomad does not know it."""
        try:
            with self._translate(f"read job {job_id}", capability="read-job", not_found=""):
                body = self._api.job.get_job(quote(job_id, safe=""))
        except _NotFound:
            return None
        answer = _mapping(body)
        return Job(
            id=_str(answer, "ID") or job_id,
            version=_int(answer, "Version"),
            job_modify_index=_int(answer, "JobModifyIndex"),
            status=_str(answer, "Status"),
            stop=bool(answer.get("Stop")),
            init_sidecar=init_is_sidecar(answer),
            services_variable=services_variable(answer),
        )

    def job(self, job_id: str) -> Job:
        """The registered job, or NomadUnavailable saying it is unknown (exit 5)."""
        found = self.find_job(job_id)
        if found is None:
            raise NomadUnavailable(
                f"job {job_id!r} not found in {self.settings.where()}: deploy it with "
                "nomad-pginit deploy, or name the right job with --job (and NOMAD_NAMESPACE)"
            )
        return found

    def evaluation(self, eval_id: str) -> Evaluation:
        with self._translate(f"read evaluation {eval_id}", capability="read-job"):
            # get_evaluation() sends no namespace (python-nomad 2.1), and Nomad checks
            # read-job in the request's namespace, "default" when none is given.
            body = self._api.evaluation.request(
                eval_id, method="get", params=self._namespace_params()
            ).json()
        answer = _mapping(body)
        failures = {
            str(group): _describe_placement_failure(_mapping(metrics))
            for group, metrics in _mapping(answer.get("FailedTGAllocs")).items()
        }
        return Evaluation(
            id=_str(answer, "ID") or eval_id,
            status=_str(answer, "Status"),
            status_description=_str(answer, "StatusDescription"),
            blocked_eval=_str(answer, "BlockedEval"),
            placement_failures=failures,
        )

    def allocations(self, job_id: str) -> list[Allocation]:
        """Every allocation of the job that Nomad still remembers."""
        with self._translate(f"list the allocations of job {job_id}", capability="read-job"):
            body = self._api.job.get_allocations(quote(job_id, safe=""))
        if not isinstance(body, list):
            raise NomadUnavailable(
                f"{self.settings.where()} answered the allocation list of job {job_id} with "
                "something that is not a list: is NOMAD_ADDR a Nomad agent?"
            )
        return [_allocation(_mapping(item)) for item in body]

    def task_log(self, alloc_id: str, task: str, stream: LogStream) -> str:
        """A task's whole stdout or stderr, as `nomad alloc logs` prints it; "" when none."""
        try:
            with self._translate(
                f"read the {stream} of task {task} in allocation {alloc_id[:8]}",
                capability="read-logs",
                not_found="",
            ):
                # stream_logs.stream() returns response.text, which requests decodes as
                # ISO-8859-1 when Nomad sends no charset; the log is UTF-8, so decode here.
                response = self._api.client.stream_logs.request(
                    alloc_id,
                    method="get",
                    params={
                        "task": task,
                        "type": stream,
                        "follow": False,
                        "offset": 0,
                        "origin": "start",
                        "plain": True,
                    },
                )
        except _NotFound:
            return ""  # the task never started, so it has no log file yet
        content: bytes = response.content
        return content.decode("utf-8", errors="replace")

    def restart_all_tasks(self, alloc_id: str, kill_timeout: float) -> None:
        """Restart every task of an allocation, as `nomad alloc restart -all-tasks` does.

        This is what re-runs a dead poststart task without a new allocation. Nomad
        answers once the running tasks have stopped, which takes up to their
        ``kill_timeout`` (client/allocrunner/taskrunner/lifecycle.go restartImpl).
        """
        # restart_allocation() sends no body, so it cannot ask for AllTasks.
        with self._translate(
            f"restart allocation {alloc_id[:8]}",
            capability="alloc-lifecycle",
            not_found=f"allocation {alloc_id} not found in {self.settings.where()}: "
            "it may have been stopped or garbage-collected; run nomad-pginit verify",
        ):
            self._api.client.allocation.request(
                alloc_id,
                "restart",
                method="put",
                json={"TaskName": "", "AllTasks": True},
                timeout=(TIMEOUT_SECONDS, kill_timeout + RESTART_MARGIN_SECONDS),
            )

    def variable(self, path: str) -> Variable | None:
        """The variable at ``path``, or None when there is none."""
        try:
            with self._translate(
                f"read variable {path}", capability="variables read", not_found=""
            ):
                # get_variable() sends no namespace unless told (python-nomad 2.1).
                body = self._api.variable.get_variable(path, namespace=self.settings.namespace)
        except _NotFound:
            return None
        return _variable(_mapping(body), path)

    def write_variable(self, path: str, items: Mapping[str, str], cas: int) -> Variable:
        """Write the variable's items if its ModifyIndex is still ``cas`` (0: if it does
        not exist yet), as `nomad var put -check-index` does. Raises VariableChanged
        when someone else wrote it in between: nothing is overwritten."""
        try:
            with self._translate(
                f"write variable {path}",
                capability="variables write",
                bad_request_is_config=True,
                bad_request_hint="check [job] variable in the services file (nothing was written)",
            ):
                body = self._api.variable.create_variable(
                    path,
                    {"Path": path, "Items": dict(items)},
                    namespace=self.settings.namespace,
                    cas=cas,
                )
        except _Conflict as err:
            current = _variable(err.body, path) if err.body else None
            index = current.modify_index if current else "none"
            if cas != 0 and (current is None or current.modify_index == 0):
                # A deleted variable, or one someone holds a lock on, answers a CAS write
                # with an empty one (nomad/state/state_store_variables.go varSetCASTxn).
                raise VariableChanged(
                    f"variable {path} in {self.settings.where()} was deleted, or is locked by "
                    "someone (nomad var lock), since it was read: nothing was written; look at "
                    f"it (nomad var get {path}) and publish again"
                ) from err
            raise VariableChanged(
                f"variable {path} changed in {self.settings.where()} since it was read "
                f"(its ModifyIndex is now {index}, not {cas}): someone else published in "
                "between; nothing was overwritten: look at it (nomad var get "
                f"{path}) and publish again"
            ) from err
        return _variable(_mapping(body), path)

    def job_submission(self, job_id: str, version: int) -> Submission | None:
        """What version ``version`` of the job was registered from, None when Nomad kept
        no source for it (registered without one, or too large)."""
        try:
            with self._translate(
                f"read the source of job {job_id}", capability="read-job", not_found=""
            ):
                body = self._api.job.request(
                    quote(job_id, safe=""),
                    "submission",
                    method="get",
                    params={"version": version, **self._namespace_params()},
                ).json()
        except _NotFound:
            return None
        answer = _mapping(body)
        flags = _mapping(answer.get("VariableFlags"))
        return Submission(
            source=_str(answer, "Source"),
            variables=_str(answer, "Variables"),
            variable_flags={str(key): str(value) for key, value in flags.items()},
        )

    def signal_task(self, alloc_id: str, task: str, signal: str) -> None:
        """Send ``signal`` to one task of an allocation, as `nomad alloc signal` does."""
        with self._translate(
            f"signal task {task} of allocation {alloc_id[:8]}",
            capability="alloc-lifecycle",
            not_found=f"allocation {alloc_id} not found in {self.settings.where()}: "
            "it may have been stopped; run nomad-pginit verify",
        ):
            self._api.client.allocation.request(
                alloc_id, "signal", method="post", json={"Signal": signal, "Task": task}
            )

    def _namespace_params(self) -> dict[str, str]:
        return {"namespace": self.settings.namespace} if self.settings.namespace else {}

    @contextmanager
    def _translate(
        self,
        what: str,
        *,
        capability: str,
        not_found: str | None = None,
        bad_request_is_config: bool = False,
        bad_request_hint: str = "fix the job file (nothing was submitted)",
        refused: str | None = None,
    ) -> Iterator[None]:
        """Turn python-nomad's and requests' errors into the project's.

        ``not_found=""`` makes a 404 raise _NotFound for the caller to handle; a
        non-empty ``not_found`` is the message for it. ``refused``: this call's
        HTTP 500 answers are Nomad refusing what was sent (register's admission
        checks answer 500 with the reason: command/agent/http.go wrap), reported
        with that reason as a configuration error.
        """
        where = self.settings.where()
        try:
            yield
        except nomad.api.exceptions.URLNotAuthorizedNomadException as err:
            if self.settings.token is None:
                hint = f"set NOMAD_TOKEN to an ACL token with the {capability} capability"
            else:
                hint = (
                    f"the token in NOMAD_TOKEN is unknown, expired, or lacks the {capability} "
                    "capability in this namespace"
                )
            if self.settings.namespace is None:
                hint += " (set NOMAD_NAMESPACE when the job is not in namespace default)"
            raise NomadUnavailable(
                f"{where} denied the request to {what} (403 {_body(err)}): {hint}"
            ) from err
        except nomad.api.exceptions.VariableConflict as err:
            response = getattr(err, "nomad_resp", None)
            body: Mapping[str, Any] = {}
            if isinstance(response, requests.Response):
                with suppress(ValueError):
                    body = _mapping(response.json())
            raise _Conflict(body) from err
        except nomad.api.exceptions.URLNotFoundNomadException as err:
            if not_found == "":
                raise _NotFound from err
            raise NomadUnavailable(
                not_found or f"{where} could not {what}: not found (404 {_body(err)})"
            ) from err
        except nomad.api.exceptions.BadRequestNomadException as err:
            message = f"{where} rejected the request to {what}: {_body(err)}"
            if bad_request_is_config:
                raise ConfigError(f"{message}; {bad_request_hint}") from err
            raise NomadUnavailable(message) from err
        except nomad.api.exceptions.BaseNomadException as err:
            response = getattr(err, "nomad_resp", None)
            if (
                refused is not None
                and isinstance(response, requests.Response)
                and response.status_code == 500
                and _REFUSAL.match(response.text)
            ):
                raise ConfigError(
                    f"{refused}: {_server_errors(response.text)}; nothing was registered: fix "
                    "the job file, its variables, or the cluster's configuration it names"
                ) from err
            raise NomadUnavailable(f"cannot {what}: {_reason(err, where)}") from err
        except (requests.RequestException, ValueError) as err:
            # ValueError: .json() on something that is not JSON (a proxy's HTML page).
            raise NomadUnavailable(
                f"{where} answered the request to {what} with something unexpected "
                f"({type(err).__name__}): is NOMAD_ADDR the address of a Nomad agent?"
            ) from err
        except OSError as err:
            # requests raises plain OSError for TLS files it cannot load.
            raise ConfigError(
                f"cannot reach {where} with the TLS files in NOMAD_CACERT, NOMAD_CAPATH, "
                f"NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY: {err}"
            ) from err


class _NotFound(Exception):
    """A 404 that the caller expects and handles."""


class _Conflict(Exception):
    """A 409 on a check-and-set write, with the current variable Nomad sent back."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__("conflict")
        self.body = body


def _server_errors(text: str) -> str:
    """go-multierror's "1 error occurred:\n\t* reason\n\n" as "reason" (several joined by ;)."""
    items = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("* ")]
    if items:
        return "; ".join(items)
    return " ".join(text.split())[:_BODY_LIMIT] or "no reason given"


def _body(err: nomad.api.exceptions.BaseNomadException) -> str:
    """The first line of Nomad's error body: plain text such as `job not found`."""
    response = getattr(err, "nomad_resp", None)
    if isinstance(response, requests.Response):
        text = " ".join(response.text.split())
        if len(text) > _BODY_LIMIT:
            text = text[:_BODY_LIMIT] + "..."
        return text or response.reason or str(response.status_code)
    return type(response).__name__


def _tls_failure(err: requests.exceptions.SSLError, where: str) -> str:
    """Which side of the TLS handshake failed, and the variable that fixes it."""
    text = str(err)
    if "CERTIFICATE_VERIFY_FAILED" in text and "hostname" in text.lower():
        return (
            f"TLS verification of {where} failed: its certificate does not name the host in "
            "NOMAD_ADDR; set NOMAD_TLS_SERVER_NAME to the name it carries (agents': "
            "server.<region>.nomad)"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"TLS verification of {where} failed: its certificate is not signed by a CA we "
            "trust; set NOMAD_CACERT (or NOMAD_CAPATH) to your CA (or NOMAD_SKIP_VERIFY=true "
            "for a test cluster)"
        )
    if "CERTIFICATE_REQUIRED" in text or "certificate required" in text.lower():
        return f"{where} requires a client certificate: set NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY"
    if "BAD_CERTIFICATE" in text or "KEY_VALUES_MISMATCH" in text or "PEM lib" in text:
        return (
            f"the TLS handshake with {where} failed on our client certificate: check "
            "NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY (the key must match the certificate, and "
            "the agent's CA must have signed it)"
        )
    if "WRONG_VERSION_NUMBER" in text:
        return f"{where} does not speak TLS: use http:// in NOMAD_ADDR"
    return f"the TLS handshake with {where} failed: {text.splitlines()[0][:200]}"


def _reason(err: nomad.api.exceptions.BaseNomadException, where: str) -> str:
    """Why a call failed, without the URL noise requests adds."""
    cause = getattr(err, "nomad_resp", None)
    # SSLError is a ConnectionError: test it first.
    if isinstance(cause, requests.exceptions.SSLError):
        return _tls_failure(cause, where)
    if isinstance(cause, requests.Timeout):
        return f"{where} did not answer within {TIMEOUT_SECONDS}s; check NOMAD_ADDR"
    if isinstance(cause, requests.ConnectionError):
        return (
            f"{where} is unreachable (connection refused or host unreachable): check NOMAD_ADDR "
            "and that the Nomad agent is up"
        )
    if isinstance(cause, requests.Response):
        return f"{where} answered HTTP {cause.status_code}: {_body(err)}"
    return f"{where}: {type(cause).__name__}"
