"""How the nomad CLI reaches the agent, for python-nomad: address, TLS, auth, as a session.

python-nomad reads ``NOMAD_ADDR``, ``NOMAD_TOKEN``, ``NOMAD_NAMESPACE`` and
``NOMAD_REGION`` but not the rest of what the nomad CLI honours (api/api.go
DefaultConfig and ConfigureTLS): ``NOMAD_CACERT``/``NOMAD_CAPATH``,
``NOMAD_CLIENT_CERT``/``NOMAD_CLIENT_KEY`` (both or neither),
``NOMAD_TLS_SERVER_NAME`` (the name TLS checks the certificate against and
sends as SNI), ``NOMAD_SKIP_VERIFY``, ``NOMAD_HTTP_AUTH`` and ``unix://``
addresses (plain HTTP over the socket, ``Host: 127.0.0.1``). This module reads
them all into ``Settings`` and builds the ``requests`` session python-nomad
is given, with an adapter for each case that plain requests does not cover.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool

from nomad_pginit.envbool import parse_bool
from nomad_pginit.errors import ConfigError
from nomad_pginit.secret import Secret

DEFAULT_ADDR: Final = "http://127.0.0.1:4646"  # the nomad CLI's own default
# What the nomad CLI puts in the URL when it dials a unix socket (api/api.go).
UNIX_URL: Final = "http://127.0.0.1"
_PEM_CERTIFICATE: Final = re.compile(
    r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----"
)


@dataclass(frozen=True)
class Settings:
    """How to reach Nomad, from the variables the nomad CLI reads."""

    address: str  # as the user gave it: http(s)://host:port or unix:///path
    token: Secret | None
    namespace: str | None
    region: str | None
    verify: bool | str  # False, True, or a CA file or directory
    cert: tuple[str, str] | None
    server_name: str | None = None
    http_auth: tuple[str, Secret] | None = None

    @property
    def socket_path(self) -> str | None:
        if self.address.startswith("unix://"):
            return self.address[len("unix://") :]
        return None

    @property
    def url(self) -> str:
        """The base URL python-nomad builds request URLs from."""
        return UNIX_URL if self.socket_path is not None else self.address

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        given = (environ.get("NOMAD_ADDR") or DEFAULT_ADDR).strip()
        # python-nomad turns a trailing slash into `//` in every URL.
        address = given if given.startswith("unix://") else given.rstrip("/")
        parts = urlsplit(address)
        if parts.scheme == "unix":
            if not address[len("unix://") :].strip("/"):
                raise ConfigError(f"NOMAD_ADDR={given!r} names no socket: unix:///path/to.sock")
        elif parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"NOMAD_ADDR={address!r} is not an http(s) or unix:// address: set it like "
                f"{DEFAULT_ADDR}"
            )
        skip = parse_bool(environ.get("NOMAD_SKIP_VERIFY"))
        verify: bool | str = False if skip else _ca_bundle(environ)
        client_cert = environ.get("NOMAD_CLIENT_CERT") or ""
        client_key = environ.get("NOMAD_CLIENT_KEY") or ""
        if bool(client_cert) != bool(client_key):
            raise ConfigError(
                "NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY go together: set both, or neither "
                "(the nomad CLI says: Both client cert and client key must be provided)"
            )
        for variable, path in (
            ("NOMAD_CLIENT_CERT", client_cert),
            ("NOMAD_CLIENT_KEY", client_key),
        ):
            if path and not os.path.isfile(path):
                raise ConfigError(f"{variable}={path} is not a file: name the PEM file")
        token = (environ.get("NOMAD_TOKEN") or "").strip()
        auth = environ.get("NOMAD_HTTP_AUTH") or ""
        user, _, password = auth.partition(":")
        return cls(
            address=address,
            token=Secret(token) if token else None,
            namespace=environ.get("NOMAD_NAMESPACE") or None,
            region=environ.get("NOMAD_REGION") or None,
            verify=verify,
            cert=(client_cert, client_key) if client_cert else None,
            server_name=environ.get("NOMAD_TLS_SERVER_NAME") or None,
            http_auth=(user, Secret(password)) if auth else None,
        )

    def where(self) -> str:
        """Nomad at ADDR (namespace N), for messages."""
        namespace = f" (namespace {self.namespace})" if self.namespace else ""
        return f"Nomad at {self.address}{namespace}"


def _ca_bundle(environ: Mapping[str, str]) -> bool | str:
    """What TLS trusts: NOMAD_CACERT, else every certificate in NOMAD_CAPATH, else the system's.

    NOMAD_CACERT wins over NOMAD_CAPATH, as in the nomad CLI (command/meta.go). The
    CLI loads every file of the directory (go-rootcerts LoadCAPath), where OpenSSL's
    own CA directory would need `c_rehash` links: the files are gathered into one
    bundle instead.
    """
    cacert = environ.get("NOMAD_CACERT") or ""
    if cacert:
        if not os.path.isfile(cacert):
            raise ConfigError(f"NOMAD_CACERT={cacert} is not a file: name your CA's PEM file")
        return cacert
    capath = environ.get("NOMAD_CAPATH") or ""
    if not capath:
        return True
    if not os.path.isdir(capath):
        raise ConfigError(f"NOMAD_CAPATH={capath} is not a directory of CA certificates")
    certificates: list[str] = []
    for root, _dirs, files in sorted(os.walk(capath)):
        for name in sorted(files):
            path = os.path.join(root, name)
            try:
                text = Path(path).read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError(f"cannot read {path} in NOMAD_CAPATH: {err}") from err
            found = _PEM_CERTIFICATE.findall(text)
            if not found:
                # go-rootcerts: "Error loading file from CAPath"
                raise ConfigError(f"{path} in NOMAD_CAPATH holds no PEM certificate")
            certificates.extend(found)
    if not certificates:
        raise ConfigError(f"NOMAD_CAPATH={capath} holds no certificate")
    return _bundle_file("".join(f"{certificate}\n" for certificate in certificates))


def _bundle_file(text: str) -> str:
    """A file with these CA certificates, for requests (removed when the process ends)."""
    handle, name = tempfile.mkstemp(prefix="nomad-pginit-ca-", suffix=".pem")
    with os.fdopen(handle, "w", encoding="ascii") as bundle:
        bundle.write(text)
    atexit.register(lambda: Path(name).unlink(missing_ok=True))
    return name


def session(settings: Settings) -> requests.Session:
    """A requests session that reaches the agent as the nomad CLI would."""
    http = requests.Session()
    # NOMAD_ADDR says where Nomad is: an http_proxy meant for the internet must not
    # capture it (the nomad CLI honours proxies too, but a socket never goes through one).
    if settings.socket_path is not None:
        http.trust_env = False
        http.mount(UNIX_URL + "/", _UnixSocketAdapter(settings.socket_path))
    elif settings.server_name is not None:
        http.mount("https://", _ServerNameAdapter(settings.server_name))
    if settings.http_auth is not None:
        user, password = settings.http_auth
        http.auth = (user, password.reveal())
    return http


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    """TLS that checks the certificate against, and sends as SNI, a name other than the host's.

    crypto/tls's ServerName does both, which is what NOMAD_TLS_SERVER_NAME sets
    (api/api.go ConfigureTLS): agents' certificates name server.<region>.nomad,
    not the address a client dials.
    """

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._server_name
        kwargs["assert_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(self, socket_path: str, *args: Any, **kwargs: Any) -> None:
        self._socket_path = socket_path
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.timeout is not None and isinstance(self.timeout, int | float):
                sock.settimeout(self.timeout)
            sock.connect(self._socket_path)
        except OSError as err:
            sock.close()
            raise urllib3.exceptions.NewConnectionError(
                self, f"cannot connect to {self._socket_path}: {err.strerror or err}"
            ) from err
        return sock


class _UnixConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    def __init__(self, socket_path: str, **kwargs: Any) -> None:
        self._socket_path = socket_path
        super().__init__("127.0.0.1", **kwargs)

    def _new_conn(self) -> urllib3.connection.HTTPConnection:
        return _UnixConnection(
            self._socket_path, host="127.0.0.1", timeout=self.timeout.connect_timeout
        )


class _UnixSocketAdapter(requests.adapters.HTTPAdapter):
    """Plain HTTP over a unix socket, as the nomad CLI speaks to unix:// addresses."""

    def __init__(self, socket_path: str) -> None:
        self._pool = _UnixConnectionPool(socket_path)
        super().__init__()

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> urllib3.connectionpool.HTTPConnectionPool:
        return self._pool

    def get_connection(
        self, url: Any, proxies: Any = None
    ) -> urllib3.connectionpool.HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()
