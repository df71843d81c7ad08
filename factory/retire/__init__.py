"""Retire old images safely: a retention plan, then deprecation, then deregistration.

- gather (gather.py, inuse.py): the factory's images and snapshots, and every use of them in
  every region and environment account (reads only);
- plan (plan.py): pure, keep each image (with every reason) or move it one step;
- apply (apply.py): restore, deprecate, deregister (use re-checked just in time), delete the
  snapshots no image uses;
- retire_images (stage.py): the chain, as `factory retire` and the nightly pipeline run it.
"""

from __future__ import annotations

from factory.retire.apply import Outcome, RetireResult, apply_retire
from factory.retire.gather import (
    RetireScope,
    gather_images,
    gather_retire,
    gather_snapshot_users,
    gather_snapshots,
)
from factory.retire.inuse import (
    InUseReport,
    ScanTarget,
    Usage,
    UsageKind,
    gather_image_references,
    gather_in_use,
    gather_launch_permissions,
    usage_reason,
)
from factory.retire.plan import (
    Action,
    Decision,
    RetireFacts,
    RetirePlan,
    RetireSettings,
    SnapshotDecision,
    is_protected,
    plan_decisions,
    plan_retire,
    plan_snapshots,
)
from factory.retire.stage import retire_images

__all__ = [
    "Action",
    "Decision",
    "InUseReport",
    "Outcome",
    "RetireFacts",
    "RetirePlan",
    "RetireResult",
    "RetireScope",
    "RetireSettings",
    "ScanTarget",
    "SnapshotDecision",
    "Usage",
    "UsageKind",
    "apply_retire",
    "gather_image_references",
    "gather_images",
    "gather_in_use",
    "gather_launch_permissions",
    "gather_retire",
    "gather_snapshot_users",
    "gather_snapshots",
    "is_protected",
    "plan_decisions",
    "plan_retire",
    "plan_snapshots",
    "retire_images",
    "usage_reason",
]
