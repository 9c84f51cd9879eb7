"""``nomad-pginit render``: the postgresql job and the services table, from pginit.toml.

Both land next to the services file: the job in postgresql.nomad.hcl, the
table in the README.md there, between its markers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Final

from nomad_pginit import render, spec
from nomad_pginit.commands import repository
from nomad_pginit.errors import ConfigError

log = logging.getLogger("nomad_pginit")

# `render --check` found a stale file: like `diff`, 1 means "they differ".
EXIT_STALE: Final = 1


HELP: Final = (
    "render the postgresql Nomad job (and the services table of the README next to "
    "it) from the services file"
)
DESCRIPTION: Final = (
    "Render the postgresql Nomad job from the services file (--config, else "
    f"${spec.ENV_CONFIG}, else {render.DEFAULT_SERVICES_FILE}) and rewrite the "
    f"services table of the {render.README_FILE_NAME} next to the services file, "
    f"between {render.TABLE_BEGIN} and {render.TABLE_END}. Templates in ./templates "
    "override the packaged ones, file by file. With --check, write nothing: exit 1 "
    "and print a diff when a file is stale, 0 when everything is current."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output",
        metavar="PATH",
        help=f"the job file (default: {render.JOB_FILE_NAME} next to the services file)",
    )
    parser.add_argument(
        "--readme",
        metavar="PATH",
        help="the README whose services table to update (default: the "
        f"{render.README_FILE_NAME} next to the services file if it exists, unless --output "
        "is given)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 with a unified diff if the job or the table is stale",
    )


def _say_what_the_task_sees(config: Path, services: spec.Spec) -> None:
    """[postgres] as the services file says it serves the operator's own commands; the
    task may see another DSN (127.0.0.1 in the job's group, or an external cluster's
    hosts from a service lookup): say so, as inside Nomad the job's values apply."""
    task_view = render.task_postgres(services)
    if (
        services.job.external
        and not services.job.primary_service
        and services.postgres.password_file is None
        and services.postgres.password_secret in ("", task_view.password_secret)
    ):
        return  # the DSN as written; the admin's password from Vault
    if services.postgres not in (task_view, spec.PostgresSettings()) and (
        services.postgres != spec.PostgresSettings(password_secret=task_view.password_secret)
    ):
        log.warning(
            "%s: [postgres] differs from what the job gives the init-databases task "
            "(dsn = %s, password_secret = %s); inside Nomad the job's values apply",
            config,
            task_view.dsn,
            task_view.password_secret,
        )


def main(args: argparse.Namespace) -> int:
    config = repository.services_file(args, os.environ)
    services = spec.load(config)
    templates = render.Templates(render.LOCAL_TEMPLATES)
    for override in templates.overrides():
        log.info("template %s: using %s instead of the packaged one", override.name, override.path)
    output = Path(args.output) if args.output else config.parent / render.JOB_FILE_NAME
    readme: Path | None = None
    if args.readme:
        readme = Path(args.readme)
        if not readme.is_file():
            raise ConfigError(f"{readme} does not exist: check --readme")
    elif not args.output:
        # With --output the job goes elsewhere (a preview, another repository): the
        # README next to the services file is left alone unless --readme names it.
        readme = repository.readme_next_to(config)
    files = render.job_files(templates, services, output, readme)
    # After rendering, which refuses a DSN holding a password: never printed.
    _say_what_the_task_sees(config, services)
    if readme is not None and len(files) == 1:
        if args.readme:
            raise ConfigError(
                f"{readme} has no services table: add a line {render.TABLE_BEGIN} and a line "
                f"{render.TABLE_END} where it belongs"
            )
        log.info("%s has no %s line: services table not updated", readme, render.TABLE_BEGIN)

    if args.check:
        return _check(files)
    repository.write_rendered(files, services)
    return 0


def _check(files: list[tuple[Path, str]]) -> int:
    stale = []
    for path, text in files:
        current = render.read_if_exists(path)
        if current != text:
            sys.stdout.write(render.unified_diff(current or "", text, path))
            stale.append(str(path))
    sys.stdout.flush()
    if stale:
        log.error("stale: %s; run `nomad-pginit render` and commit the result", ", ".join(stale))
        return EXIT_STALE
    log.info("up to date: %s", ", ".join(str(path) for path, _ in files))
    return 0
