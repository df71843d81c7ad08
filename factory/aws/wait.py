"""Waiting on AWS state: one poller for every loop (copies, refreshes, instances, volumes).

Polls back off while nothing changes and start over when something does; a poll never comes
sooner than `interval` after the last. `lag` bounds how late the end of long work is noticed:
the interval never exceeds that fraction of the time followed so far. Sleeping waits on a
`threading.Event`, so a signal handler (`process.Interrupts`) can cut a wait short.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from factory.errors import AwsError, FactoryError

T = TypeVar("T")


@dataclass
class Poller:
    """Paces polls: `wait()` before each, `saw(observation)` after it."""

    interval: float = 1.0  # the shortest time between two polls
    max_interval: float = 5.0
    factor: float = 1.5
    lag: float | None = None  # at most this fraction of the time followed so far (None: no cap)
    clock: Callable[[], float] = time.monotonic
    cancelled: threading.Event = field(default_factory=threading.Event)
    sleep: Callable[[float], None] | None = None  # tests: a fake clock's sleep
    _current: float = field(init=False, default=0.0)
    _started: float | None = field(init=False, default=None)
    _last_poll: float | None = field(init=False, default=None)
    _last_seen: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._current = self.interval

    @property
    def elapsed(self) -> float:
        return 0.0 if self._started is None else self.clock() - self._started

    def wait(self) -> None:
        """Return when the next poll is due (at once the first time)."""
        if self._last_poll is None:
            self._started = self._last_poll = self.clock()
            return
        delay = self._last_poll + self._current - self.clock()
        if delay > 0:
            if self.sleep is not None:
                self.sleep(delay)
            else:
                self.cancelled.wait(delay)
        self._last_poll = self.clock()

    def saw(self, observation: Any) -> None:
        """Something changed: poll at the shortest interval again; else back off."""
        if observation != self._last_seen:
            self._last_seen = observation
            self._current = self.interval
            return
        ceiling = self.max_interval
        if self.lag is not None:
            ceiling = max(self.interval, min(ceiling, self.lag * self.elapsed))
        self._current = min(ceiling, self._current * self.factor)


class TimedOut(AwsError):
    """A wait ran out of time; the message says what did not happen."""


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str | Callable[[], str],
    poller: Poller | None = None,
    error: type[FactoryError] = TimedOut,
    before: Callable[[], None] | None = None,
) -> T:
    """Poll `check` until it returns something (not None); raise `error` after `timeout`.

    `what` says what did not happen ("i-0abc did not reach running"), or is a function giving
    it with the last detail known. `before` runs ahead of each poll (an interrupt check).
    """
    poller = poller or Poller(interval=0.2)
    deadline = poller.clock() + timeout
    while True:
        poller.wait()
        if before is not None:
            before()
        value = check()
        if value is not None:
            return value
        poller.saw(None)
        if poller.clock() >= deadline:
            text = what() if callable(what) else what
            raise error(f"{text} within {timeout:.0f}s")
