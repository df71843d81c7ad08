"""Rollback as gather -> plan -> apply: the plan (pure), and the chain against moto in-process with
the local cloud's instance refresh answering the refresh calls moto lacks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from imagekit import register_base, register_factory_image
from moto import mock_aws
from moto.autoscaling.exceptions import AutoscalingClientError
from moto.autoscaling.responses import AutoScalingResponse
from moto.ec2.models import ec2_backends

import factory.cli
from factory import iam
from factory import tags as T
from factory.aws import AwsClients, AwsTarget, tag_list
from factory.aws.groups import Group, Refresh, TemplateRef, TemplateVersion
from factory.aws.model import Image
from factory.errors import RefusedError
from factory.localcloud.app import ActionRequest, ExtensionError
from factory.localcloud.ext_refresh.api import RefreshApi
from factory.localcloud.ext_refresh.engine import RefreshRegistry, Timing
from factory.localcloud.ext_refresh.launch_templates import patch_moto
from factory.output import Progress
from factory.rollout import (
    GroupLaunch,
    RefreshPoller,
    RefreshSettings,
    RollbackAction,
    RollbackFacts,
    RollbackPlan,
    RolloutResult,
    apply_rollback,
    apply_rollout,
    gather_rollback,
    gather_rollout,
    plan_rollback,
    plan_rollout,
    roll_back,
)

REGION = "us-east-1"
ACCOUNT = "123456789012"
SETTINGS = RefreshSettings(min_healthy=50, warmup=0)
QUIET = Progress(quiet=True)

# =============================================================================================
# the plan (pure)

AMI_1, AMI_2 = "ami-00000000000000001", "ami-00000000000000002"


def _launch(version: int = 2, named: str = "2", description: str = "", **tags: str) -> GroupLaunch:
    group = Group("web", REGION, TemplateRef("lt-1", "web", named), desired_capacity=2, tags=tags)
    return GroupLaunch(group, TemplateVersion("lt-1", "web", version, description, AMI_2))


def _facts(
    latest: Refresh | None = None,
    *,
    launch: GroupLaunch | None = None,
    previous: bool = True,
    image: Image | None = None,
) -> RollbackFacts:
    launch = launch or _launch(description="factory rollout ami-2 (ami) from version 1")
    version = TemplateVersion("lt-1", "web", 1, "", AMI_1) if previous else None
    found = image or Image(AMI_1, REGION, tags={T.STATUS: "verified"})
    return RollbackFacts(launch, latest, 1, version, AMI_1 if previous else None, found)


def _refresh(status: str, desired: str | None = "2") -> Refresh:
    return Refresh("r-1", "web", status, desired_version=desired)


@pytest.mark.parametrize("status", ["Pending", "InProgress", "Baking"])
def test_plan_reverses_an_active_refresh(status: str) -> None:
    plan = plan_rollback(_facts(_refresh(status)), SETTINGS)
    assert plan.action is RollbackAction.ROLLBACK_REFRESH
    assert (plan.refresh_id, plan.refresh_status, plan.refresh) == ("r-1", status, None)


@pytest.mark.parametrize("desired", [None, "$Latest", "$Default"])
def test_plan_refuses_a_refresh_aws_cannot_reverse(desired: str | None) -> None:
    plan = plan_rollback(_facts(_refresh("InProgress", desired)), SETTINGS)
    assert plan.refused and "cannot be rolled back by AWS" in plan.reason


@pytest.mark.parametrize("status", ["Successful", "Failed", "Cancelled", "RollbackSuccessful"])
def test_plan_refreshes_back_when_no_refresh_runs(status: str) -> None:
    plan = plan_rollback(_facts(_refresh(status)), SETTINGS)
    assert plan.action is RollbackAction.REFRESH_TO_PREVIOUS
    assert (plan.target_version, plan.ami_id, plan.current_version) == (1, AMI_1, "2")
    assert plan.refresh is not None
    assert plan.refresh.target_version == 1 and not plan.refresh.new_version
    assert plan.refresh.source == "rollback"


@pytest.mark.parametrize("status", ["Cancelling", "RollbackInProgress"])
def test_plan_refuses_while_a_refresh_is_ending(status: str) -> None:
    plan = plan_rollback(_facts(_refresh(status)), SETTINGS)
    assert plan.refused and "already has an instance refresh in progress" in plan.reason


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        (
            replace(_facts(launch=_launch(version=1, named="1")), previous_number=None),
            "no earlier launch template version",
        ),
        (_facts(previous=False), "no launch template lt-1 version 1 to go back to"),
        (_facts(launch=_launch(**{T.STATEFUL: "true"})), "--force"),
        (_facts(image=Image(AMI_1, REGION, tags={T.STATUS: "revoked"})), "revoked"),
        (_facts(image=Image(AMI_1, REGION, state="deregistered")), "does not exist"),
    ],
)
def test_plan_refuses_with_the_reason(facts: RollbackFacts, message: str) -> None:
    plan = plan_rollback(facts, SETTINGS)
    assert plan.refused and message in plan.reason


def test_plan_goes_back_to_unverified_images_and_stateful_groups_with_force() -> None:
    candidate = Image(AMI_1, REGION, tags={T.STATUS: "candidate"})
    assert not plan_rollback(_facts(image=candidate), SETTINGS).refused
    stateful = _facts(launch=_launch(**{T.STATEFUL: "true"}))
    assert not plan_rollback(stateful, SETTINGS, force=True).refused


# =============================================================================================
# the chain, in moto with the local cloud's instance refresh


def _served(handler: Callable[[ActionRequest], Any]) -> Callable[[AutoScalingResponse], str]:
    """An Auto Scaling action moto lacks, answered by the local cloud's extension."""

    def action(self: AutoScalingResponse) -> str:
        params = {key: values[0] for key, values in self.querystring.items()}
        request = ActionRequest(
            "autoscaling", self._get_action(), self.region, self.current_account, params, "query"
        )
        try:
            return handler(request).body
        except ExtensionError as exc:
            raise AutoscalingClientError(exc.code, exc.message) from None

    return action


@dataclass
class SlowImages:
    """Instance health: instances of these images never pass their checks (stay pending)."""

    images: set[str]

    def __call__(self, instance_id: str) -> str:
        instance = ec2_backends[ACCOUNT][REGION].get_instance(instance_id)
        return "pending" if instance.image_id in self.images else "ok"


@dataclass(frozen=True)
class Cloud:
    setup: AwsClients  # makes the fixtures and reads the state the tests assert on
    slow: SlowImages
    v1: str
    v2: str


@dataclass(frozen=True)
class World:
    setup: AwsClients
    stage: AwsClients  # what the stage under test calls through (its calls are counted)
    slow: SlowImages
    v1: str
    v2: str
    group: str  # also the family of its channel, {group}/prod (v2)
    template_id: str


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    """moto for the module (its EC2 backend takes seconds to make), the refresh actions served
    by the local cloud's extension, and images v1 and v2 (verified)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        with mock_aws():
            patch_moto()
            slow = SlowImages(set())
            api = RefreshApi(RefreshRegistry(health=slow, timing=Timing(tick=0.01)))
            for action, handler in [
                ("start_instance_refresh", api.start_instance_refresh),
                ("describe_instance_refreshes", api.describe_instance_refreshes),
                ("cancel_instance_refresh", api.cancel_instance_refresh),
                ("rollback_instance_refresh", api.rollback_instance_refresh),
            ]:
                patch.setattr(AutoScalingResponse, action, _served(handler), raising=False)
            setup = AwsClients(AwsTarget(REGION))
            base = register_base(setup)
            v1 = register_factory_image(setup, "web", "1", base)
            v2 = register_factory_image(setup, "web", "2", base)
            yield Cloud(setup, slow, v1, v2)


@pytest.fixture
def world(cloud: Cloud) -> World:
    """A 2-instance group of its own on launch template version 1 (v1), its channel on v2."""
    cloud.slow.images.clear()
    name = f"web-{uuid.uuid4().hex[:6]}"
    template_id = cloud.setup.client("ec2").create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={"ImageId": cloud.v1, "InstanceType": "t3.micro"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    cloud.setup.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=name,
        MinSize=0,
        MaxSize=4,
        DesiredCapacity=2,
        AvailabilityZones=[f"{REGION}a"],
        LaunchTemplate={"LaunchTemplateId": template_id, "Version": "1"},
    )
    cloud.setup.client("ssm").put_parameter(
        Name=f"/factory/{name}/prod", Value=cloud.v2, Type="String", DataType="aws:ec2:image"
    )
    stage = AwsClients(AwsTarget(REGION))
    return World(cloud.setup, stage, cloud.slow, cloud.v1, cloud.v2, name, template_id)


def _fast() -> RefreshPoller:
    return RefreshPoller(interval=0.02, max_interval=0.05)


def _state(world: World) -> dict[str, Any]:
    """What a rollback could change: the group's version, its instances, the refreshes."""
    group = world.setup.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[world.group]
    )["AutoScalingGroups"][0]
    refreshes = world.setup.client("autoscaling").describe_instance_refreshes(
        AutoScalingGroupName=world.group
    )["InstanceRefreshes"]
    versions = world.setup.client("ec2").describe_launch_template_versions(
        LaunchTemplateId=world.template_id
    )["LaunchTemplateVersions"]
    return {
        "version": group["LaunchTemplate"]["Version"],
        "instances": sorted(i["InstanceId"] for i in group["Instances"]),
        "refreshes": [(r["InstanceRefreshId"], r["Status"]) for r in refreshes],
        "template_versions": len(versions),
    }


def _images(world: World) -> set[str]:
    group = world.setup.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[world.group]
    )["AutoScalingGroups"][0]
    ids = [i["InstanceId"] for i in group["Instances"]]
    reservations = world.setup.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
    return {i["ImageId"] for r in reservations for i in r["Instances"]}


def _roll_out_channel(world: World, *, wait: bool = True) -> RolloutResult:
    facts = gather_rollout(world.stage, world.group, channel=(world.group, "prod"))
    plan = plan_rollout(facts, SETTINGS)
    return apply_rollout(plan, world.stage, QUIET, wait=wait, poller=_fast())


def _deployer_may_call(clients: AwsClients) -> None:
    """Every call the stage made is in the deployer's policy (from the gateways' @requires)."""
    deployer = next(role for role in iam.ROLES if role.name == "deployer")
    allowed = {action.partition(":")[2] for action in iam.role_actions(deployer)}
    assert set(clients.counter.calls) <= allowed


def test_dry_run_changes_nothing_then_rollback_does_what_it_planned(world: World) -> None:
    assert _roll_out_channel(world).status == "Successful"
    assert _images(world) == {world.v2}
    before = _state(world)

    plan = roll_back(world.stage, world.group, QUIET, settings=SETTINGS, dry_run=True)

    assert isinstance(plan, RollbackPlan)
    assert plan.action is RollbackAction.REFRESH_TO_PREVIOUS
    assert (plan.current_version, plan.target_version, plan.ami_id) == ("2", 1, world.v1)
    assert _state(world) == before  # nothing changed

    result = roll_back(world.stage, world.group, QUIET, settings=SETTINGS, poller=_fast())

    assert isinstance(result, RolloutResult) and result.status == "Successful"
    assert result.launch_template_version == plan.target_version
    after = _state(world)
    assert after["version"] == str(plan.target_version)
    assert after["template_versions"] == before["template_versions"]  # no version was made
    assert _images(world) == {plan.ami_id}
    _deployer_may_call(world.stage)


def test_dry_run_then_rollback_of_an_active_refresh(world: World) -> None:
    world.slow.images.add(world.v2)  # the new instances never pass: the refresh keeps running
    started = _roll_out_channel(world, wait=False)
    before = _state(world)
    assert before["refreshes"][0] == (started.refresh_id, "InProgress")

    plan = roll_back(world.stage, world.group, QUIET, dry_run=True)

    assert isinstance(plan, RollbackPlan)
    assert plan.action is RollbackAction.ROLLBACK_REFRESH
    assert plan.refresh_id == started.refresh_id
    assert _state(world)["refreshes"] == before["refreshes"]  # still running, not rolled back

    result = apply_rollback(plan, world.stage, QUIET, poller=_fast())

    assert (result.status, result.reason, result.refresh_id) == (
        "Successful",
        "rolled back",
        started.refresh_id,
    )
    assert _state(world)["refreshes"][0] == (started.refresh_id, "RollbackSuccessful")
    assert _images(world) == {world.v1}
    _deployer_may_call(world.stage)


def test_refused_plan_changes_nothing(world: World) -> None:
    before = _state(world)
    plan = plan_rollback(gather_rollback(world.stage, world.group), SETTINGS)
    assert plan.refused and "no earlier launch template version" in plan.reason
    with pytest.raises(RefusedError, match="no earlier launch template version"):
        apply_rollback(plan, world.stage, QUIET)
    assert _state(world) == before


def _factory(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command line as `factory` does: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        factory.cli.main(list(args))
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


def test_cli_dry_run_prints_the_plan_and_changes_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _roll_out_channel(world).status == "Successful"
    before = _state(world)

    code, text, err = _factory(
        capsys, "rollout", "rollback", world.group, "--dry-run", "--min-healthy", "50"
    )
    assert code == 0, err
    assert text.startswith(
        f"rollback plan for {world.group} ({REGION}): refresh back to launch template version 1 "
        f"({world.v1}); it uses version 2 now\n"
    )
    assert (
        f"  - start an instance refresh of {world.group} to version 1: 2 instance(s), min healthy 50%"
        in text
    )

    code, out, err = _factory(capsys, "rollout", "rollback", world.group, "--dry-run", "-O", "json")
    assert code == 0, err
    plan = json.loads(out)
    assert (plan["action"], plan["target_version"], plan["ami_id"]) == (
        "refresh-to-previous",
        1,
        world.v1,
    )
    assert plan["refresh"]["settings"]["min_healthy"] == 90
    assert _state(world) == before


def test_cli_dry_run_of_a_refused_rollback_exits_2(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _state(world)
    code, out, err = _factory(capsys, "rollout", "rollback", world.group, "--dry-run", "-O", "json")
    assert code == 2
    assert json.loads(out)["action"] == "refused"  # stdout is the plan, nothing else
    assert "no earlier launch template version to go back to" in err
    code, out, err = _factory(capsys, "rollout", "rollback", world.group)
    assert (code, out) == (2, "")
    assert err == f"error: {world.group} has no earlier launch template version to go back to\n"
    assert _state(world) == before


def test_cli_rollback_of_a_missing_group_names_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = _factory(capsys, "rollout", "rollback", "nope", "--dry-run")
    assert code == 2
    assert err == f"error: Auto Scaling group 'nope' not found in {REGION}\n"


def test_ssm_launch_template_image_is_resolved(world: World) -> None:
    """A version whose image is resolve:ssm: goes back to the AMI the parameter names now."""
    ec2 = world.setup.client("ec2")
    ec2.create_launch_template_version(
        LaunchTemplateId=world.template_id,
        SourceVersion="1",
        LaunchTemplateData={"ImageId": f"resolve:ssm:/factory/{world.group}/prod"},
    )
    ec2.create_launch_template_version(
        LaunchTemplateId=world.template_id,
        SourceVersion="1",
        LaunchTemplateData={"ImageId": world.v1},
        VersionDescription="factory rollout x (ami) from version 2",
    )
    world.setup.client("autoscaling").update_auto_scaling_group(
        AutoScalingGroupName=world.group,
        LaunchTemplate={"LaunchTemplateId": world.template_id, "Version": "3"},
    )
    world.setup.client("ec2").create_tags(
        Resources=[world.v2], Tags=tag_list({T.STATUS: "candidate"})
    )
    facts = gather_rollback(world.stage, world.group)
    assert (facts.previous_number, facts.previous_ami) == (2, world.v2)
    plan = plan_rollback(facts, SETTINGS)
    assert plan.action is RollbackAction.REFRESH_TO_PREVIOUS and plan.ami_id == world.v2
