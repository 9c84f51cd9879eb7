"""The one error hierarchy, and the exit codes it maps to.

Each module that talks to an outside system translates that library's errors
into one of these (``raise ... from err``) with a message that tells the
operator what to do next. ``cli.main`` is the only place that turns them into
exit codes. Messages never contain a password or a SCRAM verifier.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of every command: run's in README.md, the others' in docs/operator-commands.md."""

    OK = 0
    SERVICE_FAILED = 1  # at least one service failed; the others were provisioned
    CONFIG = 2  # invalid configuration or usage; nothing was read or written
    # plan: the run would change something. The number is the config error's
    # (documented), the name says what it means: an alias, as IntEnum makes it.
    CHANGES_PENDING = 2
    POSTGRES = 3  # not ready before the deadline, the admin cannot log in, older than 14
    VAULT = 4  # Vault unreachable, or the token rejected
    NOMAD = 5  # Nomad unreachable, job unknown or token rejected
    # Asked to stop (128 + the signal) before every service was in sync: the rest
    # are left for the next run.
    INTERRUPTED = 130  # SIGINT
    STOPPED = 143  # SIGTERM


class PginitError(Exception):
    """Root of the errors that the tool expects and explains."""

    exit_code: ExitCode = ExitCode.SERVICE_FAILED
    # What the summary line says when this error stops a run before any service.
    summary: str = "stopped"


class ConfigError(PginitError):
    """The services file or the command line is invalid.

    ``problems`` lists every problem found, each with where it is, so that an
    operator fixes them all in one edit.
    """

    exit_code = ExitCode.CONFIG
    summary = "invalid configuration; nothing was read or changed"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems or []

    def __str__(self) -> str:
        if not self.problems:
            return super().__str__()
        lines = [super().__str__()]
        lines.extend(f"  - {problem}" for problem in self.problems)
        return "\n".join(lines)


class PostgresUnavailable(PginitError):
    """PostgreSQL did not become a writable primary in time, or refused the admin."""

    exit_code = ExitCode.POSTGRES
    summary = "PostgreSQL not available; nothing was changed"


class ConnectionLost(PostgresUnavailable):
    """The connection to PostgreSQL broke mid-run: the server stopped or crashed, or the
    primary failed over to a standby. A run waits for a writable primary and starts
    over from the catalogs (provision.reconcile)."""


class VaultUnavailable(PginitError):
    """Vault cannot be reached, or it rejects the token."""

    exit_code = ExitCode.VAULT
    summary = "Vault not available; nothing was changed"


class NomadUnavailable(PginitError):
    """Nomad cannot be reached, does not know the job, or rejects the token."""

    exit_code = ExitCode.NOMAD


class VariableChanged(PginitError):
    """Someone else wrote a Nomad variable between our read and our write (HTTP 409)."""

    exit_code = ExitCode.SERVICE_FAILED


class ServiceError(PginitError):
    """One service could not be provisioned; the others go on."""

    exit_code = ExitCode.SERVICE_FAILED


class SecretUnavailable(ServiceError):
    """One service's password could not be read from Vault."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        # Vault did not answer (down, sealed, a timeout): not this secret's problem.
        self.unreachable = unreachable
