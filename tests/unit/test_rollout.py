"""Rollout plans (pure): refusals, pinning, the refresh preferences, polling, batch bound."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from factory import tags as T
from factory.aws.groups import Group, GroupInstance, Refresh, TemplateRef, TemplateVersion
from factory.aws.model import Image
from factory.cli import cli
from factory.errors import ConfigError, RefusedError
from factory.rollout import (
    GroupLaunch,
    RefreshPoller,
    RefreshSettings,
    RolloutFacts,
    RolloutFailed,
    RolloutPlan,
    RolloutResult,
    batch_bound,
    estimated_total,
    live_detail,
    plan_rollout,
    plan_steps,
    previous_version,
    raise_if_failed,
)
from factory.rollout.wait import POLL_LAG, POLL_MAX
from factory.verify import Outcome, VerifyResult

AMI_OLD = "ami-0000000000000old"
AMI_NEW = "ami-0000000000000new"


def _group(
    *,
    template_id: str | None = "lt-1",
    version: str | None = "3",
    version_number: int | None = 3,
    version_image: str | None = AMI_OLD,
    version_description: str = "",
    tags: dict[str, str] | None = None,
    instances: tuple[GroupInstance, ...] | None = None,
) -> GroupLaunch:
    """A 4-instance group running launch template lt-1 version 3 (or what the changes say)."""
    members = instances or tuple(
        GroupInstance(f"i-{n}", "InService", "Healthy", "3") for n in range(4)
    )
    group = Group(
        name="web",
        region="us-east-1",
        template=TemplateRef(template_id, "web", version) if version is not None else None,
        desired_capacity=4,
        tags=tags or {},
        instances=members,
    )
    running = (
        TemplateVersion(str(template_id), "web", version_number, version_description, version_image)
        if version_number is not None
        else None
    )
    return GroupLaunch(group, running)


def _image(status: str | None = "verified", **tags: str) -> Image:
    image_tags = {T.FAMILY: "web", **tags}
    if status is not None:
        image_tags[T.STATUS] = status
    return Image(AMI_NEW, "us-east-1", name="web-2", tags=image_tags)


def _plan(
    group: GroupLaunch,
    image: Image | None,
    settings: RefreshSettings | None = None,
    **options: Any,
) -> RolloutPlan:
    source = options.pop("source", "ami")
    facts = RolloutFacts(group, AMI_NEW, image, source)
    return plan_rollout(facts, settings or RefreshSettings(), **options)


def test_plan_creates_a_version_and_refreshes_everything() -> None:
    plan = _plan(_group(), _image())
    assert plan.new_version and not plan.pin_current and not plan.up_to_date
    assert plan.current_number == 3
    assert plan.instances_to_replace == 4
    assert plan.settings.auto_rollback
    assert any("version from 3 with ImageId" in a for a in plan_steps(plan))


@pytest.mark.parametrize("version", ["$Latest", "$Default"])
def test_plan_pins_latest_and_default(version: str) -> None:
    plan = _plan(_group(version=version), _image())
    assert plan.pin_current
    assert any("pin web to launch template lt-1 version 3" in a for a in plan_steps(plan))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (_image(status="candidate"), "not verified"),
        (_image(status=None), "factory:status=missing"),
        (_image(status="failed"), "not verified"),
        (_image(status="revoked"), "revoked"),
        (_image(**{T.REVOKED_AT: "2026-01-01T00:00:00Z", T.REVOKED_REASON: "CVE-1"}), "CVE-1"),
        (None, "does not exist"),
        (replace(_image(), state="deregistered"), "does not exist"),
        (replace(_image(), deprecation_time=datetime(2020, 1, 1, tzinfo=UTC)), "retired"),
    ],
)
def test_plan_refuses_images(image: Image | None, message: str) -> None:
    with pytest.raises(RefusedError, match=message):
        _plan(_group(), image)


def test_future_deprecation_is_fine() -> None:
    image = replace(_image(), deprecation_time=datetime(2999, 1, 1, tzinfo=UTC))
    assert _plan(_group(), image).new_version


@pytest.mark.parametrize("value", ["true", "True", " TRUE "])
def test_stateful_group_refused_without_force(value: str) -> None:
    group = _group(tags={T.STATEFUL: value})
    with pytest.raises(RefusedError, match="--force"):
        _plan(group, _image())
    assert _plan(group, _image(), force=True).new_version


def test_stateful_false_is_not_stateful() -> None:
    _plan(_group(tags={T.STATEFUL: "false"}), _image())


def test_group_without_launch_template_refused() -> None:
    group = _group(template_id=None, version=None, version_number=None, version_image=None)
    with pytest.raises(RefusedError, match="launch template"):
        _plan(group, _image())


def test_up_to_date_when_every_instance_runs_the_image() -> None:
    group = _group(version_image=AMI_NEW)
    plan = _plan(group, _image())
    assert plan.up_to_date and not plan.new_version
    assert plan_steps(plan) == ("web: already runs ami-0000000000000new everywhere; nothing to do",)


def test_same_image_but_stragglers_refreshes_them_only() -> None:
    instances = (
        GroupInstance("i-1", "InService", "Healthy", "3"),
        GroupInstance("i-2", "InService", "Healthy", "2"),
    )
    plan = _plan(_group(version_image=AMI_NEW, instances=instances), _image())
    assert not plan.up_to_date and not plan.new_version
    assert plan.target_version == 3 and plan.instances_to_replace == 1


def test_ssm_image_turns_auto_rollback_off_with_a_warning() -> None:
    group = _group(version_image="resolve:ssm:/factory/web/prod")
    plan = _plan(group, _image())
    assert not plan.settings.auto_rollback
    assert any("cannot roll back" in w for w in plan.warnings)


def test_rollback_plan_targets_an_existing_version() -> None:
    plan = _plan(
        _group(),
        _image(status="candidate"),
        target_version=2,
        allow_unverified=True,
        source="rollback",
    )
    assert not plan.new_version and plan.target_version == 2


def test_preferences_structure() -> None:
    settings = RefreshSettings(
        min_healthy=50,
        max_healthy=150,
        warmup=30,
        checkpoints=(20, 50, 100),
        checkpoint_delay=60,
        alarms=("errors",),
        skip_matching=False,
    )
    assert settings.preferences() == {
        "MinHealthyPercentage": 50,
        "MaxHealthyPercentage": 150,
        "SkipMatching": False,
        "AutoRollback": True,
        "InstanceWarmup": 30,
        "CheckpointPercentages": [20, 50, 100],
        "CheckpointDelay": 60,
        "AlarmSpecification": {"Alarms": ["errors"]},
    }
    assert "InstanceWarmup" not in RefreshSettings().preferences()


@pytest.mark.parametrize(
    "settings",
    [
        RefreshSettings(min_healthy=101),
        RefreshSettings(max_healthy=99),
        RefreshSettings(min_healthy=40, max_healthy=150),
        RefreshSettings(checkpoints=(50, 20)),
        RefreshSettings(checkpoints=(0,)),
        RefreshSettings(checkpoint_delay=10),
    ],
)
def test_settings_rejected(settings: RefreshSettings) -> None:
    with pytest.raises(ConfigError):
        settings.check()


@pytest.mark.parametrize(
    ("capacity", "minimum", "maximum", "batches"),
    [(8, 50, 100, 2), (8, 90, 100, 8), (4, 0, 100, 1), (4, 100, 150, 2), (8, 100, 100, 8)],
)
def test_batch_bound(capacity: int, minimum: int, maximum: int, batches: int) -> None:
    assert batch_bound(capacity, minimum, maximum) == batches


def test_previous_version_from_description_else_minus_one() -> None:
    noted = _group(version_description="factory rollout ami-x (ami) from version 7")
    assert previous_version(noted) == 7
    assert previous_version(_group()) == 2
    assert previous_version(_group(version_number=1)) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_poller_never_more_than_once_a_second_and_backs_off() -> None:
    fake = FakeClock()
    poller = RefreshPoller(clock=fake.clock, sleep=fake.sleep)
    for _ in range(200):
        poller.wait()
        fake.calls.append(fake.now)
        poller.saw("same")
    gaps = [b - a for a, b in zip(fake.calls, fake.calls[1:], strict=False)]
    assert min(gaps) >= 1.0
    assert gaps[:15] == [1.0] * 15  # a short refresh is followed every second
    assert gaps[-1] == pytest.approx(POLL_MAX)  # a long one backs off to the ceiling
    for at, gap in zip(fake.calls, gaps, strict=False):
        assert gap <= max(1.0, POLL_LAG * at) + 1e-9  # never late by more than 5% of the time
    poller.saw("changed")
    before = fake.now
    poller.wait()
    assert fake.now - before == pytest.approx(1.0)  # progress: back to one a second


def test_refresh_status_from_api() -> None:
    status = Refresh.from_api(
        {
            "InstanceRefreshId": "r-1",
            "AutoScalingGroupName": "web",
            "Status": "RollbackSuccessful",
            "PercentageComplete": 50,
            "InstancesToUpdate": 2,
            "DesiredConfiguration": {
                "LaunchTemplate": {"LaunchTemplateId": "lt-1", "Version": "4"}
            },
            "RollbackDetails": {"RollbackReason": "impaired", "PercentageCompleteOnRollback": 100},
        }
    )
    assert not status.active and status.desired_version == "4"
    assert status.rollback_reason == "impaired" and status.rollback_percentage == 100


def test_failed_result_raises_with_what_was_restored() -> None:
    result = RolloutResult(
        "web",
        "r",
        AMI_NEW,
        "r-1",
        "RollbackSuccessful",
        "instance i-9 impaired",
        restored="web uses launch template lt-1 version 3; instances: 4 on ami-old",
    )
    with pytest.raises(RolloutFailed, match="rolled back: instance i-9 impaired; now: web uses"):
        raise_if_failed(result)
    raise_if_failed(replace(result, status="Successful"))
    raise_if_failed(replace(result, status="Pending", waited=False))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ssh-key", "k"], "go with --verify-live"),
        (["--ssh-user", "ubuntu"], "go with --verify-live"),
        (["--verify-live", "--no-wait"], "drop --no-wait"),
        (["--verify-live", "--ssh-key", "/nonexistent/key"], "no such file"),
    ],
)
def test_cli_verify_live_bad_input_is_refused_before_any_call(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no endpoint at all: any AWS call would fail with a different message
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    result = CliRunner().invoke(
        cli, ["rollout", "web", "--ami", "ami-1", *args], standalone_mode=False
    )
    assert isinstance(result.exception, ConfigError), result.output
    assert message in result.exception.message


def test_cli_verify_live_refuses_a_file_that_is_not_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    bogus = tmp_path / "id_rsa"
    bogus.write_text("not a key\n")
    result = CliRunner().invoke(
        cli,
        ["rollout", "web", "--ami", "ami-1", "--verify-live", "--ssh-key", str(bogus)],
        standalone_mode=False,
    )
    assert isinstance(result.exception, ConfigError)
    assert "is not an SSH private key" in result.exception.message


def test_live_detail_names_the_failures_and_the_results() -> None:
    failed = VerifyResult(
        ami_id=AMI_NEW,
        region="us-east-1",
        family="web",
        outcome=Outcome.FAILED,
        passed=30,
        failed=2,
        skipped=3,
        failing_tests=("test_app.py::test_listens", "test_app.py::test_config"),
        instance_id="i-1",
        junit_path=Path("/r/junit.xml"),
    )
    detail = live_detail(failed)
    assert detail.startswith("30 passed, 2 failed, 3 skipped on i-1")
    assert "failing: test_app.py::test_listens, test_app.py::test_config" in detail
    assert detail.endswith("junit: /r/junit.xml")
    errored = replace(failed, outcome=Outcome.ERROR, error="SSH at 10.0.0.1 refused the key")
    assert live_detail(errored) == "could not verify i-1: SSH at 10.0.0.1 refused the key"


def test_cli_rollout_defaults_to_start() -> None:
    result = CliRunner().invoke(cli, ["rollout", "web"], standalone_mode=False)
    assert isinstance(result.exception, ConfigError)
    assert "--ami AMI or --channel" in result.exception.message
    fleet_and_group = CliRunner().invoke(
        cli, ["rollout", "web", "--fleet", "fleet.toml"], standalone_mode=False
    )
    assert "drop ASG" in fleet_and_group.exception.message  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("percentage", "left", "total"), [(0, 4, 4), (50, 2, 4), (25, 6, 8), (100, 0, 0)]
)
def test_estimated_total(percentage: int, left: int, total: int) -> None:
    state = Refresh("r", "g", "InProgress", "", percentage, left)
    assert estimated_total(state) == total
