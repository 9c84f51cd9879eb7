"""Looking at the test cluster's catalogs as the superuser: what the tool left there."""

from __future__ import annotations

from typing import LiteralString

from conftest import Cluster


def scalar(pg: Cluster, query: LiteralString, *params: object) -> object:
    with pg.connect() as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def role_exists(pg: Cluster, name: str) -> bool:
    return scalar(pg, "SELECT count(*) FROM pg_roles WHERE rolname = %s", name) == 1


def database_exists(pg: Cluster, name: str) -> bool:
    return scalar(pg, "SELECT count(*) FROM pg_database WHERE datname = %s", name) == 1


def database_owner(pg: Cluster, name: str) -> object:
    return scalar(pg, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", name)
