"""The batch arithmetic of an instance refresh (pure): how many instances go at once, within
MinHealthyPercentage and MaxHealthyPercentage, and where the checkpoints stop it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def min_healthy_count(capacity: int, percent: int) -> int:
    """Instances that must stay healthy: a percentage of desired capacity, rounded up."""
    return min(capacity, math.ceil(capacity * percent / 100))


def max_total_count(capacity: int, percent: int) -> int:
    """Instances the group may hold during the refresh: rounded down, never below capacity."""
    return max(capacity, math.floor(capacity * percent / 100))


def batch_size(capacity: int, min_percent: int, max_percent: int) -> int:
    """How many instances one batch replaces (100/100 -> one at a time, 0 -> all at once)."""
    if capacity <= 0:
        return 1
    width = max_total_count(capacity, max_percent) - min_healthy_count(capacity, min_percent)
    return max(1, width)


def checkpoint_cap(total: int, percentages: Sequence[int], done: int) -> int:
    """Replacements allowed before the next checkpoint stops the refresh (total if none)."""
    for percent in sorted(percentages):
        target = math.ceil(total * percent / 100)
        if target > done:
            return target
    return total


def reached_checkpoint(total: int, percentages: Sequence[int], done: int) -> int | None:
    """The checkpoint percentage `done` replacements land exactly on, if any (not 100%)."""
    for percent in sorted(percentages):
        if percent < 100 and done < total and math.ceil(total * percent / 100) == done:
            return percent
    return None


def percentage_complete(done: int, total: int) -> int:
    return 100 if total <= 0 else min(100, math.floor(100 * done / total))


@dataclass(frozen=True)
class BatchStep:
    """What to do when a batch starts: terminate these old instances now, launch `launch` new
    ones, and terminate `later` more old instances once the replacements are ready."""

    terminate_now: int
    launch: int
    terminate_later: int


def plan_batch(
    *,
    remaining: int,
    capacity: int,
    current_total: int,
    healthy: int,
    min_percent: int,
    max_percent: int,
    cap: int,
    unhealthy: int = 0,
) -> BatchStep:
    """The next batch, keeping healthy >= min and the group's size <= max (pure).

    `remaining` old instances still to replace, `cap` replacements allowed before the next
    checkpoint, `current_total` instances in the group now, `healthy` of them healthy;
    `unhealthy` of the remaining ones are not healthy (listed first): replacing them costs no
    healthy capacity, so they go first and do not wait for slack.
    """
    size = min(remaining, cap, max(unhealthy, batch_size(capacity, min_percent, max_percent)))
    if size <= 0:
        return BatchStep(0, 0, 0)
    room = max(0, max_total_count(capacity, max_percent) - current_total)
    floor_ = min_healthy_count(capacity, min_percent)
    may_drop = max(0, healthy - floor_)
    first = min(size, unhealthy)  # unhealthy ones: terminated at once, healthy count unchanged
    early = min(size - first, room)  # launched on top: their old ones go once they are ready
    now = first + min(size - first - early, may_drop)
    if now + early == 0:
        now = 1  # no room and no slack (min 100, max 100): one at a time, as AWS does
    launch = now + early
    return BatchStep(terminate_now=now, launch=launch, terminate_later=early)
