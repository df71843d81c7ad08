"""One replacement pass: every eligible instance of the group replaced by a launch template
version, batch by batch, healthy capacity kept within MinHealthyPercentage and the group within
MaxHealthyPercentage, pausing at checkpoints.

A refresh runs one pass to its desired configuration; its rollback runs one back to the
previous configuration (replacing only the instances not on it, never pausing at checkpoints).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from factory.localcloud.ext_refresh import fleet
from factory.localcloud.ext_refresh.batches import checkpoint_cap, plan_batch, reached_checkpoint
from factory.localcloud.ext_refresh.health import await_ready, warmup_seconds
from factory.localcloud.ext_refresh.record import Failure, LaunchSpec, Preferences

if TYPE_CHECKING:
    from factory.localcloud.ext_refresh.engine import RefreshEngine


def eligible(
    group: Any, target: LaunchSpec, skip_matching: bool, prefs: Preferences
) -> tuple[list[str], list[str], list[str]]:
    """(instances to replace now, instances waited for, standby instances to terminate)."""
    _, ec2 = fleet.backends(group.account_id, group.region)
    replace: list[str] = []
    waiting: list[str] = []
    standby_terminate: list[str] = []
    for state in list(group.instance_states):
        if skip_matching and fleet.matches(state, target, ec2):
            continue
        if state.lifecycle_state == "Standby":
            if prefs.standby == "Ignore":
                continue
            if prefs.standby == "Terminate":
                standby_terminate.append(state.instance.id)
            else:
                waiting.append(state.instance.id)
            continue
        if state.lifecycle_state != "InService":
            continue
        if state.protected_from_scale_in:
            if prefs.scale_in_protected == "Ignore":
                continue
            if prefs.scale_in_protected == "Wait":
                waiting.append(state.instance.id)
                continue
        replace.append(state.instance.id)
    return replace, waiting, standby_terminate


@dataclass
class ReplacementPass:
    """The instances still to replace and the progress of one pass (run by the engine's
    thread only; what others may read goes through the refresh record under its lock)."""

    engine: RefreshEngine
    target: LaunchSpec
    rolling_back: bool
    pending: list[str] = field(default_factory=list)  # to replace, in this order
    waiting: list[str] = field(default_factory=list)  # protected or in standby, waited for
    total: int = 0
    done: int = 0
    wait_started: float = 0.0

    @classmethod
    def start(
        cls, engine: RefreshEngine, target: LaunchSpec | None, *, rolling_back: bool
    ) -> ReplacementPass:
        """A pass to `target` (None: the group's own launch template), its first step done."""
        group = engine.group()
        if target is None:
            target = fleet.group_spec(group)
            if target is None:
                raise Failure("The group has no launch template: nothing to refresh to.")
        replacement = cls(engine, target, rolling_back)
        replacement._begin(group)
        return replacement

    @property
    def prefs(self) -> Preferences:
        return self.engine.refresh.preferences

    @property
    def skip_matching(self) -> bool:
        return self.prefs.skip_matching or self.rolling_back  # a rollback replaces new ones only

    def run(self) -> None:
        """Batch after batch until nothing is left to replace."""
        while True:
            self.engine.check_interrupts(self.rolling_back)
            group = self.engine.group()
            live = {s.instance.id for s in group.instance_states}
            self.pending = [i for i in self.pending if i in live]
            if self.waiting and self._held(group):
                self.engine.sleep(self.engine.timing.tick)
                continue
            if not self.pending:
                return
            self._next_batch(group)
            self._pause_at_checkpoint()

    def _begin(self, group: Any) -> None:
        """Count what to replace; standby instances (Terminate) go first."""
        r = self.engine.refresh
        self.pending, self.waiting, standby = eligible(
            group, self.target, self.skip_matching, self.prefs
        )
        fleet.terminate(group, standby)
        self.total = len(self.pending) + len(self.waiting) + len(standby)
        with r.lock:
            if self.rolling_back:
                r.rollback_total, r.rollback_done = self.total, 0
            else:
                r.total, r.done = self.total, 0
        self.done = 0
        self.wait_started = time.monotonic()
        # standby instances terminated above are replaced only when capacity needs them
        missing = int(group.desired_capacity or 0) - fleet.in_service(group)
        if missing > 0 and standby:
            self._run_batch(group, [], min(missing, len(standby)), [])
        self.done += len(standby)
        self.engine.progress(self.done, self.total, self.rolling_back)

    def _held(self, group: Any) -> bool:
        """Whether only instances waited for are left (protected from scale in, or in
        standby, under Wait); those released since the last look join the pending ones."""
        now_pending, now_waiting, _ = eligible(group, self.target, self.skip_matching, self.prefs)
        freed = [i for i in self.waiting if i in now_pending]
        self.waiting = [i for i in self.waiting if i in now_waiting]
        self.pending += freed
        if self.pending or not self.waiting:
            return False
        if time.monotonic() - self.wait_started > self.engine.timing.wait_timeout:
            raise Failure(
                f"Timed out waiting for instances {', '.join(self.waiting)} to leave "
                "Standby or lose scale-in protection."
            )
        self.engine.set(
            reason="Waiting for instances that are in Standby or protected from scale in."
        )
        return True

    def _next_batch(self, group: Any) -> None:
        """Plan the next batch (unhealthy instances first) and run it."""
        health = self.engine.health
        capacity = int(group.desired_capacity or 0)
        healthy = sum(
            1
            for s in group.instance_states
            if s.lifecycle_state == "InService" and health(s.instance.id) == "ok"
        )
        sick = [i for i in self.pending if health(i) != "ok"]
        pending = sick + [i for i in self.pending if i not in sick]
        checkpoints = () if self.rolling_back else self.prefs.checkpoints
        cap = checkpoint_cap(self.total, checkpoints, self.done) - self.done
        step = plan_batch(
            remaining=len(pending),
            capacity=capacity,
            current_total=fleet.in_service(group),
            healthy=healthy,
            min_percent=self.prefs.min_healthy,
            max_percent=self.prefs.max_percent,
            cap=max(1, cap),
            unhealthy=len(sick),
        )
        now_ids = pending[: step.terminate_now]
        later_ids = pending[step.terminate_now : step.terminate_now + step.terminate_later]
        self.pending = pending[step.terminate_now + step.terminate_later :]
        self._run_batch(group, now_ids, step.launch, later_ids)
        self.done += step.terminate_now + step.terminate_later
        self.engine.progress(self.done, self.total, self.rolling_back)

    def _pause_at_checkpoint(self) -> None:
        """Wait CheckpointDelay when the batch just ended on a checkpoint (not the last)."""
        if self.rolling_back:
            return
        percent = reached_checkpoint(self.total, self.prefs.checkpoints, self.done)
        if percent is None or not (self.pending or self.waiting):
            return
        delay = self.prefs.checkpoint_seconds
        self.engine.set(reason=f"Waiting at checkpoint {percent}% for {delay} seconds.")
        self.engine.hold(delay, self.rolling_back)
        self.engine.set(reason="")

    def _run_batch(
        self, group: Any, terminate_now: list[str], launch: int, later_ids: list[str]
    ) -> None:
        """Terminate, launch, wait until the replacements are healthy and warm, terminate the
        rest of the batch's old instances."""
        # terminate and launch at the same time, as AWS does ("terminate and launch")
        detached = threading.Event()
        stopper = threading.Thread(
            target=fleet.terminate, args=(group, terminate_now, detached), daemon=True
        )
        stopper.start()
        detached.wait(10)
        try:
            new_ids = fleet.launch(group, self.target, launch)
        finally:
            stopper.join()
        phase = "Rolling back" if self.rolling_back else "Replacing"
        self.engine.set(
            reason=f"{phase}: launched {', '.join(new_ids) or 'nothing'}; "
            f"terminated {', '.join(terminate_now) or 'nothing yet'}."
        )
        warmup = warmup_seconds(self.prefs, group)
        await_ready(
            self.engine, new_ids, warmup=warmup, phase=phase, rolling_back=self.rolling_back
        )
        fleet.terminate(group, later_ids)
