"""The postgresql Nomad job, consumer snippets and the services table, rendered from the Spec.

The only module that imports jinja2. The templates ship inside the package
(``nomad_pginit/templates``); a ``templates/`` directory in the current
directory overrides them file by file, so an infrastructure repository can
change one template and keep the others.

The templates write HCL whose ``template`` blocks hold consul-template text,
full of ``{{ ... }}``. So that this text stays literal, Jinja2 expressions use
``{= ... =}`` here; statements keep ``{% ... %}``.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import jinja2

from nomad_pginit import __version__, postgres
from nomad_pginit import spec as spec_module
from nomad_pginit.errors import ConfigError
from nomad_pginit.spec import IDENTITY_NAME, PostgresSettings, Service, Spec, VaultSettings
from nomad_pginit.spec.services import admin_secret_sharers

JOB_NAME: Final = "postgresql"
DEFAULT_SERVICES_FILE: Final = Path("jobs/services/databases/postgresql/pginit.toml")
JOB_FILE_NAME: Final = "postgresql.nomad.hcl"
# The README next to the services file, whose services table render keeps current.
README_FILE_NAME: Final = "README.md"
LOCAL_TEMPLATES: Final = Path("templates")

JOB_TEMPLATE: Final = "postgresql.nomad.hcl.j2"
SERVICES_FILE_TEMPLATE: Final = "pginit.toml.j2"
SNIPPET_TEMPLATE: Final = "snippet.nomad.hcl.j2"
TABLE_TEMPLATE: Final = "services-table.md.j2"

# What the init-databases task sees: the group's bridge network puts postgres on
# 127.0.0.1, and the task reads the admin's password from Vault itself.
TASK_DSN: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
TASK_SERVICES_FILE: Final = "/local/pginit.toml"
# Live mode: [postgres] and [vault] travel in the job, in this file; the services
# alone come from the variable, into TASK_SERVICES_FILE.
TASK_CLUSTER_FILE: Final = "/local/cluster.toml"
# The superuser's password, relative to the [vault] mount, when [postgres]
# password_secret does not name it; and the Vault role of both tasks when
# [vault] jwt_role does not name it.
ADMIN_VAULT_PATH: Final = "postgres/admin"
ADMIN_VAULT_KEY: Final = spec_module.ADMIN_SECRET_KEY
DEFAULT_VAULT_ROLE: Final = "postgresql"
# Where the postgres task's template writes the superuser's password for the image.
ADMIN_PASSWORD_FILE: Final = "/secrets/pg_admin_password"  # noqa: S105 (a path)

TABLE_BEGIN: Final = "<!-- services:begin -->"
TABLE_END: Final = "<!-- services:end -->"

_GO_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def kv_api_path(vault: VaultSettings, relative: str) -> str:
    """A KV v2 secret as template blocks and policies name it: ``secret/data/postgres/gitea``."""
    return f"{vault.mount}/data/{relative}"


# An external cluster found by [job] primary_service, whose [postgres] dsn says no more.
EXTERNAL_DEFAULT_DSN: Final = "user=postgres dbname=postgres"


def task_postgres(spec: Spec) -> PostgresSettings:
    """[postgres] as the init task sees it: the admin's password read from Vault; the
    postgres task next to it on 127.0.0.1, or an external cluster at [postgres] dsn
    (its hosts from the primary_service lookup, through $PGHOST and $PGPORT)."""
    secret = spec.postgres.password_secret or ADMIN_VAULT_PATH
    if not spec.job.external:
        return PostgresSettings(dsn=TASK_DSN, password_secret=secret)
    dsn = spec.postgres.dsn
    if spec.job.primary_service:
        dsn = postgres.hostless(dsn) or EXTERNAL_DEFAULT_DSN
    return PostgresSettings(dsn=dsn, password_secret=secret)


def task_vault(spec: Spec) -> VaultSettings:
    """[vault] as the init task sees it: a JWT login with its workload identity, whose
    file Nomad writes where nomad-pginit looks by default."""
    return replace(spec.vault, jwt_role=spec.vault.jwt_role or DEFAULT_VAULT_ROLE, jwt_file="")


def find_service(spec: Spec, name: str) -> Service:
    """The service called ``name``, or a ConfigError that lists the known ones."""
    for service in spec.services:
        if service.name == name:
            return service
    known = [service.name for service in spec.services]
    hint = difflib.get_close_matches(name, known, n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    raise ConfigError(
        f"no service '{name}' in {spec.source}{suggestion}; known services: {', '.join(known)}"
    )


@dataclass(frozen=True)
class Override:
    """A template that a local ``templates/`` directory replaces."""

    name: str
    path: Path


class Templates:
    """The Jinja2 templates: a local directory first, then the package's own."""

    def __init__(self, local_dir: Path | None = LOCAL_TEMPLATES) -> None:
        self._local_dir = local_dir if local_dir is not None and local_dir.is_dir() else None
        loaders: list[jinja2.BaseLoader] = []
        if self._local_dir is not None:
            loaders.append(jinja2.FileSystemLoader(self._local_dir))
        loaders.append(jinja2.PackageLoader("nomad_pginit", "templates"))
        self._env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            variable_start_string="{=",
            variable_end_string="=}",
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            # HCL, TOML and Markdown, not HTML: the filters below quote for each.
            autoescape=False,  # noqa: S701
        )
        self._env.filters.update(_FILTERS)
        self._env.tests["go_identifier"] = lambda value: bool(_GO_IDENTIFIER.fullmatch(value))

    def overrides(self) -> list[Override]:
        """The templates that the local directory replaces, for the log."""
        if self._local_dir is None:
            return []
        names = (JOB_TEMPLATE, SERVICES_FILE_TEMPLATE, SNIPPET_TEMPLATE, TABLE_TEMPLATE)
        return [
            Override(name, self._local_dir / name)
            for name in names
            if (self._local_dir / name).is_file()
        ]

    def job(self, spec: Spec) -> str:
        """The postgresql job: with the services file as the init task sees it (oneshot),
        or reading it from a Nomad variable (live: the job does not depend on the
        services, so adding one never changes the job)."""
        _check_admin_secret(spec)
        _check_external(spec)
        # Live mode: the services are in the variable (`nomad-pginit publish`); the job
        # carries where PostgreSQL and Vault are, which the variable may not say.
        services_file = self.cluster_file(spec) if spec.job.live else self.services_file(spec)
        _check_renderable(
            spec, (("services file line", line) for line in services_file.splitlines())
        )
        vault = task_vault(spec)
        return self._render(
            JOB_TEMPLATE,
            job_name=JOB_NAME,
            source=spec.source.name,
            version=__version__,
            services_file=services_file,
            services_file_path=TASK_SERVICES_FILE,
            cluster_file_path=TASK_CLUSTER_FILE,
            admin_password_file=ADMIN_PASSWORD_FILE,
            admin_secret=kv_api_path(spec.vault, task_postgres(spec).password_secret),
            admin_secret_key=ADMIN_VAULT_KEY,
            vault_role=vault.jwt_role,
            identity_name=IDENTITY_NAME,
            variable_item=spec_module.VARIABLE_ITEM,
            job=spec.job,
            primary_lookup="service" if spec.job.primary_provider == "consul" else "nomadService",
        )

    def services_file(self, spec: Spec) -> str:
        """The services file as the init task sees it, normalized from the Spec."""
        text = self._services_template(spec, settings=True, services=True)
        _check_round_trip(spec, text)
        return text

    def cluster_file(self, spec: Spec) -> str:
        """Live mode's part of the task's view that the job carries: [postgres], [vault]."""
        text = self._services_template(spec, settings=True, services=False)
        _check_round_trip(spec, text, self._services_template(spec, settings=False, services=True))
        return text

    def services_part(self, spec: Spec) -> str:
        """Live mode's part of the task's view that the variable carries: the services."""
        text = self._services_template(spec, settings=False, services=True)
        _check_round_trip(spec, self._services_template(spec, settings=True, services=False), text)
        return text

    def _services_template(self, spec: Spec, *, settings: bool, services: bool) -> str:
        return self._render(
            SERVICES_FILE_TEMPLATE,
            source=spec.source.name,
            postgres=task_postgres(spec),
            vault=task_vault(spec),
            default_jwt_path=spec_module.DEFAULT_JWT_PATH,
            services=[_ServiceEntry(service) for service in spec.services],
            with_settings=settings,
            with_services=services,
            job=spec.job,
        )

    def snippet(self, spec: Spec, name: str, *, consul: bool = False) -> str:
        """The template and env blocks that the job of service ``name`` needs."""
        service = find_service(spec, name)
        secret_path = kv_api_path(spec.vault, spec.vault.secret_path(service.name))
        _check_renderable(spec, [("Vault path", secret_path), ("[vault] key", spec.vault.key)])
        return self._render(
            SNIPPET_TEMPLATE,
            job_name=JOB_NAME,
            service=service,
            discovery="service" if consul else "nomadService",
            secret_path=secret_path,
            secret_key=spec.vault.key,
        )

    def services_table(self, spec: Spec) -> str:
        """The Markdown table of services that the README next to the services file carries."""
        return self._render(TABLE_TEMPLATE, source=spec.source.name, spec=spec)

    def update_readme(self, text: str, spec: Spec, where: Path) -> str | None:
        """``text`` with its services table regenerated, or None when it has no markers."""
        lines = text.splitlines(keepends=True)
        begins = [index for index, line in enumerate(lines) if line.strip() == TABLE_BEGIN]
        ends = [index for index, line in enumerate(lines) if line.strip() == TABLE_END]
        if not begins and not ends:
            return None
        if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
            raise ConfigError(
                f"{where}: the services table needs exactly one line {TABLE_BEGIN} followed "
                f"by exactly one line {TABLE_END} (found {len(begins)} and {len(ends)})"
            )
        begin, end = begins[0], ends[0]
        before = "".join(lines[: begin + 1])
        if not before.endswith("\n"):
            before += "\n"
        return before + self.services_table(spec) + "".join(lines[end:])

    def _render(self, name: str, **context: Any) -> str:
        try:
            template = self._env.get_template(name)
            return template.render(**context)
        except jinja2.TemplateNotFound as err:
            where = f"{self._local_dir} or " if self._local_dir else ""
            raise ConfigError(
                f"template {err.name} not found in {where}the nomad-pginit package"
            ) from err
        except jinja2.TemplateSyntaxError as err:
            raise ConfigError(
                f"{err.filename or err.name}:{err.lineno}: template syntax error: {err.message}"
            ) from err
        except jinja2.UndefinedError as err:
            where = _template_frame(err.__traceback__) or name
            known = ", ".join(sorted(context))
            raise ConfigError(
                f"{where}: {err.message}; this template may use only: {known}"
            ) from err
        except jinja2.TemplateError as err:
            where = _template_frame(err.__traceback__) or name
            raise ConfigError(f"{where}: {err.message}") from err


@dataclass(frozen=True)
class _ServiceEntry:
    """One [[service]] table: the keys whose values differ from their defaults."""

    service: Service

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def settings(self) -> list[tuple[str, object]]:
        # Generic over Service's fields, so that a setting added to the services
        # file reaches the task; _check_round_trip catches one that would not.
        entries: list[tuple[str, object]] = []
        for field in fields(self.service):
            if field.name in ("name", "password"):
                continue
            value = getattr(self.service, field.name)
            if field.name in ("database", "user"):
                if value == self.service.name:
                    continue
            elif value == field.default:
                continue
            entries.append((field.name, value))
        return entries


def _template_frame(tb: TracebackType | None) -> str | None:
    """``file:line`` of the innermost template frame: Jinja2 rewrites tracebacks to show them."""
    where = None
    for frame, lineno in _frames(tb):
        if frame.endswith(".j2"):
            where = f"{frame}:{lineno}"
    return where


def _frames(tb: TracebackType | None) -> Iterator[tuple[str, int]]:
    while tb is not None:
        yield tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next


def _check_renderable(spec: Spec, texts: Iterable[tuple[str, str]]) -> None:
    """Refuse text that consul-template would execute, and a service holding the admin's secret."""
    problems = [
        f"{where} {text!r} contains '{{{{' or '}}}}', which consul-template would execute "
        "inside a template block"
        for where, text in texts
        if "{{" in text or "}}" in text
    ]
    if problems:
        raise ConfigError(f"{spec.source}: cannot be rendered into Nomad job text", problems)


def _check_admin_secret(spec: Spec) -> None:
    """No service may share the superuser's secret: the job's (default postgres/admin)."""
    sharers = admin_secret_sharers(spec.services, task_postgres(spec).password_secret, spec.vault)
    if sharers:
        problems = [f"{where}: {why}" for where, why in sharers]
        raise ConfigError(f"{spec.source}: cannot be rendered into Nomad job text", problems)


def _check_external(spec: Spec) -> None:
    """An external cluster: the job must know where it is, and hold no password."""
    if not spec.job.external:
        return
    problems = []
    if not spec.postgres.dsn and not spec.job.primary_service:
        problems.append(
            '[job] postgres = "external": [postgres] dsn must say where the cluster is, e.g. '
            '"postgresql://postgres@db1:5432,db2:5432/postgres?target_session_attrs=read-write"'
            ", or [job] primary_service which service its primary is (Patroni: "
            '"master.<scope>")'
        )
    if spec.postgres.dsn and postgres.dsn_password(spec.postgres.dsn):
        problems.append(
            "[postgres] dsn holds a password (or sslpassword), which would be written into "
            "the job: keep the admin's password in Vault ([postgres] password_secret, "
            f"default {ADMIN_VAULT_PATH})"
        )
    if problems:
        raise ConfigError(f"{spec.source}: cannot be rendered into Nomad job text", problems)


def _check_round_trip(spec: Spec, text: str, services_part: str | None = None) -> None:
    """The delivered services file (or live mode's two parts of it) must mean what the
    source means: a template could drop keys."""
    where = Path(TASK_SERVICES_FILE)
    try:
        if services_part is None:
            delivered = spec_module.parse(tomllib.loads(text), where)
        else:
            delivered = spec_module.loads_parts(text, Path(TASK_CLUSTER_FILE), services_part, where)
    except (tomllib.TOMLDecodeError, ConfigError) as err:
        raise ConfigError(
            f"template {SERVICES_FILE_TEMPLATE} produced an invalid services file: {err}"
        ) from err
    differences = [
        label
        for label, ours, theirs in (
            ("[postgres]", task_postgres(spec), delivered.postgres),
            ("[vault]", task_vault(spec), delivered.vault),
            ("[[service]] entries", spec.services, delivered.services),
        )
        if ours != theirs
    ]
    if differences:
        raise ConfigError(
            f"template {SERVICES_FILE_TEMPLATE} does not carry {spec.source} faithfully: "
            f"{', '.join(differences)} differ; fix the template"
        )


def unified_diff(current: str, rendered: str, path: Path) -> str:
    """What ``render`` would change in ``path``, as a unified diff."""
    return "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            fromfile=f"{path} (committed)",
            tofile=f"{path} (rendered)",
        )
    )


# --- filters -------------------------------------------------------------------


def _quoted(text: str) -> str:
    """A double-quoted string that HCL, TOML and Go all read back as ``text``.

    The escapes used, ``\\"``, ``\\\\`` and ``\\uXXXX``, mean the same in all three.
    """
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _hcl_template_escape(text: str) -> str:
    # HCL reads ${ and %{ as interpolation and directives, in heredocs too.
    return text.replace("${", "$${").replace("%{", "%%{")


def hcl_string(value: object) -> str:
    """A quoted HCL string holding exactly ``value``."""
    return _hcl_template_escape(_quoted(str(value)))


def hcl_heredoc(value: object, marker: str = "EOT") -> str:
    """Text for the body of a ``<<EOT`` heredoc that holds exactly ``value``."""
    text = str(value)
    if any(line.strip() == marker for line in text.splitlines()):
        raise ConfigError(f"a line of a heredoc body is its end marker {marker}")
    return _hcl_template_escape(text)


def toml_value(value: object) -> str:
    """A TOML value: a basic string, an integer, a boolean or an array."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return _quoted(str(value))


def go_string(value: object) -> str:
    """A Go string literal, for the arguments of consul-template functions."""
    return _quoted(str(value))


def markdown_cell(value: object) -> str:
    """Text that stays inside one cell of a Markdown table."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|")


_FILTERS: Final[dict[str, Callable[..., str]]] = {
    "hcl_string": hcl_string,
    "hcl_heredoc": hcl_heredoc,
    "toml_value": toml_value,
    "go_string": go_string,
    "markdown_cell": markdown_cell,
}


def job_files(
    templates: Templates, services: Spec, job_path: Path, readme: Path | None
) -> list[tuple[Path, str]]:
    """What `render` writes: the job, and the services table of ``readme`` when it has one.

    Raises ConfigError when ``readme`` does not exist; a README without the
    markers is left out (the caller decides whether that is an error).
    """
    files = [(job_path, templates.job(services))]
    if readme is not None:
        try:
            current = readme.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read {readme}: {err}") from err
        updated = templates.update_readme(current, services, readme)
        if updated is not None:
            files.append((readme, updated))
    return files


def read_if_exists(path: Path) -> str | None:
    """The file's text, or None when it does not exist yet."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err


def write_changed(files: Sequence[tuple[Path, str]]) -> list[Path]:
    """Write each file whose text differs, atomically; return the ones written."""
    written = []
    for path, text in files:
        if read_if_exists(path) != text:
            write_atomically(path, text)
            written.append(path)
    return written


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as handle:
        temporary = Path(handle.name)
        try:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    try:
        if mode is not None:
            temporary.chmod(mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
