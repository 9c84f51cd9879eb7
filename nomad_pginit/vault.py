"""Vault KV v2: the only module that talks to Vault (through hvac).

Every hvac and requests error is translated here into the project's errors,
with a message that says what to do. No message ever carries a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import hvac
import hvac.exceptions
import requests

from nomad_pginit.errors import SecretUnavailable, VaultUnavailable
from nomad_pginit.secret import Secret
from nomad_pginit.spec import VaultSettings

DEFAULT_ADDR: Final = "https://127.0.0.1:8200"  # the vault CLI's own default
TIMEOUT_SECONDS: Final = 10


@dataclass(frozen=True)
class VaultSecret:
    """One service's password and the KV v2 version it came from."""

    password: Secret
    version: int


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _tls_verify(environ: Mapping[str, str]) -> bool | str:
    if _truthy(environ.get("VAULT_SKIP_VERIFY")):
        return False
    return environ.get("VAULT_CACERT") or True


def _find_token(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The token and where it came from, in the order an operator expects."""
    if environ.get("VAULT_TOKEN"):
        return environ["VAULT_TOKEN"].strip(), "$VAULT_TOKEN"
    # Nomad 1.7+ writes the workload identity's token here for a task with a vault block.
    secrets_dir = environ.get("NOMAD_SECRETS_DIR")
    if secrets_dir:
        token_file = Path(secrets_dir) / "vault_token"
        if token_file.is_file():
            return token_file.read_text(encoding="utf-8").strip(), str(token_file)
    return None


def _home_token(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """What `vault login` leaves behind, for operators running commands by hand."""
    home_token = Path(environ.get("HOME", "~")).expanduser() / ".vault-token"
    if home_token.is_file():
        return home_token.read_text(encoding="utf-8").strip(), str(home_token)
    return None


class Vault:
    """A logged-in client for the KV v2 mount that holds the services' passwords."""

    def __init__(self, client: hvac.Client, settings: VaultSettings, token_source: str) -> None:
        self._client = client
        self.settings = settings
        self.token_source = token_source

    @property
    def address(self) -> str:
        return str(self._client.url)

    @classmethod
    def connect(cls, settings: VaultSettings, environ: Mapping[str, str] | None = None) -> Vault:
        """Log in and check the token, or raise VaultUnavailable (exit 4)."""
        env = os.environ if environ is None else environ
        address = env.get("VAULT_ADDR") or DEFAULT_ADDR
        client = hvac.Client(
            url=address,
            namespace=env.get("VAULT_NAMESPACE") or None,  # hvac does not read it itself
            verify=_tls_verify(env),
            timeout=TIMEOUT_SECONDS,
        )
        found = _find_token(env)
        try:
            if found is not None:
                client.token, source = found
            elif env.get("VAULT_ROLE_ID") and env.get("VAULT_SECRET_ID"):
                client.auth.approle.login(
                    role_id=env["VAULT_ROLE_ID"],
                    secret_id=env["VAULT_SECRET_ID"],
                    mount_point=env.get("VAULT_APPROLE_MOUNT", "approle"),
                )
                source = "AppRole ($VAULT_ROLE_ID, $VAULT_SECRET_ID)"
            elif (home := _home_token(env)) is not None:
                client.token, source = home
                found = home
            else:
                raise VaultUnavailable(
                    "no Vault token: set VAULT_TOKEN, give the Nomad task a vault block "
                    "(Nomad writes $NOMAD_SECRETS_DIR/vault_token), or set VAULT_ROLE_ID and "
                    "VAULT_SECRET_ID for AppRole, or run vault login"
                )
            client.auth.token.lookup_self()
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as err:
            how = "AppRole login" if found is None else f"the token from {found[1]}"
            raise VaultUnavailable(
                f"Vault at {address} rejected {how} (permission denied): the token is invalid "
                "or expired, or lacks the default policy (auth/token/lookup-self); check the "
                "task's vault block and the JWT auth role, or log in again"
            ) from err
        except hvac.exceptions.InvalidRequest as err:
            raise VaultUnavailable(f"Vault at {address} refused the login: {err.args[0]}") from err
        except hvac.exceptions.VaultDown as err:
            raise VaultUnavailable(
                f"Vault at {address} is sealed: unseal it, then run again"
            ) from err
        except (requests.RequestException, hvac.exceptions.VaultError) as err:
            raise VaultUnavailable(
                f"cannot reach Vault at {address}: {_reason(err)}; check VAULT_ADDR and that "
                "Vault is up (VAULT_CACERT for a private CA)"
            ) from err
        return cls(client, settings, source)

    def read_password(self, service: str) -> VaultSecret:
        """The newest version of one service's password, or SecretUnavailable."""
        path = self.settings.secret_path(service)
        cli_path = self.settings.cli_path(service)
        key = self.settings.key
        try:
            response = self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.settings.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath as err:
            raise SecretUnavailable(
                f"no secret at {cli_path} in Vault: create it with "
                f'vault kv put {cli_path} {key}="$(openssl rand -base64 32)" '
                f"(or nomad-pginit add-service {service})"
            ) from err
        except hvac.exceptions.Forbidden as err:
            raise SecretUnavailable(
                f"Vault denied reading {cli_path} (403): the task's policy needs "
                f"read on {self.settings.mount}/data/{self.settings.secret_path('*')}"
            ) from err
        except (requests.RequestException, hvac.exceptions.VaultError) as err:
            raise SecretUnavailable(f"cannot read {cli_path} from Vault: {_reason(err)}") from err
        data = response["data"]["data"] or {}
        value = data.get(key)
        if not isinstance(value, str) or value == "":
            found = ", ".join(sorted(data)) or "no keys"
            raise SecretUnavailable(
                f"the secret at {cli_path} has no non-empty string key '{key}' (it has: {found}): "
                f'add it with vault kv patch {cli_path} {key}="$(openssl rand -base64 32)"'
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SecretUnavailable(
                f"the '{key}' at {cli_path} is not valid UTF-8 text: write it again"
            ) from None
        version = int(response["data"]["metadata"]["version"])
        return VaultSecret(password=Secret(value), version=version)

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
            pass  # a write-only policy may not read metadata; cas=0 still protects it
        except (requests.RequestException, hvac.exceptions.VaultError) as err:
            raise SecretUnavailable(f"cannot read {cli_path} from Vault: {_reason(err)}") from err
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
            raise SecretUnavailable(f"cannot write {cli_path} to Vault: {_reason(err)}") from err
        return True

    def secret_version(self, service: str) -> int | None:
        """The current KV v2 version of a service's secret, None when there is none."""
        try:
            metadata = self._client.secrets.kv.v2.read_secret_metadata(
                path=self.settings.secret_path(service), mount_point=self.settings.mount
            )
        except hvac.exceptions.InvalidPath:
            return None
        except (requests.RequestException, hvac.exceptions.VaultError) as err:
            cli_path = self.settings.cli_path(service)
            raise SecretUnavailable(f"cannot read {cli_path} from Vault: {_reason(err)}") from err
        return int(metadata["data"]["current_version"])


def _reason(err: BaseException) -> str:
    """A short reason without hvac's URL noise; never includes response bodies."""
    # SSLError is a ConnectionError: test it first.
    if isinstance(err, requests.exceptions.SSLError):
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
