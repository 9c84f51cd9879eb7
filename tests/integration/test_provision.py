"""``provision.reconcile`` in-process, against the real test cluster and Vault: how the
pool of workers starts, stops and reports services."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import pytest
from catalog import role_exists
from conftest import Cluster, Vault, tool_env, write_services_file

from nomad_pginit import postgres, provision, spec
from nomad_pginit.errors import ExitCode
from nomad_pginit.outcome import Status
from nomad_pginit.provision import SERVICE_WORKERS, reconcile
from nomad_pginit.secret import Secret
from nomad_pginit.state import ClusterState
from nomad_pginit.stopping import StopRequest

READY_NOW = postgres.Readiness(timeout=10)


class StopAfter(StopRequest):
    """A stop request that lets ``allowed`` services start, then comes (as SIGTERM)."""

    def __init__(self, allowed: int) -> None:
        super().__init__()
        self.allowed = allowed
        self.asked = 0
        self._count_lock = threading.Lock()

    def check(self, what: str) -> None:
        if what.startswith("provisioning "):
            with self._count_lock:  # asked from every worker thread
                self.asked += 1
                if self.asked > self.allowed:
                    self.request(signal.SIGTERM)
        super().check(what)


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
            services, readiness=READY_NOW, apply=True, environ=tool_env(vault), stop=stop
        )
    started = [item.service.name for item in outcome.services if item.status == Status.CREATED]
    assert len(started) == 5
    # The others are there, counted and named: not finished, left for the next run.
    assert len(outcome.unfinished) == 7
    assert outcome.fatal is None
    assert outcome.exit_code == ExitCode.STOPPED
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
