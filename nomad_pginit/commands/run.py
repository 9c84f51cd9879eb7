"""``nomad-pginit run``: the init-databases task itself."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from nomad_pginit import __version__
from nomad_pginit.commands import options
from nomad_pginit.envbool import parse_switch
from nomad_pginit.errors import ConfigError
from nomad_pginit.provision import reconcile, warn_inline_passwords
from nomad_pginit.report import log_end
from nomad_pginit.spec import config_path as spec_path
from nomad_pginit.stopping import StopRequest
from nomad_pginit.watch import SpecFiles, WatchSettings, watch

# The services file of live mode's split (--services).
ENV_SERVICES = "PGINIT_SERVICES"

log = logging.getLogger("nomad_pginit")


HELP: Final = "create or repair every service's role, database and privileges"
DESCRIPTION: Final = (
    "Wait for PostgreSQL, read each service's password from Vault, and create or "
    "repair its login role, database and privileges. Exit codes: 0 every service in "
    "sync, 1 a service failed, 2 invalid configuration, 3 PostgreSQL not ready or the "
    "admin cannot log in, 4 Vault unreachable or the token rejected, 143/130 stopped by "
    "SIGTERM/SIGINT before every service was in sync."
)
# The task's log always ends with its summary line, even after a fatal error.
SUMMARY_ON_ERROR: Final = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_wait_timeout(parser)
    parser.add_argument(
        "--disable-removed",
        action="store_true",
        help="set NOLOGIN on roles that nomad-pginit created for services no longer in the "
        "file, and end their open sessions (nothing is ever dropped)",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        default=None,
        help="keep running: re-apply when the services file changes (at once on SIGHUP) or a "
        "password gets a new version in Vault (default: $WATCH_MODE); SIGTERM or SIGINT "
        "stops it within a second or two, exit 0",
    )
    parser.add_argument(
        "--services",
        metavar="PATH",
        help="the services ([defaults] and [[service]] entries only) from this file, and "
        "where PostgreSQL and Vault are from --config, which then lists no services: live "
        "mode's split, where the job carries --config and a Nomad variable this file "
        f"(default: ${ENV_SERVICES})",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="in watch mode, how often to look for changes (default: 10)",
    )
    parser.add_argument(
        "--resync",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="in watch mode, re-check everything this often to repair drift (default: 300)",
    )


def main(args: argparse.Namespace) -> int:
    environ = os.environ
    # SIGTERM (nomad alloc stop, docker stop, a pod's end) or SIGINT starts no other
    # service, gives those under way a second to finish, cancels what PostgreSQL
    # still runs for them, and the command exits with its summary line.
    stop = StopRequest()
    stop.install()
    stop.last_resort(lambda: options.last_words(stop))
    if _watch_mode(args, environ):
        if args.interval <= 0 or args.resync <= 0:
            raise ConfigError("--interval and --resync must be more than 0 seconds")
        settings = WatchSettings(
            interval=args.interval,
            resync=args.resync,
            readiness=options.readiness(args, environ),
            disable_removed=args.disable_removed,
        )
        stop.last_resort(lambda: _watch_last_words(stop))
        # SIGHUP: Nomad re-rendered the services file (live mode's template): apply now.
        reload = threading.Event()
        signal.signal(signal.SIGHUP, lambda *_: reload.set())
        code = watch(_files(args, environ), settings, stop, environ, reload)
        return stop.exit_now(code)
    # Not watching: nothing to read again, and a hangup must not end a run half-way.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    spec = _files(args, environ).load()
    log.info("nomad-pginit %s: %d services in %s", __version__, len(spec.services), spec.source)
    warn_inline_passwords(spec)
    outcome = reconcile(
        spec,
        readiness=options.readiness(args, environ),
        apply=True,
        disable_removed=args.disable_removed,
        environ=environ,
        stop=stop,
    )
    stop.finishing()
    log_end(outcome, log)
    return stop.exit_now(int(outcome.exit_code))


def _watch_last_words(stop: StopRequest) -> int:
    """Watch mode asked to stop (or given up on) while a pass could not end: exit
    anyway, 0 when asked, the failure's code otherwise (Nomad starts it again)."""
    if stop.fatal is not None:
        log.error("stopped: %s; the pass under way could not finish", stop.fatal)
        return int(stop.fatal.exit_code)
    log.info("stopped; the pass under way could not finish and is left for the next start")
    return 0


def _files(args: argparse.Namespace, environ: Mapping[str, str]) -> SpecFiles:
    services = args.services or environ.get(ENV_SERVICES)
    return SpecFiles(spec_path(args.config, environ), Path(services) if services else None)


def _watch_mode(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    """--watch, else $WATCH_MODE (true or false), as the standalone provisioner read it."""
    if args.watch:
        return True
    watching = parse_switch(environ.get("WATCH_MODE", ""))
    if watching is None:
        raise ConfigError(f"WATCH_MODE must be true or false, not {environ['WATCH_MODE']!r}")
    return watching
