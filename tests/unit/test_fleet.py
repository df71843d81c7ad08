"""The fleet file, drift and the reconcile plan (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from factory import tags as T
from factory.aws.groups import Group, GroupInstance, TemplateRef, TemplateVersion
from factory.aws.model import Image
from factory.cli.rollout import render_drift
from factory.errors import ConfigError
from factory.output import Progress
from factory.rollout import (
    FleetFacts,
    FleetGroup,
    GroupLaunch,
    GroupState,
    RefreshSettings,
    apply_reconcile,
    load_fleet,
    parse_fleet,
    plan_drift,
    plan_reconcile,
    plan_steps,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
GOOD, OLD, BAD = "ami-good", "ami-old", "ami-bad"

FLEET = """
[defaults]
min_healthy = 50
warmup = 30

[groups.web-prod]
family = "web"
channel = "prod"

[groups.api-staging]
family = "api"
channel = "staging"
region = "eu-west-1"
min_healthy = 90
checkpoints = [50, 100]
"""

WEB = "[groups.web]\nfamily = 'web'\nchannel = 'prod'\n"


def test_parse_fleet() -> None:
    fleet = parse_fleet(FLEET, "fleet.toml", ("dev", "staging", "prod"))
    api, web = fleet.groups
    assert (web.name, web.family, web.channel, web.region) == ("web-prod", "web", "prod", None)
    assert api.region == "eu-west-1"
    settings = api.refresh_settings(RefreshSettings())
    assert (settings.min_healthy, settings.warmup, settings.checkpoints) == (90, 30, (50, 100))
    assert web.refresh_settings(RefreshSettings()).min_healthy == 50


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[groups.web]\nfamily = 'web'\n", "channel is required"),
        ("[groups.web]\nfamily = 'web'\nchannel = 'nightly'\n", "unknown channel 'nightly'"),
        ("[groups.web]\nfamily = 'web'\nchannel = 'prod'\ncolour = 1\n", "unknown key"),
        ("[groups.web]\nfamily = 'web'\nchannel = 'prod'\nwarmup = 'x'\n", "whole number"),
        ("[group.web]\n", "unknown table"),
        ("", "no groups"),
        ("[groups.web\n", "not valid TOML"),
        (
            "[defaults]\nmin_healthy = 150\n" + WEB,
            r"\[defaults\]: min_healthy must be between 0 and 100",
        ),
        (WEB + "max_healthy = 99\n", "max_healthy must be between 100 and 200"),
        (WEB + "warmup = -5\n", "warmup must be at least 0"),
        (WEB + "checkpoint_delay = -1\n", "checkpoint_delay must be at least 0"),
        (WEB + "checkpoints = [50, 20]\n", "ascending percentages"),
        (WEB + "checkpoints = [0, 100]\n", "ascending percentages"),
        (WEB + "min_healthy = true\n", "whole number"),
        (WEB + "region = 'eu west'\n", "'eu west' is not an AWS region"),
    ],
)
def test_parse_fleet_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_fleet(text, "fleet.toml", ("dev", "staging", "prod"))


def _facts(*instances: str, name: str = "web-prod") -> GroupLaunch:
    group = Group(
        name,
        "us-east-1",
        TemplateRef("lt-1", "web", "3"),
        desired_capacity=len(instances),
        instances=tuple(GroupInstance(i, "InService", "Healthy", "3") for i in instances),
    )
    return GroupLaunch(group, TemplateVersion("lt-1", "web", 3, "", GOOD))


def _state(template: str, amis: dict[str, str], channel: str | None = GOOD) -> GroupState:
    return GroupState(
        FleetGroup("web-prod", "web", "prod"), "us-east-1", channel, _facts(*amis), template, amis
    )


IMAGES: dict[str, Image | None] = {
    GOOD: Image(GOOD, "us-east-1", tags={T.STATUS: "verified"}),
    OLD: Image(
        OLD,
        "us-east-1",
        tags={T.STATUS: "verified"},
        deprecation_time=datetime(2026, 1, 1, tzinfo=UTC),
    ),
    BAD: Image(BAD, "us-east-1", tags={T.STATUS: "revoked"}),
}


def test_no_drift() -> None:
    report = plan_drift([_state(GOOD, {"i-1": GOOD, "i-2": GOOD})], IMAGES, now=NOW)
    assert not report.drifted
    assert "0 of 1 group(s) drifted" in render_drift(report)


def test_drift_by_template_instance_revoked_and_retired() -> None:
    report = plan_drift(
        [_state(OLD, {"i-1": GOOD, "i-2": OLD, "i-3": BAD, "i-4": "ami-gone"})],
        {**IMAGES, "ami-gone": None},
        now=NOW,
    )
    (group,) = report.drifted
    assert group.reasons == ("launch template runs ami-old, channel web/prod has ami-good",)
    reasons = {i.instance_id: i.reasons for i in group.instances}
    assert reasons["i-1"] == ()
    assert reasons["i-2"] == (
        "runs ami-old, channel has ami-good",
        "ami-old is retired (deprecated)",
    )
    assert reasons["i-3"] == ("runs ami-bad, channel has ami-good", "ami-bad is revoked")
    assert reasons["i-4"] == (
        "runs ami-gone, channel has ami-good",
        "ami-gone is retired (deregistered)",
    )
    text = render_drift(report)
    assert "DRIFT web-prod" in text and "i-3: runs ami-bad" in text


def test_revoked_channel_image_is_drift() -> None:
    report = plan_drift([_state(BAD, {"i-1": BAD}, channel=BAD)], IMAGES, now=NOW)
    (group,) = report.drifted
    assert group.reasons == ("channel image ami-bad is revoked",)


def test_missing_group_or_channel_is_reported() -> None:
    state = GroupState(
        FleetGroup("gone", "web", "prod"),
        "us-east-1",
        None,
        None,
        None,
        {},
        error="channel web/prod is not set",
    )
    (group,) = plan_drift([state], IMAGES, now=NOW).drifted
    assert group.error == "channel web/prod is not set"


def test_unreadable_fleet_files_are_config_errors(tmp_path: Path) -> None:
    binary = tmp_path / "fleet.toml"
    binary.write_bytes(b"\x81\xff")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_fleet(binary)
    with pytest.raises(ConfigError, match="pass --fleet a TOML file"):
        load_fleet(tmp_path)


def test_deregistered_image_is_retired() -> None:
    gone = Image("ami-gone", "us-east-1", state="deregistered")
    report = plan_drift([_state(GOOD, {"i-1": "ami-gone"})], {**IMAGES, "ami-gone": gone}, now=NOW)
    (instance,) = report.groups[0].instances
    assert "ami-gone is retired (deregistered)" in instance.reasons


def test_reconcile_plans_each_drifted_group_and_keeps_refusals_in_order() -> None:
    """The fleet's dry run reports the very plans a run applies; refusals become errors."""
    stateful = _facts("i-2", name="b")
    stateful = replace(stateful, group=replace(stateful.group, tags={T.STATEFUL: "true"}))
    states = (
        GroupState(
            FleetGroup("a", "web", "prod"), "us-east-1", GOOD, _facts("i-1", name="a"), OLD, {}
        ),
        GroupState(FleetGroup("b", "web", "prod"), "us-east-1", GOOD, stateful, OLD, {}),
        GroupState(
            FleetGroup("c", "web", "prod"), "us-east-1", None, None, None, {}, error="not set"
        ),
        GroupState(
            FleetGroup("d", "web", "prod"), "us-east-1", GOOD, _facts("i-4", name="d"), GOOD, {}
        ),
    )
    plan = plan_reconcile(FleetFacts("fleet.toml", states, IMAGES), RefreshSettings(), now=NOW)
    assert [(g.group, g.plan is not None) for g in plan.groups] == [("a", True), ("b", False)]
    assert "--force" in str(plan.groups[1].refused)
    assert plan.errors == ("c: not set",)

    def no_clients(_region: str | None) -> Any:
        raise AssertionError("a dry run makes no call")

    result = apply_reconcile(plan, no_clients, Progress(quiet=True), dry_run=True)
    (dry,) = result.rollouts
    assert (dry.group, dry.status, dry.ami_id) == ("a", "DryRun", GOOD)
    first = plan.groups[0].plan
    assert first is not None and dry.reason == "; ".join(plan_steps(first))
    assert result.errors[0] == "c: not set" and result.errors[1].startswith("b: b is tagged")
