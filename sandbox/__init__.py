"""Throwaway PostgreSQL clusters and OpenBao dev servers for the demo, the tests and the benchmark.

Not used by the tool itself. ``WorkloadIdentities`` plays the part of the Nomad
agents that sign each task's workload identity: no Nomad agent runs here, so
a key made for the session signs JWTs with Nomad's claims, and the JWT auth
method of the OpenBao server trusts that key (``jwt_validation_pubkeys``)
where a real one would fetch the agents' JWKS.
"""

from sandbox.binaries import (
    describe_pg,
    find_bao,
    find_pg_bindir,
    pg_version,
    system_pg_bindir,
    wheel_pg_bindir,
)
from sandbox.common import SandboxError, free_port
from sandbox.postgres import PG_SUPERUSER, ThrowawayPostgres
from sandbox.vault import ThrowawayVault, WorkloadIdentities

__all__ = [
    "PG_SUPERUSER",
    "SandboxError",
    "ThrowawayPostgres",
    "ThrowawayVault",
    "WorkloadIdentities",
    "describe_pg",
    "find_bao",
    "find_pg_bindir",
    "free_port",
    "pg_version",
    "system_pg_bindir",
    "wheel_pg_bindir",
]
