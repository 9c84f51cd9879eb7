"""``nomad-pginit deploy``: submit the rendered job and follow init-databases to its end.

It replaces ``nomad job run`` followed by finding the allocation by hand: the
job goes through Nomad's own parser, then the command follows the evaluation
to the new allocation, shows each state change of the init task, prints its
log and exits 0 only if the task succeeded. The workflow is in
``nomad_pginit.deploy``; this module reads the command line.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from pathlib import Path
from typing import Final

from nomad_pginit import jobspec, render, spec
from nomad_pginit.commands import repository
from nomad_pginit.deploy import live, oneshot
from nomad_pginit.deploy.following import DEFAULT_TIMEOUT, Deployment
from nomad_pginit.errors import ConfigError
from nomad_pginit.nomad import INIT_TASK, Nomad

log = logging.getLogger("nomad_pginit")


HELP: Final = "submit the rendered job to Nomad and wait for init-databases to finish"
DESCRIPTION: Final = (
    "Parse the rendered job with Nomad's own parser, register it, follow the "
    f"evaluation to the new allocation, wait for its {INIT_TASK} task to finish "
    "(one line per state change), print its log, and exit 0 only if it succeeded "
    "(live mode: publish the services file into the job's Nomad variable first, "
    "register the job only when it differs from the version Nomad runs, and wait for "
    "the sidecar's pass that applies the services; --now sends it SIGHUP when nothing "
    "changed). An unchanged oneshot job gets "
    "no new allocation, so the task does not run again: deploy says so and reports "
    "the last run; --rerun restarts every task of the running allocation (postgres "
    "too) to run it again. The job's variables come from --var-file, --var and "
    "NOMAD_VAR_<name>, as nomad job run takes them. Reads NOMAD_ADDR (http, https or "
    "unix://), NOMAD_TOKEN, NOMAD_NAMESPACE, NOMAD_REGION, NOMAD_CACERT, NOMAD_CAPATH, "
    "NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY, NOMAD_TLS_SERVER_NAME, NOMAD_SKIP_VERIFY, "
    "NOMAD_HTTP_AUTH. Exit codes: 0 the task succeeded, 1 it failed or did not finish "
    "in time, 2 invalid command line, variables, or a job file Nomad rejects, 5 Nomad "
    "unreachable or the token rejected."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    repository.add_job_file_option(parser)
    parser.add_argument(
        "--var-file",
        metavar="PATH",
        action="append",
        default=[],
        dest="var_files",
        help="a file of job variables (HCL or JSON), as nomad job run -var-file; repeatable, "
        "a later file wins",
    )
    parser.add_argument(
        "--var",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        dest="var_args",
        help="one job variable, as nomad job run -var; repeatable, wins over --var-file and "
        "NOMAD_VAR_<name>",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        default=str(DEFAULT_TIMEOUT),
        help=f"how long to wait for {INIT_TASK} to finish (default: {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help=f"when the job is unchanged, restart every task of the running allocation "
        f"(as nomad alloc restart -all-tasks does: postgres restarts too) so that {INIT_TASK} "
        "runs again",
    )
    parser.add_argument(
        "--now",
        action="store_true",
        help=f'live mode ([job] mode = "live"): when neither the job nor the services changed, '
        f"send SIGHUP to the running {INIT_TASK} sidecar through Nomad's API so that it "
        "applies the services file again at once (a rotated password, without waiting for "
        "--interval); PostgreSQL is not restarted",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="live mode: let the publication remove services that the variable holds and "
        "the services file does not (refused otherwise: an older checkout would drop "
        "someone else's services)",
    )


def parse_timeout(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"--timeout must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"--timeout must be more than zero seconds, not {raw!r}")
    return value


def main(args: argparse.Namespace) -> int:
    timeout = parse_timeout(args.timeout)
    path = repository.job_file(args)
    hcl = repository.read_job_file(path)
    _warn_if_stale(args, path, hcl)
    variables = jobspec.compose(
        hcl, str(path), [Path(item) for item in args.var_files], args.var_args, os.environ
    )
    client = Nomad.from_environ(os.environ)

    parsed = client.parse_job(hcl, str(path), variables)
    if variables.assignments:
        log.info("job variables: %s", variables.describe())
    deployment = Deployment(
        client=client,
        job_id=parsed.id,
        sidecar=parsed.init_sidecar,
        deadline=time.monotonic() + timeout,
        timeout=timeout,
        log_format=args.log_format,
        kill_timeout=parsed.kill_timeout,
        batch=parsed.batch,
    )
    services = live.services_to_publish(repository.services_file(args, os.environ), parsed)
    if args.now and services is None:
        raise ConfigError(
            '--now is for live mode ([job] mode = "live"), where init-databases keeps '
            "running; this job runs it once per allocation: deploy --rerun runs it again"
        )
    before = client.find_job(parsed.id)
    known = {alloc.id for alloc in client.allocations(parsed.id)} if before else set()
    if services is not None:
        return live.deploy_live(
            deployment,
            parsed,
            services,
            before,
            known,
            now=args.now,
            rerun=args.rerun,
            prune=args.prune,
        )
    return oneshot.register_and_follow(deployment, parsed, before, known, rerun=args.rerun)


def _warn_if_stale(args: argparse.Namespace, path: Path, hcl: str) -> None:
    """Say so when the services file changed since the job was rendered from it."""
    config = repository.services_file(args, os.environ)
    if not config.is_file() or path.resolve() != (config.parent / render.JOB_FILE_NAME).resolve():
        return
    try:
        expected = render.Templates(render.LOCAL_TEMPLATES).job(spec.load(config))
    except ConfigError as err:
        log.warning("cannot tell whether %s is current: %s", path, err)
        return
    if expected != hcl:
        log.warning(
            "%s is stale: %s or the templates changed since it was rendered; deploying it as "
            "it is (run nomad-pginit render, then deploy again, to deploy the change)",
            path,
            config,
        )
