"""Options that several subcommands share, with their environment fallbacks."""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Mapping

from nomad_pginit import spec
from nomad_pginit.errors import ConfigError
from nomad_pginit.postgres import Readiness
from nomad_pginit.report import LOG_FORMATS, log_abandoned
from nomad_pginit.stopping import StopRequest, exit_code

DEFAULT_WAIT_TIMEOUT = 120.0
# Longer than any start-up; beyond it, timers and PostgreSQL's timeouts overflow.
MAX_WAIT_TIMEOUT = 86400.0
STANDALONE_ATTEMPTS = 5
STANDALONE_INTERVAL = 5.0


def common_parser() -> argparse.ArgumentParser:
    """--config and --log-format, accepted after every subcommand."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"the services file (default: ${spec.ENV_CONFIG})",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("PGINIT_LOG_FORMAT", "plain"),
        help="plain lines, or one JSON object per line (default: $PGINIT_LOG_FORMAT or plain)",
    )
    return parser


def add_wait_timeout(parser: argparse.ArgumentParser, default: float | None = None) -> None:
    """--wait-timeout; ``default`` for a command that waits that long wherever it runs."""
    if default is not None:
        otherwise = f"{default:g}"
        what = "accept connections"
    else:
        otherwise = (
            f"{DEFAULT_WAIT_TIMEOUT:g} in a Nomad allocation, {STANDALONE_ATTEMPTS} attempts "
            f"{STANDALONE_INTERVAL:g}s apart elsewhere"
        )
        what = "accept connections as a writable primary"
    parser.add_argument(
        "--wait-timeout",
        metavar="SECONDS",
        help=f"how long to wait for PostgreSQL to {what} (default: $PGINIT_WAIT_TIMEOUT, "
        f"else {otherwise})",
    )


def readiness(
    args: argparse.Namespace, environ: Mapping[str, str], default: float | None = None
) -> Readiness:
    """How long to wait for PostgreSQL.

    --wait-timeout, else $PGINIT_WAIT_TIMEOUT, else ``default`` when given, else:
    inside a Nomad allocation 120 s of frequent probes; standalone (Docker Compose,
    Kubernetes) the old provisioner's 5 attempts 5 seconds apart.
    """
    raw = args.wait_timeout or environ.get("PGINIT_WAIT_TIMEOUT")
    if raw is None or raw == "":
        if default is not None:
            return Readiness(timeout=default)
        if environ.get("NOMAD_ALLOC_ID"):
            return Readiness(timeout=DEFAULT_WAIT_TIMEOUT)
        return Readiness.attempts(STANDALONE_ATTEMPTS, STANDALONE_INTERVAL)
    source = "--wait-timeout" if args.wait_timeout else "$PGINIT_WAIT_TIMEOUT"
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{source} must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value < 0 or value > MAX_WAIT_TIMEOUT:
        raise ConfigError(
            f"{source} must be a number of seconds from 0 to {MAX_WAIT_TIMEOUT:g} (a day), "
            f"not {raw!r}"
        )
    return Readiness(timeout=value)


def load_spec(args: argparse.Namespace, environ: Mapping[str, str]) -> spec.Spec:
    return spec.load(spec.config_path(args.config, environ))


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    """--json: the command prints one JSON document on stdout; cli.main sends the log
    to stderr then, so that stdout carries the document alone."""
    parser.add_argument("--json", action="store_true", help=f"{what}; the log goes to stderr")


def last_words(stop: StopRequest) -> int:
    """The summary a run or plan stuck on something unreachable could not write (the
    stop's last resort), and the code it ends with."""
    log_abandoned(stop.fatal, logging.getLogger("nomad_pginit"))
    if stop.fatal is not None:
        return int(stop.fatal.exit_code)
    return int(exit_code(stop.signal))
