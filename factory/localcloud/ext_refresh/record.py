"""One instance refresh as the emulation keeps it: its statuses, preferences and live state.

Shared by the API (which creates and describes refreshes) and the engine (which drives them);
nothing here touches moto.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

PENDING = "Pending"
IN_PROGRESS = "InProgress"
SUCCESSFUL = "Successful"
FAILED = "Failed"
CANCELLING = "Cancelling"
CANCELLED = "Cancelled"
ROLLBACK_IN_PROGRESS = "RollbackInProgress"
ROLLBACK_SUCCESSFUL = "RollbackSuccessful"
ROLLBACK_FAILED = "RollbackFailed"
BAKING = "Baking"
ACTIVE = frozenset({PENDING, IN_PROGRESS, CANCELLING, ROLLBACK_IN_PROGRESS, BAKING})
TERMINAL = frozenset({SUCCESSFUL, FAILED, CANCELLED, ROLLBACK_SUCCESSFUL, ROLLBACK_FAILED})

DEFAULT_MIN_HEALTHY = 90
DEFAULT_MAX_HEALTHY = 100
DEFAULT_CHECKPOINT_DELAY = 3600

HealthFn = Callable[[str], str]  # instance id -> "pending" | "ok" | "impaired"


class Failure(Exception):
    """The refresh failed (rolled back when AutoRollback allows); the message is the reason."""


class Stopped(Exception):
    """A user asked to stop: the message is "cancel" or "rollback"."""


@dataclass(frozen=True)
class LaunchSpec:
    """A launch template and version (a number, $Latest or $Default)."""

    template_id: str
    template_name: str
    version: str

    @property
    def pinned(self) -> bool:
        return self.version.isdigit()


@dataclass
class Preferences:
    min_healthy: int = DEFAULT_MIN_HEALTHY
    max_healthy: int | None = None
    instance_warmup: int | None = None
    checkpoints: tuple[int, ...] = ()
    checkpoint_delay: int | None = None
    skip_matching: bool = False
    auto_rollback: bool = False
    scale_in_protected: str = "Wait"
    standby: str = "Wait"
    alarms: tuple[str, ...] = ()
    bake_time: int = 0

    @property
    def max_percent(self) -> int:
        return self.max_healthy if self.max_healthy is not None else DEFAULT_MAX_HEALTHY

    @property
    def checkpoint_seconds(self) -> int:
        """How long a checkpoint pauses (AWS's default: an hour)."""
        delay = self.checkpoint_delay
        return DEFAULT_CHECKPOINT_DELAY if delay is None else delay


@dataclass
class Refresh:
    """One instance refresh and its live state (guarded by `lock`)."""

    refresh_id: str
    group_name: str
    account_id: str
    region: str
    preferences: Preferences
    desired: LaunchSpec | None
    previous: LaunchSpec | None
    strategy: str = "Rolling"
    status: str = PENDING
    status_reason: str = ""
    start_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    end_time: datetime | None = None
    total: int = 0
    done: int = 0
    rollback_reason: str | None = None
    rollback_start: datetime | None = None
    rollback_total: int = 0
    rollback_done: int = 0
    cancel_requested: bool = False
    rollback_requested: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def reversible(self) -> bool:
        return (
            self.desired is not None
            and self.desired.pinned
            and self.previous is not None
            and self.previous.pinned
        )
