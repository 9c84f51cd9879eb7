"""Live mode: the services file in a Nomad variable, which the job's sidecar applies.

In live mode the job does not carry the services file: its init task reads it
from the job's own variable through a template, and Nomad re-renders the file
and sends SIGHUP when the variable changes. So adding, changing or removing a
service is a write of that variable, never a new version of the job, and
PostgreSQL keeps running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nomad_pginit import render
from nomad_pginit.errors import ConfigError
from nomad_pginit.nomad import Nomad
from nomad_pginit.spec import VARIABLE_ITEM, Spec, loads_parts

log = logging.getLogger(__name__)

# Nomad refuses a variable whose items exceed this (nomad/structs/variables.go).
MAX_VARIABLE_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class Publication:
    """What publish did with the variable."""

    path: str
    changed: bool
    modify_index: int


def publish(
    client: Nomad, services: Spec, templates: render.Templates, *, prune: bool = False
) -> Publication:
    """Write the services, as the init task sees them, into the job's variable.

    Validated first (render's own checks), written with check-and-set on the
    ModifyIndex read just before (0 when creating), so that a write by someone
    else in between is refused (VariableChanged), never overwritten. The
    variable's other items are kept. The same content writes nothing. Services
    the variable holds and ``services`` lacks are removed only with ``prune``:
    an operator whose checkout predates someone else's publication would drop
    that one's services without a word.
    """
    if not services.job.live:
        raise ConfigError(
            f"{services.source}: [job] mode is {services.job.mode!r}: the job carries the "
            'services file itself; publish is for mode = "live"'
        )
    text = templates.services_part(services)
    path = services.job.variable
    current = client.variable(path)
    if current is not None and current.items.get(VARIABLE_ITEM) == text:
        log.info(
            "variable %s in %s is up to date (%d services)",
            path,
            client.settings.where(),
            len(services.services),
        )
        return Publication(path, changed=False, modify_index=current.modify_index)
    if current is not None and not prune:
        _refuse_removals(current.items.get(VARIABLE_ITEM), services, path)
    items = {**(current.items if current is not None else {}), VARIABLE_ITEM: text}
    size = sum(len(key.encode()) + len(value.encode()) for key, value in items.items())
    if size > MAX_VARIABLE_BYTES:
        raise ConfigError(
            f"the services file makes variable {path} {size} bytes long; Nomad holds at most "
            f"{MAX_VARIABLE_BYTES} bytes in a variable: nothing was written"
        )
    written = client.write_variable(
        path, items, cas=current.modify_index if current is not None else 0
    )
    log.info(
        "published %d services to variable %s in %s (ModifyIndex %d)",
        len(services.services),
        path,
        client.settings.where(),
        written.modify_index,
    )
    return Publication(path, changed=True, modify_index=written.modify_index)


def _refuse_removals(published: str | None, services: Spec, path: str) -> None:
    """Refuse a publication that would drop services the variable holds (without --prune)."""
    if published is None or not published.strip():
        return
    try:
        held = loads_parts("", Path("(job)"), published, Path(path))
    except ConfigError as err:
        raise ConfigError(
            f"variable {path} holds services nomad-pginit cannot read ({err}); publishing "
            "would replace them: look at them (nomad var get "
            f"{path}), then publish with --prune to replace them"
        ) from None
    ours = {service.name for service in services.services}
    dropped = sorted(service.name for service in held.services if service.name not in ours)
    if dropped:
        raise ConfigError(
            f"variable {path} holds services that {services.source} does not list "
            f"({', '.join(dropped)}): published by someone else since your checkout, or "
            "removed by you. Nothing was written: bring your file up to date (nomad var get "
            f"{path} shows them), or publish with --prune to remove them"
        )
