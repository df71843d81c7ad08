"""The refresh engine: one thread per instance refresh, from Pending to a terminal status.

The state machine lives here (InProgress -> Baking -> Successful; Cancelling -> Cancelled;
Failed; RollbackInProgress -> RollbackSuccessful | RollbackFailed); the batch-by-batch
replacement it runs, forwards and on rollback, is `replace.py`. The registry holds every
refresh of the local cloud and starts their engines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from factory.localcloud.ext_refresh import fleet
from factory.localcloud.ext_refresh.record import (
    ACTIVE,
    BAKING,
    CANCELLED,
    CANCELLING,
    FAILED,
    IN_PROGRESS,
    ROLLBACK_FAILED,
    ROLLBACK_IN_PROGRESS,
    ROLLBACK_SUCCESSFUL,
    SUCCESSFUL,
    Failure,
    HealthFn,
    LaunchSpec,
    Refresh,
    Stopped,
)
from factory.localcloud.ext_refresh.replace import ReplacementPass

log = logging.getLogger("factory.localcloud.refresh")


@dataclass(frozen=True)
class Timing:
    """The engine's pace (tests shorten it): its loop's tick, how long a replacement may stay
    unhealthy, and how long Wait waits for protected or standby instances (AWS: one hour)."""

    tick: float = 0.2
    health_timeout: float = 300.0
    wait_timeout: float = 3600.0


class RefreshEngine:
    """Drives one refresh to its end; `health` is the instance runtime's health."""

    def __init__(
        self,
        refresh: Refresh,
        health: HealthFn,
        sleep: Callable[[float], None],
        timing: Timing | None = None,
    ) -> None:
        self.refresh = refresh
        self.health = health
        self.sleep = sleep
        self.timing = timing or Timing()

    # --- what a replacement pass uses ------------------------------------------------------------

    def group(self) -> Any:
        r = self.refresh
        return fleet.find_group(r.account_id, r.region, r.group_name)

    def set(self, status: str | None = None, reason: str | None = None) -> None:
        with self.refresh.lock:
            if status is not None:
                self.refresh.status = status
            if reason is not None:
                self.refresh.status_reason = reason

    def progress(self, done: int, total: int, rolling_back: bool) -> None:
        with self.refresh.lock:
            if rolling_back:
                self.refresh.rollback_done = done
            else:
                self.refresh.done = done

    def check_interrupts(self, rolling_back: bool) -> None:
        """Stop for a cancel or rollback request, fail for a firing alarm (not on rollback)."""
        r = self.refresh
        with r.lock:
            if not rolling_back and r.rollback_requested:
                raise Stopped("rollback")
            if not rolling_back and r.cancel_requested:
                raise Stopped("cancel")
        alarm = fleet.alarm_in_alarm(r.account_id, r.region, r.preferences.alarms)
        if alarm is not None and not rolling_back:
            raise Failure(f"CloudWatch alarm {alarm} is in ALARM state.")

    def hold(self, seconds: float, rolling_back: bool) -> None:
        """Wait `seconds` (bake time, a checkpoint), still answering interrupts."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_interrupts(rolling_back)
            self.sleep(self.timing.tick)

    # --- the state machine -----------------------------------------------------------------------

    def run(self) -> None:
        r = self.refresh
        try:
            self.set(IN_PROGRESS, "")
            self._replace_all(r.desired, rolling_back=False)
            with r.lock:
                if r.desired is not None:
                    fleet.set_group_spec(self.group(), r.desired)
            if r.preferences.bake_time > 0:
                self.set(BAKING, "Waiting for bake time to end.")
                self.hold(r.preferences.bake_time, rolling_back=False)
            self._finish(SUCCESSFUL, "")
        except Stopped as stop:
            if str(stop) == "cancel":
                self.set(CANCELLING, "Cancelling the instance refresh.")
                self._trim()
                self._finish(CANCELLED, "The instance refresh was cancelled.")
            else:
                self._rollback(r.rollback_requested or "Rollback requested.")
        except Failure as failure:
            reason = str(failure)
            if r.preferences.auto_rollback and r.reversible:
                self._rollback(reason)
            else:
                self._finish(FAILED, reason)
        except Exception as exc:  # the emulation must end every refresh with a status
            log.exception("instance refresh %s crashed", r.refresh_id)
            self._finish(FAILED, f"Internal error in the local cloud: {exc}")

    def _replace_all(self, target: LaunchSpec | None, *, rolling_back: bool) -> None:
        ReplacementPass.start(self, target, rolling_back=rolling_back).run()

    def _finish(self, status: str, reason: str) -> None:
        with self.refresh.lock:
            self.refresh.status = status
            self.refresh.status_reason = reason
            self.refresh.end_time = datetime.now(UTC)
        log.info("instance refresh %s: %s %s", self.refresh.refresh_id, status, reason)

    def _trim(self) -> None:
        """After a cancel mid-batch: back to the desired capacity, dropping old instances
        (launched-before-terminate replacements stay; replaced instances are not rolled back)."""
        group = self.group()
        target = self.refresh.desired or fleet.group_spec(group)
        _, ec2 = fleet.backends(group.account_id, group.region)
        in_service = [s for s in group.instance_states if s.lifecycle_state == "InService"]
        surplus = len(in_service) - int(group.desired_capacity or 0)
        if surplus <= 0 or target is None:
            return
        old = [s.instance.id for s in in_service if not fleet.matches(s, target, ec2)]
        fleet.terminate(group, old[:surplus])

    def _rollback(self, reason: str) -> None:
        r = self.refresh
        with r.lock:
            r.status = ROLLBACK_IN_PROGRESS
            r.status_reason = reason
            r.rollback_reason = reason
            r.rollback_start = datetime.now(UTC)
        try:
            assert r.previous is not None
            self._replace_all(r.previous, rolling_back=True)
            fleet.set_group_spec(self.group(), r.previous)
            self._finish(ROLLBACK_SUCCESSFUL, f"Rollback completed. Reason for rollback: {reason}")
        except (Failure, Stopped) as failure:
            self._finish(
                ROLLBACK_FAILED, f"Rollback failed: {failure}. Reason for rollback: {reason}"
            )
        except Exception as exc:
            log.exception("rollback of %s crashed", r.refresh_id)
            self._finish(ROLLBACK_FAILED, f"Internal error in the local cloud: {exc}")


@dataclass
class RefreshRegistry:
    """Every refresh of this local cloud, newest first per group; starts an engine for each."""

    refreshes: dict[tuple[str, str, str], list[Refresh]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    health: HealthFn = lambda _instance_id: "ok"
    sleep: Callable[[float], None] = time.sleep
    timing: Timing = field(default_factory=Timing)

    def of_group(self, account: str, region: str, group: str) -> list[Refresh]:
        with self.lock:
            return list(self.refreshes.get((account, region, group), []))

    def active(self, account: str, region: str, group: str) -> Refresh | None:
        for refresh in self.of_group(account, region, group):
            with refresh.lock:
                if refresh.status in ACTIVE:
                    return refresh
        return None

    def add(self, refresh: Refresh) -> None:
        with self.lock:
            key = (refresh.account_id, refresh.region, refresh.group_name)
            self.refreshes.setdefault(key, []).insert(0, refresh)

    def start(self, refresh: Refresh) -> None:
        engine = RefreshEngine(refresh, self.health, self.sleep, self.timing)
        thread = threading.Thread(
            target=engine.run, name=f"refresh-{refresh.refresh_id[:8]}", daemon=True
        )
        thread.start()
