"""Benchmark: `factory verify` on the local cloud.

    .venv/bin/python -m bench.verify [--runs 3] [--parallel 4] [--ami AMI_ID]

Starts a local cloud in a temporary state dir (the base image cache is reused) unless
AWS_ENDPOINT_URL names a running one, builds `base` with `factory build base` (or takes --ami),
then:
- verifies it `--runs` times with the shipped suite (templates/_common + templates/base):
  launch (RunInstances -> host key pinned, SSH up), test time (pytest's own total for the
  checks, and the wall time of the pytest process), cleanup, whole verify;
- verifies `--parallel` copies of it at once (`--parallel N`): wall time;
- live verification (`rollout --verify-live`'s step): the suite against an instance it did not
  launch, over EC2 Instance Connect, `--runs` times: access (console pin, key push, SSH up) and
  test time.
Target (issue 4): the ~30-check suite in < 3 s of test time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from factory.aws import AwsClients, AwsTarget
from factory.aws.wait import wait_until
from factory.localcloud import control
from factory.output import Progress
from factory.verify import VerifySettings, verify_images, verify_instance

REPO = Path(__file__).resolve().parent.parent
IMAGE_CACHE = Path(
    os.environ.get("FACTORY_LOCAL_IMAGE_CACHE", REPO / ".factory" / "cache" / "images")
).resolve()


@contextmanager
def local_cloud() -> Iterator[str]:
    """The endpoint: AWS_ENDPOINT_URL if set, else a fresh local cloud for this run."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        yield os.environ["AWS_ENDPOINT_URL"]
        return
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        status = control.up(Path(tmp) / "local", instances=True, image_cache=IMAGE_CACHE)
        os.environ.update(control.env_vars(status))
        try:
            assert status.endpoint_url is not None
            yield status.endpoint_url
        finally:
            control.down(Path(tmp) / "local")


def build_base(state_dir: Path) -> str:
    """`factory build base` with the real templates and provisioners: the new AMI's id."""
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "build", "base", "--rebuild", "-O", "json"],
        cwd=REPO,
        env={**os.environ, "FACTORY_STATE_DIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"factory build base failed: {proc.stderr[-2000:]}")
    return str(json.loads(proc.stdout)["images"][0]["ami_id"])


def copies(clients: AwsClients, ami: str, count: int) -> list[str]:
    ec2 = clients.client("ec2")
    source = ec2.describe_images(ImageIds=[ami])["Images"][0]
    made = [ami]
    for i in range(count - 1):
        copy = ec2.copy_image(
            SourceImageId=ami, SourceRegion=clients.region, Name=f"{source['Name']}-copy{i}"
        )["ImageId"]
        ec2.create_tags(Resources=[copy], Tags=source.get("Tags", []))
        made.append(str(copy))
    return made


def live_runs(clients: AwsClients, ami: str, out: Path, runs: int) -> dict[str, Any]:
    """Verify a running instance (launched without a key pair) `runs` times; medians."""
    ec2 = clients.client("ec2")
    instance = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro")[
        "Instances"
    ][0]["InstanceId"]

    def healthy() -> bool | None:
        statuses = ec2.describe_instance_status(InstanceIds=[instance], IncludeAllInstances=True)[
            "InstanceStatuses"
        ]
        return bool(statuses and statuses[0]["InstanceStatus"]["Status"] == "ok") or None

    try:
        wait_until(healthy, timeout=120, what=f"{instance} healthy")
        results = []
        for _ in range(runs):
            result = verify_instance(
                clients,
                instance,
                templates_dir=REPO / "templates",
                output_dir=out,
                progress=Progress(quiet=True),
            )
            if not result.ok:
                raise SystemExit(f"live verify failed: {result.error or result.failing_tests}")
            results.append(result)
    finally:
        ec2.terminate_instances(InstanceIds=[instance])
    return {
        "runs": runs,
        "checks": results[0].total,
        "skipped": results[0].skipped,
        "access_seconds": round(statistics.median(r.launch_seconds for r in results), 3),
        "test_phase_seconds": round(statistics.median(r.test_seconds for r in results), 3),
        "verify_seconds": round(statistics.median(r.total_seconds for r in results), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--ami", help="verify this AMI instead of making a reference image")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with local_cloud() as endpoint, tempfile.TemporaryDirectory() as out:
        clients = AwsClients(AwsTarget("us-east-1", endpoint_url=endpoint))
        started = time.monotonic()
        ami = args.ami or build_base(Path(out) / "state")
        report["base_build_seconds"] = round(time.monotonic() - started, 2)
        runs = []
        for _ in range(args.runs):
            [result] = verify_images(
                clients,
                [ami],
                templates_dir=REPO / "templates",
                output_dir=Path(out),
                progress=Progress(quiet=True),
            )
            if not result.ok:
                raise SystemExit(f"verify failed: {result.error or result.failing_tests}")
            summary = json.loads(Path(str(result.summary_path)).read_text())
            runs.append(
                {
                    "checks": result.total,
                    "pytest_test_seconds": summary["seconds"],
                    "test_phase_seconds": result.test_seconds,
                    "launch_seconds": result.launch_seconds,
                    "cleanup_seconds": result.cleanup_seconds,
                    "verify_seconds": result.total_seconds,
                }
            )
        report["runs"] = runs
        report["median"] = {
            key: round(statistics.median(r[key] for r in runs), 3)
            for key in runs[0]
            if key != "checks"
        }
        report["checks"] = runs[0]["checks"]
        if args.parallel > 1:
            amis = copies(clients, ami, args.parallel)
            started = time.monotonic()
            results = verify_images(
                clients,
                amis,
                templates_dir=REPO / "templates",
                output_dir=Path(out),
                settings=VerifySettings(parallel=args.parallel),
                progress=Progress(quiet=True),
            )
            report["parallel"] = {
                "images": len(amis),
                "wall_seconds": round(time.monotonic() - started, 2),
                "all_verified": all(r.ok for r in results),
                "per_image_verify_seconds": [r.total_seconds for r in results],
            }
        report["live"] = live_runs(clients, ami, Path(out), args.runs)
    print(json.dumps(report, indent=2))
    med = report["median"]
    print(
        f"\n{report['checks']} checks: pytest test time {med['pytest_test_seconds']:.2f}s "
        f"(target < 3 s), pytest process {med['test_phase_seconds']:.2f}s; launch "
        f"{med['launch_seconds']:.2f}s, cleanup {med['cleanup_seconds']:.2f}s, whole verify "
        f"{med['verify_seconds']:.2f}s (median of {len(runs)})"
    )
    if "parallel" in report:
        p = report["parallel"]
        print(f"{p['images']} images with --parallel {p['images']}: {p['wall_seconds']:.2f}s wall")
    live = report["live"]
    print(
        f"live verification over EC2 Instance Connect: access {live['access_seconds']:.2f}s, "
        f"tests {live['test_phase_seconds']:.2f}s, whole {live['verify_seconds']:.2f}s "
        f"(median of {live['runs']}; {live['skipped']} image_only checks skipped)"
    )


if __name__ == "__main__":
    main()
