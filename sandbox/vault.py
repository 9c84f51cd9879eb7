"""A throwaway OpenBao dev server (Vault's API), and the part of Nomad's agents that
sign workload identities its JWT auth method trusts."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import hvac
import hvac.exceptions
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.binaries import find_bao
from sandbox.common import LOOPBACK, SandboxError, free_port, read_text, scrubbed_env, tail


class ThrowawayVault:
    """An in-memory OpenBao dev server on 127.0.0.1, unsealed, with a known root token."""

    host = LOOPBACK

    def __init__(self, *, token: str = "root", port: int | None = None) -> None:  # noqa: S107
        self.token = token
        self.port = port if port is not None else free_port()
        self.bao = find_bao()
        self.root_dir = Path(tempfile.mkdtemp(prefix="nomad-pginit-bao-"))
        self.logfile = self.root_dir / "bao.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> None:
        if self.is_running():
            raise SandboxError("the OpenBao server is already running")
        # The user's VAULT_*/BAO_* settings point at their real server; inheriting
        # them could change how the dev server listens or what it trusts.
        env = scrubbed_env(("VAULT_", "BAO_"))
        # Keeps the token helper from writing ~/.vault-token into the real home.
        env["HOME"] = str(self.root_dir)
        # Passed via the environment to keep the token out of `ps` output.
        env["BAO_DEV_ROOT_TOKEN_ID"] = self.token
        with self.logfile.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    self.bao,
                    "server",
                    "-dev",
                    f"-dev-listen-address={self.host}:{self.port}",
                    "-dev-no-store-token",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.root_dir,
                # Own session: a Ctrl-C aimed at the test runner must not kill the
                # server before the fixture's cleanup has run.
                start_new_session=True,
            )
        try:
            self._wait_until_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_healthy(self, timeout: float) -> None:
        # An http_proxy from the environment would otherwise capture loopback traffic.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"{self.addr}/v1/sys/health"
        deadline = time.monotonic() + timeout
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise SandboxError(
                    f"OpenBao exited during startup (exit code {code}); log:\n"
                    + tail(self.server_log())
                )
            try:
                with opener.open(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError:
                pass  # sealed, standby or uninitialised: keep waiting
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"OpenBao did not become healthy at {self.addr} within {timeout:g}s; "
                    f"log:\n{tail(self.server_log())}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root_dir, ignore_errors=True)

    def server_log(self) -> str:
        return read_text(self.logfile)

    @property
    def unseal_key(self) -> str:
        """The dev server's one unseal key, as it printed it: for tests that seal it."""
        match = re.search(r"Unseal Key: (\S+)", self.server_log())
        if match is None:
            raise SandboxError("the OpenBao dev server printed no unseal key")
        return match.group(1)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


# --- Nomad's workload identities ------------------------------------------------------

JWT_MOUNT: Final = "jwt-nomad"
JWT_ROLE: Final = "postgresql"
JWT_POLICY: Final = "postgresql"
# The policy of docs/vault.md: read every service's password and the admin's.
JWT_POLICY_TEXT: Final = 'path "secret/data/postgres/*" {\n  capabilities = ["read"]\n}\n'


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class WorkloadIdentities:
    """Signs Nomad-shaped JWTs and configures a JWT auth method that trusts them.

    The claims are those Nomad puts in a task's identity (nomad/structs/workload_id.go,
    IdentityClaims: nomad_namespace, nomad_job_id, nomad_task, nomad_allocation_id,
    plus aud, sub, iat, nbf, exp).
    """

    key: rsa.RSAPrivateKey = field(default_factory=_new_key)
    key_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def sign(
        self,
        *,
        job: str = "postgresql",
        task: str = "init-databases",
        namespace: str = "default",
        audience: tuple[str, ...] = ("vault.io",),
        ttl: float = 3600,
        key: rsa.RSAPrivateKey | None = None,
        **extra: Any,
    ) -> str:
        """A task identity's JWT, as Nomad writes it to secrets/nomad_<name>.jwt."""
        now = int(time.time())
        alloc_id = str(uuid.uuid4())
        claims: dict[str, Any] = {
            "nomad_namespace": namespace,
            "nomad_job_id": job,
            "nomad_task": task,
            "nomad_allocation_id": alloc_id,
            "sub": f"global:{namespace}:{job}:postgresql:{task}:vault",
            "aud": list(audience),
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
            "jti": str(uuid.uuid4()),
        }
        claims.update(extra)
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.key_id})

    def configure(
        self,
        client: hvac.Client,
        *,
        mount: str = JWT_MOUNT,
        role: str = JWT_ROLE,
        token_settings: dict[str, Any] | None = None,
        default_role: str = "",
    ) -> None:
        """The setup of docs/vault.md, with this key in place of the agents' JWKS URL."""
        try:
            client.sys.enable_auth_method("jwt", path=mount)
        except hvac.exceptions.InvalidRequest as err:
            if "path is already in use" not in str(err):
                raise
        client.write_data(
            f"auth/{mount}/config",
            data={
                "jwt_validation_pubkeys": [self.public_pem],
                "jwt_supported_algs": ["RS256"],
                "default_role": default_role,
            },
        )
        client.sys.create_or_update_policy(JWT_POLICY, JWT_POLICY_TEXT)
        settings: dict[str, Any] = {
            "role_type": "jwt",
            "bound_audiences": ["vault.io"],
            "bound_claims": {"nomad_namespace": "default", "nomad_job_id": "postgresql"},
            "user_claim": "/nomad_job_id",
            "user_claim_json_pointer": True,
            "claim_mappings": {
                "nomad_namespace": "nomad_namespace",
                "nomad_job_id": "nomad_job_id",
                "nomad_task": "nomad_task",
            },
            "token_type": "service",
            "token_policies": [JWT_POLICY],
            "token_period": "30m",
            "token_explicit_max_ttl": 0,
        }
        settings.update(token_settings or {})
        client.write_data(f"auth/{mount}/role/{role}", data=settings)
