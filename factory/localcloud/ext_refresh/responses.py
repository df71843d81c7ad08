"""A refresh as DescribeInstanceRefreshes returns it (the query protocol's XML member)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from factory.localcloud.app import xml_escape
from factory.localcloud.ext_refresh.batches import percentage_complete
from factory.localcloud.ext_refresh.record import LaunchSpec, Preferences, Refresh


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _spec_xml(spec: LaunchSpec) -> str:
    return (
        "<LaunchTemplate>"
        f"<LaunchTemplateId>{spec.template_id}</LaunchTemplateId>"
        f"<LaunchTemplateName>{xml_escape(spec.template_name)}</LaunchTemplateName>"
        f"<Version>{xml_escape(spec.version)}</Version>"
        "</LaunchTemplate>"
    )


def _prefs_xml(prefs: Preferences) -> str:
    parts = [f"<MinHealthyPercentage>{prefs.min_healthy}</MinHealthyPercentage>"]
    if prefs.max_healthy is not None:
        parts.append(f"<MaxHealthyPercentage>{prefs.max_healthy}</MaxHealthyPercentage>")
    if prefs.instance_warmup is not None:
        parts.append(f"<InstanceWarmup>{prefs.instance_warmup}</InstanceWarmup>")
    if prefs.checkpoints:
        members = "".join(f"<member>{c}</member>" for c in prefs.checkpoints)
        parts.append(f"<CheckpointPercentages>{members}</CheckpointPercentages>")
        parts.append(f"<CheckpointDelay>{prefs.checkpoint_seconds}</CheckpointDelay>")
    parts.append(f"<SkipMatching>{str(prefs.skip_matching).lower()}</SkipMatching>")
    parts.append(f"<AutoRollback>{str(prefs.auto_rollback).lower()}</AutoRollback>")
    parts.append(
        f"<ScaleInProtectedInstances>{prefs.scale_in_protected}</ScaleInProtectedInstances>"
    )
    parts.append(f"<StandbyInstances>{prefs.standby}</StandbyInstances>")
    if prefs.alarms:
        members = "".join(f"<member>{xml_escape(a)}</member>" for a in prefs.alarms)
        parts.append(f"<AlarmSpecification><Alarms>{members}</Alarms></AlarmSpecification>")
    parts.append(f"<BakeTime>{prefs.bake_time}</BakeTime>")
    return "".join(parts)


def _rollback_xml(r: Refresh) -> str:
    if r.rollback_reason is None or r.rollback_start is None:
        return ""
    rb_percent = percentage_complete(r.rollback_done, r.rollback_total)
    rb_left = max(0, r.rollback_total - r.rollback_done)
    return (
        "<RollbackDetails>"
        f"<RollbackReason>{xml_escape(r.rollback_reason)}</RollbackReason>"
        f"<RollbackStartTime>{_iso(r.rollback_start)}</RollbackStartTime>"
        f"<PercentageCompleteOnRollback>{rb_percent}</PercentageCompleteOnRollback>"
        f"<InstancesToUpdateOnRollback>{rb_left}</InstancesToUpdateOnRollback>"
        "<ProgressDetailsOnRollback><LivePoolProgress>"
        f"<PercentageComplete>{rb_percent}</PercentageComplete>"
        f"<InstancesToUpdate>{rb_left}</InstancesToUpdate>"
        "</LivePoolProgress></ProgressDetailsOnRollback>"
        "</RollbackDetails>"
    )


def refresh_xml(refresh: Refresh) -> str:
    with refresh.lock:
        r = copy.copy(refresh)
    percent = percentage_complete(r.done, r.total)
    to_update = max(0, r.total - r.done)
    parts = [
        f"<InstanceRefreshId>{r.refresh_id}</InstanceRefreshId>",
        f"<AutoScalingGroupName>{xml_escape(r.group_name)}</AutoScalingGroupName>",
        f"<Status>{r.status}</Status>",
    ]
    if r.status_reason:
        parts.append(f"<StatusReason>{xml_escape(r.status_reason)}</StatusReason>")
    parts.append(f"<StartTime>{_iso(r.start_time)}</StartTime>")
    if r.end_time is not None:
        parts.append(f"<EndTime>{_iso(r.end_time)}</EndTime>")
    parts += [
        f"<PercentageComplete>{percent}</PercentageComplete>",
        f"<InstancesToUpdate>{to_update}</InstancesToUpdate>",
        "<ProgressDetails><LivePoolProgress>"
        f"<PercentageComplete>{percent}</PercentageComplete>"
        f"<InstancesToUpdate>{to_update}</InstancesToUpdate>"
        "</LivePoolProgress></ProgressDetails>",
        f"<Preferences>{_prefs_xml(r.preferences)}</Preferences>",
        f"<Strategy>{r.strategy}</Strategy>",
    ]
    if r.desired is not None:
        parts.append(f"<DesiredConfiguration>{_spec_xml(r.desired)}</DesiredConfiguration>")
    parts.append(_rollback_xml(r))
    return "".join(parts)
