"""Where the operator commands find things in an infrastructure repository.

The services file, and the rendered job next to it, by the paths `render`
uses; `--config`, `--job-file` and `--job` override them.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from nomad_pginit import render, spec
from nomad_pginit.errors import ConfigError
from nomad_pginit.nomad import job_label

log = logging.getLogger("nomad_pginit")


def readme_next_to(services: Path) -> Path | None:
    """The README.md next to the services file, when there is one: the services table's.

    `render` and `add-service` keep its table current. A table left in
    ./README.md (where it lived before) is no longer updated: say so.
    """
    readme = services.parent / render.README_FILE_NAME
    found = readme if readme.is_file() else None
    here = Path(render.README_FILE_NAME)
    if _has_table(here) and (found is None or not here.samefile(found)):
        log.warning(
            "%s has a services table, which is no longer updated: the table lives in %s "
            "next to the services file (move the %s and %s lines there, or pass --readme %s)",
            here,
            readme,
            render.TABLE_BEGIN,
            render.TABLE_END,
            here,
        )
    return found


def _has_table(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return any(line.strip() == render.TABLE_BEGIN for line in text.splitlines())


def write_rendered(
    files: Sequence[tuple[Path, str]], services: spec.Spec, *, verb: str = "wrote"
) -> None:
    """Write the rendered files that changed, and say for each what became of it."""
    written = render.write_changed(files)
    for path, _ in files:
        if path not in written:
            log.info("%s is up to date", path)
        elif services.job.live and path.name.endswith(".hcl"):
            log.info(
                "%s %s (live mode: it lists no services; deploy or publish writes the %d "
                "services to variable %s)",
                verb,
                path,
                len(services.services),
                services.job.variable,
            )
        else:
            log.info("%s %s (%d services)", verb, path, len(services.services))


def services_file(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    """--config, else $PGINIT_CONFIG, else the services file of the committed job."""
    return Path(args.config or environ.get(spec.ENV_CONFIG) or render.DEFAULT_SERVICES_FILE)


def add_job_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--job-file",
        metavar="PATH",
        help=f"the rendered Nomad job (default: {render.JOB_FILE_NAME} next to the services "
        f"file, as render writes it: {_default_job_file({})})",
    )


def add_job_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--job",
        metavar="NAME",
        help='the Nomad job (default: the label of job "..." in the job file, '
        f"else {render.JOB_NAME})",
    )


def _default_job_file(environ: Mapping[str, str], config: str | None = None) -> Path:
    services = services_file(argparse.Namespace(config=config), environ)
    return services.parent / render.JOB_FILE_NAME


def job_file(args: argparse.Namespace) -> Path:
    """--job-file, else where render writes the job: next to the services file."""
    if getattr(args, "job_file", None):
        return Path(args.job_file)
    return _default_job_file(os.environ, getattr(args, "config", None))


def read_job_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(
            f"job file {path} does not exist: render it with nomad-pginit render, "
            "or pass --job-file"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read job file {path}: {err}") from err


def job_name(args: argparse.Namespace) -> str:
    """--job, else the label in the job file, else the default name."""
    if getattr(args, "job", None):
        return str(args.job)
    path = job_file(args)
    if not path.exists() and not getattr(args, "job_file", None):
        return render.JOB_NAME
    label = job_label(read_job_file(path))
    if label is None:
        raise ConfigError(f'job file {path} has no job "NAME" {{ block: pass --job NAME')
    return label
