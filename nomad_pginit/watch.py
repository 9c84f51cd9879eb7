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
from nomad_pginit.outcome import Outcome
from nomad_pginit.passwords import vault_too_slow
from nomad_pginit.postgres import Readiness
from nomad_pginit.provision import primary_now, reconcile, warn_inline_passwords
from nomad_pginit.report import (
    APPLYING,
    INVALID_NEW_FILE,
    REASON_CHANGED,
    REASON_RELOAD,
    REASON_START,
    log_end,
)
from nomad_pginit.stopping import Stopped, StopRequest
from nomad_pginit.vault import Vault, request_deadline

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
        self.environ = environ
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
            self._client = Vault.connect(spec.vault, self.environ)
        else:
            self._client.refresh()
        return self._client


@dataclass(frozen=True)
class SpecFiles:
    """Where the configuration comes from: one services file, or (live mode) the job's
    own file for [postgres] and [vault] and the variable's file for the services."""

    config: Path
    services: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        return (self.config,) if self.services is None else (self.config, self.services)

    def describe(self) -> str:
        return " and ".join(str(path) for path in self.paths())

    def read(self) -> tuple[bytes, ...]:
        contents = []
        for path in self.paths():
            try:
                contents.append(path.read_bytes())  # follows the symlink a ConfigMap swaps
            except FileNotFoundError as err:
                option = "--config PATH or set $PGINIT_CONFIG"
                if path == self.services:
                    option = "--services PATH or set $PGINIT_SERVICES"
                raise ConfigError(f"services file {path} does not exist: pass {option}") from err
            except OSError as err:
                raise ConfigError(f"cannot read services file {path}: {err.strerror}") from err
        return tuple(contents)

    def parse(self, content: tuple[bytes, ...]) -> specs.Spec:
        texts = []
        for path, part in zip(self.paths(), content, strict=True):
            try:
                texts.append(part.decode("utf-8"))
            except UnicodeDecodeError:
                raise ConfigError(f"services file {path} is not UTF-8 text") from None
        if self.services is None:
            return specs.loads(texts[0], self.config)
        return specs.loads_parts(texts[0], self.config, texts[1], self.services)

    def load(self) -> specs.Spec:
        return self.parse(self.read())


def watch(
    files: SpecFiles,
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
    content = files.read()
    spec = files.parse(content)  # exit 2 if broken now
    log.info("watching %s and the Vault secrets every %gs", files.describe(), settings.interval)
    warn_inline_passwords(spec)
    reason: str | None = REASON_START
    versions: dict[str, int] = {}
    last_pass = 0.0
    vault = _VaultSession(environ)
    leftovers: frozenset[str] = frozenset()  # reported already: said once, not each pass
    # The primary the last pass finished on, and when it started: another one (a
    # failover) or a restart between passes may have lost that pass's last work.
    primary: str | None = None
    while not stop.is_set():
        if reason is None and time.monotonic() - last_pass >= settings.resync:
            reason = "periodic check for drift"
        if reason is not None:
            log_pass(reason, spec)
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
                    primary = outcome.postgres_identity
        if _sleep(settings.interval, stop, reload):
            break
        reloaded = reload.is_set()
        reload.clear()
        new_content = _read_or_keep(files, content)
        if new_content != content or reloaded:
            content = new_content
            try:
                spec = files.parse(content)
            except ConfigError as err:
                log.error("the new %s %s: %s", files.describe(), INVALID_NEW_FILE, err)
                continue
            reason = REASON_RELOAD if reloaded else REASON_CHANGED
            warn_inline_passwords(spec)
            continue
        if reason is None:
            reason = _rotated(spec, versions, vault, stop, reload)
        if reason is None and primary is not None:
            reason = _primary_changed(spec, primary, vault, stop)
    if stop.fatal is not None:
        # Something stopped answering for good: Nomad starts the sidecar afresh.
        log.error("stopped: %s", stop.fatal)
        return int(stop.fatal.exit_code)
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
        client = stop.call(
            lambda: vault.client(spec),
            "logging in to Vault",
            deadline=request_deadline(environ),
            too_slow=vault_too_slow(spec, "the login"),
        )
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
    log_end(outcome, log)
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


def _read_or_keep(files: SpecFiles, previous: tuple[bytes, ...]) -> tuple[bytes, ...]:
    try:
        return files.read()
    except ConfigError as err:
        # Mid-swap, or deleted by mistake: keep the last good configuration.
        log.warning("%s; keeping the last good configuration", err)
        return previous


def log_pass(reason: str, spec: specs.Spec) -> None:
    """The line that starts a pass: why, and which services (their fingerprint, which
    deploy waits for after it published them)."""
    count = len(spec.services)
    digest = specs.fingerprint(spec.services)
    log.info(
        "%s (%s): %d service%s, fingerprint %s",
        APPLYING,
        reason,
        count,
        "" if count == 1 else "s",
        digest,
        extra={"event": "pass", "fingerprint": digest},
    )


def _primary_changed(
    spec: specs.Spec, primary: str, session: _VaultSession, stop: StopRequest
) -> str | None:
    """Why to re-apply because PostgreSQL is another server now, or None. Unreachable
    is not a change: the next look (or pass) tells."""
    try:
        now = primary_now(spec, session.environ, stop, session.client(spec))
    except (Stopped, PginitError):
        return None
    if now is None or now == primary:
        return None
    return f"the writable primary is now {now}, was {primary}: a failover or a restart"


def _rotated(
    spec: specs.Spec,
    versions: Mapping[str, int],
    session: _VaultSession,
    stop: StopRequest,
    reload: threading.Event,
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
            if stop.is_set() or reload.is_set():
                return None  # a SIGHUP reads the file first, and looks at Vault again
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
        # Each read may take hvac's timeout; the whole look no more than this.
        deadline = request_deadline(session.environ) + len(from_vault)
        reason = stop.call(
            look,
            "looking for rotated passwords in Vault",
            deadline=deadline,
            too_slow=vault_too_slow(spec, "the reads of the passwords' versions"),
        )
    except Stopped:
        return None
    except PginitError as err:
        session.trouble(f"cannot look for rotated passwords in Vault: {err}")
        return None
    session.fine()
    return reason
