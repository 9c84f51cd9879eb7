"""The Docker Compose and Kubernetes examples point at the right image, command and paths."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from nomad_pginit import __version__, spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IMAGE = f"nomad-pginit:{__version__}"
KUBERNETES = sorted((EXAMPLES / "kubernetes").glob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def config_path_of(env: dict[str, str]) -> str:
    path = env.get("PGINIT_CONFIG") or env.get("CONFIG_PATH")
    assert path, "the container must name its services file"
    return path


def test_the_examples_use_the_image_the_job_runs() -> None:
    job = (
        Path(__file__).resolve().parents[2]
        / "jobs/services/databases/postgresql/postgresql.nomad.hcl"
    ).read_text(encoding="utf-8")
    assert f'"{IMAGE}"' in job


def test_compose_runs_the_provisioner_in_watch_mode_on_its_config() -> None:
    compose = documents(EXAMPLES / "compose/docker-compose.yml")[0]
    pginit = compose["services"]["pginit"]
    assert pginit["image"] == IMAGE
    assert pginit["build"]["context"] == "../.."
    assert (EXAMPLES / "compose" / pginit["build"]["context"] / "Dockerfile").exists()
    assert pginit["command"] == ["run"]
    env = pginit["environment"]
    assert env["WATCH_MODE"] == "true"
    config = PurePosixPath(config_path_of(env))
    mounts = {
        PurePosixPath(volume.split(":")[1]): volume.split(":")[0] for volume in pginit["volumes"]
    }
    host_dir = mounts[config.parent]
    local = EXAMPLES / "compose" / host_dir / config.name
    assert local.exists(), f"{local} is what the container reads as {config}"
    parsed = spec.load(local)
    assert [service.database for service in parsed.services] == ["app_db"]
    assert "postgres" in compose["services"]
    assert "postgres" in pginit["depends_on"]


@pytest.mark.parametrize("path", KUBERNETES, ids=[path.name for path in KUBERNETES])
def test_kubernetes_manifest_points_at_the_right_image_command_and_paths(path: Path) -> None:
    docs = documents(path)
    workloads = [doc for doc in docs if doc["kind"] in ("Job", "Deployment")]
    assert len(workloads) == 1
    workload = workloads[0]
    pod = workload["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    assert container["args"][0] == "run"
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {item["name"]: item.get("value", "") for item in container["env"]}
    watching = "--watch" in container["args"] or env.get("WATCH_MODE") == "true"
    assert watching == (workload["kind"] == "Deployment")

    config = PurePosixPath(config_path_of(env))
    mount = next(
        m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.parent
    )
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    if "configMap" in volume:
        source = next(
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
        )
        content = source["data"][config.name]
    else:
        source = next(
            d
            for d in docs
            if d["kind"] == "Secret" and d["metadata"]["name"] == volume["secret"]["secretName"]
        )
        content = source["stringData"][config.name]
    parsed = spec.loads(content, Path(config.name))
    assert parsed.services

    password_file = parsed.postgres.password_file
    if password_file is not None:
        mounted = {PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]}
        assert PurePosixPath(password_file).parent in mounted
