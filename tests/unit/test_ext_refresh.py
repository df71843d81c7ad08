"""The local cloud's instance refresh: the batch arithmetic (pure) and the engine against moto
in-process, with requests serialised and responses parsed by botocore (the query protocol as
boto3 speaks it) and instance health from a fake runtime."""

from __future__ import annotations

import dataclasses
import os
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.parsers
import botocore.serialize
import botocore.session
import pytest
from botocore import xform_name
from imagekit import wait_for
from moto import mock_aws
from moto.ec2.models import ec2_backends

from factory.localcloud.app import ActionRequest, ExtensionError
from factory.localcloud.ext_refresh import batches as B
from factory.localcloud.ext_refresh import fleet
from factory.localcloud.ext_refresh.api import RefreshApi
from factory.localcloud.ext_refresh.engine import RefreshRegistry, Timing
from factory.localcloud.ext_refresh.launch_templates import patch_moto
from factory.localcloud.ext_refresh.record import TERMINAL, LaunchSpec

ACCOUNT = "123456789012"
REGION = "us-east-1"
MODEL = botocore.session.get_session().get_service_model("autoscaling")


# =============================================================================================
# pure batch logic


@pytest.mark.parametrize(
    ("capacity", "percent", "expected"),
    [(4, 50, 2), (4, 90, 4), (10, 90, 9), (3, 50, 2), (8, 0, 0), (8, 100, 8), (0, 90, 0)],
)
def test_min_healthy_rounds_up(capacity: int, percent: int, expected: int) -> None:
    assert B.min_healthy_count(capacity, percent) == expected


@pytest.mark.parametrize(
    ("capacity", "minimum", "maximum", "expected"),
    [
        (4, 50, 100, 2),  # terminate 2, launch 2
        (8, 50, 100, 4),
        (4, 100, 100, 1),  # AWS: 100% replaces one at a time
        (4, 0, 100, 4),  # 0%: all at once
        (4, 100, 150, 2),  # launch 2 before terminating
        (10, 90, 100, 1),
        (10, 90, 110, 2),
        (3, 50, 100, 1),
    ],
)
def test_batch_size(capacity: int, minimum: int, maximum: int, expected: int) -> None:
    assert B.batch_size(capacity, minimum, maximum) == expected


@pytest.mark.parametrize(
    ("situation", "given", "expected"),
    [
        (
            "terminate_first_keeps_the_minimum",
            {
                "remaining": 4,
                "capacity": 4,
                "current_total": 4,
                "healthy": 4,
                "min_percent": 50,
                "max_percent": 100,
                "cap": 4,
            },
            B.BatchStep(terminate_now=2, launch=2, terminate_later=0),
        ),
        (
            "launch_before_terminate_within_the_maximum",
            {
                "remaining": 4,
                "capacity": 4,
                "current_total": 4,
                "healthy": 4,
                "min_percent": 100,
                "max_percent": 150,
                "cap": 4,
            },
            B.BatchStep(terminate_now=0, launch=2, terminate_later=2),
        ),
        # 8 may go up to 12 and down to 4: batch of 8 = 4 launched on top + 4 terminated first
        (
            "mixes_both_with_room_and_slack",
            {
                "remaining": 8,
                "capacity": 8,
                "current_total": 8,
                "healthy": 8,
                "min_percent": 50,
                "max_percent": 150,
                "cap": 8,
            },
            B.BatchStep(terminate_now=4, launch=8, terminate_later=4),
        ),
        (
            "replaces_unhealthy_first_without_spending_slack",
            {
                "remaining": 4,
                "capacity": 4,
                "current_total": 4,
                "healthy": 2,
                "min_percent": 50,
                "max_percent": 100,
                "cap": 4,
                "unhealthy": 2,
            },
            B.BatchStep(terminate_now=2, launch=2, terminate_later=0),
        ),
        (
            "one_at_a_time_when_nothing_may_drop",
            {
                "remaining": 3,
                "capacity": 4,
                "current_total": 4,
                "healthy": 4,
                "min_percent": 100,
                "max_percent": 100,
                "cap": 3,
            },
            B.BatchStep(terminate_now=1, launch=1, terminate_later=0),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_plan_batch(situation: str, given: dict[str, int], expected: B.BatchStep) -> None:
    assert B.plan_batch(**given) == expected, situation


def test_plan_batch_stops_at_checkpoint() -> None:
    step = B.plan_batch(
        remaining=10,
        capacity=10,
        current_total=10,
        healthy=10,
        min_percent=0,
        max_percent=100,
        cap=2,
    )
    assert step.launch == 2


@pytest.mark.parametrize(
    ("total", "checkpoints", "done", "cap", "reached"),
    [
        (10, (20, 50, 100), 0, 2, None),
        (10, (20, 50, 100), 2, 5, 20),
        (10, (20, 50, 100), 5, 10, 50),
        (4, (20,), 0, 1, None),  # 20% of 4 rounds up to one instance
        (4, (), 0, 4, None),
        (10, (20, 50, 100), 10, 10, None),  # 100% is the end, not a pause
    ],
)
def test_checkpoints(
    total: int, checkpoints: tuple[int, ...], done: int, cap: int, reached: int | None
) -> None:
    assert B.checkpoint_cap(total, checkpoints, done) == cap
    assert B.reached_checkpoint(total, checkpoints, done) == reached


def test_percentage_complete() -> None:
    assert B.percentage_complete(1, 3) == 33
    assert B.percentage_complete(0, 0) == 100


# =============================================================================================
# the engine in moto


@dataclass
class FakeHealth:
    """Instance health by image: bad images come up impaired (their user data failed)."""

    ec2: Any
    bad_images: set[str] = field(default_factory=set)
    slow_images: set[str] = field(default_factory=set)  # stay "pending" forever

    def __call__(self, instance_id: str) -> str:
        instance = self.ec2.get_instance(instance_id)
        if instance.image_id in self.bad_images:
            return "impaired"
        if instance.image_id in self.slow_images:
            return "pending"
        return "ok"


def _call(action: str, params: dict[str, Any], handler: Callable[[ActionRequest], Any]) -> Any:
    """Serialise `params` as boto3 would, run the handler, parse its XML as boto3 would."""
    operation = MODEL.operation_model(action)
    request = botocore.serialize.create_serializer("query").serialize_to_request(params, operation)
    body = request["body"]
    form = body if isinstance(body, dict) else dict(urllib.parse.parse_qsl(body))
    response = handler(ActionRequest("autoscaling", action, REGION, ACCOUNT, form, "query"))
    parsed = botocore.parsers.create_parser("query").parse(
        {"body": response.body.encode(), "headers": {}, "status_code": 200},
        operation.output_shape,
    )
    parsed.pop("ResponseMetadata", None)
    return parsed


@dataclass
class Cloud:
    ec2: Any
    asg: Any
    ssm: Any
    amis: list[str]
    template_id: str
    health: FakeHealth
    events: list[tuple[str, int, int]]  # (what, count, in-service healthy count after)
    prefix: str  # the backends live for the module: each test names its own groups
    api: RefreshApi  # the handlers, with this test's registry

    def name(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def group(self, name: str = "g") -> Any:
        return self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name(name)])[
            "AutoScalingGroups"
        ][0]

    def instances_by_image(self, name: str = "g") -> dict[str, int]:
        ids = [i["InstanceId"] for i in self.group(name)["Instances"]]
        out: dict[str, int] = {}
        for reservation in self.ec2.describe_instances(InstanceIds=ids)["Reservations"]:
            for instance in reservation["Instances"]:
                out[instance["ImageId"]] = out.get(instance["ImageId"], 0) + 1
        return out

    def start(self, name: str = "g", version: str = "2", **prefs: Any) -> str:
        started = self.call(
            "StartInstanceRefresh",
            name,
            DesiredConfiguration={
                "LaunchTemplate": {"LaunchTemplateId": self.template_id, "Version": version}
            },
            Preferences={"InstanceWarmup": 0, **prefs},
        )
        return str(started["InstanceRefreshId"])

    def call(self, action: str, name: str = "g", **params: Any) -> Any:
        handler = getattr(self.api, xform_name(action))
        return _call(action, {"AutoScalingGroupName": self.name(name), **params}, handler)

    def describe(self, name: str = "g") -> dict[str, Any]:
        refreshes = self.call("DescribeInstanceRefreshes", name)["InstanceRefreshes"]
        return dict(refreshes[0])

    def until(
        self, condition: Callable[[dict[str, Any]], bool], what: str, name: str = "g"
    ) -> dict[str, Any]:
        """The group's newest refresh, once `condition` holds for it."""
        return wait_for(
            lambda: refresh if condition(refresh := self.describe(name)) else None,
            timeout=20.0,
            interval=0.02,
            what=lambda: f"{what} (the refresh now: {self.describe(name)})",
        )

    def wait(self, name: str = "g") -> dict[str, Any]:
        return self.until(lambda r: r["Status"] in TERMINAL, "the refresh to end", name)


@dataclass(frozen=True)
class Aws:
    ec2: Any
    asg: Any
    ssm: Any
    amis: list[str]
    backend: Any


@pytest.fixture(scope="module")
def aws() -> Iterator[Aws]:
    """moto for the whole module (creating its EC2 backend costs seconds), without its
    default AMIs: three images of our own."""
    saved = {k: os.environ.get(k) for k in ("MOTO_EC2_LOAD_DEFAULT_AMIS", "AWS_ENDPOINT_URL")}
    os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"
    # the session's local cloud fixture exports AWS_ENDPOINT_URL: boto3 would go there
    os.environ.pop("AWS_ENDPOINT_URL", None)
    try:
        with mock_aws():
            patch_moto()
            ec2 = boto3.client("ec2", REGION)
            amis = [
                ec2.register_image(
                    Name=f"web-{i}", RootDeviceName="/dev/xvda", Architecture="x86_64"
                )["ImageId"]
                for i in range(3)
            ]
            yield Aws(
                ec2,
                boto3.client("autoscaling", REGION),
                boto3.client("ssm", REGION),
                amis,
                ec2_backends[ACCOUNT][REGION],
            )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def cloud(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    ec2, amis = aws.ec2, aws.amis
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{prefix}web",
        LaunchTemplateData={
            "ImageId": amis[0],
            "InstanceType": "t3.micro",
            "UserData": "ZWNobyBvaw==",
        },
    )["LaunchTemplate"]["LaunchTemplateId"]
    for ami in amis[1:]:
        ec2.create_launch_template_version(
            LaunchTemplateId=template, SourceVersion="1", LaunchTemplateData={"ImageId": ami}
        )
    health = FakeHealth(aws.backend)
    api = RefreshApi(RefreshRegistry(health=health, timing=Timing(tick=0.01)))
    events: list[tuple[str, int, int]] = []
    state = Cloud(ec2, aws.asg, aws.ssm, amis, template, health, events, prefix, api)

    def _healthy(group: Any) -> int:
        return sum(
            1
            for s in group.instance_states
            if s.lifecycle_state == "InService" and health(s.instance.id) == "ok"
        )

    real_launch, real_terminate = fleet.launch, fleet.terminate

    def launch(group: Any, spec: LaunchSpec, count: int) -> list[str]:
        ids = real_launch(group, spec, count)
        events.append(("launch", count, _healthy(group)))
        return ids

    def terminate(group: Any, ids: Any, detached: threading.Event | None = None) -> None:
        if not ids:
            real_terminate(group, ids, detached)
            return
        if detached is None:
            real_terminate(group, ids)
            events.append(("terminate", len(ids), _healthy(group)))
            return
        outer = detached

        class Recorder(threading.Event):
            """Records the healthy count the moment the instances leave the group (the
            replacements are launched right after, in parallel with the termination)."""

            def set(self) -> None:
                events.append(("terminate", len(ids), _healthy(group)))
                outer.set()

        real_terminate(group, ids, Recorder())

    monkeypatch.setattr(fleet, "launch", launch)
    monkeypatch.setattr(fleet, "terminate", terminate)
    yield state
    for refresh in [r for rs in api.registry.refreshes.values() for r in rs]:
        with refresh.lock:
            refresh.cancel_requested = True  # stop engines a failed test left running


def _group(cloud: Cloud, name: str = "g", capacity: int = 4, version: str = "1") -> None:
    cloud.asg.create_auto_scaling_group(
        AutoScalingGroupName=cloud.name(name),
        MinSize=0,
        MaxSize=capacity * 2,
        DesiredCapacity=capacity,
        AvailabilityZones=["us-east-1a"],
        LaunchTemplate={"LaunchTemplateId": cloud.template_id, "Version": version},
    )


def test_refresh_replaces_in_batches_keeping_min_healthy(cloud: Cloud) -> None:
    _group(cloud)
    cloud.start(MinHealthyPercentage=50, AutoRollback=True)
    refresh = cloud.wait()
    assert refresh["Status"] == "Successful"
    assert refresh["PercentageComplete"] == 100 and refresh["InstancesToUpdate"] == 0
    assert cloud.instances_by_image() == {cloud.amis[1]: 4}
    assert cloud.events == [
        ("terminate", 2, 2),
        ("launch", 2, 4),
        ("terminate", 2, 2),
        ("launch", 2, 4),
    ]
    group = cloud.group()
    assert group["LaunchTemplate"]["Version"] == "2"  # the desired configuration, on success
    assert {i["LaunchTemplate"]["Version"] for i in group["Instances"]} == {"2"}
    assert refresh["Preferences"]["MinHealthyPercentage"] == 50
    assert refresh["DesiredConfiguration"]["LaunchTemplate"]["Version"] == "2"


def test_version_with_new_user_data_from_a_source_version_launches(cloud: Cloud) -> None:
    """A version made from SourceVersion with new user data (as an operator fixes a launch
    configuration) launches replacements, and carries that user data."""
    fixed = cloud.ec2.create_launch_template_version(
        LaunchTemplateId=cloud.template_id,
        SourceVersion="1",
        LaunchTemplateData={"UserData": "ZWNobyBmaXhlZA=="},  # echo fixed
    )["LaunchTemplateVersion"]["VersionNumber"]
    ours = cloud.ec2.create_launch_template_version(
        LaunchTemplateId=cloud.template_id,
        SourceVersion=str(fixed),
        LaunchTemplateData={"ImageId": cloud.amis[1]},
    )["LaunchTemplateVersion"]["VersionNumber"]
    _group(cloud, capacity=2, version=str(fixed))
    cloud.start(version=str(ours), MinHealthyPercentage=50)
    refresh = cloud.wait()
    assert refresh["Status"] == "Successful", refresh.get("StatusReason")
    assert cloud.instances_by_image() == {cloud.amis[1]: 2}
    data = cloud.ec2.describe_launch_template_versions(
        LaunchTemplateId=cloud.template_id, Versions=[str(ours)]
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["UserData"] == "ZWNobyBmaXhlZA=="


def test_launch_before_terminate_stays_within_max(cloud: Cloud) -> None:
    _group(cloud)
    cloud.start(MinHealthyPercentage=100, MaxHealthyPercentage=150)
    assert cloud.wait()["Status"] == "Successful"
    assert cloud.instances_by_image() == {cloud.amis[1]: 4}
    assert cloud.events == [
        ("launch", 2, 6),
        ("terminate", 2, 4),
        ("launch", 2, 6),
        ("terminate", 2, 4),
    ]
    assert min(healthy for _what, _n, healthy in cloud.events) >= 4


def test_warmup_delays_the_next_batch(cloud: Cloud) -> None:
    """A healthy replacement is counted, and the next batch starts, only after its warmup (how
    long that takes is measured in bench/refresh.py, not asserted here)."""
    _group(cloud, capacity=2)
    cloud.start(MinHealthyPercentage=50, InstanceWarmup=1)
    warming = cloud.until(lambda r: "warmup" in r.get("StatusReason", ""), "the first warmup")
    assert warming["StatusReason"] == "Replacing: waiting for instance warmup (1 s)."
    assert warming["Status"] == "InProgress" and warming["PercentageComplete"] == 0
    assert [what for what, _n, _healthy in cloud.events] == ["terminate", "launch"]
    assert cloud.wait()["Status"] == "Successful"
    assert cloud.events == [
        ("terminate", 1, 1),
        ("launch", 1, 2),
        ("terminate", 1, 1),
        ("launch", 1, 2),
    ]


def test_checkpoint_pauses_with_reason(cloud: Cloud) -> None:
    _group(cloud)
    cloud.start(MinHealthyPercentage=50, CheckpointPercentages=[50, 100], CheckpointDelay=1)
    seen = cloud.until(lambda r: "checkpoint" in r.get("StatusReason", ""), "the checkpoint")
    assert seen["PercentageComplete"] == 50
    assert seen["Status"] == "InProgress"
    assert cloud.wait()["Status"] == "Successful"


def test_skip_matching_leaves_instances_on_the_desired_version(cloud: Cloud) -> None:
    _group(cloud, capacity=2, version="2")
    cloud.asg.update_auto_scaling_group(
        AutoScalingGroupName=cloud.name("g"),
        DesiredCapacity=4,
        LaunchTemplate={"LaunchTemplateId": cloud.template_id, "Version": "1"},
    )
    assert cloud.instances_by_image() == {cloud.amis[1]: 2, cloud.amis[0]: 2}
    cloud.events.clear()
    cloud.start(MinHealthyPercentage=50, SkipMatching=True)
    assert cloud.wait()["Status"] == "Successful"
    assert cloud.instances_by_image() == {cloud.amis[1]: 4}
    assert sum(n for what, n, _ in cloud.events if what == "launch") == 2


def test_impaired_replacement_rolls_back_automatically(cloud: Cloud) -> None:
    _group(cloud)
    cloud.health.bad_images.add(cloud.amis[2])
    cloud.start(version="3", MinHealthyPercentage=50, AutoRollback=True)
    refresh = cloud.wait()
    assert refresh["Status"] == "RollbackSuccessful"
    assert "impaired" in refresh["RollbackDetails"]["RollbackReason"]
    assert refresh["RollbackDetails"]["PercentageCompleteOnRollback"] == 100
    assert cloud.instances_by_image() == {cloud.amis[0]: 4}
    assert cloud.group()["LaunchTemplate"]["Version"] == "1"
    # never fewer than 2 healthy: the impaired ones were replaced first, the rest kept
    assert min(healthy for _what, _n, healthy in cloud.events) >= 2


def test_impaired_replacement_without_rollback_fails(cloud: Cloud) -> None:
    _group(cloud)
    cloud.health.bad_images.add(cloud.amis[2])
    cloud.start(version="3", MinHealthyPercentage=50)
    refresh = cloud.wait()
    assert refresh["Status"] == "Failed"
    assert "impaired" in refresh["StatusReason"]
    assert "RollbackDetails" not in refresh
    assert cloud.group()["LaunchTemplate"]["Version"] == "1"  # the group is not updated


def test_replacement_never_healthy_times_out(cloud: Cloud) -> None:
    registry = cloud.api.registry
    registry.timing = dataclasses.replace(registry.timing, health_timeout=0.3)
    _group(cloud, capacity=2)
    cloud.health.slow_images.add(cloud.amis[1])
    cloud.start(MinHealthyPercentage=50, AutoRollback=True)
    refresh = cloud.wait()
    assert refresh["Status"] == "RollbackSuccessful"
    assert "did not become healthy" in refresh["RollbackDetails"]["RollbackReason"]
    assert cloud.instances_by_image() == {cloud.amis[0]: 2}


def test_alarm_fails_and_rolls_back(cloud: Cloud) -> None:
    cw = boto3.client("cloudwatch", REGION)
    alarm = cloud.name("errors")
    cw.put_metric_alarm(
        AlarmName=alarm,
        MetricName="5xx",
        Namespace="web",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanThreshold",
    )
    cw.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="test")
    _group(cloud)
    cloud.start(MinHealthyPercentage=50, AutoRollback=True, AlarmSpecification={"Alarms": [alarm]})
    refresh = cloud.wait()
    assert refresh["Status"] == "RollbackSuccessful"
    assert alarm in refresh["RollbackDetails"]["RollbackReason"]
    assert cloud.instances_by_image() == {cloud.amis[0]: 4}


def test_cancel(cloud: Cloud) -> None:
    _group(cloud)
    cloud.start(MinHealthyPercentage=50, InstanceWarmup=2)
    cloud.until(lambda r: "warmup" in r.get("StatusReason", ""), "the first batch warming up")
    cancelled = cloud.call("CancelInstanceRefresh")
    refresh = cloud.wait()
    assert refresh["InstanceRefreshId"] == cancelled["InstanceRefreshId"]
    assert refresh["Status"] == "Cancelled"
    assert sum(cloud.instances_by_image().values()) == 4  # capacity kept; nothing rolled back
    with pytest.raises(ExtensionError) as error:
        cloud.call("CancelInstanceRefresh")
    assert error.value.code == "ActiveInstanceRefreshNotFound"


def test_rollback_api_restores_previous_configuration(cloud: Cloud) -> None:
    _group(cloud)
    cloud.start(MinHealthyPercentage=50, InstanceWarmup=1)
    cloud.until(lambda r: "warmup" in r.get("StatusReason", ""), "the first batch warming up")
    cloud.call("RollbackInstanceRefresh")
    refresh = cloud.wait()
    assert refresh["Status"] == "RollbackSuccessful"
    assert refresh["RollbackDetails"]["RollbackReason"] == "Rollback initiated by user."
    assert cloud.instances_by_image() == {cloud.amis[0]: 4}


def test_rollback_refused_for_latest(cloud: Cloud) -> None:
    _group(cloud, version="$Latest")
    with pytest.raises(ExtensionError, match=r"\$Latest") as error:
        cloud.start(AutoRollback=True)
    assert error.value.code == "ValidationError"
    cloud.start(version="3", InstanceWarmup=1)
    cloud.until(lambda r: r["Status"] == "InProgress", "the refresh in progress")
    with pytest.raises(ExtensionError) as error:
        cloud.call("RollbackInstanceRefresh")
    assert error.value.code == "IrreversibleInstanceRefresh"


def test_one_refresh_at_a_time(cloud: Cloud) -> None:
    _group(cloud)
    cloud.start(InstanceWarmup=2)
    with pytest.raises(ExtensionError) as error:
        cloud.start()
    assert error.value.code == "InstanceRefreshInProgress"


@pytest.mark.parametrize(
    ("prefs", "message"),
    [
        ({"MinHealthyPercentage": 40, "MaxHealthyPercentage": 150}, "difference"),
        ({"StandbyInstances": "Sometimes"}, "Terminate|Ignore|Wait"),
        ({"CheckpointPercentages": [50, 20]}, "ascending"),
        ({"CheckpointDelay": 10}, "requires CheckpointPercentages"),
    ],
)
def test_invalid_preferences(cloud: Cloud, prefs: dict[str, Any], message: str) -> None:
    _group(cloud)
    with pytest.raises(ExtensionError, match=message):
        cloud.start(**prefs)


@pytest.mark.parametrize(
    ("mode", "protected_replaced"),
    [("Refresh", True), ("Ignore", False)],
)
def test_scale_in_protected(cloud: Cloud, mode: str, protected_replaced: bool) -> None:
    _group(cloud)
    first = cloud.group()["Instances"][0]["InstanceId"]
    cloud.asg.set_instance_protection(
        AutoScalingGroupName=cloud.name("g"), InstanceIds=[first], ProtectedFromScaleIn=True
    )
    cloud.start(MinHealthyPercentage=50, ScaleInProtectedInstances=mode)
    assert cloud.wait()["Status"] == "Successful"
    ids = {i["InstanceId"] for i in cloud.group()["Instances"]}
    assert (first not in ids) is protected_replaced
    expected = {cloud.amis[1]: 4} if protected_replaced else {cloud.amis[1]: 3, cloud.amis[0]: 1}
    assert cloud.instances_by_image() == expected


def test_scale_in_protected_wait(cloud: Cloud) -> None:
    _group(cloud)
    first = cloud.group()["Instances"][0]["InstanceId"]
    cloud.asg.set_instance_protection(
        AutoScalingGroupName=cloud.name("g"), InstanceIds=[first], ProtectedFromScaleIn=True
    )
    cloud.start(MinHealthyPercentage=50)  # Wait is the default
    cloud.until(lambda r: "protected" in r.get("StatusReason", ""), "the wait")
    assert cloud.describe()["Status"] == "InProgress"
    cloud.asg.set_instance_protection(
        AutoScalingGroupName=cloud.name("g"), InstanceIds=[first], ProtectedFromScaleIn=False
    )
    assert cloud.wait()["Status"] == "Successful"
    assert cloud.instances_by_image() == {cloud.amis[1]: 4}


def test_scale_in_protected_wait_times_out(cloud: Cloud) -> None:
    registry = cloud.api.registry
    registry.timing = dataclasses.replace(registry.timing, wait_timeout=0.3)
    _group(cloud, capacity=2)
    first = cloud.group()["Instances"][0]["InstanceId"]
    cloud.asg.set_instance_protection(
        AutoScalingGroupName=cloud.name("g"), InstanceIds=[first], ProtectedFromScaleIn=True
    )
    cloud.start(MinHealthyPercentage=50)
    refresh = cloud.wait()
    assert refresh["Status"] == "Failed" and "protection" in refresh["StatusReason"]


@pytest.mark.parametrize(("mode", "standby_kept"), [("Terminate", False), ("Ignore", True)])
def test_standby_instances(cloud: Cloud, mode: str, standby_kept: bool) -> None:
    _group(cloud)
    first = cloud.group()["Instances"][0]["InstanceId"]
    cloud.asg.enter_standby(
        AutoScalingGroupName=cloud.name("g"),
        InstanceIds=[first],
        ShouldDecrementDesiredCapacity=True,
    )
    cloud.start(MinHealthyPercentage=50, StandbyInstances=mode)
    assert cloud.wait()["Status"] == "Successful"
    ids = {i["InstanceId"] for i in cloud.group()["Instances"]}
    assert (first in ids) is standby_kept
    in_service = [i for i in cloud.group()["Instances"] if i["LifecycleState"] == "InService"]
    assert len(in_service) == 3
    assert all(i["LaunchTemplate"]["Version"] == "2" for i in in_service)


# =============================================================================================
# moto patches


def test_resolve_ssm_image_at_launch(cloud: Cloud) -> None:
    cloud.ssm.put_parameter(
        Name="/factory/web/prod",
        Value=cloud.amis[2],
        Type="String",
        DataType="aws:ec2:image",
        Overwrite=True,
    )
    template = cloud.ec2.create_launch_template(
        LaunchTemplateName=cloud.name("ssm"),
        LaunchTemplateData={"ImageId": "resolve:ssm:/factory/web/prod", "InstanceType": "t3.micro"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    cloud.asg.create_auto_scaling_group(
        AutoScalingGroupName=cloud.name("s"),
        MinSize=0,
        MaxSize=2,
        DesiredCapacity=2,
        AvailabilityZones=["us-east-1a"],
        LaunchTemplate={"LaunchTemplateId": template, "Version": "1"},
    )
    assert cloud.instances_by_image("s") == {cloud.amis[2]: 2}
    direct = cloud.ec2.run_instances(
        MinCount=1, MaxCount=1, LaunchTemplate={"LaunchTemplateId": template}
    )["Instances"][0]
    assert direct["ImageId"] == cloud.amis[2]
    stored = cloud.ec2.describe_launch_template_versions(LaunchTemplateId=template)[
        "LaunchTemplateVersions"
    ][0]["LaunchTemplateData"]["ImageId"]
    assert stored == "resolve:ssm:/factory/web/prod"  # resolved at launch, stored as written


def test_source_version_inherits_settings(cloud: Cloud) -> None:
    version = cloud.ec2.describe_launch_template_versions(
        LaunchTemplateId=cloud.template_id, Versions=["2"]
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert version == {
        "ImageId": cloud.amis[1],
        "InstanceType": "t3.micro",
        "UserData": "ZWNobyBvaw==",
    }


def test_describe_pages_newest_first(cloud: Cloud) -> None:
    _group(cloud, capacity=1)
    first = cloud.start()
    cloud.wait()
    second = cloud.start(version="3")
    cloud.wait()
    everything = cloud.call("DescribeInstanceRefreshes")["InstanceRefreshes"]
    assert [r["InstanceRefreshId"] for r in everything] == [second, first]
    page = cloud.call("DescribeInstanceRefreshes", MaxRecords=1)
    assert [r["InstanceRefreshId"] for r in page["InstanceRefreshes"]] == [second]
    assert page["NextToken"]
    only = cloud.call("DescribeInstanceRefreshes", InstanceRefreshIds=[first])["InstanceRefreshes"]
    assert [r["InstanceRefreshId"] for r in only] == [first]


def test_concurrent_groups_do_not_interfere(cloud: Cloud) -> None:
    _group(cloud, name="a")
    _group(cloud, name="b")
    threads = [
        threading.Thread(target=cloud.start, kwargs={"name": n, "MinHealthyPercentage": 50})
        for n in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cloud.wait("a")["Status"] == cloud.wait("b")["Status"] == "Successful"
    assert cloud.instances_by_image("a") == cloud.instances_by_image("b") == {cloud.amis[1]: 4}
