"""Every measurement, and the checks that each one measured what it claims.

One repetition runs, in this order, so that a noisy neighbour hurts all alike:
the CREATE DATABASE floor, ours (cold, warm, the login and PBKDF2 floors, warm
after a restart, rotate), the reference (cold, warm, warm after a restart,
rotate), the Vault reads, and readiness (twice). Floor, ours and the reference each get a
fresh cluster per repetition, so every "cold" starts from a just-initialised one.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from psycopg import pq, sql

from bench import floors, reference
from bench.lab import (
    BenchError,
    Lab,
    RunningTool,
    all_visited_since,
    can_create_in_public,
    can_log_in,
    connect,
    expect_provisioned,
    sessions,
    take_schema_away,
)
from nomad_pginit import spec as spec_file
from nomad_pginit.errors import ServiceError
from nomad_pginit.passwords import VAULT_WORKERS, PasswordReads, connect_vault
from nomad_pginit.stopping import StopRequest
from sandbox import ThrowawayPostgres

COLD, WARM, WARM_RESTART, ROTATE = "cold", "warm", "warm-restart", "rotate"
SCENARIOS = (COLD, WARM, WARM_RESTART, ROTATE)
TOGETHER, WAITING = "together", "waiting"
READINESS_MODES = (TOGETHER, WAITING)

# The readiness cluster logs every statement with a millisecond timestamp and the
# application name, so the tool's first statement can be found and timed.
READINESS_SETTINGS = {
    "log_statement": "all",
    "log_line_prefix": "%m app=%a ",
    "log_timezone": "UTC",
}
PING_INTERVAL_SECONDS = 0.001
_LOG_POLL_SECONDS = 0.002
_READINESS_TIMEOUT_SECONDS = 120.0
_LOG_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC app=(?P<app>\S*) (?P<rest>.*)$"
)
_TOOL_APP = "nomad-pginit"
_READY_MESSAGE = "database system is ready to accept connections"
_WAITING_MESSAGE = "waiting for PostgreSQL"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ReadinessSample:
    """One start of the server, in milliseconds."""

    # From "accepting" to the tool's first statement, where "accepting" is the earlier
    # of the two below: poll lag or log truncation can only make this figure worse.
    latency_ms: float
    # From the bench's first PQping OK (polled every 1 ms) to the first statement.
    latency_by_ping_ms: float
    # From the server's own "ready to accept connections" log line to the first statement.
    latency_by_server_log_ms: float
    # From launching the tool to the server accepting connections.
    tool_start_to_accepting_ms: float


@dataclass
class Results:
    """Every sample, in seconds unless the name says otherwise."""

    n: int
    repeat: int
    ours: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SCENARIOS})
    reference: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SCENARIOS})
    floor: list[float] = field(default_factory=list)
    vault: list[float] = field(default_factory=list)
    # What a warm run cannot do without (bench/floors.py): N logins, one per database, on
    # a warm server and right after a restart; N PBKDF2 checks on all cores; and, per
    # check, the CPU one core spends.
    floor_logins: list[float] = field(default_factory=list)
    floor_logins_restart: list[float] = field(default_factory=list)
    floor_pbkdf2: list[float] = field(default_factory=list)
    pbkdf2_cpu_per_check: list[float] = field(default_factory=list)
    # Our process's CPU (user + system), per scenario.
    cpu_seconds: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SCENARIOS})
    readiness: dict[str, list[ReadinessSample]] = field(
        default_factory=lambda: {mode: [] for mode in READINESS_MODES}
    )
    peak_rss_kib: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in SCENARIOS})
    # Per warm run: did it connect to every service's database (to check schema grants)?
    warm_visited_every_database: list[bool] = field(default_factory=list)
    # Schema grants taken away in a few databases: did the next run restore them?
    drift_repaired: bool | None = None
    drift_databases: list[str] = field(default_factory=list)
    # After the rotate run, does the new password log in?
    rotation_applied: list[bool] = field(default_factory=list)
    reference_rotation_applied: list[bool] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def measure_all(lab: Lab, repeat: int, progress: Progress) -> Results:
    psql = reference.find_psql()
    results = Results(n=lab.n, repeat=repeat, load_before=os.getloadavg())
    with ExitStack() as stack:
        readiness_cluster = ThrowawayPostgres(settings=READINESS_SETTINGS)
        stack.callback(readiness_cluster.cleanup)
        readiness_cluster.init()
        readiness_config = lab.services_file(readiness_cluster, "readiness")
        for rep in range(1, repeat + 1):
            tag = f"{rep}of{repeat}"
            label = f"[{rep}/{repeat}]"
            results.floor.append(measure_floor(lab.names))
            progress(f"{label} floor      {results.floor[-1]:8.2f} s")
            _measure_ours(lab, results, tag, drift_check=rep == repeat)
            progress(f"{label} ours       " + _last_three(results.ours))
            _measure_reference(lab, psql, results, tag)
            progress(f"{label} reference  " + _last_three(results.reference))
            results.vault.append(measure_vault(lab))
            progress(f"{label} vault      {results.vault[-1]:8.2f} s for {lab.n} reads")
            for mode in READINESS_MODES:
                sample = measure_readiness(
                    lab, readiness_cluster, readiness_config, waiting=mode == WAITING, tag=tag
                )
                results.readiness[mode].append(sample)
                progress(f"{label} readiness  {sample.latency_ms:8.1f} ms ({mode})")
    results.load_after = os.getloadavg()
    return results


def _last_three(samples: dict[str, list[float]]) -> str:
    return "  ".join(f"{scenario} {samples[scenario][-1]:.2f} s" for scenario in SCENARIOS)


# --- the floor ------------------------------------------------------------------------


def settle() -> None:
    """Write out dirty pages (ours and other tenants') so that no cold run pays for them."""
    os.sync()


def measure_floor(names: list[str]) -> float:
    """N bare CREATE DATABASE statements on one connection, on a fresh cluster."""
    with ThrowawayPostgres() as cluster, connect(cluster) as conn:
        settle()
        # Composed before the clock starts: the floor is the statements alone.
        statements = [
            sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)).as_bytes(conn)
            for name in names
        ]
        started = time.perf_counter()
        for statement in statements:
            conn.execute(statement)
        return time.perf_counter() - started


# --- ours -----------------------------------------------------------------------------


def _measure_ours(lab: Lab, results: Results, tag: str, *, drift_check: bool) -> None:
    with ThrowawayPostgres() as cluster:
        config = lab.services_file(cluster, f"ours-{tag}")

        settle()
        cold = lab.run_tool(config, f"ours-cold-{tag}")
        cold.expect("cold", created=lab.n)
        expect_provisioned(cluster, lab.names, "cold")

        before = sessions(cluster, lab.names)
        warm = lab.run_tool(config, f"ours-warm-{tag}")
        warm.expect("warm", unchanged=lab.n)
        results.warm_visited_every_database.append(all_visited_since(cluster, before))

        # The floors, on this very cluster: warm, then right after a restart.
        keys = floors.admin_keys(cluster)
        results.floor_logins.append(floors.logins(cluster, lab.names, keys))
        floors.restart(cluster)
        results.floor_logins_restart.append(floors.logins(cluster, lab.names, keys))
        seconds, per_check = floors.pbkdf2(
            floors.stored_verifiers(cluster, lab.secrets.read_all(lab.names))
        )
        results.floor_pbkdf2.append(seconds)
        results.pbkdf2_cpu_per_check.append(per_check)

        # In Nomad a redeploy restarts PostgreSQL: the warm run that matters comes after.
        floors.restart(cluster)
        before = sessions(cluster, lab.names)
        warm_restart = lab.run_tool(config, f"ours-warm-restart-{tag}")
        warm_restart.expect("warm after a restart", unchanged=lab.n)
        results.warm_visited_every_database.append(all_visited_since(cluster, before))

        service, password = lab.rotate()
        rotate = lab.run_tool(config, f"ours-rotate-{tag}")
        rotate.expect("rotate", updated=1, unchanged=lab.n - 1)
        results.rotation_applied.append(can_log_in(cluster, service, password))

        for scenario, run in (
            (COLD, cold),
            (WARM, warm),
            (WARM_RESTART, warm_restart),
            (ROTATE, rotate),
        ):
            results.ours[scenario].append(run.seconds)
            results.peak_rss_kib[scenario].append(run.peak_rss_kib)
            results.cpu_seconds[scenario].append(run.cpu_seconds)

        if drift_check:
            results.drift_databases = sorted({lab.names[0], lab.names[lab.n // 2], lab.names[-1]})
            results.drift_repaired = _drift_repaired(
                lab, cluster, config, results.drift_databases, tag
            )


def _drift_repaired(
    lab: Lab, cluster: ThrowawayPostgres, config: Path, databases: list[str], tag: str
) -> bool:
    """Take schema public away from the owner in a few databases: does a run restore it?

    Untimed; it shows that a run with (almost) nothing to do still looks inside
    every database instead of trusting that an existing one is in order.
    """
    for database in databases:
        take_schema_away(cluster, database)
        if can_create_in_public(cluster, database, database):
            raise BenchError(f"could not take schema public away from {database}")
    run = lab.run_tool(config, f"ours-drift-{tag}")
    counts = run.counts()
    return counts.get("updated") == len(databases) and all(
        can_create_in_public(cluster, database, database) for database in databases
    )


# --- the reference --------------------------------------------------------------------


def _measure_reference(lab: Lab, psql: Path, results: Results, tag: str) -> None:
    with ThrowawayPostgres() as cluster:
        script = lab.workdir / f"reference-{tag}.sql"
        # consul-template renders the script before the task runs: not timed.
        passwords = lab.secrets.read_all(lab.names)
        script.write_text(reference.render(lab.names, passwords), encoding="utf-8")

        settle()
        cold = reference.run(psql, cluster, script, lab.workdir / f"reference-cold-{tag}.log")
        expect_provisioned(cluster, lab.names, "reference cold")
        warm = reference.run(psql, cluster, script, lab.workdir / f"reference-warm-{tag}.log")
        floors.restart(cluster)
        warm_restart = reference.run(
            psql, cluster, script, lab.workdir / f"reference-warm-restart-{tag}.log"
        )

        service, _ = lab.rotate()
        # A new KV version makes consul-template render the script again.
        passwords[service] = lab.secrets.read(service)
        script.write_text(reference.render(lab.names, passwords), encoding="utf-8")
        rotate = reference.run(psql, cluster, script, lab.workdir / f"reference-rotate-{tag}.log")
        results.reference_rotation_applied.append(can_log_in(cluster, service, passwords[service]))

        for scenario, seconds in (
            (COLD, cold),
            (WARM, warm),
            (WARM_RESTART, warm_restart),
            (ROTATE, rotate),
        ):
            results.reference[scenario].append(seconds)


# --- Vault ----------------------------------------------------------------------------


def measure_vault(lab: Lab) -> float:
    """Reading every service's password through the tool's own code path, in-process.

    ``passwords.connect_vault`` and ``passwords.PasswordReads`` are what ``run``
    uses (log in, then read each service's secret on a pool of threads): when they
    change, this figure follows, and when their signatures change, mypy says so here.
    """
    services = spec_file.load(lab.services_file(None, "vault"))
    failed: list[str] = []
    started = time.perf_counter()
    vault = connect_vault(services, lab.tool_env())
    never = StopRequest()  # nothing stops a measurement
    with ThreadPoolExecutor(VAULT_WORKERS, thread_name_prefix="vault") as pool:
        reads = PasswordReads.start(services, vault, pool)
        for service in services.services:
            try:
                reads.wait(service, never)
            except ServiceError as err:
                failed.append(str(err))
    seconds = time.perf_counter() - started
    if failed:
        raise BenchError(
            f"read {lab.n - len(failed)} of {lab.n} passwords from Vault: {failed[:3]}"
        )
    return seconds


# --- readiness ------------------------------------------------------------------------


def measure_readiness(
    lab: Lab, cluster: ThrowawayPostgres, config: Path, *, waiting: bool, tag: str
) -> ReadinessSample:
    """Start the server and the tool; time from "accepting" to the tool's first statement.

    Both ends are wall-clock times on this machine: "accepting" from the bench's
    PQping and from the server log, the first statement from the server log.

    ``waiting=False``: the tool is launched, then the server right after, as Nomad
    starts a poststart task. ``waiting=True``: the server is started only once the
    tool says it is waiting for it, which isolates how fast the waiting loop notices.
    Once the first statement is in the log the tool is sent SIGTERM (it finishes the
    service at hand), and the server is stopped for the next start.
    """
    offset = cluster.logfile.stat().st_size if cluster.logfile.exists() else 0
    mode = WAITING if waiting else TOGETHER
    tool = lab.start_tool(config, f"readiness-{mode}-{tag}")
    try:
        if waiting:
            _wait_for_tool_output(tool, _WAITING_MESSAGE)
        cluster.start_process_only()
        accepting = _poll_until_accepting(cluster)
        first_statement = _wait_for_log_line(
            cluster.logfile,
            offset,
            lambda app, rest: app == _TOOL_APP and "statement:" in rest,
        )
        ready_logged = _wait_for_log_line(
            cluster.logfile, offset, lambda _app, rest: _READY_MESSAGE in rest
        )
    except BaseException:
        tool.terminate()
        with suppress(Exception):
            tool.finish(timeout=30)
        with suppress(Exception):
            cluster.stop("immediate")
        raise
    tool.terminate()
    tool.finish(timeout=_READINESS_TIMEOUT_SECONDS)
    cluster.stop("fast")
    earliest = min(accepting, ready_logged)
    return ReadinessSample(
        latency_ms=(first_statement - earliest) * 1000,
        latency_by_ping_ms=(first_statement - accepting) * 1000,
        latency_by_server_log_ms=(first_statement - ready_logged) * 1000,
        tool_start_to_accepting_ms=(earliest - tool.started_wall) * 1000,
    )


def _wait_for_tool_output(tool: RunningTool, text: str) -> None:
    deadline = time.monotonic() + _READINESS_TIMEOUT_SECONDS
    while text not in tool.output():
        if time.monotonic() > deadline:
            raise BenchError(f"the tool never logged {text!r}:\n{tool.output()[-2000:]}")
        time.sleep(_LOG_POLL_SECONDS)


def _poll_until_accepting(cluster: ThrowawayPostgres) -> float:
    """The wall-clock time of the first PQping that says the server accepts connections."""
    info = cluster.ping_conninfo()
    deadline = time.monotonic() + _READINESS_TIMEOUT_SECONDS
    while pq.PGconn.ping(info) != pq.Ping.OK:
        if time.monotonic() > deadline:
            raise BenchError(f"PostgreSQL did not accept connections on port {cluster.port}")
        time.sleep(PING_INTERVAL_SECONDS)
    return time.time()


def _wait_for_log_line(path: Path, offset: int, wanted: Callable[[str, str], bool]) -> float:
    """The timestamp (epoch seconds) of the first server log line after ``offset`` wanted."""
    deadline = time.monotonic() + _READINESS_TIMEOUT_SECONDS
    while True:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", errors="replace")
        for line in text.splitlines():
            match = _LOG_LINE.match(line)
            if match and wanted(match["app"], match["rest"]):
                stamp = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S.%f")
                return stamp.replace(tzinfo=UTC).timestamp()
        if time.monotonic() > deadline:
            raise BenchError(f"no such line in the server log {path}:\n{text[-2000:]}")
        time.sleep(_LOG_POLL_SECONDS)
