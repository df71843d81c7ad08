"""Benchmark: the local cloud's instance refresh emulation, its batches and InstanceWarmup.

    .venv/bin/python -m bench.refresh [--capacity 2] [--min-healthy 50] [--warmups 0,1,2] [--runs 3]

Starts a control-plane local cloud (`--no-instances`: an instance is healthy once launched) and
times, over HTTP as boto3 sees it, StartInstanceRefresh until DescribeInstanceRefreshes reports
a terminal status, for a group of N instances moving to a new launch template version, once per
InstanceWarmup (a fresh group each run). Each batch waits out its warmup after its replacements
are healthy, so a refresh takes batches x warmup plus the engine's own time (its 0.2 s tick,
launches, terminations). tests/unit/test_ext_refresh.py asserts what a refresh does; how long it
takes is measured here (it asserted `>= 2.0 > no-warmup time` for 2 instances, 50 %, 1 s).

Targets: without warmup a refresh ends within 2 s; with warmup W it takes at least
batches x W and at most batches x W + 2 s.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3

from factory.aws.wait import Poller, wait_until
from factory.localcloud import control
from factory.localcloud.ext_refresh.batches import batch_size

REGION = "us-east-1"
POLL = 0.05  # DescribeInstanceRefreshes interval: the measurement's resolution
TERMINAL = {"Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed"}


def _client(status: control.LocalCloudStatus, service: str) -> Any:
    env = control.env_vars(status)
    return boto3.client(
        service,
        endpoint_url=status.endpoint_url,
        region_name=REGION,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _template(ec2: Any) -> str:
    """A launch template with version 1 on one image and version 2 on another."""
    images = [
        ec2.register_image(
            Name=f"bench-refresh-{uuid.uuid4().hex[:8]}",
            RootDeviceName="/dev/xvda",
            Architecture="x86_64",
        )["ImageId"]
        for _ in range(2)
    ]
    template = ec2.create_launch_template(
        LaunchTemplateName=f"bench-refresh-{uuid.uuid4().hex[:8]}",
        LaunchTemplateData={"ImageId": images[0], "InstanceType": "t3.micro"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    ec2.create_launch_template_version(
        LaunchTemplateId=template, SourceVersion="1", LaunchTemplateData={"ImageId": images[1]}
    )
    return str(template)


def time_refresh(
    asg: Any, template: str, *, capacity: int, min_healthy: int, warmup: int
) -> tuple[float, str]:
    """Seconds from StartInstanceRefresh to a terminal status, and that status."""
    name = f"bench-refresh-{uuid.uuid4().hex[:8]}"
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        MinSize=0,
        MaxSize=capacity * 2,
        DesiredCapacity=capacity,
        AvailabilityZones=[f"{REGION}a"],
        LaunchTemplate={"LaunchTemplateId": template, "Version": "1"},
    )
    try:
        start = time.monotonic()
        asg.start_instance_refresh(
            AutoScalingGroupName=name,
            DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateId": template, "Version": "2"}},
            Preferences={"MinHealthyPercentage": min_healthy, "InstanceWarmup": warmup},
        )

        def ended() -> str | None:
            refresh = asg.describe_instance_refreshes(AutoScalingGroupName=name)[
                "InstanceRefreshes"
            ][0]
            return str(refresh["Status"]) if refresh["Status"] in TERMINAL else None

        final = wait_until(
            ended,
            timeout=60 + 10 * capacity * warmup,
            what=f"the refresh of {name} to end",
            poller=Poller(interval=POLL, max_interval=POLL),  # the measurement's resolution
        )
        return time.monotonic() - start, final
    finally:
        asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.refresh")
    parser.add_argument("--capacity", type=int, default=2)
    parser.add_argument("--min-healthy", type=int, default=50)
    parser.add_argument("--warmups", default="0,1,2", help="InstanceWarmup values, in seconds")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    warmups = [int(w) for w in args.warmups.split(",")]
    batches = math.ceil(args.capacity / batch_size(args.capacity, args.min_healthy, 100))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-refresh-") as tmp:
        state = Path(tmp) / "local"
        status = control.up(state, instances=False)
        try:
            ec2, asg = _client(status, "ec2"), _client(status, "autoscaling")
            template = _template(ec2)
            for warmup in warmups:
                runs = [
                    time_refresh(
                        asg,
                        template,
                        capacity=args.capacity,
                        min_healthy=args.min_healthy,
                        warmup=warmup,
                    )
                    for _ in range(args.runs)
                ]
                seconds = [s for s, _ in runs]
                floor = batches * warmup
                ceiling = 2.0 if warmup == 0 else floor + 2.0
                rows.append(
                    {
                        "instance_warmup": warmup,
                        "batches": batches,
                        "statuses": sorted({s for _, s in runs}),
                        "median_seconds": round(statistics.median(seconds), 3),
                        "min_seconds": round(min(seconds), 3),
                        "max_seconds": round(max(seconds), 3),
                        "target": f"{floor} s <= t <= {ceiling:g} s",
                        "met": {s for _, s in runs} == {"Successful"}
                        and floor <= min(seconds)
                        and max(seconds) <= ceiling,
                    }
                )
        finally:
            control.down(state)
    print(json.dumps({"capacity": args.capacity, "min_healthy": args.min_healthy, "rows": rows}))
    ok = all(row["met"] for row in rows)
    print(f"targets: {'met' if ok else 'NOT met'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
