"""Channels: SSM parameters with history, refusals and rollback (moto in-process)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from imagekit import register_base, register_factory_image

from factory import tags as T
from factory.aws import AwsClients, tag_list
from factory.channels import (
    ChannelChange,
    ChannelPlan,
    ChannelVersion,
    channel_targets,
    rollback_channel,
    rollback_target,
    set_channel,
    show_channels,
)
from factory.cli import cli
from factory.errors import ConfigError, RefusedError

CHANNELS = ("dev", "staging", "prod")


def _v(version: int, ami: str, action: str = "set", to: int | None = None) -> ChannelVersion:
    return ChannelVersion(version, ami, None, "me", "", action, to)


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([_v(2, "b"), _v(1, "a")], 1),
        ([_v(3, "c"), _v(2, "b"), _v(1, "a")], 2),
        # a rollback's position is the version it restored: walk back, do not toggle
        ([_v(3, "a", "rollback", 1), _v(2, "b"), _v(1, "a")], None),
        ([_v(4, "b", "rollback", 2), _v(3, "c"), _v(2, "b"), _v(1, "a")], 1),
        ([_v(3, "b"), _v(2, "b"), _v(1, "a")], 1),  # same AMI set twice: skip it
    ],
)
def test_rollback_target(history: list[ChannelVersion], expected: int | None) -> None:
    if expected is None:
        with pytest.raises(RefusedError, match="no earlier AMI"):
            rollback_target(history)
    else:
        assert rollback_target(history).version == expected


def test_set_writes_an_ec2_image_parameter_with_who_when_why(aws: AwsClients) -> None:
    ami = register_factory_image(aws, "web", "1.0", register_base(aws))
    change = set_channel(aws, CHANNELS, "web", "dev", ami, reason="first release")
    assert isinstance(change, ChannelChange) and change.changed and change.version == 1
    param = aws.client("ssm").get_parameter(Name="/factory/web/dev")["Parameter"]
    assert param["Value"] == ami and param["DataType"] == "aws:ec2:image"
    history = aws.client("ssm").get_parameter_history(Name="/factory/web/dev")["Parameters"]
    note = json.loads(history[0]["Description"])
    assert note["reason"] == "first release" and note["action"] == "set"
    assert note["by"].startswith("arn:aws:") and note["at"].startswith(str(datetime.now(UTC).year))
    again = set_channel(aws, CHANNELS, "web", "dev", ami)
    assert isinstance(again, ChannelChange) and not again.changed and again.version == 1


def test_dry_run_changes_nothing(aws: AwsClients) -> None:
    ami = register_factory_image(aws, "web", "1.0", register_base(aws))
    plan = set_channel(aws, CHANNELS, "web", "dev", ami, dry_run=True)
    assert isinstance(plan, ChannelPlan) and plan.previous_ami is None
    assert channel_targets(aws, CHANNELS) == {}


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (T.Status.CANDIDATE, "is candidate, not verified"),
        (T.Status.FAILED, "is failed, not verified"),
        (T.Status.BUILDING, "is building, not verified"),
        (T.Status.REVOKED, "is revoked"),
    ],
)
def test_set_refuses_unpublishable(aws: AwsClients, status: T.Status, message: str) -> None:
    ami = register_factory_image(aws, "web", "1.0", register_base(aws), status=status)
    with pytest.raises(RefusedError, match=message):
        set_channel(aws, CHANNELS, "web", "prod", ami)
    assert channel_targets(aws, CHANNELS) == {}


def test_set_refuses_revoked_even_if_tagged_verified(aws: AwsClients) -> None:
    ami = register_factory_image(aws, "web", "1.0", register_base(aws))
    aws.client("ec2").create_tags(
        Resources=[ami],
        Tags=tag_list({T.REVOKED_AT: "2026-01-01T00:00:00Z", T.REVOKED_REASON: "bad openssl"}),
    )
    with pytest.raises(RefusedError, match=r"revoked \(bad openssl\)"):
        set_channel(aws, CHANNELS, "web", "prod", ami)


def test_set_refuses_other_family_and_unknown_channel(aws: AwsClients) -> None:
    ami = register_factory_image(aws, "db", "1.0", register_base(aws))
    with pytest.raises(RefusedError, match="belongs to family db"):
        set_channel(aws, CHANNELS, "web", "prod", ami)
    with pytest.raises(ConfigError, match="unknown channel 'qa'"):
        set_channel(aws, CHANNELS, "db", "qa", ami)
    with pytest.raises(ConfigError, match="not found"):
        set_channel(aws, CHANNELS, "db", "dev", "ami-0000dead")


def test_rollback_walks_back_and_show_tells_the_story(aws: AwsClients) -> None:
    base = register_base(aws)
    a, b, c = (register_factory_image(aws, "web", v, base) for v in ("1", "2", "3"))
    for ami in (a, b, c):
        set_channel(aws, CHANNELS, "web", "prod", ami, reason=f"release {ami}")
    first = rollback_channel(aws, CHANNELS, "web", "prod", reason="bad release")
    assert isinstance(first, ChannelChange)
    assert (first.previous_ami, first.ami_id, first.version) == (c, b, 4)
    second = rollback_channel(aws, CHANNELS, "web", "prod")
    assert isinstance(second, ChannelChange) and second.ami_id == a
    with pytest.raises(RefusedError, match="no earlier AMI"):
        rollback_channel(aws, CHANNELS, "web", "prod")
    assert channel_targets(aws, CHANNELS) == {("web", "prod"): a}
    (state,) = show_channels(aws, CHANNELS, "web")
    assert [(v.version, v.ami_id, v.action) for v in state.history] == [
        (5, a, "rollback"),
        (4, b, "rollback"),
        (3, c, "set"),
        (2, b, "set"),
        (1, a, "set"),
    ]
    assert state.history[1].reason == "bad release" and state.history[1].rollback_to == 2
    assert state.history[0].reason == "rollback to version 1"


def test_rollback_of_an_unset_channel_names_it_and_the_fix(aws: AwsClients) -> None:
    with pytest.raises(RefusedError) as info:
        rollback_channel(aws, CHANNELS, "web", "prod")
    assert info.value.message.startswith("/factory/web/prod was never set")
    assert "factory channel set web prod AMI_ID" in info.value.message


def test_rollback_refuses_a_revoked_previous_image(aws: AwsClients) -> None:
    base = register_base(aws)
    a, b = (register_factory_image(aws, "web", v, base) for v in ("1", "2"))
    set_channel(aws, CHANNELS, "web", "prod", a)
    set_channel(aws, CHANNELS, "web", "prod", b)
    aws.client("ec2").create_tags(Resources=[a], Tags=tag_list({T.STATUS: "revoked"}))
    with pytest.raises(RefusedError, match=r"cannot roll back to version 1: .* is revoked"):
        rollback_channel(aws, CHANNELS, "web", "prod")
    assert channel_targets(aws, CHANNELS) == {("web", "prod"): b}


def test_show_and_targets_across_families(aws: AwsClients) -> None:
    base = register_base(aws)
    web = register_factory_image(aws, "web", "1", base)
    db = register_factory_image(aws, "db", "1", base)
    set_channel(aws, CHANNELS, "web", "prod", web)
    set_channel(aws, CHANNELS, "web", "dev", web)
    set_channel(aws, CHANNELS, "db", "staging", db)
    aws.client("ssm").put_parameter(Name="/factory/web/notachannel", Value="x", Type="String")
    states = show_channels(aws, CHANNELS)
    assert [(s.family, s.channel) for s in states] == [
        ("db", "staging"),
        ("web", "dev"),
        ("web", "prod"),
    ]
    assert channel_targets(aws, CHANNELS, ["web"]) == {("web", "dev"): web, ("web", "prod"): web}


def test_show_refuses_a_negative_history(aws: AwsClients) -> None:
    result = CliRunner().invoke(cli, ["channel", "show", "-n", "-1"])
    assert result.exit_code == 2
    assert "-1 is not in the range x>=0" in result.output
