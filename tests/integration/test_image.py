"""The image, built from a clean checkout and run as Nomad's docker driver would run it.

buildah builds the Dockerfile without a daemon (``make image-test`` runs this file
alone; ``.ci/run`` installs buildah and debootstrap first). The base image is
stood in from Debian's packages (sandbox/image.py). The image then runs as its
own user, its entrypoint PID 1 of its own PID namespace, against the session's
PostgreSQL and OpenBao: run twice, watch mode stopped by SIGTERM and SIGINT, a
oneshot run stopped while it waits, live mode's sidecar applying a SIGHUP.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cluster, Vault
from provisioning import assert_can_work, password_for

from sandbox import free_port
from sandbox.image import (
    BASE_IMAGE,
    STANDIN_NAME,
    BuiltImage,
    Rootfs,
    build,
    ensure_standin,
    healthcheck,
    image_name,
    image_size,
    missing_tools,
    mounted,
    processes_in,
    remove,
    run,
    start,
    sweep,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
# What the Nomad job gives the task: its files under /local and /secrets.
SERVICES = "/local/pginit.toml"
ADMIN_PASSWORD = "/secrets/pg_admin_password"
WAIT = 60.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(missing_tools()),
        reason=f"building the image needs {', '.join(missing_tools())} (make image-test says how)",
    ),
]


@pytest.fixture(scope="module")
def image(pytestconfig: pytest.Config) -> Iterator[BuiltImage]:
    log: list[str] = []
    sweep(log)
    ensure_standin(log)
    built = build(ROOT, image_name())
    base = image_size(STANDIN_NAME)
    # Said whatever pytest captures: the size is what this test reports.
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    lines = [
        *log,
        f"image {built.name}: {built.size_bytes / 1e6:.0f} MB, of which the stand-in for "
        f"{BASE_IMAGE} {base / 1e6:.0f} MB and nomad-pginit's layers "
        f"{(built.size_bytes - base) / 1e6:.0f} MB; built in {built.seconds:.0f}s",
    ]
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(f"[image] {line}")
    try:
        yield built
    finally:
        remove(built.name)


@pytest.fixture(scope="module")
def rootfs(image: BuiltImage) -> Iterator[Rootfs]:
    """One working container for every test: buildah's vfs copies the whole image for
    each. The tests write its /local and /secrets afresh."""
    with mounted(image.name) as mounted_rootfs:
        yield mounted_rootfs


def services_file(
    pg: Cluster, rootfs: Rootfs, names: list[str], *, port: int | None = None
) -> None:
    rootfs.put(ADMIN_PASSWORD, pg.server.password + "\n")
    lines = [
        "[postgres]",
        f'dsn = "postgresql://postgres@127.0.0.1:{port or pg.port}/postgres"',
        f'password_file = "{ADMIN_PASSWORD}"',
        "",
    ]
    for name in names:
        lines += ["[[service]]", f'name = "{name}"', ""]
    rootfs.put(SERVICES, "\n".join(lines))


def task_env(vault: Vault) -> dict[str, str]:
    return {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token, "PGINIT_CONFIG": SERVICES}


def test_the_image_holds_the_tool_and_nothing_of_the_repository(
    rootfs: Rootfs, image: BuiltImage
) -> None:
    assert rootfs.user == "10001:10001"
    # Nomad has its own checks; a HEALTHCHECK would only restart a finished oneshot run.
    assert healthcheck(image.name) is None
    assert rootfs.entrypoint == ["nomad-pginit"]
    assert rootfs.command == ["run"]
    found = {
        str(path.relative_to(rootfs.path))
        for pattern in (".git", "tests", "sandbox", "pyvenv.cfg", "conftest.py", "Dockerfile")
        for path in rootfs.path.rglob(pattern)
        if "/proc/" not in str(path)
    }
    # Python's own test packages are the base image's, not ours.
    ours = {path for path in found if "python3" not in path or "nomad_pginit" in path}
    assert ours == set(), ours
    packages = list(rootfs.path.glob("usr/local/lib/python3*/*-packages/nomad_pginit"))
    assert packages, "nomad_pginit is not installed in the image"
    code, output = run(rootfs, ["--version"])
    assert code == 0, output
    assert output.startswith("nomad-pginit ")


def test_the_same_python_major_as_the_production_base(rootfs: Rootfs) -> None:
    """The final stage's FROM names the production base (python:3.11-slim): the image's
    python is that major and minor."""
    froms = re.findall(r"^FROM\s+python:(\d+\.\d+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert froms, "the Dockerfile's FROM is not an official python image"
    code, output = run(
        rootfs,
        ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        entrypoint=["python"],
    )
    assert code == 0, output
    assert output.strip() == froms[-1]


def test_run_twice_as_its_own_user(rootfs: Rootfs, pg: Cluster, vault: Vault) -> None:
    names = ["imagesvc1", "imagesvc2"]
    for name in names:
        vault.put(name, password_for(name))
    services_file(pg, rootfs, names)

    code, first = run(rootfs, env=task_env(vault))
    assert code == 0, first
    assert "summary: ok: 2 services in sync (2 created, 0 unchanged)" in first
    code, second = run(rootfs, env=task_env(vault))
    assert code == 0, second
    assert "summary: ok: 2 services in sync (2 unchanged)" in second
    for name in names:
        assert_can_work(pg.server, name, password_for(name))
        assert password_for(name) not in first + second
    assert "Traceback" not in first + second


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 0)])
def test_watch_mode_stops_on_a_signal_to_pid_1(
    rootfs: Rootfs, pg: Cluster, vault: Vault, stop: signal.Signals, code: int
) -> None:
    vault.put("imagewatch", password_for("imagewatch"))
    services_file(pg, rootfs, ["imagewatch"])
    with start(rootfs, ["run", "--watch", "--interval", "1"], task_env(vault)) as running:
        running.read_until("summary: ok", WAIT)
        assert running.uid() == 10001  # the image's user, never root
        running.signal(stop)
        exit_code, output = running.wait(WAIT)
    assert exit_code == code, output
    assert output.rstrip().endswith("stopped"), output


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_oneshot_run_waiting_for_postgres_stops_on_a_signal_to_pid_1(
    rootfs: Rootfs, pg: Cluster, vault: Vault, stop: signal.Signals, code: int
) -> None:
    """PID 1 gets no signal it has no handler for: nomad-pginit installs its own."""
    vault.put("imagewait", password_for("imagewait"))
    services_file(pg, rootfs, ["imagewait"], port=free_port())
    with start(rootfs, ["run", "--wait-timeout", "300"], task_env(vault)) as running:
        running.read_until("waiting for PostgreSQL", WAIT)
        started = time.monotonic()
        running.signal(stop)
        exit_code, output = running.wait(WAIT)
    assert exit_code == code, output
    assert time.monotonic() - started < 15


def test_the_live_sidecar_applies_a_new_services_file_on_sighup(
    rootfs: Rootfs, pg: Cluster, vault: Vault
) -> None:
    names = ["imagelive1", "imagelive2"]
    for name in names:
        vault.put(name, password_for(name))
    rootfs.put(ADMIN_PASSWORD, pg.server.password + "\n")
    cluster = (
        f'[postgres]\ndsn = "postgresql://postgres@127.0.0.1:{pg.port}/postgres"\n'
        f'password_file = "{ADMIN_PASSWORD}"\n'
    )
    rootfs.put("/local/cluster.toml", cluster)
    rootfs.put(SERVICES, f'[[service]]\nname = "{names[0]}"\n')
    env = {**task_env(vault), "PGINIT_CONFIG": "/local/cluster.toml"}
    args = ["run", "--watch", "--interval", "3600", "--services", SERVICES]
    with start(rootfs, args, env) as running:
        running.read_until("summary: ok: 1 service", WAIT)
        # Nomad's template re-rendered the variable into the file, then sent SIGHUP.
        rootfs.put(SERVICES, "".join(f'[[service]]\nname = "{name}"\n\n' for name in names))
        running.signal(signal.SIGHUP)
        output = running.read_until("summary: ok: 2 services", WAIT)
        assert "reload" in output or "SIGHUP" in output, output
        assert_can_work(pg.server, names[1], password_for(names[1]))
        running.signal(signal.SIGTERM)
        exit_code, output = running.wait(WAIT)
    assert exit_code == 0, output


def test_no_process_of_the_image_outlives_it(rootfs: Rootfs) -> None:
    """A container that will not stop is killed whole: its PID 1 and what it started."""
    with start(rootfs, ["-c", "sleep 600 & sleep 600"], entrypoint=["/bin/sh"]) as running:
        running.pid_one()
        assert processes_in(rootfs.path)
    assert processes_in(rootfs.path) == []
