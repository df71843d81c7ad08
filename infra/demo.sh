#!/usr/bin/env bash
# `make demo`: the main job on the embedded local cloud, end to end.
# Start the local cloud, build `base` with real Packer (provisioners run in a sandbox), verify it
# with its testinfra suite, publish it to the `dev` channel, check its signed provenance, and roll
# it out to a small Auto Scaling group with live verification on a new instance.
set -euo pipefail
cd "$(dirname "$0")/.."
F=${FACTORY:-.venv/bin/factory}
STATE=${FACTORY_LOCAL_STATE_DIR:-.factory/local}
CACHE=${FACTORY_LOCAL_IMAGE_CACHE:-.factory/cache/images}
OUT=.factory/demo
mkdir -p "$OUT"

echo "== local cloud"
"$F" local up --state-dir "$STATE" --image-cache "$CACHE"
eval "$("$F" local env --state-dir "$STATE")"

echo "== build + verify: base"
"$F" build base --verify --rebuild -O json > "$OUT/build.json"
AMI=$(.venv/bin/python - "$OUT/build.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
build = report
ami = build["images"][0]["ami_id"]
print(f"AMI:        {ami}  ({build['name']}, built in {build['seconds']:.1f}s)", file=sys.stderr)
print(f"build log:  {build['log_file']}", file=sys.stderr)
for r in report["verify"]["results"]:
    print(f"tests:      {r['outcome']}: {r['passed']} passed, {r['failed']} failed, "
          f"{r['skipped']} skipped of {r['total']} in {r['test_seconds']:.1f}s", file=sys.stderr)
    print(f"junit:      {r['junit_path']}", file=sys.stderr)
print(ami)
PY
)

echo "== publish: base/dev"
"$F" channel set base dev "$AMI" --reason "make demo"
"$F" channel show base

echo "== provenance"
"$F" provenance verify "$AMI"

echo "== rollout: a 2-instance group moves to base/dev by replacement, then the suite runs on a new instance"
GROUP=demo-web
.venv/bin/python - "$GROUP" <<'PY'
import base64, sys, boto3
group = sys.argv[1]
ec2, asg = boto3.client("ec2"), boto3.client("autoscaling")
if not asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]:
    debian = ec2.describe_images(
        Owners=["136693071363"], Filters=[{"Name": "name", "Values": ["debian-12-amd64-*"]}]
    )["Images"][0]["ImageId"]
    template = ec2.create_launch_template(
        LaunchTemplateName=group,
        LaunchTemplateData={
            "ImageId": debian,
            "InstanceType": "t3.micro",
            "UserData": base64.b64encode(b"#!/bin/sh\necho hello from user data\n").decode(),
        },
    )["LaunchTemplate"]["LaunchTemplateId"]
    asg.create_auto_scaling_group(
        AutoScalingGroupName=group, MinSize=0, MaxSize=4, DesiredCapacity=2,
        AvailabilityZones=["us-east-1a"],
        LaunchTemplate={"LaunchTemplateId": template, "Version": "1"},
    )
    print(f"group:      {group} (2 instances of {debian}, launch template {template})", file=sys.stderr)
PY
"$F" rollout "$GROUP" --channel base/dev --min-healthy 50 --warmup 0 --verify-live

echo
echo "demo done: $AMI is verified, in channel base/dev, with verified provenance, and runs $GROUP (verified live)."
echo "the local cloud is still running: eval \"\$($F local env --state-dir $STATE)\"; stop it with: $F local down --state-dir $STATE"
