"""What a warm run cannot do without, measured in the same run as our figures.

A warm run with nothing to change still logs in to every service's database
(to check its grants), checks every password against its stored SCRAM verifier
(PBKDF2), and reads every password from Vault. The floor is the sum of those
three, each done as cheaply as this machine allows; our warm run against it is
what the code costs beyond what the work itself must.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Final

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

from bench.lab import BenchError, connect
from nomad_pginit.provision import SERVICE_WORKERS
from nomad_pginit.scram import ScramKeys, derive_keys, verifier_matches
from sandbox import ThrowawayPostgres

# How many verifications time one on a single core (for our own CPU per service).
_SINGLE_CORE_SAMPLE: Final = 200


def _takes_scram_keys() -> bool:
    return any(option.keyword == b"scram_client_key" for option in pq.Conninfo.get_defaults())


def admin_keys(cluster: ThrowawayPostgres) -> ScramKeys | None:
    """The admin's SCRAM keys, where libpq takes them (read before any restart, so that
    reading them warms no cache of the server the floor is measured on)."""
    if not _takes_scram_keys():
        return None
    with connect(cluster) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = current_user"
        ).fetchone()
    verifier = str(row[0]) if row and row[0] is not None else None
    return derive_keys(verifier, cluster.password)


def logins(cluster: ThrowawayPostgres, names: Sequence[str], keys: ScramKeys | None) -> float:
    """N logins as the admin, one per database, each running one statement, on as many
    threads as nomad-pginit's workers: with the admin's SCRAM keys (``admin_keys``) as
    nomad-pginit logs in (no PBKDF2 on the client), else with the password."""
    base = cluster.conninfo()
    extra: dict[str, str] = {}
    if keys is not None:
        extra = {
            "scram_client_key": base64.b64encode(keys.client_key).decode(),
            "scram_server_key": base64.b64encode(keys.server_key).decode(),
        }
    conninfos = [make_conninfo(base, dbname=name, **extra) for name in names]

    def login(conninfo: str) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SELECT 1")

    started = time.perf_counter()
    with ThreadPoolExecutor(SERVICE_WORKERS) as pool:
        list(pool.map(login, conninfos))
    return time.perf_counter() - started


def restart(cluster: ThrowawayPostgres) -> None:
    """What a redeploy does to PostgreSQL in Nomad: a stop and a start. Its caches are
    empty afterwards, and the relation cache init files are gone (removed at start)."""
    cluster.stop("fast")
    cluster.start()


def _verify_chunk(pairs: Sequence[tuple[str, str]]) -> int:
    return sum(1 for verifier, password in pairs if verifier_matches(verifier, password))


def pbkdf2(verifiers: Sequence[tuple[str, str]]) -> tuple[float, float]:
    """(seconds for every (verifier, password) pair checked on all cores, CPU seconds one
    check takes on one core). Every pair must match: the figure is of real checks."""
    cores = len(os.sched_getaffinity(0)) or 1
    chunks = [list(verifiers[i::cores]) for i in range(cores)]
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_verify_chunk, [chunks[0][:1]] * cores))  # the workers started
        started = time.perf_counter()
        matched = sum(pool.map(_verify_chunk, chunks))
        seconds = time.perf_counter() - started
    if matched != len(verifiers):
        raise BenchError(f"{len(verifiers) - matched} of {len(verifiers)} verifiers did not match")
    sample = verifiers[:_SINGLE_CORE_SAMPLE]
    cpu_started = time.process_time()
    _verify_chunk(sample)
    per_check = (time.process_time() - cpu_started) / max(len(sample), 1)
    return seconds, per_check


def stored_verifiers(
    cluster: ThrowawayPostgres, passwords: dict[str, str]
) -> list[tuple[str, str]]:
    """(stored verifier, password) of every service, for the PBKDF2 floor."""
    with connect(cluster) as conn:
        rows = conn.execute(
            "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)",
            (list(passwords),),
        ).fetchall()
    found = [(str(verifier), passwords[str(name)]) for name, verifier in rows if verifier]
    if len(found) != len(passwords):
        raise BenchError(f"{len(found)} of {len(passwords)} services have a stored verifier")
    return found
