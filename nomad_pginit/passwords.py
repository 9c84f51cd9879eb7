"""Each service's password, for ``run``, ``plan`` and ``check`` alike: logging in to
Vault (and reading the admin's password there), then the services' passwords read
by a pool of threads while the run waits for PostgreSQL, each with a deadline."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from nomad_pginit import stopping
from nomad_pginit import vault as vault_module
from nomad_pginit.errors import PginitError, VaultUnavailable
from nomad_pginit.secret import Secret
from nomad_pginit.spec import Service, Spec
from nomad_pginit.stopping import StopRequest
from nomad_pginit.vault import Vault, VaultSecret, request_deadline

log = logging.getLogger(__name__)

# Vault reads in flight: enough to hide round trips, few enough for a small Vault.
VAULT_WORKERS = 8


def count(number: int, noun: str) -> str:
    """ "1 password", "2 passwords"."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def connect_vault(spec: Spec, environ: Mapping[str, str]) -> Vault | None:
    """A logged-in Vault client, or None when no password is in Vault (all inline)."""
    if not spec.postgres.password_secret and all(
        service.password is not None for service in spec.services
    ):
        return None
    return Vault.connect(spec.vault, environ)


def log_in_to_vault(
    spec: Spec, env: Mapping[str, str], stop: StopRequest, vault: Vault | None = None
) -> tuple[Vault | None, Secret | None]:
    """A Vault client logged in (``vault`` when one is given, None when no password is
    in Vault), and the admin's password when the services file keeps it there; each
    request within VAULT_CLIENT_TIMEOUT, and a stop honoured meanwhile."""
    deadline = request_deadline(env)
    if vault is None:
        vault = stop.call(
            lambda: connect_vault(spec, env),
            "logging in to Vault",
            deadline=deadline,
            too_slow=vault_too_slow(spec, "the login"),
        )
    secret = spec.postgres.password_secret
    if not secret:
        return vault, None
    assert vault is not None  # connect_vault connects when the admin's secret is in Vault
    reader = vault
    password = stop.call(
        lambda: reader.read_admin_password(secret),
        "reading the admin's password",
        deadline=deadline,
        too_slow=vault_too_slow(spec, f"the read of {spec.vault.mount}/{secret}"),
    )
    return vault, password


def _timed(started: dict[str, float], name: str, vault: Vault) -> VaultSecret:
    started[name] = time.monotonic()
    return vault.read_password(name)


def vault_too_slow(spec: Spec, what: str) -> Callable[[float], PginitError]:
    def error(seconds: float) -> PginitError:
        return VaultUnavailable(
            f"Vault has not finished {what} after {seconds:g}s (a proxy that trickles, or a "
            "connection that stalled): giving up; check VAULT_ADDR and what stands between"
        )

    return error


class PasswordReads:
    """Each service's password: inline, or read from Vault by a pool of threads.

    The reads start at once (``start``); each service's work waits for its own
    (``wait``), so provisioning overlaps the reads instead of following them.
    """

    def __init__(
        self,
        inline: Mapping[str, Secret],
        reads: Mapping[str, Future[VaultSecret]],
        started: Mapping[str, float] | None = None,
        where: str = "",
        deadline: float = vault_module.DEFAULT_REQUEST_DEADLINE,
    ) -> None:
        self._deadline = deadline
        self._inline = inline
        self._reads = reads
        # When each read began (a worker took it), for its deadline.
        self._started = started if started is not None else {}
        self._where = where

    @classmethod
    def start(
        cls,
        spec: Spec,
        vault: Vault | None,
        pool: ThreadPoolExecutor,
        deadline: float = vault_module.DEFAULT_REQUEST_DEADLINE,
        *,
        quiet: bool = False,
    ) -> PasswordReads:
        inline = {
            service.name: service.password
            for service in spec.services
            if service.password is not None
        }
        started: dict[str, float] = {}
        from_vault = [service for service in spec.services if service.password is None]
        reads: dict[str, Future[VaultSecret]] = {}
        if vault is not None and from_vault:
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "reading %s from Vault at %s (with %s)",
                count(len(from_vault), "password"),
                vault.address,
                vault.source.description,
            )
            # Submitted in the file's order, which is the order services are worked on.
            reads = {
                service.name: pool.submit(_timed, started, service.name, vault)
                for service in from_vault
            }
        where = vault.address if vault is not None else ""
        return cls(inline, reads, started, where, deadline)

    def wait(self, service: Service, stop: StopRequest) -> Secret:
        """The service's password. Raises SecretUnavailable when Vault has none to give,
        Stopped when asked to stop meanwhile."""
        if service.name in self._inline:
            return self._inline[service.name]
        read = self._reads[service.name]
        while True:
            try:
                return read.result(timeout=stopping.POLL_SECONDS).password
            except FutureTimeout:
                stop.check(f"reading the password of {service.name}")
            begun = self._started.get(service.name)
            if begun is not None and time.monotonic() - begun > self._deadline:
                err = VaultUnavailable(
                    f"Vault at {self._where} has not finished answering the read of "
                    f"{service.name}'s password after {self._deadline:g}s (a proxy that "
                    "trickles, or a connection that stalled): giving up; check VAULT_ADDR and "
                    "what stands between"
                )
                stop.abandon(err)  # the run ends; the process does not wait for the read
                raise err

    def versions(self) -> dict[str, int]:
        """The Vault version of each password read so far, for watch mode."""
        return {
            name: read.result().version
            for name, read in self._reads.items()
            if read.done() and not read.cancelled() and read.exception() is None
        }
