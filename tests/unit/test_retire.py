"""The retention plan, pure: each keep reason, each retirement step, deterministic order; and
the one retire chain that `factory retire` and the nightly pipeline both run (moto in-process)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory import tags
from factory.aws import AwsClients
from factory.aws.images import Snapshot
from factory.aws.model import Image
from factory.cli import cli
from factory.cli.context import CliContext
from factory.cli.pipeline import _retire_step
from factory.cli.retire import render_plan
from factory.config import FactoryConfig, RetentionPolicy, load_config
from factory.errors import ConfigError
from factory.output import Progress, dumps
from factory.retire import (
    Action,
    Decision,
    RetirePlan,
    RetireScope,
    RetireSettings,
    Usage,
    UsageKind,
    apply_retire,
    plan_decisions,
    plan_snapshots,
    retire_images,
)
from factory.retire.plan import (
    created_at,
    deprecated_by_retire,
    is_protected,
    kept_by_tag,
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
    created_at: datetime | None = None,
    keep_tag: bool = False,
    revoked_at: datetime | None = None,
    retire_phase: str | None = None,
    **kw: object,
) -> Image:
    """A factory image as DescribeImages would give it: its facts in its `factory:` tags."""
    image_tags = {
        tags.FAMILY: family,
        tags.VERSION: f"v{ami[-2:]}",
        tags.CREATED_AT: (created_at or NOW - timedelta(days=days_old)).isoformat(),
    }
    if status is not None:
        image_tags[tags.STATUS] = status
    if keep_tag:
        image_tags[tags.KEEP] = ""
    if revoked_at is not None:
        image_tags[tags.REVOKED_AT] = revoked_at.isoformat()
    if retire_phase is not None:
        image_tags[tags.RETIRE_PHASE] = retire_phase
    return Image(ami_id=ami, region=region, tags=image_tags, **kw)  # type: ignore[arg-type]


def by_id(decisions: tuple) -> dict:  # type: ignore[type-arg]
    return {d.ami_id: d for d in decisions}


def test_newest_verified_are_kept_and_older_are_deprecated() -> None:
    images = [
        img("ami-00000001", 30),
        img("ami-00000002", 20),
        img("ami-00000003", 10),
        img("ami-00000004", 40, status="candidate"),
    ]
    d = by_id(plan_decisions(images, {}, _policy, NOW))
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
    old = img("ami-00000001", 60, **facts)
    uses = {}
    if usages:
        uses = {old.ami_id: [Usage(old.ami_id, usages[0], usages[1], "123456789012", "us-east-1")]}
    decision = by_id(plan_decisions([*newer, old], uses, _policy, NOW))[old.ami_id]
    assert decision.action == Action.KEEP
    assert decision.reasons == (reason,)


def test_revoked_past_the_audit_window_is_retired_and_never_counts_as_newest() -> None:
    images = [
        img("ami-00000001", 200, status="revoked", revoked_at=NOW - timedelta(days=91)),
        img("ami-00000002", 1, status="revoked", revoked_at=NOW - timedelta(days=1)),
    ]
    d = by_id(plan_decisions(images, {}, _policy, NOW))
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
    d = by_id(plan_decisions([*newer, waiting, due, protected], {}, _policy, NOW))
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
    decision = by_id(plan_decisions([*newer, old], uses, _policy, NOW))[old.ami_id]
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

    d = by_id(plan_decisions(images, {}, policy, NOW))
    assert [d[f"ami-0000000{i}"].action for i in range(4)] == [
        Action.KEEP,
        Action.DEPRECATE,
        Action.KEEP,
        Action.KEEP,
    ]
    only_db = plan_decisions(images, {}, policy, NOW, family="db")
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
    first = plan_decisions(images, uses, _policy, NOW)
    shuffled = list(images)
    random.Random(4).shuffle(shuffled)
    reversed_uses = {k: list(reversed(v)) for k, v in uses.items()}
    second = plan_decisions(shuffled, reversed_uses, _policy, NOW)
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
        Snapshot("snap-used", "us-east-1", started_at=NOW - timedelta(days=30)),
        Snapshot("snap-young", "us-east-1", started_at=NOW - timedelta(days=1)),
        Snapshot("snap-orphan", "us-east-1", started_at=NOW - timedelta(days=30)),
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


def test_retirement_facts_from_describe_images() -> None:
    image = Image.from_api(
        {
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
        },
        "us-east-1",
    )
    assert created_at(image) == datetime(2026, 4, 30, 8, tzinfo=UTC)
    assert image.deprecation_time == datetime(2026, 5, 20, 10, tzinfo=UTC)
    assert kept_by_tag(image) and is_protected(image.protection) and deprecated_by_retire(image)
    assert image.snapshot_ids == ("snap-1",)
    # an image without factory:family is not the factory's: never planned
    foreign = Image.from_api({"ImageId": "ami-1", "Tags": []}, "us-east-1")
    assert plan_decisions([foreign], {}, _policy, NOW) == ()


@pytest.mark.parametrize("option", ["--min-age", "--grace"])
def test_cli_refuses_days_beyond_a_century(option: str) -> None:
    result = CliRunner().invoke(cli, ["retire", option, "1000000000"])
    assert result.exit_code == 2
    assert "1000000000 is not in the range 0<=x<=36500" in result.output


def test_settings_apply_the_command_line_over_each_family_policy(tmp_path: Path) -> None:
    config = _config(
        tmp_path, "[retire]\nkeep = 5\nmin_age_days = 3\n[retire.families.db]\nkeep = 9\n"
    )
    plain = RetireSettings.from_config(config, now=NOW)
    assert plain.policy_for("web").keep == 5 and plain.policy_for("db").keep == 9
    assert plain.snapshot_min_age_days == 3
    told = RetireSettings.from_config(config, now=NOW, family="db", keep=1, min_age_days=30)
    assert told.policy_for("db") == RetentionPolicy(keep=1, min_age_days=30)
    assert told.policy_for("web").keep == 1
    assert told.snapshot_min_age_days == 30


# ---- the chain, against moto in-process ----------------------------------------------------------

OTHER = "210987654321"


def _config(tmp_path: Path, extra: str = "") -> FactoryConfig:
    path = tmp_path / "factory.toml"
    path.write_text('[factory]\nregions = ["us-east-1"]\n' + extra)
    return load_config(config_file=path)


def _seed(clients: AwsClients) -> dict[str, str]:
    """Three verified images of web (10, 20, 30 days old) and one launched by an instance."""
    ec2 = clients.client("ec2")
    amis = {}
    for name, days in (("new", 10), ("mid", 20), ("old", 30), ("used", 40)):
        ami = str(ec2.register_image(Name=f"web-{name}")["ImageId"])
        created = (NOW - timedelta(days=days)).isoformat()
        values = {tags.FAMILY: "web", tags.STATUS: "verified", tags.CREATED_AT: created}
        ec2.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in values.items()])
        amis[name] = ami
    ec2.run_instances(ImageId=amis["used"], MinCount=1, MaxCount=1)
    return amis


def test_cli_and_pipeline_run_the_same_chain(aws: AwsClients, tmp_path: Path) -> None:
    amis = _seed(aws)
    (tmp_path / "factory.toml").write_text(
        '[factory]\nregions = ["us-east-1"]\n[retire]\nkeep = 1\n'
    )
    config = str(tmp_path / "factory.toml")
    done = CliRunner().invoke(
        cli, ["--config", config, "-q", "retire", "--now", NOW.isoformat(), "-O", "json"]
    )
    assert done.exit_code == 0, done.output
    planned = json.loads(done.output)
    actions = {d["ami_id"]: d["action"] for d in planned["decisions"]}
    assert actions == {
        amis["new"]: "keep",
        amis["mid"]: "deprecate",
        amis["old"]: "deprecate",
        amis["used"]: "keep",
    }
    assert planned["images_scanned"] == 4 and planned["calls_by_operation"]["DescribeImages"] >= 1
    # the plan changed nothing
    described = aws.client("ec2").describe_images(ImageIds=list(amis.values()))["Images"]
    assert not any(t["Key"] == tags.RETIRE_PHASE for i in described for t in i.get("Tags", []))
    # the nightly pipeline's retire step runs the very same chain (here nothing is due: keep 5)
    (tmp_path / "factory.toml").write_text(
        '[factory]\nregions = ["us-east-1"]\n[retire]\nkeep = 5\n'
    )
    cli_context = CliContext(config, None, None, "json", debug=False, quiet=True)
    result = _retire_step(cli_context, Progress(quiet=True))()
    assert {d.ami_id: d.action for d in result.plan.decisions} == dict.fromkeys(
        amis.values(), Action.KEEP
    )
    assert result.outcomes == () and not result.failed


def test_plan_only_changes_nothing_and_says_why(aws: AwsClients, tmp_path: Path) -> None:
    amis = _seed(aws)
    settings = RetireSettings(now=NOW, retention=RetentionPolicy(keep=1))
    result = retire_images(RetireScope((aws,)), settings, apply=False)
    assert result.outcomes == () and result.api_calls == 0
    reasons = {d.ami_id: d.reasons for d in result.plan.decisions}
    assert reasons[amis["new"]] == ("newest verified: 1 of 1",)
    assert reasons[amis["used"]][0].startswith("in use: instance i-")
    assert result.plan.scopes == (f"{aws.account_id}/us-east-1",)


def test_an_environment_in_another_account_than_configured_is_refused(
    aws: AwsClients, tmp_path: Path
) -> None:
    _seed(aws)
    (tmp_path / "factory.toml").write_text(
        '[factory]\nregions = ["us-east-1"]\n'
        f'[environments.prod]\naccount = "999999999999"\nrole_arn = "arn:aws:iam::{OTHER}:role/x"\n'
    )
    done = CliRunner().invoke(cli, ["--config", str(tmp_path / "factory.toml"), "retire"])
    assert isinstance(done.exception, ConfigError)
    assert "environments.prod.account is 999999999999" in done.exception.message
    assert f"act in account {OTHER}" in done.exception.message


def test_apply_rechecks_use_just_before_deregistering(aws: AwsClients) -> None:
    amis = _seed(aws)
    ec2 = aws.client("ec2")
    due = [amis["old"], amis["used"]]  # the instance launched from "used" appeared after the plan
    phase = [{"Key": tags.RETIRE_PHASE, "Value": "deprecated"}]
    ec2.create_tags(Resources=due, Tags=phase)
    images = {i["ImageId"]: i for i in ec2.describe_images(ImageIds=due)["Images"]}
    snapshot = images[amis["old"]]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    decisions = tuple(
        Decision(ami, "us-east-1", "web", "", "", NOW, Action.DEREGISTER, ("grace over",))
        for ami in due
    )
    plan = RetirePlan(now=NOW, family=None, policies={}, decisions=decisions)
    result = apply_retire(plan, RetireScope((aws,)))
    outcomes = {(o.resource, o.action): o for o in result.outcomes}
    assert outcomes[(amis["old"], "deregister")].status == "done"
    assert outcomes[(snapshot, "delete-snapshot")].status == "done"
    skipped = outcomes[(amis["used"], "deregister")]
    assert skipped.status == "skipped"
    assert skipped.detail.startswith("in use again: in use: instance i-")
    assert not result.failed and result.api_calls > 0
    left = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    assert amis["used"] in left and amis["old"] not in left
