"""Rollout against the local cloud with real sandboxed instances.

One module-scoped setup: images v1, v2 and a broken v3 made from the Debian base image with
CreateImage, a launch template whose user data fails on v3 (the image carries /etc/broken), and
a 4-instance group. The tests run in order: drift before, v1 -> v2 (healthy count watched while
it runs), drift after, v3 rolls back to v2 by itself, a stateful group is refused.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from imagekit import image_from_user_data, instance_health, wait_for, wait_healthy

from factory import tags as T
from factory.aws import AwsClients, AwsTarget
from factory.errors import RefusedError, VerificationError
from factory.output import Progress
from factory.rollout import (
    LiveVerdict,
    RefreshSettings,
    RolloutFailed,
    apply_rollout,
    drift,
    gather_group,
    gather_rollout,
    parse_fleet,
    plan_rollout,
)

pytestmark = [pytest.mark.integration, pytest.mark.runtime]

REPO = Path(__file__).resolve().parents[2]
FAMILY = "rolltest"
CAPACITY = 4
MIN_HEALTHY = 50
# The group's user data: fails on an image that carries /etc/broken (v3).
USER_DATA = "#!/bin/sh\nif [ -e /etc/broken ]; then echo broken image >&2; exit 3; fi\necho ok\n"


@dataclass(frozen=True)
class World:
    clients: AwsClients
    v1: str
    v2: str
    v3: str
    group: str
    template_id: str


def _make_image(clients: AwsClients, version: str, user_data: str) -> str:
    """Boot the base image, let user data change it, CreateImage, tag it verified."""
    return image_from_user_data(
        clients,
        user_data,
        f"{FAMILY}-{version}-{uuid.uuid4().hex[:6]}",
        {T.FAMILY: FAMILY, T.VERSION: version, T.STATUS: T.Status.VERIFIED.value},
    )


@pytest.fixture(scope="module")
def world(local_cloud: Any) -> Iterator[World]:
    clients = AwsClients(AwsTarget("us-east-1", endpoint_url=local_cloud.endpoint_url))
    ec2 = clients.client("ec2")
    v1 = _make_image(clients, "1", "#!/bin/sh\necho v1 > /etc/image-version\n")
    v2 = _make_image(clients, "2", "#!/bin/sh\necho v2 > /etc/image-version\n")
    v3 = _make_image(clients, "3", "#!/bin/sh\necho v3 > /etc/image-version\ntouch /etc/broken\n")
    name = f"web-{uuid.uuid4().hex[:6]}"
    template = ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={
            "ImageId": v1,
            "InstanceType": "t3.micro",
            "UserData": base64.b64encode(USER_DATA.encode()).decode(),
        },
    )["LaunchTemplate"]
    asg = clients.client("autoscaling")
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        MinSize=0,
        MaxSize=CAPACITY * 2,
        DesiredCapacity=CAPACITY,
        AvailabilityZones=["us-east-1a"],
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"], "Version": "$Latest"},
    )
    group_ids = [
        i["InstanceId"]
        for i in asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
            "AutoScalingGroups"
        ][0]["Instances"]
    ]
    wait_healthy(ec2, group_ids)
    clients.client("ssm").put_parameter(
        Name=f"/factory/{FAMILY}/prod",
        Value=v2,
        Type="String",
        DataType="aws:ec2:image",
        Overwrite=True,
    )
    yield World(clients, v1, v2, v3, name, template["LaunchTemplateId"])
    asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)


def _group_images(world: World) -> dict[str, str]:
    group = gather_group(world.clients, world.group)
    ids = [i.instance_id for i in group.instances]
    reservations = world.clients.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"]: i["ImageId"] for r in reservations for i in r["Instances"]}


def _fleet(world: World) -> Any:
    return parse_fleet(
        f'[groups.{world.group}]\nfamily = "{FAMILY}"\nchannel = "prod"\n', "fleet.toml"
    )


def _rollout(world: World, ami: str, **settings: Any) -> Any:
    plan = plan_rollout(
        gather_rollout(world.clients, world.group, ami_id=ami),
        RefreshSettings(min_healthy=MIN_HEALTHY, warmup=1, **settings),
    )
    return apply_rollout(plan, world.clients, Progress(quiet=True))


def test_drift_before(world: World) -> None:
    report = drift(_fleet(world), lambda _region: world.clients)
    (group,) = report.groups
    assert group.drifted
    assert group.channel_ami == world.v2 and group.template_ami == world.v1
    assert len(group.instances) == CAPACITY
    assert all(f"runs {world.v1}" in i.reasons[0] for i in group.instances)


def test_rollout_v1_to_v2_keeps_min_healthy(world: World) -> None:
    ec2 = world.clients.client("ec2")
    asg = world.clients.client("autoscaling")
    lowest = [CAPACITY]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[world.group])[
                "AutoScalingGroups"
            ][0]
            ids = [
                i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"
            ]
            healthy = sum(1 for v in instance_health(ec2, ids).values() if v == "ok")
            lowest[0] = min(lowest[0], healthy)
            stop.wait(0.1)  # the next look, or at once when the rollout returned

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = _rollout(world, world.v2)
    finally:
        stop.set()
        watcher.join(5)
    assert result.status == "Successful"
    images = _group_images(world)
    assert len(images) == CAPACITY
    assert set(images.values()) == {world.v2}
    # the watcher saw the replacement happen, and never below the minimum
    assert CAPACITY * MIN_HEALTHY // 100 <= lowest[0] < CAPACITY
    group = gather_group(world.clients, world.group)
    assert group.version == str(result.launch_template_version)  # a number, not $Latest
    # only ImageId changed: the user data came along from the source version
    version = ec2.describe_launch_template_versions(
        LaunchTemplateId=world.template_id, Versions=[group.version]
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert version["ImageId"] == world.v2
    assert base64.b64decode(version["UserData"]).decode() == USER_DATA


def test_drift_after(world: World) -> None:
    report = drift(_fleet(world), lambda _region: world.clients)
    assert not report.drifted, report


def test_broken_v3_rolls_back_to_v2(world: World) -> None:
    before = gather_group(world.clients, world.group).version
    with pytest.raises(RolloutFailed, match="rolled back") as failure:
        _rollout(world, world.v3)
    assert "now:" in failure.value.message
    images = _group_images(world)
    assert len(images) == CAPACITY
    assert set(images.values()) == {world.v2}
    assert gather_group(world.clients, world.group).version == before
    refresh = world.clients.client("autoscaling").describe_instance_refreshes(
        AutoScalingGroupName=world.group
    )["InstanceRefreshes"][0]
    assert refresh["Status"] == "RollbackSuccessful"
    assert "impaired" in refresh["RollbackDetails"]["RollbackReason"]


def test_stateful_group_refused(world: World) -> None:
    asg = world.clients.client("autoscaling")
    asg.create_or_update_tags(
        Tags=[
            {
                "ResourceId": world.group,
                "ResourceType": "auto-scaling-group",
                "Key": T.STATEFUL,
                "Value": "true",
                "PropagateAtLaunch": False,
            }
        ]
    )
    try:
        facts = gather_rollout(world.clients, world.group, ami_id=world.v1)
        with pytest.raises(RefusedError, match="stateful"):
            plan_rollout(facts, RefreshSettings())
        cli = subprocess.run(
            [str(REPO / ".venv" / "bin" / "factory"), "rollout", world.group, "--ami", world.v1],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=60,
            check=False,
        )
        assert cli.returncode == 2, cli.stderr
        assert "factory:stateful=true" in cli.stderr and "--force" in cli.stderr
        assert set(_group_images(world).values()) == {world.v2}  # nothing was touched
    finally:
        asg.delete_tags(
            Tags=[
                {
                    "ResourceId": world.group,
                    "ResourceType": "auto-scaling-group",
                    "Key": T.STATEFUL,
                }
            ]
        )


# --- the command line: --no-wait, status, rollback, Ctrl-C, --channel, --fleet ----------------


def _factory(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "factory"), *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rollout", "status", "no-such-group"), "Auto Scaling group 'no-such-group' not found"),
        (("rollout", "rollback", "no-such-group"), "Auto Scaling group 'no-such-group' not found"),
        (("rollout", "some-group", "--channel", f"{FAMILY}/bogus"), "unknown channel 'bogus'"),
    ],
)
def test_cli_bad_names_are_one_line_usage_errors(
    world: World, args: tuple[str, ...], message: str
) -> None:
    proc = _factory(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _latest(world: World) -> dict[str, Any]:
    return dict(
        world.clients.client("autoscaling").describe_instance_refreshes(
            AutoScalingGroupName=world.group
        )["InstanceRefreshes"][0]
    )


def test_cli_no_wait_then_rollback_while_in_progress(world: World) -> None:
    started = _factory(
        "rollout",
        world.group,
        "--ami",
        world.v1,
        "--min-healthy",
        "50",
        "--warmup",
        "3",
        "--no-wait",
    )
    assert started.returncode == 0, started.stderr
    refresh_id = started.stdout.splitlines()[0]
    assert _latest(world)["InstanceRefreshId"] == refresh_id
    assert _latest(world)["Status"] in ("Pending", "InProgress")
    back = _factory("rollout", "rollback", world.group)
    assert back.returncode == 0, back.stderr
    assert _latest(world)["InstanceRefreshId"] == refresh_id
    assert _latest(world)["Status"] == "RollbackSuccessful"
    assert set(_group_images(world).values()) == {world.v2}
    status = _factory("rollout", "status", world.group, "-O", "json")
    assert status.returncode == 0, status.stderr
    assert f'"refresh_id": "{refresh_id}"' in status.stdout
    assert '"status": "RollbackSuccessful"' in status.stdout


def test_cli_rollback_dry_run_changes_nothing_then_goes_to_previous_version(
    world: World,
) -> None:
    before = (
        gather_group(world.clients, world.group).version,
        _group_images(world),
        _latest(world),
    )
    text = _factory("rollout", "rollback", world.group, "--dry-run", "--min-healthy", "50")
    dry = _factory("rollout", "rollback", world.group, "--dry-run", "-O", "json")
    assert text.returncode == 0 and dry.returncode == 0, text.stderr + dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["action"] == "refresh-to-previous" and plan["ami_id"] == world.v1
    assert f"refresh back to launch template version {plan['target_version']}" in text.stdout
    assert f"it uses version {before[0]} now" in text.stdout
    after = (gather_group(world.clients, world.group).version, _group_images(world), _latest(world))
    assert after == before  # the dry runs changed nothing

    back = _factory("rollout", "rollback", world.group, "--min-healthy", "50", "--warmup", "0")
    assert back.returncode == 0, back.stderr
    assert set(_group_images(world).values()) == {world.v1}
    # what the plan said: a refresh back to its version, which the group now names
    assert gather_group(world.clients, world.group).version == str(plan["target_version"])
    assert _latest(world)["DesiredConfiguration"]["LaunchTemplate"]["Version"] == str(
        plan["target_version"]
    )
    report = drift(_fleet(world), lambda _region: world.clients)
    assert report.drifted  # the channel still says v2


def test_ctrl_c_without_a_terminal_cancels(world: World) -> None:
    proc = subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "factory"),
            "rollout",
            world.group,
            "--channel",
            f"{FAMILY}/prod",
            "--min-healthy",
            "50",
            "--warmup",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
    )
    progress: list[str] = []  # the command's stderr, line by line as it comes
    reader = threading.Thread(target=_collect, args=(proc.stderr, progress), daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: _first_batch_warming(world, proc, progress),
            60,
            "the first batch to warm up while the command follows the refresh",
        )
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(10)
    err = "".join(progress)
    assert proc.returncode == 130, err
    assert "cancelling the refresh" in err
    assert _latest(world)["Status"] == "Cancelled"
    assert len(_group_images(world)) == CAPACITY


def _collect(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line)


def _first_batch_warming(world: World, proc: subprocess.Popen[str], progress: list[str]) -> bool:
    """The command is in its wait loop (it printed the refresh's progress) and the refresh has
    launched its first batch (instances on the new version, warming up for 30 s)."""
    assert proc.poll() is None, "".join(progress)
    if not any("replaced" in line for line in progress):
        return False
    try:
        refresh = _latest(world)
    except IndexError:
        return False
    desired = refresh.get("DesiredConfiguration", {}).get("LaunchTemplate", {}).get("Version")
    group = gather_group(world.clients, world.group)
    return (
        refresh["Status"] == "InProgress"
        and desired != group.version
        and any(i.template_version == desired for i in group.instances)
    )


def test_cli_fleet_reconciles_drift(world: World, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f"[defaults]\nmin_healthy = 50\nwarmup = 0\n\n"
        f'[groups.{world.group}]\nfamily = "{FAMILY}"\nchannel = "prod"\n'
    )
    before = _factory("drift", "--fleet", str(fleet), "--exit-code")
    assert before.returncode == 1 and "DRIFT" in before.stdout
    reconciled = _factory("rollout", "--fleet", str(fleet), "--parallel", "2")
    assert reconciled.returncode == 0, reconciled.stderr
    assert set(_group_images(world).values()) == {world.v2}
    after = _factory("drift", "--fleet", str(fleet), "--exit-code", "-O", "json")
    assert after.returncode == 0, after.stdout


@pytest.mark.parametrize("how", ["tests fail", "cannot verify"])
def test_verify_live_failure_rolls_back(world: World, how: str) -> None:
    assert set(_group_images(world).values()) == {world.v2}
    checked: list[tuple[str, str]] = []

    def failing_suite(_clients: AwsClients, instance_id: str, ami_id: str) -> LiveVerdict:
        checked.append((instance_id, ami_id))
        if how == "cannot verify":
            raise VerificationError(f"SSH at {instance_id} keeps refusing the key")
        return LiveVerdict(False, "1 passed, 1 failed on it; failing: test_x.py::test_y")

    expected = "test_x\\.py::test_y" if how == "tests fail" else "could not verify .*refusing"
    plan = plan_rollout(
        gather_rollout(world.clients, world.group, ami_id=world.v1),
        RefreshSettings(min_healthy=MIN_HEALTHY, warmup=0),
    )
    with pytest.raises(RolloutFailed, match=rf"live verification failed.*{expected}"):
        apply_rollout(plan, world.clients, Progress(quiet=True), verify_live=failing_suite)
    ((instance_id, ami_id),) = checked
    assert ami_id == world.v1
    assert instance_id not in _group_images(world)  # it was replaced again
    assert set(_group_images(world).values()) == {world.v2}
