"""``provision.reconcile`` in-process, against the real test cluster and Vault: how the
pool of workers starts, stops and reports services."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from catalog import role_exists
from conftest import Cluster, Vault, tool_env, write_services_file

from nomad_pginit import postgres, provision, spec
from nomad_pginit.provision import SERVICE_WORKERS, Status, reconcile
from nomad_pginit.secret import Secret
from nomad_pginit.state import ClusterState

READY_NOW = postgres.Readiness(timeout=10)


class StopAfter:
    """``should_stop`` that lets ``allowed`` services start, then says stop."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.asked = 0
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:  # asked from every worker thread
            self.asked += 1
            return self.asked > self.allowed


def provisioned_spec(pg: Cluster, vault: Vault, tmp_path: Path, names: list[str]) -> spec.Spec:
    for name in names:
        vault.put(name, f"pw-marker-{name}")
    return spec.load(write_services_file(tmp_path, pg, names))


def test_stop_finishes_the_services_started_and_leaves_the_rest(
    pg: Cluster, vault: Vault, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = [f"svc{index:02d}" for index in range(12)]
    services = provisioned_spec(pg, vault, tmp_path, names)
    stop = StopAfter(allowed=5)
    with caplog.at_level(logging.INFO, logger="nomad_pginit"):
        outcome = reconcile(
            services, readiness=READY_NOW, apply=True, environ=tool_env(vault), should_stop=stop
        )
    started = [service.service.name for service in outcome.services]
    assert len(started) == 5
    assert all(service.status == Status.CREATED for service in outcome.services)
    assert outcome.fatal is None
    assert outcome.exit_code == 0
    made = [name for name in names if role_exists(pg, name)]
    assert sorted(made) == sorted(started)
    assert "stopping: 7 services left for the next run" in caplog.text
    # The next run does the rest, and only the rest.
    again = reconcile(services, readiness=READY_NOW, apply=True, environ=tool_env(vault))
    by_status = {service.service.name: service.status for service in again.services}
    assert [name for name in names if by_status[name] == Status.UNCHANGED] == sorted(started)
    assert sum(status == Status.CREATED for status in by_status.values()) == 7


def test_a_bug_in_one_service_starts_no_other(
    pg: Cluster, vault: Vault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"svc{index:02d}" for index in range(6 * SERVICE_WORKERS)]
    services = provisioned_spec(pg, vault, tmp_path, names)
    real = provision._password_verified
    calls: list[str] = []

    def broken(
        target: postgres.Target, service: spec.Service, password: Secret, cluster: ClusterState
    ) -> bool | None:
        calls.append(service.name)
        if service.name == names[0]:
            raise RuntimeError("a bug")
        return real(target, service, password, cluster)

    monkeypatch.setattr(provision, "_password_verified", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        reconcile(services, readiness=READY_NOW, apply=True, environ=tool_env(vault))
    # The services under way when it broke finish; the ones queued behind them never start.
    assert len(calls) < len(names)
    assert not role_exists(pg, names[-1])
