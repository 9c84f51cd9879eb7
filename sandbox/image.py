"""The Dockerfile built and run without a Docker daemon or a registry: buildah, as root.

No registry of base images is reachable here, so ``python:3.11-slim`` is stood in
locally: a Debian bookworm root filesystem with python3, pip and venv made by
``debootstrap --variant=minbase`` from Debian's packages, with what the official
image has that Debian's python does not (no ``EXTERNALLY-MANAGED`` marker,
``python`` and ``pip`` on the PATH), committed under that name once and kept in
buildah's storage for the next runs. The machine's CA bundle goes in too, so that
the build's ``pip wheel`` reaches PyPI the way the machine does.

The image is built from a clean checkout (``git archive HEAD``: tracked files
only) with ``buildah bud --isolation chroot --pull=never``, and run the way a
container runtime runs it: its entrypoint as PID 1 of a new PID namespace
(``unshare --pid --fork``), chrooted into the image's filesystem as the image's
own user, with the image's environment and nothing of ours.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sandbox.common import SandboxError, tail

# The base image the Dockerfile names, and what stands in for it here.
BASE_IMAGE: Final = "python:3.11-slim"
STANDIN_NAME: Final = f"localhost/{BASE_IMAGE}"
# The stand-in carries this label: an image of that name without it is someone
# else's, left alone and not trusted.
STANDIN_LABEL: Final = "org.nomad-pginit.stand-in"
STANDIN_SUITE: Final = "bookworm"
DEBIAN_MIRROR: Final = "http://deb.debian.org/debian"
STANDIN_PACKAGES: Final = ("python3", "python3-pip", "python3-venv", "ca-certificates")
# vfs: no overlay filesystem needed; chroot: no runtime (runc, crun) needed.
BUILDAH: Final = ("buildah", "--storage-driver", "vfs")
# The machine's CA bundle: PyPI is reached through what the machine trusts.
HOST_CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")

DEBOOTSTRAP_TIMEOUT: Final = 900.0
BUILD_TIMEOUT: Final = 900.0


class ImageError(SandboxError):
    """buildah, debootstrap or the image did not do what was asked."""


def missing_tools() -> list[str]:
    """What building and running the image needs and this machine lacks."""
    missing = [
        tool for tool in ("buildah", "debootstrap", "unshare", "git") if not shutil.which(tool)
    ]
    if os.geteuid() != 0:
        missing.append("root (buildah with the vfs driver and chroot isolation runs as root)")
    return missing


def _run(
    args: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 300.0,
    stdin: bytes | None = None,
) -> str:
    result = subprocess.run(
        [str(arg) for arg in args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode("utf-8", errors="replace")
        raise ImageError(f"{' '.join(map(str, args[:4]))} ... failed:\n{tail(output)}")
    return result.stdout.decode("utf-8", errors="replace")


def _buildah(*args: str | os.PathLike[str], timeout: float = 300.0) -> str:
    return _run([*BUILDAH, *args], timeout=timeout)


def _inspect(image: str) -> dict[str, object] | None:
    result = subprocess.run(
        [*BUILDAH, "inspect", "--type", "image", image],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        return None
    document: dict[str, object] = json.loads(result.stdout)
    return document


def healthcheck(image: str) -> object:
    """The image's HEALTHCHECK (Docker's config keeps it; OCI's has none), or None."""
    document = _inspect(image) or {}
    docker = document.get("Docker")
    config = docker.get("config") if isinstance(docker, dict) else None
    return config.get("Healthcheck") if isinstance(config, dict) else None


def _config(image: str) -> dict[str, object]:
    """The image's OCI config (Env, User, Entrypoint, Cmd, Labels)."""
    document = _inspect(image)
    if document is None:
        raise ImageError(f"no image {image} in buildah's storage")
    oci = document.get("OCIv1")
    config = oci.get("config") if isinstance(oci, dict) else None
    return config if isinstance(config, dict) else {}


def ensure_standin(log: list[str]) -> None:
    """``python:3.11-slim`` stood in from Debian's packages, made once and kept."""
    if _inspect(STANDIN_NAME) is not None:
        labels = _config(STANDIN_NAME).get("Labels") or {}
        if isinstance(labels, dict) and STANDIN_LABEL in labels:
            log.append(f"stand-in {STANDIN_NAME}: kept from an earlier run")
            return
        raise ImageError(
            f"an image {STANDIN_NAME} that is not the stand-in is in buildah's storage: "
            f"remove it (buildah --storage-driver vfs rmi {STANDIN_NAME}) to let the test "
            "make its own"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nomad-pginit-standin-") as scratch:
        root = Path(scratch) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(STANDIN_PACKAGES)}",
                STANDIN_SUITE,
                root,
                DEBIAN_MIRROR,
            ],
            timeout=DEBOOTSTRAP_TIMEOUT,
        )
        _as_the_official_image(root)
        container = _buildah("from", "scratch").strip()
        try:
            mount = Path(_buildah("mount", container).strip())
            _run(["cp", "-a", f"{root}/.", str(mount)])
            _buildah("umount", container)
            _buildah(
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env",
                "LANG=C.UTF-8",
                "--cmd",
                "python3",
                "--label",
                f"{STANDIN_LABEL}=debootstrap {STANDIN_SUITE} minbase",
                container,
            )
            _buildah("commit", "--quiet", container, STANDIN_NAME)
        finally:
            subprocess.run([*BUILDAH, "rm", container], capture_output=True, check=False)
    log.append(f"stand-in {STANDIN_NAME}: made in {time.monotonic() - started:.0f}s")


def _as_the_official_image(root: Path) -> None:
    """What python:3.11-slim has that Debian's python3 does not."""
    # PEP 668: the official image's python is its own, pip installs into it.
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    for name, target in (("python", "python3"), ("pip", "pip3")):
        link = root / "usr/bin" / name
        if not link.exists():
            link.symlink_to(target)
    if HOST_CA_BUNDLE.is_file():
        shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class BuiltImage:
    name: str
    size_bytes: int
    seconds: float


def build(repository: Path, name: str) -> BuiltImage:
    """The Dockerfile of ``repository``'s HEAD, built with nothing but its tracked files."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nomad-pginit-context-") as scratch:
        context = Path(scratch)
        archive = subprocess.run(
            ["git", "-C", str(repository), "archive", "--format=tar", "HEAD"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if archive.returncode != 0:
            raise ImageError(f"git archive HEAD failed: {archive.stderr.decode(errors='replace')}")
        _run(["tar", "-x", "-C", str(context)], stdin=archive.stdout)
        _buildah(
            "bud",
            "--isolation",
            "chroot",
            "--pull=never",
            "--layers=false",
            # Docker's format, as a registry for Nomad's docker driver holds it: it keeps
            # a HEALTHCHECK (OCI's drops it), so the test sees one if the Dockerfile had it.
            "--format=docker",
            "--tag",
            name,
            "--file",
            str(context / "Dockerfile"),
            str(context),
            timeout=BUILD_TIMEOUT,
        )
    return BuiltImage(name, image_size(name), time.monotonic() - started)


def image_size(name: str) -> int:
    """The image's size: its layers as stored (uncompressed tars), from its manifest."""
    document = _inspect(name)
    if document is None:
        raise ImageError(f"no image {name}")
    manifest = json.loads(str(document.get("Manifest") or "{}"))
    return sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))


def remove(name: str) -> None:
    subprocess.run([*BUILDAH, "rmi", "--force", name], capture_output=True, check=False)


@dataclass
class Rootfs:
    """A working container of the image, mounted: its filesystem and its config."""

    container: str
    path: Path
    env: dict[str, str]
    user: str
    entrypoint: list[str]
    command: list[str]

    def put(self, inside: str, text: str, *, owner: str | None = None) -> Path:
        """A file in the container's filesystem (the task's /local, /secrets)."""
        target = self.path / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        uid, _, gid = (owner or self.user).partition(":")
        for path in (target.parent, target):
            os.chown(path, int(uid), int(gid or uid))
        target.chmod(0o600)
        return target


@contextmanager
def mounted(image: str) -> Iterator[Rootfs]:
    """A working container of ``image``, mounted, removed on the way out."""
    config = _config(image)
    container = _buildah("from", "--pull=never", image).strip()
    try:
        path = Path(_buildah("mount", container).strip())
        env = dict(item.partition("=")[::2] for item in _strings(config.get("Env")))
        user = str(config.get("User") or "")
        entrypoint = _strings(config.get("Entrypoint"))
        command = _strings(config.get("Cmd"))
        yield Rootfs(container, path, env, user, entrypoint, command)
    finally:
        subprocess.run([*BUILDAH, "umount", container], capture_output=True, check=False)
        subprocess.run([*BUILDAH, "rm", container], capture_output=True, check=False)


def _strings(value: object) -> list[str]:
    """A list of strings from the image's config (Env, Entrypoint, Cmd), or []."""
    return [str(item) for item in value] if isinstance(value, list) else []


class Running:
    """The image's entrypoint running as PID 1 of its own PID namespace."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def pid_one(self, timeout: float = 10.0) -> int:
        """The host's pid of the namespace's PID 1 (the entrypoint), once it runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            try:
                found = children.read_text().split()
            except OSError:
                found = []
            for pid in found:
                status = _status(int(pid))
                if status.get("NSpid", "").split()[-1:] == ["1"]:
                    return int(pid)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise ImageError("the entrypoint never ran as PID 1 of its namespace")

    def uid(self) -> int:
        """The real uid PID 1 runs as."""
        return int(_status(self.pid_one()).get("Uid", "-1").split()[0])

    def signal(self, signum: signal.Signals) -> None:
        """As a container runtime stops a container: the signal to its PID 1."""
        os.kill(self.pid_one(), signum)

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
            raise ImageError(
                f"the container did not exit within {timeout:g}s:\n{tail(output)}"
            ) from None
        return self.process.returncode, output


def _status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def start(
    rootfs: Rootfs, args: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Running:
    """The entrypoint (with ``args``, else the image's CMD) as the image's user, PID 1."""
    if not rootfs.user or rootfs.user.split(":")[0] in ("0", "root"):
        raise ImageError(f"the image runs as {rootfs.user or 'root'}: it must name another user")
    environment = {**rootfs.env, "HOME": "/", **(env or {})}
    command = [*rootfs.entrypoint, *(rootfs.command if args is None else args)]
    process = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "chroot",
            f"--userspec={rootfs.user}",
            str(rootfs.path),
            "/usr/bin/env",
            "-i",
            *(f"{key}={value}" for key, value in environment.items()),
            *command,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/",
    )
    return Running(process)


def run(
    rootfs: Rootfs,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> tuple[int, str]:
    return start(rootfs, args, env).wait(timeout)
