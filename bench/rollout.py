"""Benchmark: roll an 8-instance group from image v1 to v2 with real sandboxed instances.

    .venv/bin/python -m bench.rollout [--instances 8] [--min-healthy 50] [--warmup 5]

Starts a local cloud with the instance runtime in a temporary directory, makes images v1 and
v2 from the Debian base image (CreateImage), creates a launch template and an Auto Scaling group
of N instances on v1, measures the boot time of a batch (RunInstances of a batch's worth of
instances until every status check is ok, median of 3), then times `apply_rollout` (launch
template version, instance refresh, waiting) to v2.

Targets: total <= 1.2 x the batch bound, batches x (boot + warmup), where batches is what
MinHealthyPercentage allows (8 instances at 50%: 2); polling at most one call a second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory import tags as T
from factory.aws import AwsClients, AwsTarget, tag_list
from factory.localcloud import control
from factory.localcloud.baseimage import DEBIAN_12_NAME_PATTERN, DEBIAN_OWNER_ID
from factory.output import Progress
from factory.rollout import (
    RefreshPoller,
    RefreshSettings,
    apply_rollout,
    batch_bound,
    gather_rollout,
    plan_rollout,
)

REGION = "us-east-1"
REPO = Path(__file__).resolve().parent.parent
IMAGE_CACHE = Path(
    os.environ.get("FACTORY_LOCAL_IMAGE_CACHE", REPO / ".factory" / "cache" / "images")
)


@dataclass
class RecordingPoller(RefreshPoller):
    """The rollout's poller, remembering when each poll happened."""

    polls: list[float] = field(default_factory=list)

    def wait(self) -> None:
        super().wait()
        self.polls.append(time.monotonic())


def _health(ec2: Any, ids: list[str]) -> dict[str, str]:
    statuses = ec2.describe_instance_status(InstanceIds=ids, IncludeAllInstances=True)[
        "InstanceStatuses"
    ]
    return {s["InstanceId"]: s["InstanceStatus"]["Status"] for s in statuses}


def _until_ok(ec2: Any, ids: list[str], timeout: float = 120.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(v == "ok" for v in _health(ec2, ids).values()) and len(_health(ec2, ids)) == len(
            ids
        ):
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"instances {ids} not ok within {timeout} s")


def _boot(ec2: Any, ami: str, count: int) -> float:
    started = time.monotonic()
    ids = [
        i["InstanceId"]
        for i in ec2.run_instances(ImageId=ami, MinCount=count, MaxCount=count)["Instances"]
    ]
    _until_ok(ec2, ids)
    seconds = time.monotonic() - started
    ec2.terminate_instances(InstanceIds=ids)
    return seconds


def _image(clients: AwsClients, base: str, version: str) -> str:
    ec2 = clients.client("ec2")
    instance = ec2.run_instances(
        ImageId=base,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        UserData=f"#!/bin/sh\necho {version} > /etc/image-version\n",
    )["Instances"][0]["InstanceId"]
    _until_ok(ec2, [instance])
    ami = ec2.create_image(InstanceId=instance, Name=f"bench-{version}", NoReboot=True)["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance])
    ec2.create_tags(
        Resources=[ami],
        Tags=tag_list({T.FAMILY: "bench", T.VERSION: version, T.STATUS: "verified"}),
    )
    return str(ami)


def run(instances: int, min_healthy: int, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        status = control.up(Path(tmp) / "lc", instances=True, image_cache=IMAGE_CACHE)
        saved = dict(os.environ)
        try:
            os.environ.update(control.env_vars(status, REGION))
            clients = AwsClients(AwsTarget(REGION, endpoint_url=status.endpoint_url))
            ec2 = clients.client("ec2")
            base = ec2.describe_images(
                Owners=[DEBIAN_OWNER_ID],
                Filters=[{"Name": "name", "Values": [DEBIAN_12_NAME_PATTERN]}],
            )["Images"][0]["ImageId"]
            v1, v2 = _image(clients, base, "1"), _image(clients, base, "2")
            # boot time: a batch of v1 instances launched at once, RunInstances until every
            # status check is ok (the median of 3); one instance alone, for reference
            batch = instances - math.ceil(instances * min_healthy / 100) or 1
            boots = sorted(_boot(ec2, v1, batch) for _ in range(3))
            boot = boots[1]
            boot_single = _boot(ec2, v1, 1)
            template = ec2.create_launch_template(
                LaunchTemplateName="bench",
                LaunchTemplateData={"ImageId": v1, "InstanceType": "t3.micro"},
            )["LaunchTemplate"]["LaunchTemplateId"]
            asg = clients.client("autoscaling")
            asg.create_auto_scaling_group(
                AutoScalingGroupName="bench",
                MinSize=0,
                MaxSize=instances * 2,
                DesiredCapacity=instances,
                AvailabilityZones=[f"{REGION}a"],
                LaunchTemplate={"LaunchTemplateId": template, "Version": "1"},
            )
            ids = [
                i["InstanceId"]
                for i in asg.describe_auto_scaling_groups(AutoScalingGroupNames=["bench"])[
                    "AutoScalingGroups"
                ][0]["Instances"]
            ]
            _until_ok(ec2, ids)
            settings = RefreshSettings(min_healthy=min_healthy, warmup=warmup)
            plan = plan_rollout(gather_rollout(clients, "bench", ami_id=v2), settings)
            poller = RecordingPoller()
            calls_before = dict(clients.counter.calls)
            started = time.monotonic()
            result = apply_rollout(plan, clients, Progress(quiet=True), poller=poller)
            total = time.monotonic() - started
            refresh = asg.describe_instance_refreshes(AutoScalingGroupName="bench")[
                "InstanceRefreshes"
            ][0]
            refresh_s = (refresh["EndTime"] - refresh["StartTime"]).total_seconds()
            calls = {
                op: n - calls_before.get(op, 0)
                for op, n in clients.counter.calls.items()
                if n - calls_before.get(op, 0)
            }
        finally:
            os.environ.clear()
            os.environ.update(saved)
            control.down(Path(tmp) / "lc")
    batches = batch_bound(instances, min_healthy)
    bound = batches * (boot + warmup)
    gaps = [b - a for a, b in zip(poller.polls, poller.polls[1:], strict=False)]
    polls = len(poller.polls)
    return {
        "instances": instances,
        "min_healthy": min_healthy,
        "warmup_s": warmup,
        "boot_s": round(boot, 2),  # a batch launched at once, until all status checks are ok
        "boot_single_s": round(boot_single, 2),
        "batches": batches,
        "bound_s": round(bound, 2),
        "total_s": round(total, 2),
        "refresh_s": round(refresh_s, 2),  # StartTime -> EndTime as the API reports them
        "ratio_to_bound": round(total / bound, 3),
        "status": result.status,
        "polls": polls,
        # calls per second over the polling window (N polls, N - 1 gaps)
        "polls_per_s": round((polls - 1) / (poller.polls[-1] - poller.polls[0]), 3)
        if polls > 1
        else None,
        "min_poll_gap_s": round(min(gaps), 3) if gaps else None,
        "api_calls": calls,
        "target_total_le_1_2x_bound": total <= 1.2 * bound,
        "target_polling_le_1_per_s": (not gaps or min(gaps) >= 0.999),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.rollout", description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--min-healthy", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    figures = run(args.instances, args.min_healthy, args.warmup)
    print(json.dumps(figures, indent=2))
    ok = figures["target_total_le_1_2x_bound"] and figures["target_polling_le_1_per_s"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
