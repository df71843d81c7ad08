"""`factory retire` against the local cloud over HTTP: hundreds of AMIs, every kind of use.

One module-scoped control plane (no instance runtime) is seeded once; the tests then walk the
two-phase retirement in order: plan, deprecate (run 1), wait, deregister (run 2, "now" moved
past the grace period), orphaned snapshots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest

from factory import tags
from factory.aws import AwsClients, AwsTarget
from factory.config import RetentionPolicy
from factory.environments import EnvironmentTarget
from factory.localcloud import control
from factory.retire import (
    Action,
    RetireScope,
    RetireSettings,
    apply_retire,
    gather_retire,
    plan_retire,
)

pytestmark = pytest.mark.integration

REGION = "us-east-1"
OWNER = "123456789012"
OTHER = "210987654321"
ROLE = f"arn:aws:iam::{OTHER}:role/retire-test"
NOW = datetime.now(UTC).replace(microsecond=0)
POLICY = RetentionPolicy(keep=3, min_age_days=7, grace_days=7, audit_days=90)
FAMILIES = ("web", "api", "db", "batch")


@dataclass
class World:
    endpoint: str
    config: Path
    env: dict[str, str]
    special: dict[str, str] = field(default_factory=dict)
    snapshot_of: dict[str, str] = field(default_factory=dict)
    orphan_snapshot: str = ""
    total: int = 0

    def ec2(self) -> Any:
        return boto3.client("ec2", region_name=REGION, endpoint_url=self.endpoint)


def _image(
    ec2: Any,
    name: str,
    family: str,
    age_days: float,
    status: str = "verified",
    extra: dict[str, str] | None = None,
    **kwargs: Any,
) -> str:
    values = {
        tags.FAMILY: family,
        tags.STATUS: status,
        tags.VERSION: name.rsplit("-", 1)[-1],
        tags.CREATED_AT: (NOW - timedelta(days=age_days)).isoformat(),
        **(extra or {}),
    }
    return str(
        ec2.register_image(
            Name=name,
            TagSpecifications=[
                {
                    "ResourceType": "image",
                    "Tags": [{"Key": k, "Value": v} for k, v in values.items()],
                }
            ],
            **kwargs,
        )["ImageId"]
    )


def _seed(world: World) -> None:
    ec2 = world.ec2()
    # hundreds of ordinary images: every family, ages 0..240 days, some never verified
    specs = [
        (f"{fam}-{i:03d}", fam, i * 4 + 0.5, "verified" if i % 7 else "candidate")
        for fam in FAMILIES
        for i in range(50)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda s: _image(ec2, *s), specs))
    special = world.special
    for key in (
        "lt_old",
        "stopped",
        "ssm",
        "copy",
        "lc",
        "protected",
        "shared_a",
        "later_used",
        "revoked_recent",
    ):
        extra = {}
        status = "verified"
        if key == "revoked_recent":
            status = "revoked"
            extra = {tags.REVOKED_AT: (NOW - timedelta(days=10)).isoformat()}
        special[key] = _image(
            ec2, f"web-special-{key.replace('_', '')}", "web", 150, status=status, extra=extra
        )
    snap = ec2.describe_images(ImageIds=[special["shared_a"]])["Images"][0]["BlockDeviceMappings"][
        0
    ]["Ebs"]["SnapshotId"]
    world.snapshot_of["shared_a"] = snap
    special["shared_b"] = _image(
        ec2,
        "web-special-sharedb",
        "web",
        150,
        extra={tags.KEEP: "golden"},
        RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}],
    )
    for key in ("protected", "later_used"):
        world.snapshot_of[key] = ec2.describe_images(ImageIds=[special[key]])["Images"][0][
            "BlockDeviceMappings"
        ][0]["Ebs"]["SnapshotId"]
    ec2.enable_image_deregistration_protection(ImageId=special["protected"])
    newest_web = ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "name", "Values": ["web-000"]}]
    )["Images"][0]["ImageId"]
    # a launch template whose version 1 (neither default nor latest) uses lt_old
    lt = ec2.create_launch_template(
        LaunchTemplateName="web-lt", LaunchTemplateData={"ImageId": special["lt_old"]}
    )
    lt_id = lt["LaunchTemplate"]["LaunchTemplateId"]
    for _ in range(2):
        ec2.create_launch_template_version(
            LaunchTemplateId=lt_id, LaunchTemplateData={"ImageId": newest_web}
        )
    ec2.modify_launch_template(LaunchTemplateId=lt_id, DefaultVersion="3")
    instance = ec2.run_instances(ImageId=special["stopped"], MinCount=1, MaxCount=1)
    ec2.stop_instances(InstanceIds=[instance["Instances"][0]["InstanceId"]])
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=world.endpoint)
    ssm.put_parameter(Name="/app/golden-ami", Value=special["ssm"], Type="String")
    autoscaling = boto3.client("autoscaling", region_name=REGION, endpoint_url=world.endpoint)
    autoscaling.create_launch_configuration(
        LaunchConfigurationName="old-lc", ImageId=special["lc"], InstanceType="t3.micro"
    )
    # the copy lives in a second account, tagged by promotion
    creds = boto3.client("sts", region_name=REGION, endpoint_url=world.endpoint).assume_role(
        RoleArn=ROLE, RoleSessionName="seed"
    )["Credentials"]
    other = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=world.endpoint,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    copy = other.register_image(Name="web-copy-in-prod")["ImageId"]
    other.create_tags(
        Resources=[copy],
        Tags=[{"Key": tags.PROMOTED_FROM, "Value": f"{OWNER}:{REGION}:{special['copy']}"}],
    )
    # a factory snapshot whose image is long gone
    volume = ec2.create_volume(Size=8, AvailabilityZone=f"{REGION}a")["VolumeId"]
    world.orphan_snapshot = ec2.create_snapshot(
        VolumeId=volume,
        Description="left behind by a failed build",
        TagSpecifications=[
            {"ResourceType": "snapshot", "Tags": [{"Key": tags.FAMILY, "Value": "web"}]}
        ],
    )["SnapshotId"]
    world.total = len(specs) + len(special)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    state = tmp_path_factory.mktemp("retire-cloud")
    status = control.up(state, instances=False)
    env = control.env_vars(status, REGION)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    config = tmp_path_factory.mktemp("retire-cfg") / "factory.toml"
    config.write_text(
        f'[factory]\nregions = ["{REGION}"]\n\n'
        "[retire]\nkeep = 3\nmin_age_days = 7\ngrace_days = 7\naudit_days = 90\n\n"
        f'[environments.prod]\naccount = "{OTHER}"\nrole_arn = "{ROLE}"\n'
        f'regions = ["{REGION}"]\n'
    )
    assert status.endpoint_url is not None
    world = World(status.endpoint_url, config, env)
    try:
        _seed(world)
        yield world
    finally:
        control.down(state)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _factory(world: World, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", "--config", str(world.config), *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **world.env},
    )


def _plan(world: World, now: datetime, *extra: str) -> dict[str, Any]:
    done = _factory(world, "retire", "--now", now.isoformat(), *extra, "--output", "json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _rows(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["ami_id"]: row for row in plan["decisions"]}


def _scope(world: World) -> RetireScope:
    own = AwsClients(AwsTarget(REGION, endpoint_url=world.endpoint))
    other = AwsClients(AwsTarget(REGION, role_arn=ROLE, endpoint_url=world.endpoint))
    return RetireScope((own,), (EnvironmentTarget("prod", other),))


def test_plan_keeps_every_image_in_use_with_its_reason(world: World) -> None:
    plan = _plan(world, NOW)
    rows = _rows(plan)
    assert len(rows) == world.total >= 200
    s = world.special
    expected = {
        "lt_old": "in use: launch-template web-lt",
        "stopped": "(stopped)",
        "ssm": "in use: ssm-parameter /app/golden-ami",
        "copy": "in use: copy copied as ami-",
        "lc": "in use: launch-configuration old-lc",
        "shared_b": f"tagged {tags.KEEP}",
        "revoked_recent": "revoked: kept for the 90-day audit window",
    }
    for key, reason in expected.items():
        row = rows[s[key]]
        assert row["action"] == "keep", (key, row)
        assert any(reason in r for r in row["reasons"]), (key, row["reasons"])
    assert "version 1" in rows[s["lt_old"]]["reasons"][0]
    assert f"({OTHER}/{REGION})" in rows[s["copy"]]["reasons"][0]
    for key in ("protected", "shared_a", "later_used"):
        assert rows[s[key]]["action"] == "deprecate"
    counts = plan["counts"]
    assert counts["deprecate"] > 120 and counts["keep"] > 20
    assert plan["images_scanned"] == world.total
    assert plan["api_calls"] > 0 and plan["calls_by_operation"]["DescribeImages"] >= 1


def test_plan_output_is_deterministic(world: World) -> None:
    first = _factory(world, "retire", "--now", NOW.isoformat())
    second = _factory(world, "retire", "--now", NOW.isoformat())
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert "REGION" in first.stdout.splitlines()[0]
    assert "API calls" in first.stdout.splitlines()[-1]


def test_apply_deprecates_first_then_waits_for_the_grace_period(world: World) -> None:
    done = _factory(world, "retire", "--apply", "--now", NOW.isoformat(), "--output", "json")
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout)["outcomes"]
    deprecated = {o["resource"] for o in outcomes if o["action"] == "deprecate"}
    assert {o["status"] for o in outcomes} == {"done"}
    assert world.special["protected"] in deprecated
    assert not any(o["action"] == "deregister" for o in outcomes)
    ec2 = world.ec2()
    image = ec2.describe_images(ImageIds=[world.special["shared_a"]])["Images"][0]
    assert "DeprecationTime" in image
    assert {"Key": tags.RETIRE_PHASE, "Value": "deprecated"} in image["Tags"]
    kept = ec2.describe_images(ImageIds=[world.special["lt_old"]])["Images"][0]
    assert "DeprecationTime" not in kept
    rows = _rows(_plan(world, NOW + timedelta(days=3)))
    assert rows[world.special["shared_a"]]["action"] == "wait"
    assert all(rows[a]["action"] == "wait" for a in deprecated)


def test_after_grace_deregisters_rechecks_use_and_keeps_shared_snapshots(world: World) -> None:
    later = NOW + timedelta(days=8)
    scope = _scope(world)
    settings = RetireSettings(now=later, retention=POLICY)
    plan = plan_retire(gather_retire(scope, settings), settings)
    actions = {d.ami_id: d.action for d in plan.decisions}
    s = world.special
    assert actions[s["shared_a"]] == Action.DEREGISTER
    assert actions[s["later_used"]] == Action.DEREGISTER
    assert actions[s["protected"]] == Action.PROTECTED
    ec2 = world.ec2()
    # something starts using an image between the plan and the apply
    ec2.run_instances(ImageId=s["later_used"], MinCount=1, MaxCount=1)
    result = apply_retire(plan, scope)
    by_resource = {(o.resource, o.action): o for o in result.outcomes}
    assert by_resource[(s["later_used"], "deregister")].status == "skipped"
    assert "in use again" in by_resource[(s["later_used"], "deregister")].detail
    assert by_resource[(s["shared_a"], "deregister")].status == "done"
    assert by_resource[(world.snapshot_of["shared_a"], "delete-snapshot")].status == "skipped"
    assert by_resource[(s["protected"], "protected")].status == "skipped"
    assert not result.failed
    deregistered = [
        o.resource for o in result.outcomes if o.action == "deregister" and o.status == "done"
    ]
    assert len(deregistered) > 120
    # the shared snapshot survives (the kept image still uses it); the others are gone
    assert ec2.describe_snapshots(SnapshotIds=[world.snapshot_of["shared_a"]])["Snapshots"]
    remaining = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    assert not remaining & set(deregistered)
    for key in ("lt_old", "stopped", "ssm", "copy", "lc", "shared_b", "protected", "later_used"):
        assert s[key] in remaining, key
    protected = ec2.describe_images(ImageIds=[s["protected"]])["Images"][0]
    assert protected["DeregistrationProtection"] == "enabled-without-cooldown"
    deleted = {
        o.resource for o in result.outcomes if o.action == "delete-snapshot" and o.status == "done"
    }
    assert len(deleted) == len(deregistered) - 1  # all but the shared one
    with pytest.raises(botocore.exceptions.ClientError):
        ec2.describe_snapshots(SnapshotIds=[sorted(deleted)[0]])


def test_in_use_again_is_restored_and_orphaned_snapshots_deleted(world: World) -> None:
    later = NOW + timedelta(days=8)
    plan = _plan(world, later, "--snapshots")
    rows = _rows(plan)
    assert rows[world.special["later_used"]]["action"] == "restore"
    snaps = {s["snapshot_id"]: s for s in plan["snapshots"]}
    assert snaps[world.orphan_snapshot]["action"] == "delete"
    done = _factory(
        world, "retire", "--apply", "--snapshots", "--now", later.isoformat(), "--output", "json"
    )
    assert done.returncode == 0, done.stderr
    ec2 = world.ec2()
    image = ec2.describe_images(ImageIds=[world.special["later_used"]])["Images"][0]
    assert "DeprecationTime" not in image
    assert tags.RETIRE_PHASE not in {t["Key"] for t in image.get("Tags", [])}
    with pytest.raises(botocore.exceptions.ClientError):
        ec2.describe_snapshots(SnapshotIds=[world.orphan_snapshot])
    assert ec2.describe_snapshots(SnapshotIds=[world.snapshot_of["shared_a"]])["Snapshots"]
