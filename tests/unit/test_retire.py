"""The retention plan, pure: each keep reason, each retirement step, deterministic order."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from factory import tags
from factory.cli import cli
from factory.config import RetentionPolicy
from factory.inuse import Usage, UsageKind
from factory.output import dumps
from factory.retire import (
    Action,
    ImageFacts,
    RetirePlan,
    SnapshotFacts,
    image_facts,
    is_protected,
    plan_retire,
    plan_snapshots,
    render_plan,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy(keep=2, min_age_days=7, grace_days=7, audit_days=90)


def _policy(_family: str) -> RetentionPolicy:
    return POLICY


def img(
    ami: str,
    days_old: float,
    *,
    family: str = "web",
    status: str | None = "verified",
    region: str = "us-east-1",
    **kw: object,
) -> ImageFacts:
    return ImageFacts(
        ami_id=ami,
        region=region,
        family=family,
        created_at=NOW - timedelta(days=days_old),
        status=status,
        version=f"v{ami[-2:]}",
        **kw,
    )  # type: ignore[arg-type]


def by_id(decisions: tuple) -> dict:  # type: ignore[type-arg]
    return {d.ami_id: d for d in decisions}


def test_newest_verified_are_kept_and_older_are_deprecated() -> None:
    images = [
        img("ami-00000001", 30),
        img("ami-00000002", 20),
        img("ami-00000003", 10),
        img("ami-00000004", 40, status="candidate"),
    ]
    d = by_id(plan_retire(images, {}, _policy, NOW))
    assert d["ami-00000003"].action == Action.KEEP
    assert d["ami-00000003"].reasons == ("newest verified: 1 of 2",)
    assert d["ami-00000002"].reasons == ("newest verified: 2 of 2",)
    assert d["ami-00000001"].action == Action.DEPRECATE
    assert d["ami-00000001"].reasons[0] == "not among the newest 2 verified"
    assert d["ami-00000001"].not_before == NOW + timedelta(days=7)
    assert d["ami-00000004"].action == Action.DEPRECATE
    assert "never verified" in d["ami-00000004"].reasons[0]


@pytest.mark.parametrize(
    ("facts", "usages", "reason"),
    [
        ({"keep_tag": True}, (), f"tagged {tags.KEEP}"),
        (
            {"created_at": NOW - timedelta(days=2), "status": "candidate"},
            (),
            "younger than 7 days (created 2026-05-30)",
        ),
        (
            {"status": "revoked", "revoked_at": NOW - timedelta(days=10)},
            (),
            "revoked: kept for the 90-day audit window (until 2026-08-20)",
        ),
        ({"public": True}, (), "in use: public image (launch permission group all)"),
        ({"state": "pending"}, (), "not available yet (state pending)"),
        (
            {},
            (UsageKind.LAUNCH_TEMPLATE, "web-lt lt-1 version 1"),
            "in use: launch-template web-lt lt-1 version 1 (123456789012/us-east-1)",
        ),
        (
            {},
            (UsageKind.INSTANCE, "i-1 (stopped)"),
            "in use: instance i-1 (stopped) (123456789012/us-east-1)",
        ),
        (
            {},
            (UsageKind.SSM_PARAMETER, "/app/ami"),
            "in use: ssm-parameter /app/ami (123456789012/us-east-1)",
        ),
        (
            {},
            (UsageKind.CHANNEL, "web/prod (SSM parameter /factory/web/prod)"),
            "in use: channel web/prod (SSM parameter /factory/web/prod) (123456789012/us-east-1)",
        ),
        (
            {},
            (UsageKind.LAUNCH_CONFIGURATION, "old-lc"),
            "in use: launch-configuration old-lc (123456789012/us-east-1)",
        ),
        (
            {},
            (UsageKind.COPY, "copied as ami-9 (from us-east-1)"),
            "in use: copy copied as ami-9 (from us-east-1) (123456789012/us-east-1)",
        ),
        (
            {},
            (UsageKind.SHARED, "with account 111122223333"),
            "in use: shared with account 111122223333 (123456789012/us-east-1)",
        ),
    ],
)
def test_each_keep_reason(facts: dict, usages: tuple, reason: str) -> None:  # type: ignore[type-arg]
    newer = [img("ami-00000010", 9), img("ami-00000011", 8)]
    old = img("ami-00000001", 60, **{k: v for k, v in facts.items() if k != "created_at"})
    if "created_at" in facts:
        old = ImageFacts(**{**old.__dict__, "created_at": facts["created_at"]})
    uses = {}
    if usages:
        uses = {old.ami_id: [Usage(old.ami_id, usages[0], usages[1], "123456789012", "us-east-1")]}
    decision = by_id(plan_retire([*newer, old], uses, _policy, NOW))[old.ami_id]
    assert decision.action == Action.KEEP
    assert decision.reasons == (reason,)


def test_revoked_past_the_audit_window_is_retired_and_never_counts_as_newest() -> None:
    images = [
        img("ami-00000001", 200, status="revoked", revoked_at=NOW - timedelta(days=91)),
        img("ami-00000002", 1, status="revoked", revoked_at=NOW - timedelta(days=1)),
    ]
    d = by_id(plan_retire(images, {}, _policy, NOW))
    assert d["ami-00000001"].action == Action.DEPRECATE
    assert d["ami-00000001"].reasons[0] == "revoked, past its 90-day audit window"
    assert not any("newest" in r for r in d["ami-00000002"].reasons)


def test_deprecated_images_wait_for_the_grace_period_then_deregister() -> None:
    newer = [img("ami-00000010", 9), img("ami-00000011", 8)]
    waiting = img(
        "ami-00000001", 60, retire_phase="deprecated", deprecation_time=NOW - timedelta(days=3)
    )
    due = img(
        "ami-00000002", 60, retire_phase="deprecated", deprecation_time=NOW - timedelta(days=8)
    )
    protected = img(
        "ami-00000003",
        60,
        retire_phase="deprecated",
        deprecation_time=NOW - timedelta(days=8),
        protection="enabled-with-cooldown",
    )
    d = by_id(plan_retire([*newer, waiting, due, protected], {}, _policy, NOW))
    assert d[waiting.ami_id].action == Action.WAIT
    assert d[waiting.ami_id].not_before == NOW + timedelta(days=4)
    assert d[due.ami_id].action == Action.DEREGISTER
    assert d[protected.ami_id].action == Action.PROTECTED
    assert "never disables it" in d[protected.ami_id].reasons[-1]


def test_an_image_in_use_again_after_deprecation_is_restored() -> None:
    newer = [img("ami-00000010", 9), img("ami-00000011", 8)]
    old = img(
        "ami-00000001", 60, retire_phase="deprecated", deprecation_time=NOW - timedelta(days=30)
    )
    uses = {old.ami_id: [Usage(old.ami_id, UsageKind.INSTANCE, "i-1 (running)", "1", "r")]}
    decision = by_id(plan_retire([*newer, old], uses, _policy, NOW))[old.ami_id]
    assert decision.action == Action.RESTORE
    assert decision.kept
    assert decision.reasons[0] == "in use: instance i-1 (running) (1/r)"


def test_family_filter_and_per_family_policy() -> None:
    images = [
        img(f"ami-0000000{i}", 30 + i, family=fam)
        for i, fam in enumerate(["web", "web", "db", "db"])
    ]

    def policy(family: str) -> RetentionPolicy:
        return RetentionPolicy(keep=1 if family == "web" else 5)

    d = by_id(plan_retire(images, {}, policy, NOW))
    assert [d[f"ami-0000000{i}"].action for i in range(4)] == [
        Action.KEEP,
        Action.DEPRECATE,
        Action.KEEP,
        Action.KEEP,
    ]
    only_db = plan_retire(images, {}, policy, NOW, family="db")
    assert {x.family for x in only_db} == {"db"}


def test_plan_is_deterministic_whatever_the_input_order() -> None:
    images = [
        img(
            f"ami-{i:08x}",
            days_old=i % 40,
            family=f"f{i % 5}",
            region=("us-east-1", "eu-west-1")[i % 2],
        )
        for i in range(200)
    ]
    uses = {
        images[7].ami_id: [
            Usage(images[7].ami_id, UsageKind.INSTANCE, "i-2", "1", "r"),
            Usage(images[7].ami_id, UsageKind.COPY, "c", "2", "r"),
        ]
    }
    first = plan_retire(images, uses, _policy, NOW)
    shuffled = list(images)
    random.Random(4).shuffle(shuffled)
    reversed_uses = {k: list(reversed(v)) for k, v in uses.items()}
    second = plan_retire(shuffled, reversed_uses, _policy, NOW)
    assert first == second
    keys = [(d.region, d.family, -d.created_at.timestamp(), d.ami_id) for d in first]
    assert keys == sorted(keys)
    plan = RetirePlan(now=NOW, family=None, policies={}, decisions=first)
    assert render_plan(plan) == render_plan(
        RetirePlan(now=NOW, family=None, policies={}, decisions=second)
    )
    assert json.loads(dumps(plan))["decisions"][0]["action"] in {a.value for a in Action}


def test_orphaned_snapshots() -> None:
    snaps = [
        SnapshotFacts("snap-used", "us-east-1", NOW - timedelta(days=30)),
        SnapshotFacts("snap-young", "us-east-1", NOW - timedelta(days=1)),
        SnapshotFacts("snap-orphan", "us-east-1", NOW - timedelta(days=30)),
    ]
    planned = {
        s.snapshot_id: s for s in plan_snapshots(snaps, {"us-east-1": {"snap-used"}}, NOW, 7)
    }
    assert planned["snap-used"].action == "keep"
    assert planned["snap-young"].action == "keep"
    assert planned["snap-orphan"].action == "delete"


@pytest.mark.parametrize(
    ("value", "protected"),
    [
        ("disabled", False),
        (None, False),
        ("enabled-without-cooldown", True),
        ("enabled-with-cooldown", True),
        ("disabled-until 2026-06-02T00:00:00.000Z", True),
        ("disabled-until 2026-05-01T00:00:00.000Z", False),
    ],
)
def test_protection_values(value: str | None, protected: bool) -> None:
    assert is_protected(value, NOW) is protected


def test_image_facts_from_describe_images() -> None:
    image = {
        "ImageId": "ami-0123456789abcdef0",
        "Name": "web-1",
        "State": "available",
        "CreationDate": "2026-05-01T00:00:00.000Z",
        "DeprecationTime": "2026-05-20T10:00:00.000Z",
        "DeregistrationProtection": "enabled-without-cooldown",
        "Public": False,
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": "snap-1"}}],
        "Tags": [
            {"Key": tags.FAMILY, "Value": "web"},
            {"Key": tags.STATUS, "Value": "verified"},
            {"Key": tags.CREATED_AT, "Value": "2026-04-30T08:00:00Z"},
            {"Key": tags.RETIRE_PHASE, "Value": "deprecated"},
            {"Key": tags.KEEP, "Value": ""},
        ],
    }
    facts = image_facts(image, "us-east-1")
    assert facts is not None
    assert facts.created_at == datetime(2026, 4, 30, 8, tzinfo=UTC)
    assert facts.deprecation_time == datetime(2026, 5, 20, 10, tzinfo=UTC)
    assert facts.keep_tag and facts.protected and facts.retire_phase == "deprecated"
    assert facts.snapshot_ids == ("snap-1",)
    assert image_facts({"ImageId": "ami-1", "Tags": []}, "us-east-1") is None


@pytest.mark.parametrize("option", ["--min-age", "--grace"])
def test_cli_refuses_days_beyond_a_century(option: str) -> None:
    result = CliRunner().invoke(cli, ["retire", option, "1000000000"])
    assert result.exit_code == 2
    assert "1000000000 is not in the range 0<=x<=36500" in result.output
