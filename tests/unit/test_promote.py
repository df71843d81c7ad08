"""Promotion: the plan (pure), and apply against moto in-process (regions, accounts, cleanup)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from imagekit import register_base, register_factory_image, tags_of
from moto import mock_aws

from factory import tags as T
from factory.aws import AwsClients, AwsTarget, tag_list
from factory.aws.model import Image, parse_time
from factory.cli import cli
from factory.cli.promote import plan_text
from factory.config import Environment, load_config
from factory.errors import AwsError, ConfigError, Interrupted, RefusedError
from factory.output import Progress
from factory.promote import (
    PromotionPlan,
    PromotionResult,
    PromotionSource,
    TargetFacts,
    copy_tags,
    find_copy,
    plan_promotion,
    promote,
)

OWN = "123456789012"  # moto's default account
OTHER = "210987654321"
ROLE = f"arn:aws:iam::{OTHER}:role/factory"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def source(**changes: object) -> PromotionSource:
    """The image to promote; `changes` name Image fields or PromotionSource fields."""
    derived = {k: changes.pop(k) for k in ("aws_managed_key", "shared_with") if k in changes}
    if isinstance(changes.get("deprecation_time"), str):
        changes["deprecation_time"] = parse_time(changes["deprecation_time"])
    image = Image(
        ami_id="ami-src",
        region="us-east-1",
        name="web-1",
        description="web image",
        state="available",
        owner_id=OWN,
        snapshot_ids=("snap-1",),
        encrypted=False,
        tags={
            T.FAMILY: "web",
            T.STATUS: "verified",
            T.SUITE_DIGEST: "sha256:aa",
            T.KEEP: "yes",
            T.PROVENANCE_URI: "s3://b/k",
            "Name": "not a factory tag",
        },
    )
    promoted = PromotionSource(
        image=replace(image, **changes),  # type: ignore[arg-type]
        account=OWN,
        aws_managed_key=False,
        shared_with=(),
    )
    return replace(promoted, **derived)  # type: ignore[arg-type]


ENV = Environment("prod", account=OTHER, regions=("eu-west-1", "us-east-1"))


# ---- the plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tags": {T.STATUS: "candidate"}}, "not verified (factory:status=candidate)"),
        ({"tags": {T.STATUS: "failed"}}, "run `factory verify ami-src` first"),
        ({"tags": {}}, "factory:status=missing"),
        ({"tags": {T.STATUS: "revoked", T.REVOKED_REASON: "bad ssl"}}, "revoked (bad ssl)"),
        ({"tags": {T.STATUS: "verified", T.REVOKED_AT: "2026-01-01"}}, "is revoked"),
        ({"deprecation_time": "2026-11-01T00:00:00.000Z"}, "retired (deprecated)"),
        ({"tags": {T.STATUS: "verified", T.RETIRE_PHASE: "deprecated"}}, "retired"),
        ({"state": "pending"}, "is pending, not available"),
    ],
)
def test_unpromotable_images_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(RefusedError) as caught:
        plan_promotion(source(**changes), ENV, [TargetFacts(OTHER, "eu-west-1")], now=NOW)
    assert message in caught.value.message


def test_deprecation_in_the_future_is_not_retired() -> None:
    later = (NOW + timedelta(days=3)).isoformat()
    plan = plan_promotion(
        source(deprecation_time=later), ENV, [TargetFacts(OTHER, "eu-west-1")], now=NOW
    )
    assert [s.action for s in plan.steps] == ["copy"]


def test_plan_per_target() -> None:
    targets = [
        TargetFacts(OTHER, "eu-west-1"),
        TargetFacts(OTHER, "us-east-1", "ami-old", "available"),
        TargetFacts(OWN, "us-west-2"),
        TargetFacts(OWN, "us-east-1"),
    ]
    plan = plan_promotion(source(), replace(ENV, kms_key="alias/prod"), targets, now=NOW)
    rows = [(s.account, s.region, s.action, s.ami_id, s.cross_account, s.share) for s in plan.steps]
    assert rows == [
        (OTHER, "eu-west-1", "copy", None, True, True),
        (OTHER, "us-east-1", "reuse", "ami-old", True, False),
        (OWN, "us-west-2", "copy", None, False, False),
        (OWN, "us-east-1", "source", "ami-src", False, False),
    ]
    assert plan.steps[0].kms_key == "alias/prod"
    assert plan.promoted_from == f"{OWN}:us-east-1:ami-src"
    assert "share launch and snapshot permission with 210987654321" in plan_text(plan)
    assert "reuse ami-old (already promoted)" in plan_text(plan)


def test_an_existing_share_is_not_granted_again() -> None:
    plan = plan_promotion(
        source(shared_with=(OTHER,)), ENV, [TargetFacts(OTHER, "eu-west-1")], now=NOW
    )
    assert plan.steps[0].share is False


def test_default_ebs_key_cannot_cross_accounts() -> None:
    image = source(encrypted=True, aws_managed_key=True)
    with pytest.raises(RefusedError, match="default EBS key"):
        plan_promotion(image, ENV, [TargetFacts(OTHER, "eu-west-1")], now=NOW)
    # within the account it can
    plan = plan_promotion(image, ENV, [TargetFacts(OWN, "eu-west-1")], now=NOW)
    assert [s.action for s in plan.steps] == ["copy"]


def test_no_regions_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no regions"):
        plan_promotion(source(), ENV, [], now=NOW)


def test_copy_tags_carry_the_verdict_not_local_decisions() -> None:
    tags = copy_tags(source())
    assert tags == {
        T.FAMILY: "web",
        T.STATUS: "verified",
        T.SUITE_DIGEST: "sha256:aa",
        T.PROMOTED_FROM: f"{OWN}:us-east-1:ami-src",
    }


# ---- apply, moto in-process -------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "factory.toml"
    path.write_text(
        '[factory]\nregions = ["us-east-1"]\n\n'
        '[environments.staging]\nregions = ["eu-west-1", "us-west-2"]\n\n'
        f'[environments.prod]\naccount = "{OTHER}"\nrole_arn = "{ROLE}"\n'
        'regions = ["eu-west-1"]\n'
    )
    return path


def verified_image(aws: AwsClients) -> str:
    ami = register_factory_image(aws, "web", "1.0", register_base(aws))
    aws.client("ec2").create_tags(
        Resources=[ami], Tags=tag_list({T.SUITE_DIGEST: "sha256:ab", T.KEEP: "pinned"})
    )
    return str(ami)


def staging(config: Path, aws: AwsClients) -> tuple[Environment, dict[tuple[str, str], AwsClients]]:
    cfg = load_config(config_file=config)
    env = cfg.environments["staging"]
    return env, {(OWN, r): aws.for_region(r) for r in env.regions}


def run(config: Path, aws: AwsClients, ami: str, **kwargs: object) -> PromotionResult:
    env, targets = staging(config, aws)
    options: dict[str, object] = {"channel": None, "dry_run": False, "wait": True}
    options.update(kwargs)
    result = promote(
        load_config(config_file=config),
        aws,
        ami,
        env,
        targets,
        progress=Progress(quiet=True),
        **options,  # type: ignore[arg-type]
    )
    assert isinstance(result, PromotionResult)
    return result


def test_copies_across_regions_then_reuses_them(aws: AwsClients, config: Path) -> None:
    ami = verified_image(aws)
    first = run(config, aws, ami, channel="staging")
    assert [(c.region, c.action, c.state) for c in first.copies] == [
        ("eu-west-1", "copied", "available"),
        ("us-west-2", "copied", "available"),
    ]
    source_tags = tags_of(aws, ami)
    for copy in first.copies:
        regional = aws.for_region(copy.region)
        image = regional.client("ec2").describe_images(ImageIds=[copy.ami_id])["Images"][0]
        assert (
            image["Name"] == aws.client("ec2").describe_images(ImageIds=[ami])["Images"][0]["Name"]
        )
        tags = tags_of(regional, copy.ami_id)
        assert tags[T.PROMOTED_FROM] == f"{OWN}:us-east-1:{ami}"
        assert tags[T.STATUS] == "verified"
        assert tags[T.SUITE_DIGEST] == source_tags[T.SUITE_DIGEST]
        assert T.KEEP not in tags
        parameter = regional.client("ssm").get_parameter(Name="/factory/web/staging")
        assert parameter["Parameter"]["Value"] == copy.ami_id
    assert [(s.region, s.changed) for s in first.channels] == [
        ("eu-west-1", True),
        ("us-west-2", True),
    ]
    second = run(config, aws, ami, channel="staging")
    assert [(c.ami_id, c.action) for c in second.copies] == [
        (c.ami_id, "reused") for c in first.copies
    ]
    assert [s.changed for s in second.channels] == [False, False]
    eu = aws.for_region("eu-west-1").client("ec2")
    assert len(eu.describe_images(Owners=["self"])["Images"]) == 1


@pytest.mark.parametrize(
    "tags",
    [{T.STATUS: "candidate"}, {T.STATUS: "revoked", T.REVOKED_REASON: "cve"}],
    ids=["unverified", "revoked"],
)
def test_refused_image_changes_nothing(aws: AwsClients, config: Path, tags: dict[str, str]) -> None:
    ami = verified_image(aws)
    aws.client("ec2").create_tags(Resources=[ami], Tags=tag_list(tags))
    with pytest.raises(RefusedError):
        run(config, aws, ami)
    for region in ("eu-west-1", "us-west-2"):
        assert aws.for_region(region).client("ec2").describe_images(Owners=["self"])["Images"] == []


def test_dry_run_changes_nothing(aws: AwsClients, config: Path) -> None:
    ami = verified_image(aws)
    env, targets = staging(config, aws)
    plan = promote(
        load_config(config_file=config),
        aws,
        ami,
        env,
        targets,
        channel=None,
        dry_run=True,
        wait=True,
        progress=Progress(quiet=True),
    )
    assert isinstance(plan, PromotionPlan)
    assert [s.action for s in plan.steps] == ["copy", "copy"]
    assert find_copy(aws.for_region("eu-west-1"), plan.promoted_from) is None


class InterruptAfterFirstCopy(Progress):
    def __init__(self) -> None:
        super().__init__(quiet=True)

    def info(self, message: str) -> None:
        if ": copying " in message:
            raise KeyboardInterrupt


def test_interrupt_deregisters_the_partial_copy(aws: AwsClients, config: Path) -> None:
    ami = verified_image(aws)
    env, targets = staging(config, aws)
    with pytest.raises(Interrupted):
        promote(
            load_config(config_file=config),
            aws,
            ami,
            env,
            targets,
            channel=None,
            dry_run=False,
            wait=True,
            progress=InterruptAfterFirstCopy(),
        )
    for region in ("eu-west-1", "us-west-2"):
        assert aws.for_region(region).client("ec2").describe_images(Owners=["self"])["Images"] == []


def test_a_copy_that_stays_pending_times_out_and_is_deregistered(
    aws: AwsClients, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait is factory.aws.wait's: backs off up to 15 s, gives up after the timeout."""
    import factory.promote as promotion
    from factory.aws.wait import Poller, TimedOut

    ami = verified_image(aws)
    env, targets = staging(config, aws)
    plan = promotion.plan_promotion(
        promotion.gather_source(aws, ami),
        env,
        promotion.gather_targets(targets, promotion.gather_source(aws, ami)),
        now=NOW,
    )
    monkeypatch.setattr(promotion, "_state", lambda target, ami_id: ("pending", ""))
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    poller = Poller(interval=1.0, max_interval=15.0, clock=lambda: now[0], sleep=sleep)
    with pytest.raises(TimedOut) as caught:
        promotion.copy_images(
            plan, aws, targets, progress=Progress(quiet=True), timeout=120, poller=poller
        )
    assert "did not become available" in caught.value.message
    assert "cleanup: deregistered partial copy" in caught.value.message
    assert min(sleeps) >= 1.0 and max(sleeps) == 15.0 and now[0] >= 120
    for region in ("eu-west-1", "us-west-2"):
        assert aws.for_region(region).client("ec2").describe_images(Owners=["self"])["Images"] == []


def test_failed_cross_account_copy_withdraws_the_share(aws: AwsClients, config: Path) -> None:
    """moto cannot copy another account's shared AMI: the failure path, cleaned up."""
    ami = verified_image(aws)
    cfg = load_config(config_file=config)
    env = cfg.environments["prod"]
    target = AwsClients(AwsTarget("eu-west-1", role_arn=ROLE))
    assert target.account_id == OTHER
    with pytest.raises(AwsError, match="ec2:CopyImage") as caught:
        promote(
            cfg,
            aws,
            ami,
            env,
            {(OTHER, "eu-west-1"): target},
            channel=None,
            dry_run=False,
            wait=True,
            progress=Progress(quiet=True),
        )
    assert f"withdrew the launch permission of {OTHER}" in caught.value.message
    attribute = aws.client("ec2").describe_image_attribute(
        ImageId=ami, Attribute="launchPermission"
    )
    assert attribute["LaunchPermissions"] == []
    assert target.client("ec2").describe_images(Owners=["self"])["Images"] == []


def test_cli_json_and_refusals(aws: AwsClients, config: Path) -> None:
    ami = verified_image(aws)
    runner = CliRunner()
    base = ["--config", str(config), "--region", "us-east-1"]
    dry = runner.invoke(cli, [*base, "promote", ami, "--to", "staging", "--dry-run", "-O", "json"])
    assert dry.exit_code == 0, dry.output
    assert [s["action"] for s in json.loads(dry.stdout)["steps"]] == ["copy", "copy"]
    done = runner.invoke(cli, [*base, "promote", ami, "--to", "staging", "--regions", "us-west-2"])
    assert done.exit_code == 0, done.output
    assert f"{OWN}/us-west-2  ami-" in done.output and "copied" in done.output
    again = runner.invoke(
        cli, [*base, "-O", "json", "promote", ami, "--to", "staging", "--regions", "us-west-2"]
    )
    copies = json.loads(again.stdout)["copies"]
    assert [(c["region"], c["account"], c["action"]) for c in copies] == [
        ("us-west-2", OWN, "reused")
    ]
    assert isinstance(copies[0]["seconds"], float)
    for argv, message in [
        (["--to", "nowhere"], "unknown environment 'nowhere'"),
        (["--to", "staging", "--regions", "ap-south-1"], "not a region of environment staging"),
        (["--to", "staging", "--channel", "qa"], "unknown channel 'qa'"),
        (["--to", "staging", "--channel", "dev", "--no-wait"], "drop --no-wait"),
    ]:
        result = runner.invoke(cli, [*base, "promote", ami, *argv])
        assert result.exit_code != 0
        assert isinstance(result.exception, ConfigError), result.output
        assert message in result.exception.message


def test_environment_account_must_match_the_credentials(aws: AwsClients, tmp_path: Path) -> None:
    path = tmp_path / "factory.toml"
    path.write_text(f'[environments.prod]\naccount = "{OTHER}"\nregions = ["eu-west-1"]\n')
    result = CliRunner().invoke(
        cli, ["--config", str(path), "promote", verified_image(aws), "--to", "prod"]
    )
    assert isinstance(result.exception, ConfigError)
    assert "act in account 123456789012" in result.exception.message


def test_moto_maps_an_assumed_role_to_its_account() -> None:
    """What the integration test relies on to act as two accounts against one endpoint."""
    with mock_aws():
        sts = boto3.client("sts", region_name="us-east-1")
        creds = sts.assume_role(RoleArn=ROLE, RoleSessionName="probe")["Credentials"]
        other = boto3.client(
            "sts",
            region_name="us-east-1",
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        assert other.get_caller_identity()["Account"] == OTHER
