"""`factory pipeline run`, the nightly rebuild: every family built (or reused), verified,
attested and published to a channel, then old images retired, under a lock held in AWS so two
runs never overlap.

`gather_nightly` reads each family's inputs, `plan_nightly` decides (pure: what is built, reused
and moved; `plan`), `apply_nightly` runs that very plan family by family under the lock,
recording a failure and going on with the next family (`run`, with the stages in `steps`).
The lock is the SSM parameter `/factory/locks/pipeline` (`lock`).
"""

from __future__ import annotations

from factory.pipeline.lock import (
    DEFAULT_LOCK_TTL,
    LOCK_PARAMETER,
    LOCKED_EXIT,
    Acquired,
    LockHeld,
    LockInfo,
    LockLost,
    acquire_lock,
    break_lock,
    holder_text,
    lock_owner,
    parse_lock,
    read_lock,
    release_lock,
    renew_lock,
)
from factory.pipeline.plan import (
    FamilyFacts,
    FamilyPlan,
    NightlyPlan,
    discover_families,
    gather_family,
    gather_nightly,
    plan_nightly,
)
from factory.pipeline.run import (
    FamilyResult,
    NightlyResult,
    RetireSummary,
    apply_nightly,
    run_family,
    summarise_retire,
)
from factory.pipeline.steps import AwsSteps, ChannelMove, Steps

__all__ = [
    "DEFAULT_LOCK_TTL",
    "LOCKED_EXIT",
    "LOCK_PARAMETER",
    "Acquired",
    "AwsSteps",
    "ChannelMove",
    "FamilyFacts",
    "FamilyPlan",
    "FamilyResult",
    "LockHeld",
    "LockInfo",
    "LockLost",
    "NightlyPlan",
    "NightlyResult",
    "RetireSummary",
    "Steps",
    "acquire_lock",
    "apply_nightly",
    "break_lock",
    "discover_families",
    "gather_family",
    "gather_nightly",
    "holder_text",
    "lock_owner",
    "parse_lock",
    "plan_nightly",
    "read_lock",
    "release_lock",
    "renew_lock",
    "run_family",
    "summarise_retire",
]
