"""Replacements coming up: each must pass its health check (the instance runtime's health:
sshd up and user data done) and then warm up before the refresh counts it.

An impaired replacement, or one not healthy within the health timeout, fails the refresh.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from factory.localcloud.ext_refresh.record import Failure, Preferences

if TYPE_CHECKING:
    from factory.localcloud.ext_refresh.engine import RefreshEngine


@dataclass
class _Replacement:
    instance_id: str
    launched: float
    healthy_at: float | None = None


def warmup_seconds(prefs: Preferences, group: Any) -> float:
    """InstanceWarmup, else the group's DefaultInstanceWarmup, else its HealthCheckGracePeriod."""
    if prefs.instance_warmup is not None:
        return float(prefs.instance_warmup)
    default = getattr(group, "default_instance_warmup", None)
    if default not in (None, -1):
        return float(default)
    return float(group.health_check_grace_period or 0)


def await_ready(
    engine: RefreshEngine,
    instance_ids: Sequence[str],
    *,
    warmup: float,
    phase: str,
    rolling_back: bool,
) -> None:
    """Until every replacement is healthy and warm (still answering interrupts)."""
    replacements = [_Replacement(i, time.monotonic()) for i in instance_ids]
    while True:
        engine.check_interrupts(rolling_back)
        now = time.monotonic()
        ready = 0
        for rep in replacements:
            if rep.healthy_at is None:
                _check(engine, rep, now)
            if rep.healthy_at is not None and now - rep.healthy_at >= warmup:
                ready += 1
        if ready == len(replacements):
            return
        if all(rep.healthy_at is not None for rep in replacements):
            engine.set(reason=f"{phase}: waiting for instance warmup ({warmup:.0f} s).")
        engine.sleep(engine.timing.tick)


def _check(engine: RefreshEngine, rep: _Replacement, now: float) -> None:
    """Note when a replacement turned healthy; fail for an impaired or a late one."""
    state = engine.health(rep.instance_id)
    if state == "impaired":
        raise Failure(
            f"Instance {rep.instance_id} failed its health check (impaired) after launch."
        )
    if state == "ok":
        rep.healthy_at = now
    elif now - rep.launched > engine.timing.health_timeout:
        raise Failure(
            f"Instance {rep.instance_id} did not become healthy within "
            f"{engine.timing.health_timeout:.0f} seconds."
        )
