"""Fixtures for the operator commands' tests against the Nomad double (a pytest plugin).

``nomad`` is a running double with one management token; ``job_dir`` is an
infrastructure repository's directory: a services file and the job rendered
from it. The helpers run the commands as processes, as an operator would.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Result, run_tool, tool_env
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nomad_double import NomadDouble, Recorded

from nomad_pginit import render, spec

NOMAD_TOKEN = "nomad-token-9f2c"
SERVICES_TOML = """\
# The services of the homelab: one [[service]] per tenant.
[vault]
mount = "secret"   # KV v2

# The forge.
[[service]]
name = "gitea"

[[service]]
name = "grafana"
database = "grafana_db"  # legacy name
"""


@pytest.fixture
def nomad() -> Iterator[NomadDouble]:
    with NomadDouble(token=NOMAD_TOKEN) as double:
        yield double


@pytest.fixture
def job_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A services file and the job rendered from it, as an infrastructure repository has."""
    monkeypatch.chdir(tmp_path)  # commands resolve ./templates here
    services = tmp_path / "pginit.toml"
    services.write_text(SERVICES_TOML, encoding="utf-8")
    job = render.Templates(None).job(spec.load(services))
    (tmp_path / render.JOB_FILE_NAME).write_text(job, encoding="utf-8")
    return tmp_path


def job_text(job_dir: Path) -> str:
    return (job_dir / render.JOB_FILE_NAME).read_text(encoding="utf-8")


def nomad_env(nomad: NomadDouble, **overrides: str) -> dict[str, str]:
    return tool_env(None, NOMAD_ADDR=nomad.address, NOMAD_TOKEN=NOMAD_TOKEN, **overrides)


def nomad_tool(command: str, job_dir: Path, env: Mapping[str, str], *extra: str) -> Result:
    return run_tool([command, "--config", str(job_dir / "pginit.toml"), *extra], env, timeout=60)


def lines_with(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


def assert_every_request_authenticated(nomad: NomadDouble) -> None:
    assert nomad.requests
    assert {request.headers.get("x-nomad-token") for request in nomad.requests} == {NOMAD_TOKEN}


def log_requests(nomad: NomadDouble) -> list[Recorded]:
    return nomad.requests_to("GET", "/v1/client/fs/logs/")


@dataclass(frozen=True)
class TlsFiles:
    """A CA, a server certificate for Nomad's name and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


# The name Nomad agents' certificates carry (nomad tls cert create -server).
SERVER_NAME = "server.global.nomad"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Nomad Agent CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(name: str, *, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return (
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    files = TlsFiles(
        *(
            directory / name
            for name in ("ca.pem", "server.pem", "server-key.pem", "cli.pem", "cli-key.pem")
        )
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = issue(SERVER_NAME, server=True)
    files.server_cert.write_bytes(server_cert)
    files.server_key.write_bytes(server_key)
    client_cert, client_key = issue("cli.global.nomad", server=False)
    files.client_cert.write_bytes(client_cert)
    files.client_key.write_bytes(client_key)
    return files
