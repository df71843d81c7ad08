"""Benchmark: `factory build` vs a bare `packer build` of the same rendered HCL.

    .venv/bin/python -m bench.build [--family smoke|base|app] [--runs 5]

Same local cloud (started in a temporary state dir unless AWS_ENDPOINT_URL names a running
one; the base image cache is reused), runs alternating factory / bare Packer, median of each,
ratio. The factory's time is the whole command (`factory build FAMILY --rebuild`: Python start,
render, source lookup, Packer, manifest, tagging); the bare run is `packer build
-machine-readable -var-file=...` in a build dir the factory rendered (new build id per run).
`smoke` (communicator none, ~0.5 s of Packer) shows the fixed overhead; `base` (SSH, apt
updates) is a real build. Target (issue 2): ratio <= 1.05.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factory.aws import AwsClients, AwsTarget
from factory.build import TEMPLATE_FILE, VAR_FILE, gather_build, plan_build, write_build_dir
from factory.config import FactoryConfig, load_config
from factory.localcloud import control
from factory.packer import build_argv, packer_env

REPO = Path(__file__).resolve().parent.parent
IMAGE_CACHE = Path(
    os.environ.get("FACTORY_LOCAL_IMAGE_CACHE", REPO / ".factory" / "cache" / "images")
).resolve()


@contextmanager
def local_cloud() -> Iterator[str]:
    if os.environ.get("AWS_ENDPOINT_URL"):
        yield os.environ["AWS_ENDPOINT_URL"]
        return
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        state = Path(tmp) / "local"
        status = control.up(state, instances=True, image_cache=IMAGE_CACHE)
        os.environ.update(control.env_vars(status))
        try:
            assert status.endpoint_url is not None
            yield status.endpoint_url
        finally:
            control.down(state)


def _verified_base(config_file: Path, clients: AwsClients) -> None:
    """app needs a verified base: build one, mark it verified."""
    subprocess.run(
        [sys.executable, "-m", "factory", "--config", str(config_file), "-q", "build", "base"],
        check=True,
        cwd=REPO,
    )
    ec2 = clients.client("ec2")
    images = ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "tag:factory:family", "Values": ["base"]}]
    )["Images"]
    ec2.create_tags(
        Resources=[i["ImageId"] for i in images],
        Tags=[{"Key": "factory:status", "Value": "verified"}],
    )


def _bare_packer(config: FactoryConfig, clients: AwsClients, family: str) -> float:
    """`packer build` alone in a build dir the factory rendered (a new build id): seconds."""
    inputs = gather_build(config, clients, family, {})
    build_dir = write_build_dir(plan_build(inputs, rebuild=True, now=datetime.now(UTC)))
    env = packer_env(clients.credentials_env())
    started = time.monotonic()
    bare = subprocess.run(
        build_argv(build_dir / TEMPLATE_FILE, build_dir / VAR_FILE),
        cwd=build_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if bare.returncode != 0:
        raise SystemExit(f"bare packer build failed: {bare.stdout[-2000:]}")
    return seconds


def _factory_build(config_file: Path, family: str) -> float:
    """`factory build FAMILY --rebuild` as a fresh process: seconds."""
    argv = [sys.executable, "-m", "factory", "--config", str(config_file), "-q", "build"]
    argv += [family, "--rebuild", "--output", "json"]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"factory build failed: {done.stderr[-2000:]}")
    return seconds


def _summary(family: str, factory_times: list[float], packer_times: list[float]) -> dict[str, Any]:
    factory_median = statistics.median(factory_times)
    packer_median = statistics.median(packer_times)
    return {
        "family": family,
        "runs": len(factory_times),
        "factory_build_s": [round(t, 3) for t in factory_times],
        "bare_packer_s": [round(t, 3) for t in packer_times],
        "factory_median_s": round(factory_median, 3),
        "packer_median_s": round(packer_median, 3),
        "overhead_s": round(factory_median - packer_median, 3),
        "ratio": round(factory_median / packer_median, 3),
        "target_ratio": 1.05,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="smoke")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    templates = REPO / ("tests/fixtures/templates" if args.family == "smoke" else "templates")
    with local_cloud() as endpoint, tempfile.TemporaryDirectory(prefix="bench-project-") as tmp:
        project = Path(tmp)
        config_file = project / "factory.toml"
        config_file.write_text(
            f'[factory]\ntemplates_dir = "{templates}"\n'
            f'provisioners_dir = "{REPO / "provisioners"}"\nstate_dir = "{project / ".factory"}"\n'
        )
        config = load_config(project, config_file)
        clients = AwsClients(AwsTarget("us-east-1", endpoint_url=endpoint))
        if args.family == "app":
            _verified_base(config_file, clients)
        factory_times: list[float] = []
        packer_times: list[float] = []
        for run in range(args.runs):
            factory_times.append(_factory_build(config_file, args.family))
            packer_times.append(_bare_packer(config, clients, args.family))
            print(
                f"run {run + 1}: factory {factory_times[-1]:.2f}s  packer {packer_times[-1]:.2f}s",
                file=sys.stderr,
            )
        print(json.dumps(_summary(args.family, factory_times, packer_times), indent=2))


if __name__ == "__main__":
    main()
