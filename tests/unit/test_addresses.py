"""Several hosts in one DSN: how they are described, how each one's failure is said,
and the host:port addresses check --replicas takes."""

from __future__ import annotations

import psycopg
import pytest

from nomad_pginit import postgres
from nomad_pginit.errors import ConfigError
from nomad_pginit.postgres.connection import _describe, _last_line, _split_address
from nomad_pginit.spec import PostgresSettings


def test_every_host_is_described_with_its_port() -> None:
    assert _describe("host=db1,db2 port=5432,5433 user=postgres dbname=postgres") == (
        "postgres@db1:5432,db2:5433/postgres"
    )
    # One port for every host, as libpq takes it.
    assert _describe("host=db1,db2 port=6432 user=u dbname=d") == "u@db1:6432,db2:6432/d"


def test_the_addresses_of_a_multi_host_dsn_and_one_of_them_alone() -> None:
    target = postgres.target(
        PostgresSettings(
            dsn="postgresql://postgres@db1:5432,db2:5433/postgres"
            "?target_session_attrs=read-write&sslmode=require"
        )
    )
    assert target.addresses == ["db1:5432", "db2:5433"]
    replica = target.at("db2:5433")
    assert replica.description == "postgres@db2:5433/postgres"
    assert "target_session_attrs" not in replica.conninfo
    assert "sslmode=require" in replica.conninfo


def test_each_hosts_failure_is_said_on_one_line() -> None:
    with pytest.raises(psycopg.OperationalError) as raised:
        psycopg.connect("host=127.0.0.1,127.0.0.1 port=1,2 dbname=x connect_timeout=2")
    assert _last_line(str(raised.value)) == (
        "127.0.0.1:1: Connection refused; 127.0.0.1:2: Connection refused"
    )


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("db2:5433", ("db2", "5433")),
        ("db2", ("db2", "5432")),
        ("[fd00::2]:5433", ("fd00::2", "5433")),
        ("[fd00::2]", ("fd00::2", "5432")),
        ("/run/postgresql:5433", ("/run/postgresql", "5433")),
    ],
)
def test_replica_addresses(address: str, parts: tuple[str, str]) -> None:
    assert _split_address(address) == parts


@pytest.mark.parametrize("address", [":5432", "db2:port", "db2:0", "db2:70000", "[fd00::2:5432"])
def test_a_bad_replica_address_says_how_to_write_one(address: str) -> None:
    with pytest.raises(ConfigError, match="write host:port"):
        postgres.check_address(address)


def test_an_ipv6_host_of_the_dsn_reads_back_as_an_address() -> None:
    target = postgres.target(
        PostgresSettings(dsn="host=127.0.0.1,::1 port=5432,5433 user=postgres dbname=postgres")
    )
    assert target.addresses == ["127.0.0.1:5432", "[::1]:5433"]
    assert _split_address(target.addresses[1]) == ("::1", "5433")
    assert target.at(target.addresses[1]).description == "postgres@[::1]:5433/postgres"


@pytest.mark.parametrize(
    "address", ["a:b:c", "host=evil port=1", "'x'", "db:\u0665\u0664", "[::1]x", "::1:6543"]
)
def test_what_is_not_a_host_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="write host:port"):
        postgres.check_address(address)


def test_a_replica_of_the_dsn_keeps_its_hostaddr() -> None:
    target = postgres.target(
        PostgresSettings(
            dsn="host=db-a,db-b hostaddr=10.0.0.1,10.0.0.2 port=5432 user=postgres "
            "dbname=postgres sslmode=verify-full target_session_attrs=read-write"
        )
    )
    replica = target.at("db-b:5432")
    assert "hostaddr=10.0.0.2" in replica.conninfo
    assert "host=db-b" in replica.conninfo
    assert "hostaddr" not in target.at("db-c:5432").conninfo
