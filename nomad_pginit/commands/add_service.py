"""``nomad-pginit add-service NAME``: a password in Vault, a services file entry, a new job.

It replaces ``openssl rand | vault kv put`` and editing the job by hand. Every
step keeps what exists: the secret is written with check-and-set 0, so an
existing password is never overwritten; the services file gets a
``[[service]]`` block appended to its text, so its comments and layout stay;
the job is rendered again only if it changes. A second run changes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from nomad_pginit import render, spec
from nomad_pginit.commands import repository
from nomad_pginit.errors import ConfigError, ExitCode, SecretUnavailable
from nomad_pginit.secret import Secret
from nomad_pginit.vault import Vault

log = logging.getLogger("nomad_pginit")

# 32 random bytes, URL-safe base64: 43 characters that need no quoting anywhere
# (shell, URL, TOML, libpq conninfo).
PASSWORD_BYTES: Final = 32


HELP: Final = "create a service's password in Vault, add it to the services file, re-render the job"
DESCRIPTION: Final = (
    "Generate a strong random password and write it to Vault KV v2 at the service's "
    "path with check-and-set 0 (an existing secret is kept, never overwritten); append "
    "a [[service]] block to the services file (comments and layout stay); render the "
    f"job again, and the services table of the {render.README_FILE_NAME} next to the "
    "services file if it has one. Running it twice changes nothing the second time. "
    f"The services file is --config, else ${spec.ENV_CONFIG}, else "
    f"{render.DEFAULT_SERVICES_FILE}. "
    "Reads VAULT_ADDR, VAULT_TOKEN (or ~/.vault-token), VAULT_NAMESPACE, VAULT_CACERT. "
    "Exit codes: 0 done (or nothing to do), 2 invalid name or services file (nothing "
    "was written), 4 Vault unreachable or the token rejected, 1 Vault refused the write."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the service, e.g. gitea")
    parser.add_argument(
        "--database", metavar="NAME", help="its database (default: the service's name)"
    )
    parser.add_argument(
        "--user", metavar="NAME", help="its login role (default: the service's name)"
    )


def main(args: argparse.Namespace) -> int:
    environ = os.environ
    service = _requested_service(args)
    path = repository.services_file(args, environ)
    current = spec.load(path)
    text = path.read_text(encoding="utf-8")

    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        raise ConfigError(
            f"{path} is a JSON services file: add-service edits TOML services files only; "
            f"add {service.name!r} to it by hand (nothing was written)"
        )

    existing = next((item for item in current.services if item.name == service.name), None)
    differs = existing is not None and (
        (args.database is not None and args.database != existing.database)
        or (args.user is not None and args.user != existing.user)
    )
    if existing is not None and differs:
        raise ConfigError(
            f"service {service.name!r} is already in {path} with database "
            f"{existing.database!r} and user {existing.user!r}: edit {path} to change them "
            "(nothing was written)"
        )
    if existing is None:
        new_text = append_service(text, service)
        updated = _validate(new_text, path, service)
    else:
        new_text, updated = text, current
        service = existing

    _ensure_password(updated, service, environ)

    if new_text != text:
        render.write_atomically(path, new_text)
        log.info("%s: added to %s", service.name, path)
    else:
        log.info("%s: already in %s: left as it is", service.name, path)

    _render(updated, path)
    return int(ExitCode.OK)


def _requested_service(args: argparse.Namespace) -> spec.Service:
    """The service from the command line, checked the way the services file checks names."""
    service = spec.Service(
        name=args.name,
        database=args.database if args.database is not None else args.name,
        user=args.user if args.user is not None else args.name,
    )
    problems = [
        f"{attribute} {getattr(service, attribute)!r} {problem}"
        for attribute in ("name", "database", "user")
        if (problem := spec.name_problem(getattr(service, attribute))) is not None
    ]
    if problems:
        raise ConfigError("invalid service (nothing was written)", problems)
    return service


def _same(one: spec.Service, other: spec.Service) -> bool:
    return (one.name, one.database, one.user) == (other.name, other.database, other.user)


def append_service(text: str, service: spec.Service) -> str:
    """``text`` with a [[service]] block for ``service`` appended, the rest untouched."""
    lines = ["[[service]]", f"name = {render.toml_value(service.name)}"]
    if service.database != service.name:
        lines.append(f"database = {render.toml_value(service.database)}")
    if service.user != service.name:
        lines.append(f"user = {render.toml_value(service.user)}")
    block = "\n".join(lines) + "\n"
    if not text:
        return block
    if not text.endswith("\n"):
        text += "\n"
    if not text.endswith("\n\n"):
        text += "\n"
    return text + block


def _validate(text: str, path: Path, service: spec.Service) -> spec.Spec:
    """Parse the new text exactly as `run` will; refuse to write a file it would reject."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"cannot append a [[service]] block to {path}: the result would not be valid TOML "
            f"({err}); does it list services as an inline array? Add {service.name!r} by hand "
            "(nothing was written)"
        ) from err
    try:
        updated = spec.parse(document, path)
    except ConfigError as err:
        raise ConfigError(
            f"adding {service.name!r} to {path} would make it invalid (nothing was written)",
            err.problems or [str(err)],
        ) from err
    if not any(_same(item, service) for item in updated.services):
        raise ConfigError(
            f"appending a [[service]] block to {path} did not add {service.name!r} as "
            "expected: add it by hand (nothing was written)"
        )
    # Fail before Vault is touched if the job cannot be rendered with the new service.
    render.Templates(render.LOCAL_TEMPLATES).job(updated)
    return updated


def _ensure_password(
    services: spec.Spec, service: spec.Service, environ: Mapping[str, str]
) -> None:
    vault = Vault.connect(services.vault, environ)
    where = services.vault.cli_path(service.name)
    password = Secret(secrets.token_urlsafe(PASSWORD_BYTES))
    if vault.create_password(service.name, password):
        version = vault.secret_version(service.name)
        log.info(
            "%s: password created in Vault at %s (version %s, key %s)",
            service.name,
            where,
            version,
            services.vault.key,
        )
        return
    version = vault.secret_version(service.name)
    log.info(
        "%s: a secret already exists in Vault at %s (version %s): kept it, not overwritten",
        service.name,
        where,
        version if version is not None else "unknown",
    )
    try:
        vault.read_password(service.name)
    except SecretUnavailable as err:
        # The run would fail for this service; say so now rather than at deploy time.
        log.warning("%s: but init-databases cannot use it: %s", service.name, err)


def _render(services: spec.Spec, path: Path) -> None:
    """Render the job (and the services table of the README next to it) as `render` does."""
    templates = render.Templates(render.LOCAL_TEMPLATES)
    job_file = path.parent / render.JOB_FILE_NAME
    files = render.job_files(templates, services, job_file, repository.readme_next_to(path))
    repository.write_rendered(files, services, verb="rendered")
