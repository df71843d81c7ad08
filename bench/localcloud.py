"""Benchmark: the local cloud's instance runtime.

    .venv/bin/python -m bench.localcloud [--boots 10] [--burst 20] [--ups 3]

Measures, on this machine, with the base image already cached (the first run builds it):
- `factory local up` (the CLI, a fresh state dir each time) until the endpoint answers;
- RunInstances -> sshd answering (SSH banner on the instance's address), one at a time;
- RunInstances with user data -> DescribeInstances says running, one at a time (what
  tests/integration/test_runtime.py's boot test waits for; it asserted under 10 s until issue 11);
- a burst of N RunInstances sent at once (N threads), until every sshd answers, and
  N instances from one RunInstances call (MinCount=N): errors and wall time.
Targets (issue 3): up < 3 s, boot < 1 s per instance, 20 at once without errors; running with
user data < 10 s (issue 11).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3

from factory.aws.wait import Poller, wait_until
from factory.localcloud import control
from factory.localcloud.baseimage import DEBIAN_12_NAME_PATTERN, DEBIAN_OWNER_ID, ensure_base_rootfs

REPO = Path(__file__).resolve().parent.parent
IMAGE_CACHE = Path(
    os.environ.get("FACTORY_LOCAL_IMAGE_CACHE", REPO / ".factory" / "cache" / "images")
).resolve()
FACTORY = Path(sys.executable).with_name("factory")
USER_DATA = "#!/bin/sh\necho user-data-says-hello\necho ran > /root/user-data-marker\n"


def _sshd_answers(address: str, timeout: float = 30.0) -> float:
    """Seconds until an SSH banner comes from address:22."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with socket.create_connection((address, 22), timeout=1) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.005)
    raise TimeoutError(f"no sshd on {address}")


def bench_up(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-lc-") as tmp:
            state = Path(tmp) / "local"
            env = {**os.environ, "FACTORY_LOCAL_IMAGE_CACHE": str(IMAGE_CACHE)}
            start = time.monotonic()
            subprocess.run(
                [str(FACTORY), "local", "up", "--state-dir", str(state)],
                check=True,
                env=env,
                capture_output=True,
            )
            times.append(time.monotonic() - start)
            subprocess.run(
                [str(FACTORY), "local", "down", "--state-dir", str(state)],
                check=True,
                env=env,
                capture_output=True,
            )
    return times


def _ec2(status: control.LocalCloudStatus) -> Any:
    env = control.env_vars(status)
    return boto3.client(
        "ec2",
        endpoint_url=status.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _launch_and_wait(ec2: Any, image_id: str) -> tuple[str, float]:
    start = time.monotonic()
    run = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)
    instance = run["Instances"][0]
    _sshd_answers(instance["PrivateIpAddress"])
    return instance["InstanceId"], time.monotonic() - start


def _launch_until_running(ec2: Any, image_id: str) -> tuple[str, float]:
    start = time.monotonic()
    run = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, UserData=USER_DATA)
    instance_id = run["Instances"][0]["InstanceId"]

    def running() -> bool | None:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return True if reservations[0]["Instances"][0]["State"]["Name"] == "running" else None

    wait_until(
        running,
        timeout=30,
        what=f"{instance_id} running",
        poller=Poller(interval=0.005, max_interval=0.005),  # the measurement's resolution
    )
    return instance_id, time.monotonic() - start


def bench_instances(boots: int, burst: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-lc-") as tmp:
        state = Path(tmp) / "local"
        status = control.up(state, image_cache=IMAGE_CACHE)
        try:
            ec2 = _ec2(status)
            image_id = ec2.describe_images(
                Owners=[DEBIAN_OWNER_ID],
                Filters=[{"Name": "name", "Values": [DEBIAN_12_NAME_PATTERN]}],
            )["Images"][0]["ImageId"]
            sequential = []
            for _ in range(boots):
                instance_id, seconds = _launch_and_wait(ec2, image_id)
                sequential.append(seconds)
                ec2.terminate_instances(InstanceIds=[instance_id])
            to_running = []
            for _ in range(boots):
                instance_id, seconds = _launch_until_running(ec2, image_id)
                to_running.append(seconds)
                ec2.terminate_instances(InstanceIds=[instance_id])

            errors: list[str] = []
            start = time.monotonic()
            with ThreadPoolExecutor(burst) as pool:
                futures = [pool.submit(_launch_and_wait, ec2, image_id) for _ in range(burst)]
                results = []
                for future in futures:
                    try:
                        results.append(future.result())
                    except Exception as exc:  # noqa: BLE001 - counted and reported
                        errors.append(repr(exc))
            burst_wall = time.monotonic() - start
            ids = [r[0] for r in results]
            if ids:
                start = time.monotonic()
                ec2.terminate_instances(InstanceIds=ids)
                terminate_wall = time.monotonic() - start
            else:
                terminate_wall = 0.0

            start = time.monotonic()
            run = ec2.run_instances(ImageId=image_id, MinCount=burst, MaxCount=burst)
            addresses = [i["PrivateIpAddress"] for i in run["Instances"]]
            single_errors = 0
            for address in addresses:
                try:
                    _sshd_answers(address)
                except TimeoutError:
                    single_errors += 1
            single_call_wall = time.monotonic() - start
            ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in run["Instances"]])
        finally:
            start = time.monotonic()
            control.down(state)
            down_wall = time.monotonic() - start
    return {
        "boot_seconds": {
            "runs": boots,
            "median": statistics.median(sequential),
            "max": max(sequential),
        },
        "running_with_user_data_seconds": {
            "runs": boots,
            "median": statistics.median(to_running),
            "max": max(to_running),
        },
        "burst_threads": {
            "instances": burst,
            "errors": len(errors),
            "wall_seconds": burst_wall,
            "slowest_seconds": max((r[1] for r in results), default=0.0),
            "terminate_all_seconds": terminate_wall,
        },
        "burst_one_call": {
            "instances": burst,
            "errors": single_errors,
            "wall_seconds": single_call_wall,
        },
        "down_seconds": down_wall,
        "error_samples": errors[:3],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.localcloud")
    parser.add_argument("--boots", type=int, default=10)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--ups", type=int, default=3)
    args = parser.parse_args(argv)
    ensure_base_rootfs(IMAGE_CACHE)  # so no measurement includes debootstrap
    ups = bench_up(args.ups)
    result = {
        "local_up_seconds": {"runs": len(ups), "median": statistics.median(ups), "max": max(ups)},
        **bench_instances(args.boots, args.burst),
    }
    print(json.dumps(result, indent=2))
    ok = (
        result["local_up_seconds"]["max"] < 3.0
        and result["boot_seconds"]["max"] < 1.0
        and result["running_with_user_data_seconds"]["max"] < 10.0
        and result["burst_threads"]["errors"] == 0
        and result["burst_one_call"]["errors"] == 0
    )
    print(
        f"targets (up < 3 s, boot < 1 s, running < 10 s, {args.burst} at once without errors): "
        f"{'met' if ok else 'NOT met'}",
        file=sys.stderr,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
