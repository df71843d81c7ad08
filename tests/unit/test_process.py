from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from factory import process
from factory.errors import ConfigError, FactoryError, Interrupted, PackerError
from factory.process import child_env, run


def test_streams_lines_and_captures_both_streams() -> None:
    seen: list[str] = []
    result = run(
        [sys.executable, "-c", "import sys; print('a'); print('b'); print('err', file=sys.stderr)"],
        on_stdout_line=seen.append,
    )
    assert seen == ["a", "b"]
    assert result.returncode == 0
    assert result.stderr.strip() == "err"


def test_nonzero_exit_raises_the_given_error_with_tool_lines() -> None:
    with pytest.raises(PackerError) as info:
        run(
            [sys.executable, "-c", "import sys; sys.exit('boom happened')"],
            check=True,
            error_class=PackerError,
        )
    assert "boom happened" in str(info.value)


def test_missing_program_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not found"):
        run(["definitely-not-a-program-xyz"])


def test_child_env_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak")
    env = child_env({"A": "1"})
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["A"] == "1"
    assert "PATH" in env


def test_timeout_stops_the_child() -> None:
    started = time.monotonic()
    with pytest.raises(FactoryError, match="timed out"):
        run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert time.monotonic() - started < 10


def test_sigterm_is_forwarded_as_sigint_and_waited_for(tmp_path: Path) -> None:
    """The child gets SIGINT, may clean up, and the caller sees Interrupted -> exit 143."""
    marker = tmp_path / "cleaned"
    child = textwrap.dedent(f"""
        import signal, sys, time
        def bye(*_):
            time.sleep(0.3)
            open({str(marker)!r}, "w").write("yes")
            sys.exit(1)
        signal.signal(signal.SIGINT, bye)
        print("ready", flush=True)
        time.sleep(30)
    """)
    parent = textwrap.dedent(f"""
        import sys
        from factory.process import run
        from factory.errors import Interrupted
        try:
            run([sys.executable, "-c", {child!r}], on_stdout_line=lambda l: print(l, flush=True))
        except Interrupted as exc:
            sys.exit(int(exc.exit_code))
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143
    assert marker.read_text() == "yes"


def test_interrupted_exit_codes() -> None:
    assert Interrupted(signal.SIGINT).exit_code == 130
    assert Interrupted(signal.SIGTERM).exit_code == 143


def test_interrupts_turn_sigterm_into_interrupted_and_restore_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    interrupts = process.Interrupts()
    with pytest.raises(Interrupted) as stopped, interrupts.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises long before this ends
    assert stopped.value.signum == signal.SIGTERM
    assert interrupts.cancelled.is_set()  # workers polling the event stop too
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_during_shielded_cleanup_is_recorded_then_raised_by_check() -> None:
    interrupts = process.Interrupts()
    finished = []
    with interrupts.installed():
        with interrupts.shielded():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            finished.append("cleanup")  # not cut short
        with pytest.raises(Interrupted) as stopped:
            interrupts.check()
    assert finished == ["cleanup"] and stopped.value.signum == signal.SIGINT
