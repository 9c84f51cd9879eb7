"""What the throwaway servers share: their error, free ports, their logs and environment."""

from __future__ import annotations

import os
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
LOG_TAIL_CHARS = 4000


class SandboxError(Exception):
    """A throwaway server could not be found, set up, started or stopped."""


def is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(text: str) -> str:
    if len(text) <= LOG_TAIL_CHARS:
        return text
    return "...\n" + text[-LOG_TAIL_CHARS:]


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def scrubbed_env(prefixes: tuple[str, ...]) -> dict[str, str]:
    return {key: val for key, val in os.environ.items() if not key.startswith(prefixes)}


def process_alive(pid: int) -> bool:
    """Whether a process of this pid exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
