"""The fleet file and drift (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from factory import tags as T
from factory.errors import ConfigError
from factory.fleet import (
    FleetGroup,
    GroupState,
    load_fleet,
    parse_fleet,
    plan_drift,
    render_drift,
)
from factory.rollout import GroupFacts, ImageFacts, InstanceFacts, RefreshSettings

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


def _facts(*instances: str) -> GroupFacts:
    return GroupFacts(
        "web-prod",
        "lt-1",
        "web",
        "3",
        3,
        GOOD,
        "",
        len(instances),
        {},
        tuple(InstanceFacts(i, "InService", "Healthy", "3") for i in instances),
    )


def _state(template: str, amis: dict[str, str], channel: str | None = GOOD) -> GroupState:
    return GroupState(
        FleetGroup("web-prod", "web", "prod"), "us-east-1", channel, _facts(*amis), template, amis
    )


IMAGES = {
    GOOD: ImageFacts(GOOD, True, tags={T.STATUS: "verified"}),
    OLD: ImageFacts(
        OLD, True, tags={T.STATUS: "verified"}, deprecation_time="2026-01-01T00:00:00Z"
    ),
    BAD: ImageFacts(BAD, True, tags={T.STATUS: "revoked"}),
}


def test_no_drift() -> None:
    report = plan_drift([_state(GOOD, {"i-1": GOOD, "i-2": GOOD})], IMAGES, now=NOW)
    assert not report.drifted
    assert "0 of 1 group(s) drifted" in render_drift(report)


def test_drift_by_template_instance_revoked_and_retired() -> None:
    report = plan_drift(
        [_state(OLD, {"i-1": GOOD, "i-2": OLD, "i-3": BAD, "i-4": "ami-gone"})],
        {**IMAGES, "ami-gone": ImageFacts("ami-gone", exists=False)},
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
