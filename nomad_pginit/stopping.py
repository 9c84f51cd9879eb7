"""A stop request (SIGTERM, SIGINT) that every wait listens to.

Nomad sends the kill signal and, ``kill_timeout`` later (5 s by default),
SIGKILL; Kubernetes and Docker do the same. So a stop must end every wait
within a second or two, wherever the process is: waiting for PostgreSQL,
for the advisory lock, for Vault, or behind another session's lock.

- Waits poll it (``wait``, ``is_set``).
- Calls that cannot be interrupted (a TCP connect, an HTTP request) run in a
  helper thread while the caller waits for them or for the stop (``call``).
- Work that is under way gets ``GRACE_SECONDS`` to finish; then the
  callbacks registered with ``on_stop`` run, which cancel what is still
  running (the statements PostgreSQL is executing for us).
- Something that stops answering for good (a frozen connection, a Vault that
  trickles) is given up on with ``abandon``: the same path, with a failure
  instead of a signal.
- If the process is still there ``LAST_RESORT_SECONDS`` later (a thread
  stuck where no cancel reaches), the ``last_resort`` callback writes the
  summary it can and the process ends: a stop is never ignored.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar

from nomad_pginit.errors import ExitCode, PginitError

GRACE_SECONDS: Final = 1.0
# After the grace and the cancellations, how long the process may still take to
# write its summary and end. A thread stuck where nothing reaches it (a frozen
# connection the cancel cannot cross) must not hold the process past the few
# seconds a scheduler allows: the last words are said, and the process ends.
LAST_RESORT_SECONDS: Final = 2.0
# How often a wait that cannot block on the request itself looks at it.
POLL_SECONDS: Final = 0.1

T = TypeVar("T")

log = logging.getLogger(__name__)


class Stopped(PginitError):
    """The run was asked to stop before this finished."""

    exit_code = ExitCode.STOPPED
    summary = "stopped before anything was changed"

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        if signum == signal.SIGINT:
            self.exit_code = ExitCode.INTERRUPTED


def exit_code(signum: int | None) -> ExitCode:
    """What a run that a stop request cut short exits with: 128 + the signal, as shells
    report a process that a signal ended (SIGINT 130, SIGTERM and any other 143)."""
    return ExitCode.INTERRUPTED if signum == signal.SIGINT else ExitCode.STOPPED


class StopRequest:
    """Set once by a signal handler (or a test); waited for everywhere."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._fired = False
        # The signal that asked, for the exit code (128 + signal, as shells report it).
        self.signal: int | None = None
        # Set when the run gives up on something that does not answer (abandon).
        self.fatal: PginitError | None = None
        # The end of the process: who writes the summary, and whether anyone has.
        self._exit_lock = threading.Lock()
        self._finishing = False
        self._spoke = False  # the last resort wrote the summary: the process is ending
        self._last_words: Callable[[], int] | None = None

    def install(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Make these signals request the stop (from the main thread); the process's stop
        from now on, which ``end`` honours."""
        _INSTALLED[:] = [self]
        for signum in signals:
            signal.signal(signum, lambda number, _frame: self.request(number))

    def request(self, signum: int | None = None) -> None:
        """Ask everything to stop. Safe in a signal handler: it only sets and starts."""
        if self._event.is_set():
            return
        self.signal = signum
        self._event.set()
        threading.Thread(target=self._after_grace, name="stop", daemon=True).start()

    def abandon(self, err: PginitError) -> None:
        """Give up on something that does not answer and nothing can interrupt (a
        frozen connection, a Vault that trickles): the run ends as after a stop, with
        ``err`` as its failure, and the process does not wait for what is stuck."""
        if self._event.is_set():
            return
        self.fatal = err
        self.request(None)

    def last_resort(self, last_words: Callable[[], int]) -> None:
        """What to say, and the exit code, if the process is still here
        LAST_RESORT_SECONDS after a stop's grace: the summary it could not write."""
        self._last_words = last_words

    def finishing(self) -> None:
        """The summary is about to be written: the last resort is not needed. If it
        has spoken already, the process is ending in its thread: wait for that."""
        with self._exit_lock:
            if not self._spoke:
                self._finishing = True
                return
        threading.Event().wait()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep ``timeout`` seconds, or less when asked to stop; True when asked."""
        return self._event.wait(max(0.0, timeout))

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` once the grace period after a stop request is over.

        Returns the function that takes the callback back. A callback added
        after that moment runs at once.
        """
        with self._lock:
            fired = self._fired
            if not fired:
                self._callbacks.append(callback)
        if fired:
            callback()

        def remove() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return remove

    def check(self, what: str) -> None:
        """Raise Stopped if a stop was requested (before starting ``what``)."""
        if self.is_set():
            raise Stopped(f"stopped before {what}", self.signal)

    def call(
        self,
        function: Callable[[], T],
        what: str,
        *,
        deadline: float | None = None,
        too_slow: Callable[[float], PginitError] | None = None,
    ) -> T:
        """``function()``, or Stopped as soon as a stop is requested while it runs.

        For calls that nothing can interrupt: they go on in a daemon thread,
        whose result nobody waits for once the stop came. With ``deadline``
        (seconds), a call still running then is given up on: the run is
        abandoned with ``too_slow(seconds)`` as its failure, which is raised.
        """
        self.check(what)
        box: list[T] = []
        errors: list[BaseException] = []
        done = threading.Event()

        def target() -> None:
            try:
                box.append(function())
            except BaseException as err:  # handed to the caller below
                errors.append(err)
            finally:
                done.set()

        threading.Thread(target=target, name="interruptible", daemon=True).start()
        started = time.monotonic()
        while not done.wait(POLL_SECONDS):
            if self.is_set():
                raise Stopped(f"stopped while {what}", self.signal)
            if deadline is not None and time.monotonic() - started > deadline:
                err = (too_slow or _too_slow(what))(deadline)
                self.abandon(err)
                raise err
        if errors:
            raise errors[0]
        return box[0]

    def exit_now(self, code: int) -> int:
        """``code``, or, after a stop request, the end of the process with it at once.

        Threads may still wait on what nothing can cancel (a Vault request, a
        TCP connect: each bounded, but by more than the few seconds the
        scheduler allows before SIGKILL); the summary is written, so nothing
        is left to say and the process does not wait for them.
        """
        self.finishing()
        if not self.is_set():
            return code
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def _after_grace(self) -> None:
        self._event.wait()
        if self.fatal is not None:
            log.error(
                "%s; ending the run (what is under way gets %gs, then is cancelled)",
                self.fatal,
                GRACE_SECONDS,
            )
        else:
            name = signal.Signals(self.signal).name if self.signal else "a stop request"
            log.info(
                "%s: stopping (what is under way gets %gs, then is cancelled)", name, GRACE_SECONDS
            )
        threading.Event().wait(GRACE_SECONDS)
        with self._lock:
            self._fired = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a callback's failure must not keep the others from running
                log.exception("while stopping")
        threading.Event().wait(LAST_RESORT_SECONDS)
        with self._exit_lock:
            if self._finishing or self._last_words is None:
                return
            self._spoke = True
        code = self._last_words()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _too_slow(what: str) -> Callable[[float], PginitError]:
    return lambda seconds: PginitError(f"gave up {what} after {seconds:g}s")


# The stop request the command installed, if any (StopRequest.install).
_INSTALLED: list[StopRequest] = []


def end(code: int) -> int:
    """``code``, through the installed stop request's exit_now: after a stop or a
    give-up, the process ends at once rather than wait for threads stuck where nothing
    reaches (cli.main's way out after an error)."""
    return _INSTALLED[0].exit_now(code) if _INSTALLED else code
