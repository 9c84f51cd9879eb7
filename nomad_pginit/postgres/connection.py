"""Where PostgreSQL is and how we log in: targets (conninfo, deadlines, the admin's
password), the session options every connection carries, and libpq's messages on one
line.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import psycopg
import psycopg.errors
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from nomad_pginit.errors import ConfigError
from nomad_pginit.scram import ScramKeys
from nomad_pginit.secret import Secret
from nomad_pginit.spec import PostgresSettings

log = logging.getLogger(__name__)


# What psycopg accepts as a statement: only ever built from sql.SQL literals.
Query = sql.SQL | sql.Composed


APPLICATION_NAME: Final = "nomad-pginit"


# libpq's connect_timeout, on every connection and probe: a listener that accepts
# and never answers, or a backend stuck at login, must not hold a run (2 is
# libpq's minimum).
CONNECT_TIMEOUT_SECONDS: Final = 2


# Our sessions' limits, sent at connection start: a statement waiting behind
# another session's lock gives up after LOCK_TIMEOUT (and says who held it), and
# none runs longer than STATEMENT_TIMEOUT.
LOCK_TIMEOUT_SECONDS: Final = 10


STATEMENT_TIMEOUT_SECONDS: Final = 300


ENV_STATEMENT_TIMEOUT: Final = "PGINIT_STATEMENT_TIMEOUT"


# Every admin session's search_path: pg_catalog, and temporary objects last.
SAFE_SEARCH_PATH: Final = "-c search_path=pg_catalog,pg_temp"


# TCP keepalives and a bound on unacknowledged data: a server host that vanishes
# (powered off, a black-holed route) ends the connection in about half a minute
# instead of never. Unix sockets ignore them.
KEEPALIVES: Final = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


# Past statement_timeout by this much, a statement's connection is frozen: the
# server would have ended it (it runs statement_timeout itself), so nothing comes.
FROZEN_MARGIN_SECONDS: Final = 30


FROZEN_CHECK_SECONDS: Final = 1.0


# One readiness probe (a ping, a login, one query) never takes longer than this:
# each step has its own bound but the query's is the server's own timeout.
PROBE_DEADLINE_SECONDS: Final = 30.0


# A statement running longer than this has the sessions that block it looked up.
SLOW_STATEMENT_SECONDS: Final = 1.0


# How often readiness is probed: PQping is cheap, and a poststart task should
# notice the server within a fraction of a second.
PROBE_INTERVAL_SECONDS: Final = 0.05


# While waiting, say again why every so often so the log shows the task is alive.
WAIT_REPORT_SECONDS: Final = 10.0


TEMPLATE_DATABASE: Final = "template1"


# Serializes concurrent runs (two allocations during a redeploy): any constant
# bigint works, this one spells "pginit".
ADVISORY_LOCK_KEY: Final = 0x7067696E6974


# SQLSTATEs that mean "someone else created it first": the state we want exists.
_ALREADY_EXISTS = (
    psycopg.errors.DuplicateObject,  # 42710
    psycopg.errors.UniqueViolation,  # 23505: concurrent inserts into the catalogs
    psycopg.errors.DuplicateDatabase,  # 42P04
)


# Connection failures that waiting will not cure.
_LOGIN_FAILURES: Final = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied for database",
    "must have connect",
)


@dataclass(frozen=True)
class Target:
    """Where and as whom to connect as the admin. The password never appears in ``conninfo``."""

    conninfo: str
    password: Secret | None
    description: str
    # The admin's SCRAM keys, when known: libpq then skips PBKDF2 on every login.
    scram_keys: ScramKeys | None = None
    # How long our statements wait behind another session's lock, in seconds.
    lock_timeout: float = LOCK_TIMEOUT_SECONDS
    # How long the server lets one of our statements run (PGINIT_STATEMENT_TIMEOUT).
    statement_timeout: float = STATEMENT_TIMEOUT_SECONDS

    @functools.cached_property
    def secret_conninfo(self) -> str:
        """The full conninfo, password and keys included: for psycopg only, never for logs
        (nor is a connection's ``info.dsn``: psycopg hides the password there, not the keys).

        Built once: parsing a conninfo is pure Python, and a run connects once per
        database.
        """
        given = conninfo_to_dict(self.conninfo)
        extra: dict[str, str | int] = {
            **{key: value for key, value in KEEPALIVES.items() if key not in given},
            **_auth_guard(self.conninfo),
            "application_name": APPLICATION_NAME,
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "options": _session_options(self.conninfo, self.lock_timeout, self.statement_timeout),
        }
        if self.password is not None:
            extra["password"] = self.password.reveal()
        if self.scram_keys is not None:
            extra["scram_client_key"] = base64.b64encode(self.scram_keys.client_key).decode()
            extra["scram_server_key"] = base64.b64encode(self.scram_keys.server_key).decode()
        return make_conninfo(self.conninfo, **extra)

    @functools.cached_property
    def ping_conninfo(self) -> bytes:
        """What PQping is given: the target, never longer than the connect timeout."""
        return make_conninfo(self.conninfo, connect_timeout=CONNECT_TIMEOUT_SECONDS).encode()

    def with_statement_timeout(self, seconds: float) -> Target:
        """The same target, the server ending any of its statements after ``seconds``."""
        return replace(self, statement_timeout=seconds)

    @property
    def frozen_after(self) -> float:
        """No answer this long after a statement started: the connection is frozen, for
        the server would have ended the statement (statement_timeout) well before."""
        return self.statement_timeout + min(FROZEN_MARGIN_SECONDS, self.statement_timeout)

    def with_lock_timeout(self, seconds: float) -> Target:
        """The same target, its statements waiting at most ``seconds`` behind a lock."""
        return replace(self, lock_timeout=seconds)

    @property
    def addresses(self) -> list[str]:
        """host:port of every server the DSN lists, in its order."""
        values = _resolved(self.conninfo)
        return _addresses(values["host"] or "local socket", values["port"] or "5432")

    def at(self, address: str) -> Target:
        """The same admin, at one server only (a standby, for check --replicas): the
        DSN's hosts and target_session_attrs give way to ``address``; a host of the DSN
        keeps its hostaddr (the name then serves TLS and ~/.pgpass)."""
        host, port = _split_address(address)
        return self._on(host, port, self._hostaddrs.get(address), drop=("target_session_attrs",))

    @property
    def _hostaddrs(self) -> dict[str, str]:
        """The DSN's hostaddr of each of its addresses, when it gives them."""
        values = _resolved(self.conninfo)
        hostaddrs = values["hostaddr"].split(",") if values["hostaddr"] else []
        return {
            address: hostaddr
            for address, hostaddr in zip(self.addresses, hostaddrs, strict=False)
            if hostaddr
        }

    def pinned(self, conn: psycopg.Connection[tuple[object, ...]]) -> Target:
        """The same admin, on the one server of a multi-host DSN that libpq chose for
        ``conn``: every connection of a run goes where its coordinator went (a split
        brain's other writable server never gets half of it); its very address
        (hostaddr), the name kept for TLS and ~/.pgpass. Still read-write only, if the
        DSN said so: a server demoted under us is refused, not written to."""
        if len(self.addresses) < 2:
            return self
        return self._on(str(conn.info.host), str(conn.info.port), conn.info.hostaddr or None)

    def _on(
        self, host: str, port: str, hostaddr: str | None = None, drop: tuple[str, ...] = ()
    ) -> Target:
        params = {
            key: value
            for key, value in conninfo_to_dict(self.conninfo).items()
            if key not in ("host", "hostaddr", "port", *drop) and value is not None
        }
        conninfo = make_conninfo("", **params, host=host, hostaddr=hostaddr, port=port)
        return replace(self, conninfo=conninfo, description=_describe(conninfo))

    def with_password(self, password: Secret) -> Target:
        """The same target, logging in with ``password`` (the admin's, read from Vault)."""
        return replace(self, password=password, scram_keys=None)


def _session_options(
    conninfo: str, lock_timeout: float, statement_timeout: float = STATEMENT_TIMEOUT_SECONDS
) -> str:
    """libpq's options with our sessions' lock and statement timeouts first, so that the
    DSN's own options (or PGOPTIONS, which a conninfo with options would hide) win, and
    the search_path last, so that nothing overrides it.

    The admin's sessions resolve every function and operator in pg_catalog only:
    a service's role owns schema public in its database (pg_database_owner), and
    a function it plants there that matches a call better than pg_catalog's
    would run with the admin's privileges (CVE-2018-1058).
    """
    theirs = conninfo_to_dict(conninfo).get("options") or os.environ.get("PGOPTIONS") or ""
    # At least 1 ms: lock_timeout = 0 would mean waiting for ever.
    ours = (
        f"-c lock_timeout={max(1, round(lock_timeout * 1000))}ms "
        f"-c statement_timeout={max(1, round(statement_timeout * 1000))}ms"
    )
    return f"{ours} {theirs} {SAFE_SEARCH_PATH}".replace("  ", " ").strip()


@functools.cache
def _libpq_takes_require_auth() -> bool:
    """libpq 16 added require_auth."""
    return any(option.keyword == b"require_auth" for option in pq.Conninfo.get_defaults())


def _auth_guard(conninfo: str) -> dict[str, str]:
    """Never answer a server that asks for the password in clear text: whatever runs
    at the address (a mistyped host, a hijacked name) would get the password as it
    is. SCRAM (and MD5, for clusters that still use it) prove the password without
    sending it. A DSN that sets require_auth itself keeps its own."""
    if not _libpq_takes_require_auth() or "require_auth" in conninfo_to_dict(conninfo):
        return {}
    return {"require_auth": "!password"}


def _authentication_failed(err: psycopg.OperationalError) -> bool:
    # A failed connection carries no SQLSTATE; the server's message is all there is.
    return err.sqlstate == "28P01" or "password authentication failed" in str(err)


def _libpq_takes_scram_keys() -> bool:
    """libpq 18 added scram_client_key and scram_server_key; older ones refuse them."""
    return any(option.keyword == b"scram_client_key" for option in pq.Conninfo.get_defaults())


def _connect(target: Target, dbname: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
    """A connection as the admin (to ``dbname``, else the DSN's database)."""
    if dbname is None:
        return psycopg.connect(target.secret_conninfo, autocommit=True)
    return psycopg.connect(target.secret_conninfo, autocommit=True, dbname=dbname)


def _parsed(dsn: str, where: str) -> dict[str, str]:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as err:
        raise ConfigError(f"{where} is not a valid connection string: {err}") from err
    return {key: str(value) for key, value in params.items() if value is not None}


def dsn_password(dsn: str) -> bool:
    """Whether the DSN carries a password or a client key's passphrase (which a job's
    text must never hold)."""
    return bool({"password", "sslpassword"} & set(_parsed(dsn, "[postgres] dsn")))


def hostless(dsn: str) -> str:
    """The DSN without its hosts and ports: libpq takes them from $PGHOST and $PGPORT,
    which a template block fills with a service lookup."""
    params = _parsed(dsn, "[postgres] dsn")
    return make_conninfo(
        "", **{k: v for k, v in params.items() if k not in ("host", "hostaddr", "port")}
    )


def target(settings: PostgresSettings) -> Target:
    """The admin's connection target from the services file; libpq's environment fills the rest."""
    try:
        params = conninfo_to_dict(settings.dsn)
    except psycopg.ProgrammingError as err:
        raise ConfigError(f"[postgres] dsn is not a valid connection string: {err}") from err
    password: Secret | None = None
    if settings.password_file is not None:
        password = _read_password_file(settings.password_file)
    elif "password" in params:
        password = Secret(str(params.pop("password")))
    conninfo = make_conninfo("", **{k: v for k, v in params.items() if v is not None})
    return Target(conninfo=conninfo, password=password, description=_describe(conninfo))


def _read_password_file(path: Path) -> Secret:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            f"cannot read the admin password file {path} ([postgres] password_file): "
            f"{err.strerror}; check the template block that writes it"
        ) from err
    except UnicodeDecodeError:
        # Never the error's own text: it quotes the bytes around the bad one.
        raise ConfigError(
            f"the admin password file {path} is not UTF-8 text: write the password as text"
        ) from None
    # Template blocks and `echo` add a trailing newline that is not part of the password.
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"the admin password file {path} is empty")
    if "\x00" in password:
        raise ConfigError(
            f"the admin password file {path} contains a NUL character: libpq would log in with "
            "what comes before it; write the password alone"
        )
    return Secret(password)


def _resolved(conninfo: str) -> dict[str, str]:
    """Every libpq option as it will be used: the conninfo's, else the environment's
    (PGHOST and the like) and libpq's defaults; "" for those unset."""
    given = {
        option.keyword.decode(): option.val.decode() if option.val is not None else ""
        for option in pq.Conninfo.parse(conninfo.encode())
    }
    return {
        option.keyword.decode(): given.get(option.keyword.decode())
        or (option.val.decode() if option.val is not None else "")
        for option in pq.Conninfo.get_defaults()
    }


def _describe(conninfo: str) -> str:
    """user@host:port/dbname as libpq will resolve it, environment included; every
    host:port when the DSN lists several."""
    values = _resolved(conninfo)
    user = values["user"] or "(OS user)"
    hosts = ",".join(_addresses(values["host"] or "local socket", values["port"] or "5432"))
    return f"{user}@{hosts}/{values['dbname'] or user}"


def check_address(address: str) -> None:
    """Raise ConfigError unless ``address`` is host:port (or a host alone)."""
    _split_address(address)


def _split_address(address: str) -> tuple[str, str]:
    """("db2", "5432") from "db2:5432"; an IPv6 address in brackets ("[fd00::2]:5432",
    "[fd00::2]": "fd00::2:5432" could be either); a Unix socket directory
    ("/run/postgresql:5433"); the port is 5432 when left out."""
    host, colon, port = address.rpartition(":")
    if address.startswith("[") and "]" in address:
        host, _, rest = address[1:].partition("]")
        port = "5432" if not rest else rest[1:] if rest.startswith(":") else "not a port"
        valid = _ipv6(host)
    elif not colon:
        host, port = address, "5432"
        valid = _HOST_NAME.fullmatch(host) is not None
    else:
        valid = host.startswith("/") or _HOST_NAME.fullmatch(host) is not None
    if not valid or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(
            f"{address!r} is not a server address: write host:port, e.g. db2:5432 "
            "(an IPv6 address in brackets: [fd00::2]:5432)"
        )
    return host, port


# A host name or IPv4 address as libpq takes it in host= (no spaces, quotes, "=").
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _addresses(hosts: str, ports: str) -> list[str]:
    """host:port of each server a DSN lists (libpq: one port for all, or one per host)."""
    host_list = hosts.split(",")
    port_list = ports.split(",")
    if len(port_list) == 1:
        port_list = port_list * len(host_list)
    return [address(host, port) for host, port in zip(host_list, port_list, strict=False)]


def address(host: str, port: str | int) -> str:
    """host:port, an IPv6 address in brackets ([fd00::2]:5432) so that it reads back."""
    if ":" in host and not host.startswith("/"):
        host = f"[{host}]"
    return f"{host}:{port}"


# How psycopg lists each host's failure when a DSN names several (libpq tried each).
_MULTIPLE_ATTEMPTS: Final = "Multiple connection attempts failed."
_ATTEMPT: Final = re.compile(
    r"^- host: '(?P<host>[^']*)', port: '(?P<port>[^']*)'(?:, hostaddr: '[^']*')?: "
    r"(?:connection failed: )?"
    r"(?:connection to server at .*?, port \S+ failed: )?(?P<reason>.*)$"
)


def _last_line(message: str) -> str:
    """libpq's message on one line: 'connection failed: ... FATAL: reason', or
    'server closed the connection unexpectedly This probably means ...'; with several
    hosts, each one's reason: '127.0.0.1:5432: Connection refused; 10.0.0.2:5432: session
    is read-only'."""
    if _MULTIPLE_ATTEMPTS in message:
        attempts = [
            f"{match['host']}:{match['port']}: {match['reason'].replace('FATAL:', '').strip()}"
            for line in message.splitlines()
            if (match := _ATTEMPT.match(line))
        ]
        if attempts:
            return "; ".join(" ".join(attempt.split()) for attempt in attempts)
    lines = [" ".join(line.split()) for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return message
    if len(lines) > 1 and "FATAL:" in lines[-1]:
        # Connection failures end with the server's own reason.
        return lines[-1].split("FATAL:", 1)[1].strip()
    return " ".join(lines)
