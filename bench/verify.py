"""Benchmark: `factory verify` on the local cloud.

    .venv/bin/python -m bench.verify [--runs 3] [--parallel 4] [--ami AMI_ID]

Starts a local cloud in a temporary state dir (the base image cache is reused), makes a
reference golden image the way the base provisioners do (or takes --ami, e.g. one built by
`factory build base` on an already running local cloud named by AWS_ENDPOINT_URL), then:
- verifies it `--runs` times with the shipped suite (templates/_common + templates/base):
  launch (RunInstances -> host key pinned, SSH up), test time (pytest's own total for the
  checks, and the wall time of the pytest process), cleanup, whole verify;
- verifies `--parallel` copies of it at once (`--parallel N`): wall time.
Target (issue 4): the ~30-check suite in < 3 s of test time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from factory import tags
from factory.aws import AwsClients, AwsTarget
from factory.localcloud import control
from factory.output import Progress
from factory.verify import VerifySettings, verify_images

REPO = Path(__file__).resolve().parent.parent
IMAGE_CACHE = Path(
    os.environ.get("FACTORY_LOCAL_IMAGE_CACHE", REPO / ".factory" / "cache" / "images")
).resolve()
DEBIAN_OWNER = "136693071363"

# The base provisioners' work in one script (as in tests/integration/test_verify.py).
GOLDEN = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
printf '%s\n' "$RESOLV" > /etc/resolv.conf
cat > /etc/apt/sources.list <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
apt-get update -qq
apt-get install -y -qq --no-install-recommends unattended-upgrades chrony >/dev/null
printf 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n' \
  > /etc/apt/apt.conf.d/20auto-upgrades
printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n' \
  > /etc/ssh/sshd_config.d/00-hardening.conf
printf 'FAMILY=base\nVERSION=%s\nBUILD_ID=%s\n' "$VERSION" "$BUILD_ID" > /etc/factory-release
apt-get clean
rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/* /root/.bash_history /home/*/.bash_history
: > /etc/resolv.conf
rm -f /home/*/.ssh/authorized_keys
"""


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


def make_golden_image(clients: AwsClients) -> str:
    ec2 = clients.client("ec2")
    source = ec2.describe_images(Owners=[DEBIAN_OWNER])["Images"][0]["ImageId"]
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    name = f"bench-golden-{time.time_ns()}"
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public)
    instance_id = ec2.run_instances(
        ImageId=source, InstanceType="t3.micro", MinCount=1, MaxCount=1, KeyName=name
    )["Instances"][0]["InstanceId"]
    try:
        address = ""
        for _ in range(150):
            desc = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
            instance = desc["Instances"][0]
            address = instance.get("PublicIpAddress") or instance.get("PrivateIpAddress") or ""
            if instance["State"]["Name"] == "running" and address:
                break
            time.sleep(0.2)
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 - throwaway builder
        for attempt in range(100):
            try:
                client.connect(
                    address,
                    username="admin",
                    pkey=paramiko.Ed25519Key.from_private_key(io.StringIO(pem)),
                    allow_agent=False,
                    look_for_keys=False,
                )
                break
            except (OSError, paramiko.SSHException):
                if attempt == 99:
                    raise
                time.sleep(0.2)
        version, build_id = "1.0.0", f"bench-{time.time_ns()}"
        env = {
            "RESOLV": Path("/etc/resolv.conf").read_text(),
            "VERSION": version,
            "BUILD_ID": build_id,
        }
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        stdin, stdout, stderr = client.exec_command(f"sudo env {assignments} bash -s")
        stdin.write(GOLDEN)
        stdin.channel.shutdown_write()
        out = stdout.read().decode() + stderr.read().decode()
        if stdout.channel.recv_exit_status() != 0:
            raise RuntimeError(out[-2000:])
        client.close()
        ami = ec2.create_image(InstanceId=instance_id, Name=name)["ImageId"]
        ec2.create_tags(
            Resources=[ami],
            Tags=[
                {"Key": tags.FAMILY, "Value": "base"},
                {"Key": tags.VERSION, "Value": version},
                {"Key": tags.BUILD_ID, "Value": build_id},
            ],
        )
        return str(ami)
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
        ec2.delete_key_pair(KeyName=name)


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
        ami = args.ami or make_golden_image(clients)
        report["golden_image_seconds"] = round(time.monotonic() - started, 2)
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


if __name__ == "__main__":
    main()
