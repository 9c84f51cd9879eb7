"""``nomad-pginit verify``: did the newest init-databases run succeed?

It replaces ``nomad job status postgresql | grep running | head -1 | awk`` and
``nomad alloc logs``: the newest allocation (highest CreateIndex), its
init-databases task's logs, and three checks: the task is dead and not
failed, it exited 0, and its log ends with ``summary: ok``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Final

from nomad_pginit.commands import options, repository
from nomad_pginit.errors import ConfigError, ExitCode, NomadUnavailable
from nomad_pginit.nomad import INIT_TASK, Nomad
from nomad_pginit.report import SUMMARY_PREFIX
from nomad_pginit.verdicts import conclude, present, verify

log = logging.getLogger("nomad_pginit")

# --- the command ----------------------------------------------------------------------------


HELP: Final = "show the newest init-databases run's log and check that it succeeded"
DESCRIPTION: Final = (
    "Find the newest allocation of the job (highest CreateIndex), print its "
    f"{INIT_TASK} task's stdout and stderr, and check that the task is dead and not "
    f"failed, exited 0, and logged '{SUMMARY_PREFIX} ok'. In live mode: that the "
    "sidecar runs, that its last finished pass logged 'summary: ok' with no refused "
    "file since, and that it applied the services the job's variable holds. Reads "
    "NOMAD_ADDR, "
    "NOMAD_TOKEN, NOMAD_NAMESPACE, NOMAD_REGION, NOMAD_CACERT, NOMAD_SKIP_VERIFY. "
    "Exit codes: 0 every check passes, 1 a check failed (it says which), "
    "2 invalid command line or job file, 5 Nomad unreachable, the job unknown, or the "
    "token rejected."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    repository.add_job_option(parser)
    repository.add_job_file_option(parser)
    options.add_json(
        parser,
        "print one JSON object (alloc_id, task_state, exit_code, summary, stdout, stderr, ok, "
        "checks) on stdout",
    )


def main(args: argparse.Namespace) -> int:
    name = repository.job_name(args)
    try:
        verdict = verify(Nomad.from_environ(os.environ), name)
    except (NomadUnavailable, ConfigError) as err:
        if args.json:
            print(json.dumps({"job": name, "ok": False, "error": str(err)}, ensure_ascii=False))
        raise
    if verdict is None:
        message = (
            f"job {name} has no allocations: Nomad has not placed it yet (nomad job status "
            f"{name}), or they were garbage-collected; deploy it with nomad-pginit deploy"
        )
        if args.json:
            print(json.dumps({"job": name, "ok": False, "error": message}, ensure_ascii=False))
        log.error("%s", message)
        return int(ExitCode.SERVICE_FAILED)
    if args.json:
        print(json.dumps(verdict.document(), indent=2, ensure_ascii=False))
    else:
        alloc = verdict.allocation
        log.info(
            "job %s: newest allocation %s (job version %d, %s)",
            name,
            alloc.id,
            alloc.job_version,
            alloc.client_status,
        )
        return present(verdict, args.log_format)
    return conclude(verdict)
