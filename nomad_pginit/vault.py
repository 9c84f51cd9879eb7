"""Vault KV v2: the only module that talks to Vault (through hvac).

Every hvac and requests error is translated here into the project's errors,
with a message that says what to do. No message ever carries a secret.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final

import hvac
import hvac.exceptions
import requests

from nomad_pginit.envbool import parse_bool
from nomad_pginit.errors import ConfigError, SecretUnavailable, VaultUnavailable
from nomad_pginit.secret import Secret
from nomad_pginit.spec import ADMIN_SECRET_KEY, IDENTITY_NAME, VaultSettings

log = logging.getLogger(__name__)

DEFAULT_ADDR: Final = "https://127.0.0.1:8200"  # the vault CLI's own default
TIMEOUT_SECONDS: Final = 10
# The longest one Vault request may take, whole (VAULT_CLIENT_TIMEOUT, as the vault
# CLI reads it): hvac's timeout bounds each socket read only, so a proxy that sends
# a byte every few seconds would hold a run for ever.
DEFAULT_REQUEST_DEADLINE: Final = 60.0
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")


def request_deadline(environ: Mapping[str, str]) -> float:
    """$VAULT_CLIENT_TIMEOUT in seconds (a number, or a duration such as 30s or 2m),
    else 60."""
    raw = environ.get("VAULT_CLIENT_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_REQUEST_DEADLINE
    match = _DURATION.fullmatch(raw)
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    seconds = float(match.group(1)) * scale[match.group(2) or "s"] if match else 0.0
    if not 0 < seconds <= 86400:
        raise ConfigError(
            f"VAULT_CLIENT_TIMEOUT must be a duration such as 60s or 2m, up to a day, not {raw!r}"
        )
    return seconds


# A renewable token is renewed once half of its TTL has passed; a renewal that
# leaves less than this fraction of the TTL it had at login means its max TTL is
# near, so the process logs in again instead.
_RENEW_AT: Final = 0.5


@dataclass(frozen=True)
class VaultSecret:
    """One service's password and the KV v2 version it came from."""

    password: Secret
    version: int


def _tls_verify(environ: Mapping[str, str]) -> bool | str:
    skip = environ.get("VAULT_SKIP_VERIFY")
    if skip and parse_bool(skip) is None:
        # The vault CLI refuses it too (strconv.ParseBool).
        raise ConfigError(f"VAULT_SKIP_VERIFY must be true or false, not {skip!r}")
    if parse_bool(skip):
        return False
    cacert = environ.get("VAULT_CACERT") or environ.get("VAULT_CAPATH") or ""
    if cacert and not os.path.exists(cacert):
        variable = "VAULT_CACERT" if environ.get("VAULT_CACERT") else "VAULT_CAPATH"
        raise VaultUnavailable(f"{variable}={cacert} does not exist: name your CA's PEM file")
    return cacert or True


def default_jwt_file(environ: Mapping[str, str]) -> Path | None:
    """The JWT that Nomad writes for the init task's identity block, when in a task."""
    secrets_dir = environ.get("NOMAD_SECRETS_DIR")
    if not secrets_dir:
        return None
    return Path(secrets_dir) / f"nomad_{IDENTITY_NAME}.jwt"


def _jwt_file(settings: VaultSettings, environ: Mapping[str, str]) -> Path | None:
    """The JWT file to log in with, or None when there is none to look for here."""
    if settings.jwt_file:
        expanded = _expand(settings.jwt_file, environ)
        # ${NOMAD_SECRETS_DIR}/... outside a Nomad task: no JWT here, other sources apply.
        return None if expanded is None else Path(expanded)
    return default_jwt_file(environ)


def _expand(text: str, environ: Mapping[str, str]) -> str | None:
    """$NAME and ${NAME} replaced from ``environ``; None when one of them is not set."""
    unset: list[str] = []

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in environ:
            unset.append(name)
            return ""
        return environ[name]

    expanded = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", value, text)
    return None if unset else expanded


class SourceKind(Enum):
    """Where a token comes from; the order of choice is docs/vault.md's."""

    ENVIRONMENT = "environment"  # $VAULT_TOKEN
    JWT = "jwt"  # a login with the task's workload identity
    TOKEN_FILE = "token file"  # noqa: S105 (a kind of source, not a token); $NOMAD_SECRETS_DIR/vault_token, from a task's vault block
    APPROLE = "approle"
    HOME = "home"  # ~/.vault-token, as `vault login` leaves it


@dataclass(frozen=True)
class TokenSource:
    """Where the client's token comes from, and how to get it again."""

    kind: SourceKind
    # For messages: "the token in $VAULT_TOKEN", "a JWT login to auth/jwt-nomad ...".
    description: str
    path: Path | None = None  # the token file, or the JWT file
    role: str = ""  # JWT or AppRole role
    mount: str = ""  # the auth method's mount

    @property
    def logs_in(self) -> bool:
        """Whether the token comes from a login that can be repeated."""
        return self.kind in (SourceKind.JWT, SourceKind.APPROLE)


def choose_source(settings: VaultSettings, environ: Mapping[str, str]) -> TokenSource:
    """The first source of a token, in this order: $VAULT_TOKEN; the JWT login (when
    [vault] jwt_role is set or the JWT file exists); Nomad's vault_token file; AppRole;
    ~/.vault-token. Raises VaultUnavailable when there is none."""
    if environ.get("VAULT_TOKEN", "").strip():
        return TokenSource(SourceKind.ENVIRONMENT, "the token in $VAULT_TOKEN")
    jwt_file = _jwt_file(settings, environ)
    if jwt_file is not None and (settings.jwt_role or jwt_file.is_file()):
        role = f"role {settings.jwt_role!r}" if settings.jwt_role else "its default role"
        return TokenSource(
            SourceKind.JWT,
            f"a JWT login to auth/{settings.jwt_path} as {role} (JWT from {jwt_file})",
            path=jwt_file,
            role=settings.jwt_role,
            mount=settings.jwt_path,
        )
    # Nomad writes the token here for a task with a vault block.
    secrets_dir = environ.get("NOMAD_SECRETS_DIR")
    if secrets_dir and (token_file := Path(secrets_dir) / "vault_token").is_file():
        return TokenSource(SourceKind.TOKEN_FILE, f"the token in {token_file}", path=token_file)
    if environ.get("VAULT_ROLE_ID") and environ.get("VAULT_SECRET_ID"):
        mount = environ.get("VAULT_APPROLE_MOUNT", "approle")
        return TokenSource(
            SourceKind.APPROLE,
            f"an AppRole login to auth/{mount} ($VAULT_ROLE_ID, $VAULT_SECRET_ID)",
            mount=mount,
        )
    home_token = Path(environ.get("HOME", "~")).expanduser() / ".vault-token"
    if home_token.is_file():
        return TokenSource(SourceKind.HOME, f"the token in {home_token}", path=home_token)
    raise VaultUnavailable(
        "no Vault token: set VAULT_TOKEN; in a Nomad task, give it the identity block that "
        "nomad-pginit render writes ([vault] jwt_role names the JWT auth role); or set "
        "VAULT_ROLE_ID and VAULT_SECRET_ID for AppRole, or run vault login"
    )


@dataclass(frozen=True)
class _Lease:
    """How long the current token lives, as Vault said when it was obtained."""

    obtained: float  # time.monotonic()
    ttl: float  # seconds; 0: it does not expire (a root token)
    renewable: bool

    def renewal_due(self, now: float) -> bool:
        return self.ttl > 0 and now - self.obtained >= self.ttl * _RENEW_AT


class Vault:
    """A logged-in client for the KV v2 mount that holds the services' passwords."""

    def __init__(
        self,
        client: hvac.Client,
        settings: VaultSettings,
        source: TokenSource,
        environ: Mapping[str, str],
    ) -> None:
        self._client = client
        self.settings = settings
        self.source = source
        self._environ = environ
        self._lease = _Lease(time.monotonic(), 0, renewable=False)
        self._login_ttl = 0.0
        # Vault denied a read: the token may have expired or been revoked.
        self._denied = False

    @property
    def address(self) -> str:
        return str(self._client.url)

    @classmethod
    def connect(cls, settings: VaultSettings, environ: Mapping[str, str] | None = None) -> Vault:
        """Log in and check the token, or raise VaultUnavailable (exit 4)."""
        env = os.environ if environ is None else environ
        client = hvac.Client(
            url=env.get("VAULT_ADDR") or DEFAULT_ADDR,
            # Not hvac's own guess (VAULT_TOKEN, ~/.vault-token): the source chosen below.
            token="",
            namespace=env.get("VAULT_NAMESPACE") or None,  # hvac does not read it itself
            verify=_tls_verify(env),
            timeout=TIMEOUT_SECONDS,
        )
        vault = cls(client, settings, choose_source(settings, env), env)
        vault._obtain_token()
        return vault

    def refresh(self) -> None:
        """Keep the token usable in a process that runs for days (watch mode).

        A token from a login is renewed at half its TTL and obtained again by a new
        login when it cannot be renewed (its max TTL, or revoked); the JWT file is
        read again for it, since Nomad rewrites it before it expires. A token from a
        file is read again when the file changes (Nomad renews it for the task).
        Raises VaultUnavailable when no usable token can be had.
        """
        source = self.source
        if source.kind in (SourceKind.TOKEN_FILE, SourceKind.HOME):
            assert source.path is not None
            if _read_token_file(source.path, self.address) != self._client.token:
                self._obtain_token()
                log.info("Vault token read again from %s (it changed)", source.path)
            return
        if not source.logs_in:
            return  # $VAULT_TOKEN: nothing else to use
        denied, self._denied = self._denied, False
        if denied and self._token_works():
            return  # a policy refused a read; the token itself is fine
        due = denied or self._lease.renewal_due(time.monotonic())
        if due and (denied or not self._renewed()):
            self._obtain_token()
            log.info("logged in to Vault at %s again (%s)", self.address, source.description)

    def _renewed(self) -> bool:
        """Renew the token; False when that is not possible or leaves too short a TTL."""
        if not self._lease.renewable:
            return False
        try:
            response = self._client.auth.token.renew_self()
        except (requests.RequestException, hvac.exceptions.VaultError):
            return False
        auth = _mapping(_mapping(response).get("auth"))
        ttl = float(auth.get("lease_duration") or 0)
        self._lease = _Lease(time.monotonic(), ttl, renewable=bool(auth.get("renewable")))
        return ttl >= self._login_ttl * _RENEW_AT

    def _token_works(self) -> bool:
        try:
            self._client.auth.token.lookup_self()
        except (requests.RequestException, hvac.exceptions.VaultError):
            return False
        return True

    def _obtain_token(self) -> None:
        """Set the client's token from its source and check it, or raise VaultUnavailable."""
        source = self.source
        address = self.address
        with _login_errors(source, address):
            if source.kind == SourceKind.JWT:
                assert source.path is not None
                response = self._client.auth.jwt.jwt_login(
                    role=source.role, jwt=_read_jwt(source.path), path=source.mount
                )
                self._set_lease(_mapping(_mapping(response).get("auth")), "lease_duration")
                return
            if source.kind == SourceKind.APPROLE:
                response = self._client.auth.approle.login(
                    role_id=self._environ["VAULT_ROLE_ID"],
                    secret_id=self._environ["VAULT_SECRET_ID"],
                    mount_point=source.mount,
                )
                self._set_lease(_mapping(_mapping(response).get("auth")), "lease_duration")
                return
            if source.kind == SourceKind.ENVIRONMENT:
                self._client.token = self._environ["VAULT_TOKEN"].strip()
            else:
                assert source.path is not None
                self._client.token = _read_token_file(source.path, address)
            response = self._client.auth.token.lookup_self()
            self._set_lease(_mapping(_mapping(response).get("data")), "ttl")

    def _set_lease(self, auth: Mapping[str, Any], ttl_key: str) -> None:
        ttl = float(auth.get(ttl_key) or 0)
        self._lease = _Lease(time.monotonic(), ttl, renewable=bool(auth.get("renewable")))
        self._login_ttl = ttl

    def read_password(self, service: str) -> VaultSecret:
        """The newest version of one service's password, or SecretUnavailable."""
        cli_path = self.settings.cli_path(service)
        key = self.settings.key
        return self._read(
            self.settings.secret_path(service),
            key,
            missing=(
                f"no secret at {cli_path} in Vault: create it with "
                f'vault kv put {cli_path} {key}="$(openssl rand -base64 32)" '
                f"(or nomad-pginit add-service {service})"
            ),
            policy_path=self.settings.secret_path("*"),
        )

    def read_admin_password(self, path: str) -> Secret:
        """The PostgreSQL admin's password ([postgres] password_secret), or VaultUnavailable."""
        cli_path = f"{self.settings.mount}/{path}"
        try:
            return self._read(
                path,
                ADMIN_SECRET_KEY,
                missing=(
                    f"no secret at {cli_path} in Vault: put the PostgreSQL admin's current "
                    f'password there with vault kv put {cli_path} {ADMIN_SECRET_KEY}="..."'
                ),
                policy_path=path,
            ).password
        except SecretUnavailable as err:
            raise VaultUnavailable(
                f"cannot read the PostgreSQL admin's password ([postgres] password_secret): {err}"
            ) from err

    def _read(self, path: str, key: str, *, missing: str, policy_path: str) -> VaultSecret:
        """The newest version of the secret at ``path`` (in the mount), key ``key``."""
        cli_path = f"{self.settings.mount}/{path}"
        try:
            response = self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.settings.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath as err:
            raise SecretUnavailable(self._why_missing(path, key) or missing) from err
        except hvac.exceptions.Forbidden as err:
            self._denied = True
            raise SecretUnavailable(
                f"Vault denied reading {cli_path} (403): the token ({self.source.description}) "
                f"needs a policy with read on {self.settings.mount}/data/{policy_path}"
            ) from err
        except (requests.RequestException, hvac.exceptions.VaultError) as err:
            raise _failed(f"read {cli_path} from Vault", err) from err
        body = response.get("data") if isinstance(response, dict) else None
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise SecretUnavailable(
                f"the answer for {cli_path} is not a KV version 2 secret: is [vault] mount "
                f"({self.settings.mount}) a KV v1 mount? nomad-pginit reads KV v2 (vault kv "
                f"enable-versioning {self.settings.mount}/ upgrades it)"
            )
        data = body.get("data") or {}
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, str) and "\x00" in value:
            raise SecretUnavailable(
                f"the '{key}' at {cli_path} contains a NUL character, which PostgreSQL cannot "
                f"store (libpq stops at it): write another with vault kv patch {cli_path} {key}=..."
            )
        if value is not None and not isinstance(value, str):
            raise SecretUnavailable(
                f"the '{key}' at {cli_path} is a {_json_type(value)}, not a string: write it "
                f'as text with vault kv patch {cli_path} {key}="$(openssl rand -base64 32)"'
            )
        if not isinstance(value, str) or value == "":
            found = ", ".join(sorted(data)) or "no keys"
            what = f"an empty '{key}'" if value == "" else f"no key '{key}'"
            raise SecretUnavailable(
                f"the secret at {cli_path} has {what} (it has: {found}): "
                f'add it with vault kv patch {cli_path} {key}="$(openssl rand -base64 32)"'
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SecretUnavailable(
                f"the '{key}' at {cli_path} is not valid UTF-8 text: write it again"
            ) from None
        version = int(body["metadata"].get("version") or 0)
        return VaultSecret(password=Secret(value), version=version)

    def _why_missing(self, path: str, key: str) -> str | None:
        """Why Vault has no readable version at ``path``, when it is not just absent:
        the newest version deleted or destroyed, or a mount that is not KV version 2."""
        cli_path = f"{self.settings.mount}/{path}"
        try:
            metadata = self._client.secrets.kv.v2.read_secret_metadata(
                path=path, mount_point=self.settings.mount
            )
        except hvac.exceptions.InvalidPath:
            return self._kv_version_problem()
        except (requests.RequestException, hvac.exceptions.VaultError):
            return None
        data = _mapping(_mapping(metadata).get("data"))
        current = data.get("current_version")
        version = _mapping(_mapping(data.get("versions")).get(str(current)))
        if version.get("destroyed"):
            return (
                f"the newest version ({current}) of {cli_path} was destroyed: write a new one "
                f'with vault kv put {cli_path} {key}="$(openssl rand -base64 32)"'
            )
        if version.get("deletion_time"):
            return (
                f"the newest version ({current}) of {cli_path} was deleted: undelete it with "
                f"vault kv undelete -versions={current} {cli_path}, or write a new version "
                f'with vault kv put {cli_path} {key}="$(openssl rand -base64 32)"'
            )
        return None

    def _kv_version_problem(self) -> str | None:
        """Say so when the mount is KV version 1, whose paths have no data/ (nor metadata/)."""
        mount = self.settings.mount
        try:
            answer = self._client.adapter.get(f"/v1/sys/internal/ui/mounts/{mount}")
        except (requests.RequestException, hvac.exceptions.VaultError):
            return None
        data = _mapping(_mapping(answer).get("data"))
        if data.get("type") == "kv" and _mapping(data.get("options")).get("version") == "1":
            return (
                f"{mount}/ is a KV version 1 mount: nomad-pginit reads KV version 2; upgrade it "
                f"with vault kv enable-versioning {mount}/ (or set [vault] mount to a KV v2 mount)"
            )
        return None

    def create_password(self, service: str, password: Secret) -> bool:
        """Write a service's first password with check-and-set 0.

        Returns False, writing nothing, when a secret already exists at the path:
        an existing password is never overwritten.
        """
        path = self.settings.secret_path(service)
        cli_path = self.settings.cli_path(service)
        try:
            self._client.secrets.kv.v2.read_secret_metadata(
                path=path, mount_point=self.settings.mount
            )
        except hvac.exceptions.InvalidPath:
            pass  # no secret yet: write it below
        except hvac.exceptions.Forbidden:
            # A policy that may read the secret but not its metadata (the job's own
            # read-only policy): reading it says whether it exists. A write-only one
            # may read neither; cas=0 still protects an existing secret then.
            if self._readable(path):
                return False
        except (requests.RequestException, hvac.exceptions.VaultError) as err:
            raise _failed(f"read {cli_path} from Vault", err) from err
        else:
            return False
        try:
            self._client.secrets.kv.v2.create_or_update_secret(
                path=path,
                secret={self.settings.key: password.reveal()},
                cas=0,
                mount_point=self.settings.mount,
            )
        except hvac.exceptions.InvalidRequest as err:
            if "check-and-set" in str(err.args[0] if err.args else ""):
                return False  # written by someone else in the meantime: keep theirs
            raise SecretUnavailable(f"Vault refused to write {cli_path}: {_reason(err)}") from err
        except hvac.exceptions.Forbidden as err:
            raise SecretUnavailable(
                f"Vault denied writing {cli_path} (403): your token needs create on "
                f"{self.settings.mount}/data/{path}"
            ) from err
        except (requests.RequestException, hvac.exceptions.VaultError) as err:
            raise _failed(f"write {cli_path} to Vault", err) from err
        return True

    def _readable(self, path: str) -> bool:
        """Whether a secret exists at ``path`` and this token may read it."""
        try:
            self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.settings.mount, raise_on_deleted_version=False
            )
        except (requests.RequestException, hvac.exceptions.VaultError):
            return False
        return True

    def secret_version(self, service: str) -> int | None:
        """The current KV v2 version of a service's secret, None when there is none."""
        try:
            metadata = self._client.secrets.kv.v2.read_secret_metadata(
                path=self.settings.secret_path(service), mount_point=self.settings.mount
            )
        except hvac.exceptions.InvalidPath:
            return None
        except hvac.exceptions.Forbidden:
            return None  # the policy may read the secret, not its metadata: version unknown
        except (requests.RequestException, hvac.exceptions.VaultError) as err:
            raise _failed(f"read {self.settings.cli_path(service)} from Vault", err) from err
        return int(metadata["data"]["current_version"])


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _read_token_file(path: Path, address: str) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise VaultUnavailable(f"cannot read the Vault token file {path}: {err}") from err
    if not token:
        raise VaultUnavailable(
            f"the Vault token file {path} is empty; Vault at {address} was not asked"
        )
    return token


def _read_jwt(path: Path) -> str:
    """The workload identity's JWT: Nomad writes it for an identity block with file = true."""
    if path.exists() and not path.is_file():
        raise VaultUnavailable(f"{path} is not a regular file: it cannot hold the JWT to log in")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as err:
        raise VaultUnavailable(
            f"no JWT at {path} for the Vault login: the task needs the identity block that "
            f'nomad-pginit render writes (identity {{ name = "{IDENTITY_NAME}", aud = '
            '["vault.io"], file = true }), or set [vault] jwt_file to where the JWT is; with '
            "the block in the job, Nomad gave up signing it in time (it starts the task "
            "anyway after a minute): the task is restarted and logs in once it is there"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise VaultUnavailable(f"cannot read the JWT at {path} for the Vault login: {err}") from err
    if not token:
        raise VaultUnavailable(f"the JWT file {path} is empty: Nomad has not written it yet")
    return token


@contextmanager
def _login_errors(source: TokenSource, address: str) -> Iterator[None]:
    """Vault's refusals of a login or a token, as VaultUnavailable naming the source."""
    try:
        yield
    except hvac.exceptions.VaultDown as err:
        raise VaultUnavailable(f"Vault at {address} is sealed: unseal it, then run again") from err
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as err:
        if source.kind == SourceKind.JWT:
            hint = (
                f"is the JWT auth method mounted at auth/{source.mount} ([vault] jwt_path)? "
                "Vault answers 'permission denied' for a mount that does not exist"
            )
        elif source.logs_in:
            hint = f"check that the auth method is mounted at auth/{source.mount}"
        else:
            hint = (
                "the token is invalid or expired, or lacks the default policy "
                "(auth/token/lookup-self); log in again"
            )
        raise VaultUnavailable(
            f"Vault at {address} rejected {source.description} ({_reason(err)}): {hint}"
        ) from err
    except hvac.exceptions.InvalidRequest as err:
        if source.kind == SourceKind.JWT:
            hint = (
                f"check the role auth/{source.mount}/role/{source.role or '<default_role>'} "
                "(bound_audiences must include vault.io, bound_claims must match the job) and "
                "the auth method's keys (jwks_url or jwt_validation_pubkeys)"
            )
        else:
            hint = "check the role and its credentials"
        raise VaultUnavailable(
            f"Vault at {address} rejected {source.description}: {_reason(err)}; {hint}"
        ) from err
    except (requests.RequestException, hvac.exceptions.VaultError) as err:
        raise VaultUnavailable(
            f"cannot reach Vault at {address}: {_reason(err)}; check VAULT_ADDR and that "
            "Vault is up (VAULT_CACERT for a private CA)"
        ) from err
    except OSError as err:
        # requests raises plain OSError for a CA file it cannot load.
        raise VaultUnavailable(f"cannot reach Vault at {address}: {err}") from err


def _failed(
    doing: str, err: requests.RequestException | hvac.exceptions.VaultError
) -> SecretUnavailable:
    """A request Vault did not answer as asked: unreachable (the transport, or a sealed
    Vault) or refused, in one translation for every request."""
    unreachable = isinstance(err, requests.RequestException | hvac.exceptions.VaultDown)
    return SecretUnavailable(f"cannot {doing}: {_reason(err)}", unreachable=unreachable)


def _reason(err: BaseException) -> str:
    """A short reason without hvac's URL noise; never includes response bodies."""
    # SSLError is a ConnectionError: test it first.
    if isinstance(err, requests.exceptions.SSLError):
        if "WRONG_VERSION_NUMBER" in str(err):
            return "the server does not speak TLS: use http:// in VAULT_ADDR"
        return "TLS verification failed (set VAULT_CACERT to your CA bundle)"
    if isinstance(err, requests.Timeout):
        return f"no answer within {TIMEOUT_SECONDS:g}s"
    if isinstance(err, requests.ConnectionError):
        return "connection refused or host unreachable"
    if isinstance(err, hvac.exceptions.VaultError):
        if err.args and err.args[0]:
            return str(err.args[0])
        # OpenBao answers some paths it will not accept with an empty error list.
        return f"{type(err).__name__} with no message: Vault may not accept this path"
    return type(err).__name__


def _json_type(value: object) -> str:
    """How JSON calls a value's type, for messages (never the value: it may be a secret)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__
