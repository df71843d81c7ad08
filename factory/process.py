"""The one way the factory runs an external program.

Argument lists only (no shell), an explicit environment, its own process group, a timeout,
and signals passed on: on Ctrl-C or SIGTERM the child gets SIGINT so it can clean up
(Packer deletes its instance, key pair and security group), the factory waits for it, then
raises `Interrupted` so the CLI exits 130/143.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from factory.errors import ConfigError, FactoryError, Interrupted

log = logging.getLogger(__name__)

BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TERM")


@dataclass(frozen=True)
class ProcessResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def child_env(
    extra: Mapping[str, str] | None = None, *, inherit: Sequence[str] = ()
) -> dict[str, str]:
    """A minimal environment: the basics, the named variables from ours, then `extra`."""
    env = {k: os.environ[k] for k in (*BASE_ENV_KEYS, *inherit) if k in os.environ}
    env.update(extra or {})
    return env


class _SignalTrap:
    """Records SIGINT/SIGTERM while a child runs, forwarding SIGINT to the child's group."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.proc: subprocess.Popen[str] | None = None

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if self.proc is not None and self.proc.poll() is None:
            # a second signal escalates: the child had its chance to clean up
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT if first else signal.SIGTERM)


@contextmanager
def signals_to(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` inside the block. Main thread only: Python installs
    handlers nowhere else (worker threads poll an event instead)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


@contextmanager
def trap_signals() -> Iterator[_SignalTrap]:
    trap = _SignalTrap()
    with signals_to(trap.handler):
        yield trap


class Interrupts:
    """SIGINT/SIGTERM become `Interrupted` in the main thread, except while cleanup is shielded
    (then they are only recorded: `check()` raises afterwards). Worker threads never see
    signals: they poll `cancelled`. verify, promote and the nightly pipeline use one each."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.cancelled = threading.Event()
        self._shield = 0
        self._lock = threading.Lock()

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        self.cancelled.set()
        if not self._shield:
            raise Interrupted(signum)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Interrupted(self.signum or signal.SIGINT)

    def installed(self) -> contextlib.AbstractContextManager[None]:
        return signals_to(self.handler)

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """Cleanup runs to the end; a signal meanwhile is only recorded."""
        with self._lock:
            self._shield += 1
        try:
            yield
        finally:
            with self._lock:
                self._shield -= 1


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    on_stdout_line: Callable[[str], None] | None = None,
    check: bool = False,
    error_class: type[FactoryError] = FactoryError,
    input_text: str | None = None,
    cancel: threading.Event | None = None,
) -> ProcessResult:
    """Run `argv` to completion, streaming stdout lines to `on_stdout_line`.

    `cancel` lets a caller in a worker thread (where no signal arrives) interrupt the child
    as Ctrl-C would: when it is set, the child gets SIGINT and `Interrupted` is raised.
    """
    argv = tuple(str(a) for a in argv)
    log.debug("run: %s (cwd=%s)", " ".join(argv), cwd)
    started = time.monotonic()
    proc = _spawn(argv, env=env, cwd=cwd, with_stdin=input_text is not None)
    stderr_chunks: list[str] = []
    stdout_lines: list[str] = []
    with trap_signals() as trap:
        trap.proc = proc
        _follow(
            proc, trap, stdout_lines, stderr_chunks, input_text, timeout, cancel, on_stdout_line
        )
        if trap.signum is not None:
            if timeout is not None and time.monotonic() - started >= timeout:
                raise error_class(f"{argv[0]} timed out after {timeout:.0f}s")
            raise Interrupted(trap.signum)
    result = ProcessResult(
        argv=argv,
        returncode=proc.returncode,
        stdout="".join(stdout_lines),
        stderr="".join(stderr_chunks),
        seconds=time.monotonic() - started,
    )
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise error_class(f"{argv[0]} exited {result.returncode}: {' | '.join(tail)}")
    return result


def _spawn(
    argv: tuple[str, ...], *, env: Mapping[str, str] | None, cwd: Path | None, with_stdin: bool
) -> subprocess.Popen[str]:
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,  # its own group: our Ctrl-C reaches it only through us
            bufsize=1,
        )
    except FileNotFoundError:
        raise ConfigError(
            f"{argv[0]} not found; install it (make setup) or put it on PATH"
        ) from None


def _follow(
    proc: subprocess.Popen[str],
    trap: _SignalTrap,
    stdout_lines: list[str],
    stderr_chunks: list[str],
    input_text: str | None,
    timeout: float | None,
    cancel: threading.Event | None,
    on_stdout_line: Callable[[str], None] | None,
) -> None:
    """Feed the child, read its output to the end (stderr on a thread), enforce the timeout
    and the cancel event; the child's group is killed if it is still there afterwards."""

    def _drain_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_chunks.append(line)

    reader = threading.Thread(target=_drain_stderr, daemon=True)
    reader.start()
    if input_text is not None:
        assert proc.stdin is not None
        proc.stdin.write(input_text)
        proc.stdin.close()
    assert proc.stdout is not None
    timer: threading.Timer | None = None
    if timeout is not None:
        timer = threading.Timer(timeout, lambda: trap.handler(signal.SIGTERM, None))
        timer.daemon = True
        timer.start()
    if cancel is not None:
        threading.Thread(target=_cancel_on, args=(cancel, proc, trap), daemon=True).start()
    try:
        for line in proc.stdout:
            stdout_lines.append(line)
            if on_stdout_line is not None:
                on_stdout_line(line.rstrip("\n"))
        proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            _kill_group(proc)
    reader.join(timeout=5)


def _cancel_on(cancel: threading.Event, proc: subprocess.Popen[str], trap: _SignalTrap) -> None:
    """Interrupt the child as Ctrl-C would once `cancel` is set (for callers in worker threads)."""
    while proc.poll() is None:
        if cancel.wait(0.2):
            trap.handler(signal.SIGINT, None)
            return


def _kill_group(proc: subprocess.Popen[str], grace: float = 30.0) -> None:
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
