"""Benchmark: `factory retire`'s plan over 5,000 AMIs in 50 families against the local cloud.

    .venv/bin/python -m bench.retire [--images 5000] [--families 50] [--templates 200]

Starts a control-plane-only local cloud (no instances) in a temporary directory, seeds it over
HTTP (AMIs with factory tags, launch templates with 3 versions each, one Auto Scaling group per
template, a few instances and SSM channel parameters), then times the plan (facts + in-use
detection + decisions) and reports the API calls it made. Targets: plan < 5 s, and
<= 1 API call per 500 AMIs scanned for the image listing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3

from factory import tags
from factory.aws import AwsClients, AwsTarget
from factory.config import RetentionPolicy
from factory.localcloud import ACCESS_KEY_ID, SECRET_ACCESS_KEY, control
from factory.retire import RetireScope, RetireSettings, retire_images

REGION = "us-east-1"


def _client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


def seed(endpoint: str, images: int, families: int, templates: int) -> dict[str, Any]:
    """AMIs spread over families and ages; templates, groups, instances and channels using some."""
    ec2, ssm, asg = (_client(endpoint, s) for s in ("ec2", "ssm", "autoscaling"))
    now = datetime.now(UTC)
    per_family = images // families

    def register(i: int) -> str:
        family = f"fam{i % families:02d}"
        age = timedelta(days=(i // families) * 2, minutes=i)
        status = "verified" if i % 10 else "candidate"
        image_tags = {
            tags.FAMILY: family,
            tags.VERSION: f"1.{i // families}",
            tags.STATUS: status,
            tags.CREATED_AT: (now - age).isoformat(timespec="seconds"),
        }
        return str(
            ec2.register_image(
                Name=f"{family}-{i:05d}",
                TagSpecifications=[
                    {
                        "ResourceType": "image",
                        "Tags": [{"Key": k, "Value": v} for k, v in image_tags.items()],
                    }
                ],
            )["ImageId"]
        )

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        amis = list(pool.map(register, range(per_family * families)))

    def template(t: int) -> None:
        versions = [amis[(t * 7 + v * 13) % len(amis)] for v in range(3)]
        lt = ec2.create_launch_template(
            LaunchTemplateName=f"lt-{t:03d}", LaunchTemplateData={"ImageId": versions[0]}
        )
        lt_id = lt["LaunchTemplate"]["LaunchTemplateId"]
        for ami in versions[1:]:
            ec2.create_launch_template_version(
                LaunchTemplateId=lt_id, LaunchTemplateData={"ImageId": ami}
            )
        asg.create_auto_scaling_group(
            AutoScalingGroupName=f"asg-{t:03d}",
            MinSize=0,
            MaxSize=0,
            DesiredCapacity=0,
            AvailabilityZones=[f"{REGION}a"],
            LaunchTemplate={"LaunchTemplateId": lt_id, "Version": "2"},
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(template, range(templates)))
    for f in range(families):
        ssm.put_parameter(
            Name=f"/factory/fam{f:02d}/prod",
            Value=amis[f + families * 5],
            Type="String",
            DataType="aws:ec2:image",
            Overwrite=True,
        )
    for i in range(20):
        ec2.run_instances(ImageId=amis[i * 97 % len(amis)], MinCount=1, MaxCount=1)
    return {"images": len(amis), "templates": templates, "seconds": time.monotonic() - started}


def run(images: int, families: int, templates: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-retire-") as tmp:
        status = control.up(Path(tmp) / "lc", instances=False)
        try:
            assert status.endpoint_url is not None
            os.environ.update(control.env_vars(status, REGION))
            seeded = seed(status.endpoint_url, images, families, templates)
            policy = RetentionPolicy(keep=3, min_age_days=7, grace_days=7, audit_days=90)
            runs: list[dict[str, Any]] = []
            for _ in range(repeats):
                own = AwsClients(AwsTarget(REGION, endpoint_url=status.endpoint_url))
                own.account_id  # noqa: B018 - resolve the account outside the timed part
                started = time.monotonic()
                settings = RetireSettings(now=datetime.now(UTC), retention=policy)
                plan = retire_images(RetireScope((own,)), settings, apply=False).plan
                seconds = time.monotonic() - started
                runs.append(
                    {
                        "seconds": round(seconds, 3),
                        "api_calls": plan.api_calls,
                        "calls": dict(plan.calls_by_operation),
                        "images_scanned": plan.images_scanned,
                        "counts": plan.counts,
                    }
                )
        finally:
            control.down(Path(tmp) / "lc")
    best = min(runs, key=lambda r: r["seconds"])
    describe_images = best["calls"].get("DescribeImages", 0)
    return {
        "seed": seeded,
        "runs": runs,
        "plan_seconds_best": best["seconds"],
        "plan_seconds_worst": max(r["seconds"] for r in runs),
        "images_scanned": best["images_scanned"],
        "describe_images_calls": describe_images,
        "images_per_describe_images_call": best["images_scanned"] / max(describe_images, 1),
        "api_calls_total": best["api_calls"],
        "images_per_api_call_total": best["images_scanned"] / max(best["api_calls"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.retire")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--families", type=int, default=50)
    parser.add_argument("--templates", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(args.images, args.families, args.templates, args.repeats)
    print(json.dumps(result, indent=2))
    ok = result["plan_seconds_best"] < 5 and result["images_per_describe_images_call"] >= 500
    print(
        f"plan {result['plan_seconds_best']:.2f}s (target < 5 s); "
        f"{result['describe_images_calls']} DescribeImages call(s) for "
        f"{result['images_scanned']} AMIs; {result['api_calls_total']} API calls in all "
        f"-> {'PASS' if ok else 'FAIL'}",
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
