"""Watch mode: keep running, and re-apply when the services file or a password changes.

The file is compared by content, not modification time: Kubernetes swaps a
ConfigMap in through a symlink, and editors may keep the time. A password
rotated in Vault is noticed by its KV v2 version, so it reaches PostgreSQL
without a redeploy. A broken edit is reported once and the last good
configuration stays in force. One Vault client lives as long as the process:
its token is renewed, or obtained again, before each look at Vault.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nomad_pginit import spec as specs
from nomad_pginit.errors import ConfigError, PginitError, SecretUnavailable, VaultUnavailable
from nomad_pginit.postgres import Readiness
from nomad_pginit.provision import Outcome, reconcile, warn_inline_passwords
from nomad_pginit.report import (
    APPLYING,
    INVALID_NEW_FILE,
    REASON_CHANGED,
    REASON_RELOAD,
    REASON_START,
    log_summary,
)
from nomad_pginit.stopping import Stopped, StopRequest
from nomad_pginit.vault import Vault

log = logging.getLogger(__name__)

# How soon a SIGHUP is noticed while watch mode waits.
_RELOAD_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class WatchSettings:
    interval: float
    # A full pass at least this often, to repair drift nobody announced.
    resync: float
    readiness: Readiness
    disable_removed: bool = False


class _VaultSession:
    """The Vault client that watch mode keeps between passes, refreshed before each use.

    It says once when Vault stops answering, and once when it answers again, not
    at every look.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._client: Vault | None = None
        self._trouble: str | None = None

    def trouble(self, message: str) -> None:
        if self._trouble is None:
            log.warning("%s; rotations wait until it answers", message)
        self._trouble = message

    def fine(self) -> None:
        if self._trouble is not None:
            log.info("Vault answers again: looking for rotated passwords as before")
        self._trouble = None

    def client(self, spec: specs.Spec) -> Vault | None:
        """A usable client for ``spec``, or None when no password is in Vault.

        Raises VaultUnavailable when Vault cannot be reached or refuses every token.
        """
        needed = spec.postgres.password_secret or any(
            service.password is None for service in spec.services
        )
        if not needed:
            return None
        if self._client is None or self._client.settings != spec.vault:
            self._client = None  # a failed login leaves no client behind
            self._client = Vault.connect(spec.vault, self._environ)
        else:
            self._client.refresh()
        return self._client


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()  # follows the symlink a ConfigMap update swaps
    except OSError as err:
        raise ConfigError(f"cannot read services file {path}: {err.strerror}") from err


def watch(
    path: Path,
    settings: WatchSettings,
    stop: StopRequest,
    environ: Mapping[str, str],
    reload: threading.Event | None = None,
) -> int:
    """Apply, then keep applying on change until ``stop`` is set. Returns the exit code.

    ``reload`` (SIGHUP: Nomad re-rendered the services file) makes it read the file
    again and apply at once, whatever the interval.
    """
    reload = reload or threading.Event()
    content = _read(path)
    spec = specs.loads(content.decode("utf-8", errors="replace"), path)  # exit 2 if broken now
    log.info("watching %s and the Vault secrets every %gs", path, settings.interval)
    warn_inline_passwords(spec)
    reason: str | None = REASON_START
    versions: dict[str, int] = {}
    last_pass = 0.0
    vault = _VaultSession(environ)
    leftovers: frozenset[str] = frozenset()  # reported already: said once, not each pass
    while not stop.is_set():
        if reason is None and time.monotonic() - last_pass >= settings.resync:
            reason = "periodic check for drift"
        if reason is not None:
            log.info("%s (%s)", APPLYING, reason)
            outcome = _apply(spec, settings, stop, environ, vault, leftovers=leftovers)
            last_pass = time.monotonic()
            if outcome is None or outcome.fatal is not None:
                # PostgreSQL or Vault was away: try again at the next tick. A service
                # that failed alone is retried when its secret changes, or at resync.
                reason = "retrying: the last pass could not finish"
            else:
                reason = None
            if outcome is not None:
                versions = outcome.secret_versions
                if outcome.fatal is None and not outcome.stopped:
                    leftovers = frozenset(outcome.leftovers)
        if _sleep(settings.interval, stop, reload):
            break
        reloaded = reload.is_set()
        reload.clear()
        new_content = _read_or_keep(path, content)
        if new_content != content or reloaded:
            content = new_content
            try:
                spec = specs.loads(content.decode("utf-8", errors="replace"), path)
            except ConfigError as err:
                log.error("the new %s %s: %s", path, INVALID_NEW_FILE, err)
                continue
            reason = REASON_RELOAD if reloaded else REASON_CHANGED
            warn_inline_passwords(spec)
            continue
        if reason is None:
            reason = _rotated(spec, versions, vault, stop)
    log.info("stopped")
    return 0


def _apply(
    spec: specs.Spec,
    settings: WatchSettings,
    stop: StopRequest,
    environ: Mapping[str, str],
    vault: _VaultSession,
    *,
    leftovers: frozenset[str],
) -> Outcome | None:
    try:
        # Logging in may wait for Vault's timeout: the stop request does not wait for it.
        client = stop.call(lambda: vault.client(spec), "logging in to Vault")
        outcome = reconcile(
            spec,
            readiness=settings.readiness,
            apply=True,
            disable_removed=settings.disable_removed,
            environ=environ,
            stop=stop,
            quiet=True,
            vault=client,
            known_leftovers=leftovers,
        )
    except Stopped:
        return None
    except PginitError as err:
        log.error("%s", err)
        return None
    if outcome.fatal is not None:
        log.error("%s", outcome.fatal)
    log_summary(outcome, log)
    return outcome


def _sleep(seconds: float, stop: StopRequest, reload: threading.Event) -> bool:
    """Wait ``seconds``, less when SIGHUP or a stop comes; True when asked to stop."""
    deadline = time.monotonic() + seconds
    while not reload.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if stop.wait(min(remaining, _RELOAD_POLL_SECONDS)):
            return True
    return stop.is_set()


def _read_or_keep(path: Path, previous: bytes) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        # Mid-swap, or deleted by mistake: keep the last good configuration.
        log.warning("cannot read %s (%s); keeping the last good configuration", path, err.strerror)
        return previous


def _rotated(
    spec: specs.Spec, versions: Mapping[str, int], session: _VaultSession, stop: StopRequest
) -> str | None:
    """Why to re-apply because of Vault, or None: a secret got a new version, or appeared."""
    from_vault = [service for service in spec.services if service.password is None]
    if not from_vault:
        return None

    def look() -> str | None:
        vault = session.client(spec)
        if vault is None:
            return None
        for service in from_vault:
            if stop.is_set():
                return None
            try:
                version = vault.read_password(service.name).version
            except SecretUnavailable as err:
                if err.unreachable:
                    raise VaultUnavailable(str(err)) from err
                continue  # still missing or unreadable: the last pass reported it
            if versions.get(service.name) != version:
                return f"{spec.vault.cli_path(service.name)} has version {version}"
        return None

    try:
        # Each read may wait for Vault's timeout: the stop request does not wait for them.
        reason = stop.call(look, "looking for rotated passwords in Vault")
    except Stopped:
        return None
    except PginitError as err:
        session.trouble(f"cannot look for rotated passwords in Vault: {err}")
        return None
    session.fine()
    return reason
