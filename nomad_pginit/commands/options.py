"""Options that several subcommands share, with their environment fallbacks."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping

from nomad_pginit import spec
from nomad_pginit.errors import ConfigError
from nomad_pginit.postgres import Readiness
from nomad_pginit.report import LOG_FORMATS

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


def add_wait_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait-timeout",
        metavar="SECONDS",
        help="how long to wait for PostgreSQL to accept connections as a writable primary "
        f"(default: $PGINIT_WAIT_TIMEOUT, else {DEFAULT_WAIT_TIMEOUT:g} in a Nomad allocation, "
        f"{STANDALONE_ATTEMPTS} attempts {STANDALONE_INTERVAL:g}s apart elsewhere)",
    )


def readiness(args: argparse.Namespace, environ: Mapping[str, str]) -> Readiness:
    """How long to wait for PostgreSQL.

    --wait-timeout, else $PGINIT_WAIT_TIMEOUT, else: inside a Nomad allocation
    120 s of frequent probes; standalone (Docker Compose, Kubernetes) the old
    provisioner's 5 attempts 5 seconds apart.
    """
    raw = args.wait_timeout or environ.get("PGINIT_WAIT_TIMEOUT")
    if raw is None or raw == "":
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
