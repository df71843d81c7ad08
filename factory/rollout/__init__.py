"""Rollout by replacement: a launch template version and an Auto Scaling instance refresh.

A server is never changed in place: rolling image B out to a group creates a new version of the
group's launch template from the version it runs and refreshes the group's instances to it.

- `facts`: what a rollout reads (the group and the version it runs, the image, a channel)
- `plan`: the refusal rules, the refresh settings, the rollout plan (pure)
- `refresh`: pin, new launch template version, start the refresh, settle the result
- `wait`: following a refresh (its poller, Ctrl-C: cancel or detach), `rollout status`
- `live`: the image's test suite on a new instance (the verify stage), going back on failure
- `rollback`: gather -> plan -> apply a rollback (reverse the refresh, or refresh back)
- `apply`: apply a rollout plan, and the chain `factory rollout ASG` runs (`roll_out`)
- `fleet`: the fleet file; `drift`: each group against its channel, and reconcile
"""

from __future__ import annotations

from factory.rollout.apply import apply_rollout, roll_out
from factory.rollout.drift import (
    ClientsFor,
    DriftReport,
    FleetFacts,
    GroupDrift,
    GroupReconcile,
    GroupState,
    InstanceDrift,
    ReconcilePlan,
    ReconcileResult,
    apply_reconcile,
    drift,
    gather_drift,
    plan_drift,
    plan_reconcile,
    reconcile,
)
from factory.rollout.drift import raise_if_failed as raise_if_fleet_failed
from factory.rollout.facts import (
    GroupLaunch,
    RolloutFacts,
    channel_ami,
    gather_group,
    gather_rollout,
)
from factory.rollout.fleet import Fleet, FleetGroup, load_fleet, parse_fleet
from factory.rollout.live import LiveVerdict, VerifyLive, live_detail, live_verifier
from factory.rollout.plan import (
    RefreshSettings,
    RolloutPlan,
    batch_bound,
    plan_rollout,
    plan_steps,
)
from factory.rollout.result import RolloutFailed, RolloutResult, raise_if_failed
from factory.rollout.rollback import (
    RollbackAction,
    RollbackFacts,
    RollbackPlan,
    apply_rollback,
    gather_rollback,
    plan_rollback,
    previous_version,
    roll_back,
)
from factory.rollout.wait import (
    InterruptChoice,
    RefreshPoller,
    estimated_total,
    follow_status,
    wait_refresh,
)

__all__ = [
    "ClientsFor",
    "DriftReport",
    "Fleet",
    "FleetFacts",
    "FleetGroup",
    "GroupDrift",
    "GroupLaunch",
    "GroupReconcile",
    "GroupState",
    "InstanceDrift",
    "InterruptChoice",
    "LiveVerdict",
    "ReconcilePlan",
    "ReconcileResult",
    "RefreshPoller",
    "RefreshSettings",
    "RollbackAction",
    "RollbackFacts",
    "RollbackPlan",
    "RolloutFacts",
    "RolloutFailed",
    "RolloutPlan",
    "RolloutResult",
    "VerifyLive",
    "apply_reconcile",
    "apply_rollback",
    "apply_rollout",
    "batch_bound",
    "channel_ami",
    "drift",
    "estimated_total",
    "follow_status",
    "gather_drift",
    "gather_group",
    "gather_rollback",
    "gather_rollout",
    "live_detail",
    "live_verifier",
    "load_fleet",
    "parse_fleet",
    "plan_drift",
    "plan_reconcile",
    "plan_rollback",
    "plan_rollout",
    "plan_steps",
    "previous_version",
    "raise_if_failed",
    "raise_if_fleet_failed",
    "reconcile",
    "roll_back",
    "roll_out",
    "wait_refresh",
]
