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

import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

from sandbox.common import SandboxError, process_alive, tail

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

# Each built image carries this label, its value the pid of the run that built it: a
# run sweeps away what a killed run left (its images, their working containers).
RUN_LABEL: Final = "org.nomad-pginit.image-test"

DEBOOTSTRAP_TIMEOUT: Final = 900.0
BUILD_TIMEOUT: Final = 900.0


class ImageError(SandboxError):
    """buildah, debootstrap or the image did not do what was asked."""


def missing_tools() -> list[str]:
    """What building and running the image needs and this machine lacks."""
    # debootstrap lives in /usr/sbin, which a user's PATH may leave out.
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    tools = ("buildah", "debootstrap", "unshare", "git")
    missing = [tool for tool in tools if not shutil.which(tool, path=path)]
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


def _standin_recipe() -> str:
    """What the stand-in is made of: another recipe (suite, packages, the machine's
    CAs) makes it again."""
    recipe = f"debootstrap {STANDIN_SUITE} minbase {' '.join(STANDIN_PACKAGES)}"
    if HOST_CA_BUNDLE.is_file():
        recipe += f" ca {hashlib.sha256(HOST_CA_BUNDLE.read_bytes()).hexdigest()[:16]}"
    return recipe


def ensure_standin(log: list[str]) -> None:
    """``python:3.11-slim`` stood in from Debian's packages, made once and kept."""
    recipe = _standin_recipe()
    if _inspect(STANDIN_NAME) is not None:
        labels = _config(STANDIN_NAME).get("Labels") or {}
        if isinstance(labels, dict) and labels.get(STANDIN_LABEL) == recipe:
            log.append(f"stand-in {STANDIN_NAME}: kept from an earlier run")
            return
        if isinstance(labels, dict) and STANDIN_LABEL in labels:
            log.append(f"stand-in {STANDIN_NAME}: made of another recipe, made again")
            _buildah("rmi", "--force", STANDIN_NAME)
            ensure_standin(log)
            return
        raise ImageError(
            f"an image {STANDIN_NAME} that is not the stand-in is in buildah's storage: "
            f"remove it (buildah --storage-driver vfs rmi {STANDIN_NAME}) to let the test "
            "make its own"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nomad-pginit-standin-") as scratch:
        root = Path(scratch) / "rootfs"
        # debootstrap mounts /proc (and more) inside: a killed one leaves them mounted,
        # which no rmtree gets through.
        with contextlib.ExitStack() as mounts:
            mounts.callback(_unmount_under, root)
            _debootstrap(root)
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
                f"{STANDIN_LABEL}={recipe}",
                container,
            )
            _buildah("commit", "--quiet", container, STANDIN_NAME)
        finally:
            subprocess.run([*BUILDAH, "rm", container], capture_output=True, check=False)
    log.append(f"stand-in {STANDIN_NAME}: made in {time.monotonic() - started:.0f}s")


def _debootstrap(root: Path) -> None:
    found = shutil.which("debootstrap", path="/usr/sbin:/sbin:/usr/bin:/bin")
    _run(
        [
            found or "debootstrap",
            "--variant=minbase",
            f"--include={','.join(STANDIN_PACKAGES)}",
            STANDIN_SUITE,
            root,
            DEBIAN_MIRROR,
        ],
        timeout=DEBOOTSTRAP_TIMEOUT,
    )


def _unmount_under(root: Path) -> None:
    """Unmount whatever is mounted below ``root``, deepest first."""
    prefix = f"{root}/"
    mounts = [
        fields[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if len(fields := line.split()) > 1 and fields[1].startswith(prefix)
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], capture_output=True, check=False)


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


def image_name() -> str:
    """This run's own tag: two runs at once never remove each other's image."""
    return f"localhost/nomad-pginit:image-test-{os.getpid()}"


def sweep(log: list[str]) -> None:
    """Remove the images (and their working containers) of earlier runs that are gone:
    a killed run removes nothing itself, and each image weighs some 300 MB in vfs."""
    images = json.loads(_buildah("images", "--json", "--filter", f"label={RUN_LABEL}") or "[]")
    containers = json.loads(_buildah("containers", "--json") or "[]")
    for image in images or []:
        labels = _config(str(image["id"])).get("Labels") or {}
        owner = labels.get(RUN_LABEL) if isinstance(labels, dict) else None
        if owner is not None and str(owner).isdigit() and process_alive(int(owner)):
            continue
        for container in containers or []:
            if str(container.get("imageid", "")).startswith(str(image["id"])):
                subprocess.run([*BUILDAH, "rm", container["id"]], capture_output=True, check=False)
        subprocess.run([*BUILDAH, "rmi", "--force", image["id"]], capture_output=True, check=False)
        log.append(f"removed image {str(image['id'])[:12]}, left by a run that is gone")


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
            "--label",
            f"{RUN_LABEL}={os.getpid()}",
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
        # An image with no USER runs as root: start() refuses it, saying so.
        uid, _, gid = (owner or self.user or "0:0").partition(":")
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
        yield Rootfs(path, env, user, entrypoint, command)
    finally:
        subprocess.run([*BUILDAH, "umount", container], capture_output=True, check=False)
        subprocess.run([*BUILDAH, "rm", container], capture_output=True, check=False)


def _strings(value: object) -> list[str]:
    """A list of strings from the image's config (Env, Entrypoint, Cmd), or []."""
    return [str(item) for item in value] if isinstance(value, list) else []


class Running:
    """The image's entrypoint running as PID 1 of its own PID namespace; its output
    read as it comes, so that no wait for a line outlasts its deadline. Ended (its
    whole namespace killed) on the way out of ``with``."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def read_until(self, pattern: str, timeout: float) -> str:
        """The output up to the first line matching ``pattern`` (a regular expression),
        or ImageError once ``timeout`` seconds pass, or the container ends, without it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise ImageError(
                    f"no line matching {pattern!r} within {timeout:g}s:\n{self.output()}"
                ) from None
            if line is None:
                self._queue.put(None)  # the end, for whoever asks next
                raise ImageError(f"the container ended before {pattern!r}:\n{self.output()}")
            self.lines.append(line)
            if re.search(pattern, line):
                return self.output()

    def output(self) -> str:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return "".join(self.lines)
            if line is None:
                self._queue.put(None)
                return "".join(self.lines)
            self.lines.append(line)

    def pid_one(self, timeout: float = 10.0) -> int:
        """The host's pid of the namespace's PID 1 once it is the entrypoint (no longer
        unshare's chroot or env on the way to it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self._namespace_init()
            if pid is not None and _comm(pid) not in ("chroot", "env"):
                return pid
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise ImageError("the entrypoint never ran as PID 1 of its namespace")

    def _namespace_init(self) -> int | None:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            found = children.read_text().split()
        except OSError:
            return None
        for pid in found:
            if _status(int(pid)).get("NSpid", "").split()[-1:] == ["1"]:
                return int(pid)
        return None

    def uid(self) -> int:
        """The real uid PID 1 runs as."""
        return int(_status(self.pid_one()).get("Uid", "-1").split()[0])

    def signal(self, signum: signal.Signals) -> None:
        """As a container runtime stops a container: the signal to its PID 1."""
        os.kill(self.pid_one(), signum)

    def kill(self) -> None:
        """End the container: SIGKILL to its PID 1 ends every process of its namespace
        (unshare's --kill-child does not reach a child that changed its user)."""
        if self.process.poll() is None:
            pid = self._namespace_init()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
        self.process.wait()
        self._pump.join(timeout=10)

    def wait(self, timeout: float) -> tuple[int, str]:
        """The exit code and the whole output; the container killed, and ImageError,
        once ``timeout`` seconds pass."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ImageError(
                f"the container did not exit within {timeout:g}s:\n{tail(self.output())}"
            ) from None
        self._pump.join(timeout=10)
        return code, self.output()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _status(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def start(
    rootfs: Rootfs,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    entrypoint: Sequence[str] | None = None,
) -> Running:
    """The entrypoint (with ``args``, else the image's CMD) as the image's user, PID 1;
    ``entrypoint`` replaces the image's, as docker run --entrypoint does."""
    if not rootfs.user or rootfs.user.split(":")[0] in ("0", "root"):
        raise ImageError(f"the image runs as {rootfs.user or 'root'}: it must name another user")
    environment = {**rootfs.env, "HOME": "/", **(env or {})}
    first = list(rootfs.entrypoint if entrypoint is None else entrypoint)
    command = [*first, *(rootfs.command if args is None else args)]
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
    *,
    entrypoint: Sequence[str] | None = None,
) -> tuple[int, str]:
    with start(rootfs, args, env, entrypoint=entrypoint) as running:
        return running.wait(timeout)


def processes_in(root: Path) -> list[int]:
    """The pids of every process whose root directory is ``root`` (the container's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "root")) == root:
                    found.append(int(entry.name))
    return found
