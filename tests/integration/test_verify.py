"""`factory verify` against the local cloud: real sandboxes, real sshd, real testinfra.

The good image is what `factory build base` makes (real Packer, the real provisioners); a
broken variant of it re-enables password login. Then: the good image passes and is tagged
verified; the broken one fails naming the test; several verify in parallel; --keep leaves a
reachable instance; SIGINT/SIGTERM during a run leave no instance, key pair or security group
behind; and `app`, built on the verified base, passes its own suite.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from imagekit import wait_healthy

from factory import tags
from factory.aws import AwsClients, AwsTarget, tags_dict
from factory.output import Progress
from factory.verify import Outcome, VerifyResult, VerifySettings, verify_images, verify_instance

pytestmark = [pytest.mark.integration, pytest.mark.runtime]

REPO = Path(__file__).resolve().parents[2]
DEBIAN_OWNER = "136693071363"
PREFIX = "factory-verify-"

# The deliberately broken family: a provisioner that turns password login back on.
BROKEN = r"""
set -eu
printf 'PasswordAuthentication yes\n' > /etc/ssh/sshd_config.d/00-aaa-debug.conf
printf 'FAMILY=%s\nVERSION=%s\nBUILD_ID=%s\n' "$FAMILY" "$VERSION" "$BUILD_ID" \
  > /etc/factory-release
rm -f /home/*/.ssh/authorized_keys
"""


def _leftovers(clients: AwsClients) -> dict[str, list[str]]:
    """verify's temporary resources still present (instances not terminated)."""
    ec2 = clients.client("ec2")
    instances = [
        i["InstanceId"]
        for r in ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": [tags.VERIFY_RUN]}])[
            "Reservations"
        ]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    keys = [
        k["KeyName"]
        for k in ec2.describe_key_pairs()["KeyPairs"]
        if k["KeyName"].startswith(PREFIX)
    ]
    groups = [
        g["GroupId"]
        for g in ec2.describe_security_groups()["SecurityGroups"]
        if g["GroupName"].startswith(PREFIX)
    ]
    return {"instances": instances, "key_pairs": keys, "security_groups": groups}


NOTHING_LEFT = {"instances": [], "key_pairs": [], "security_groups": []}


def _make_image(clients: AwsClients, source: str, script: str, image_tags: dict[str, str]) -> str:
    """Launch `source`, run `script` as root over SSH, capture the result as a new AMI."""
    ec2 = clients.client("ec2")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    name = f"test-image-{time.time_ns()}"
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public)
    instance_id = ec2.run_instances(
        ImageId=source, InstanceType="t3.micro", MinCount=1, MaxCount=1, KeyName=name
    )["Instances"][0]["InstanceId"]
    try:
        wait_healthy(ec2, [instance_id])  # the local cloud: sshd answers, the key is installed
        instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
            "Instances"
        ][0]
        address = instance.get("PublicIpAddress") or instance.get("PrivateIpAddress")
        key = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            address, username="admin", pkey=key, allow_agent=False, look_for_keys=False, timeout=5
        )
        env = " ".join(
            f"{k}={shlex.quote(v)}"
            for k, v in {
                "FAMILY": image_tags.get(tags.FAMILY, ""),
                "VERSION": image_tags.get(tags.VERSION, ""),
                "BUILD_ID": image_tags.get(tags.BUILD_ID, ""),
            }.items()
        )
        stdin, stdout, stderr = client.exec_command(f"sudo env {env} bash -s", timeout=600)
        stdin.write(script)
        stdin.channel.shutdown_write()
        out, err = stdout.read().decode(), stderr.read().decode()
        assert stdout.channel.recv_exit_status() == 0, out[-2000:] + err[-2000:]
        client.close()
        ami = ec2.create_image(InstanceId=instance_id, Name=name)["ImageId"]
        ec2.create_tags(
            Resources=[ami], Tags=[{"Key": k, "Value": v} for k, v in image_tags.items()]
        )
        return str(ami)
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
        ec2.delete_key_pair(KeyName=name)


@pytest.fixture(scope="module")
def module_clients(local_cloud: object) -> AwsClients:
    return AwsClients(AwsTarget("us-east-1", endpoint_url=os.environ["AWS_ENDPOINT_URL"]))


def _build(family: str, state_dir: Path) -> str:
    """`factory build FAMILY` (the real templates and provisioners): the new AMI's id."""
    env = {**os.environ, "FACTORY_STATE_DIR": str(state_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "build", family, "--rebuild", "-O", "json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(json.loads(proc.stdout)["images"][0]["ami_id"])


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verify-state")


@pytest.fixture(scope="module")
def good_ami(module_clients: AwsClients, state_dir: Path) -> str:
    return _build("base", state_dir)


@pytest.fixture(scope="module")
def broken_ami(module_clients: AwsClients, good_ami: str) -> str:
    return _make_image(
        module_clients,
        good_ami,
        BROKEN,
        {
            tags.FAMILY: "base",
            tags.VERSION: "1.0.1",
            tags.BUILD_ID: "test-broken",
            tags.STATUS: tags.Status.CANDIDATE.value,
        },
    )


def _factory(*args: str, tmp_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "FACTORY_STATE_DIR": str(tmp_path / "state")}
    return subprocess.Popen(
        [sys.executable, "-m", "factory.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_good_image_is_verified_and_tagged(
    module_clients: AwsClients, good_ami: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"  # where verify's temporary key and ssh_config go
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    [result] = verify_images(
        module_clients,
        [good_ami],
        templates_dir=REPO / "templates",
        output_dir=tmp_path,
        progress=Progress(quiet=True),
    )
    assert result.outcome is Outcome.VERIFIED, (result.error, result.failing_tests)
    assert result.total >= 30 and result.passed == result.total and result.failing_tests == ()
    assert any(name.startswith("base/tests/") for name in result.durations)  # family suite ran
    # the AMI carries the verdict, bound to the suite and to the recorded result
    image = module_clients.client("ec2").describe_images(ImageIds=[good_ami])["Images"][0]
    image_tags = tags_dict(image["Tags"])
    assert image_tags[tags.STATUS] == "verified"
    assert image_tags[tags.SUITE_DIGEST] == result.suite_digest
    assert result.summary_path is not None and result.junit_path is not None
    summary_bytes = result.summary_path.read_bytes()
    assert image_tags[tags.RESULT_DIGEST] == "sha256:" + hashlib.sha256(summary_bytes).hexdigest()
    assert image_tags[tags.VERIFIED_AT] == result.verified_at
    summary = json.loads(summary_bytes)
    assert summary["passed"] == result.total and summary["failed"] == 0
    assert "<testsuite" in result.junit_path.read_text()
    # and nothing is left behind, not even the private key
    assert result.cleanup.instances_terminated == (result.instance_id,)
    assert _leftovers(module_clients) == NOTHING_LEFT
    assert list(scratch.iterdir()) == []


def test_broken_image_fails_naming_the_test_in_parallel_with_a_good_one(
    module_clients: AwsClients, good_ami: str, broken_ami: str, tmp_path: Path
) -> None:
    proc = _factory(
        "verify", broken_ami, good_ami, "--parallel", "2", "-O", "json", tmp_path=tmp_path
    )
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr
    failing = "_common/tests/test_sshd.py::test_password_login_is_disabled"
    error = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert error == [f"error: {broken_ami} failed 1 test(s): {failing}"]
    report = json.loads(stdout)
    assert report["all_verified"] is False
    broken, good = report["results"]  # in the order asked
    assert (broken["ami_id"], broken["outcome"]) == (broken_ami, "failed")
    assert broken["failing_tests"] == [failing]
    assert (good["ami_id"], good["outcome"]) == (good_ami, "verified")
    assert broken["instance_id"] != good["instance_id"]
    image = module_clients.client("ec2").describe_images(ImageIds=[broken_ami])["Images"][0]
    assert tags_dict(image["Tags"])[tags.STATUS] == "failed"
    assert _leftovers(module_clients) == NOTHING_LEFT
    assert "PRIVATE KEY" not in stdout + stderr


def test_keep_leaves_a_reachable_instance(
    module_clients: AwsClients, good_ami: str, tmp_path: Path
) -> None:
    settings = VerifySettings(keep=True)
    [result] = verify_images(
        module_clients,
        [good_ami],
        templates_dir=REPO / "templates",
        output_dir=tmp_path,
        settings=settings,
        progress=Progress(quiet=True),
    )
    kept = result.kept
    assert kept is not None and result.ok
    try:
        assert kept.key_path.stat().st_mode & 0o777 == 0o600
        client = paramiko.SSHClient()
        client.load_host_keys(str(kept.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())  # pinned, as printed
        client.connect(
            kept.address,
            username=kept.user,
            key_filename=str(kept.key_path),
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
        )
        _, stdout, _ = client.exec_command("cat /etc/factory-release")
        assert "FAMILY=base" in stdout.read().decode()
        client.close()
        assert _leftovers(module_clients)["instances"] == [kept.instance_id]
        assert _leftovers(module_clients)["key_pairs"] == []  # the key is on the instance
    finally:
        ec2 = module_clients.client("ec2")
        ec2.terminate_instances(InstanceIds=[kept.instance_id])
        ec2.delete_security_group(GroupId=kept.security_group_id)
        subprocess.run(["rm", "-rf", str(kept.key_path.parent)], check=True)
    assert _leftovers(module_clients) == NOTHING_LEFT


@pytest.fixture
def slow_suite(tmp_path: Path) -> Path:
    """A suite that is still running when the signal comes."""
    tests_dir = tmp_path / "slow" / "tests"
    tests_dir.mkdir(parents=True)
    (tests_dir / "test_slow.py").write_text(
        "import time\n\ndef test_slow(host):\n    host.run('true')\n    time.sleep(60)\n"
    )
    return tests_dir


@pytest.mark.parametrize(
    ("signum", "after", "code", "parallel"),
    [
        (signal.SIGINT, "running 1 suite files", 130, False),  # Ctrl-C while pytest runs
        (signal.SIGTERM, "launched", 143, False),  # SIGTERM while the instance boots
        (signal.SIGINT, "running 1 suite files", 130, True),  # Ctrl-C with two at once
    ],
)
def test_signal_during_verify_leaves_nothing_behind(
    module_clients: AwsClients,
    good_ami: str,
    broken_ami: str,
    slow_suite: Path,
    tmp_path: Path,
    signum: int,
    after: str,
    code: int,
    parallel: bool,
) -> None:
    ec2 = module_clients.client("ec2")
    before = tags_dict(ec2.describe_images(ImageIds=[good_ami])["Images"][0]["Tags"])
    amis = [good_ami, broken_ami, "--parallel", "2"] if parallel else [good_ami]
    started = time.monotonic()
    proc = _factory("verify", *amis, "--suite", str(slow_suite), tmp_path=tmp_path)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if after in line:
            proc.send_signal(signum)
            break
    else:
        pytest.fail("".join(seen))
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == code, "".join(seen) + rest
    assert time.monotonic() - started < 45  # the 60 s test was cut short, not waited for
    assert "interrupted by" in rest and "Traceback" not in rest
    assert _leftovers(module_clients) == NOTHING_LEFT
    after = tags_dict(ec2.describe_images(ImageIds=[good_ami])["Images"][0]["Tags"])
    assert after == before  # an interrupted run is no verdict


APP_LAUNCH = """#!/bin/sh
# the local cloud's instances share the host's network: listen on the instance's address
sed -i "s/^BIND=.*/BIND=$(hostname -i | cut -d' ' -f1)/" /etc/default/factory-app
/etc/rc.local
"""


@pytest.fixture(scope="module")
def verified_good_ami(module_clients: AwsClients, good_ami: str, tmp_path_factory: Any) -> str:
    """The base image, verified (earlier tests may have left it so)."""
    ec2 = module_clients.client("ec2")
    current = tags_dict(ec2.describe_images(ImageIds=[good_ami])["Images"][0]["Tags"])
    if current.get(tags.STATUS) != "verified":
        [base] = verify_images(
            module_clients,
            [good_ami],
            templates_dir=REPO / "templates",
            output_dir=tmp_path_factory.mktemp("verify-base"),
            progress=Progress(quiet=True),
        )
        assert base.ok, base.failing_tests
    return good_ami


@pytest.fixture(scope="module")
def app_result(
    module_clients: AwsClients,
    verified_good_ami: str,
    state_dir: Path,
    tmp_path_factory: Any,
) -> VerifyResult:
    app_ami = _build("app", state_dir)
    # launched as a fleet would launch it: user data says where to listen and starts it
    [app] = verify_images(
        module_clients,
        [app_ami],
        templates_dir=REPO / "templates",
        output_dir=tmp_path_factory.mktemp("verify-app"),
        settings=VerifySettings(user_data=APP_LAUNCH),
        progress=Progress(quiet=True),
    )
    return app


def test_app_on_the_verified_base_passes_its_suite(
    module_clients: AwsClients, app_result: VerifyResult
) -> None:
    app = app_result
    assert app.outcome is Outcome.VERIFIED, (app.error, app.failing_tests)
    assert any(name.startswith("app/tests/") for name in app.durations)
    assert app.family == "app"
    assert _leftovers(module_clients) == NOTHING_LEFT


# ---------------------------------------------------------------------------------------------
# live verification: the suite against an instance verify did not launch


def _run_instance(clients: AwsClients, ami: str, **kwargs: Any) -> str:
    ec2 = clients.client("ec2")
    instance_id = str(
        ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro", **kwargs)[
            "Instances"
        ][0]["InstanceId"]
    )
    wait_healthy(ec2, [instance_id])
    return instance_id


def _key_pair(clients: AwsClients, directory: Path, name: str) -> Path:
    """An ed25519 key pair imported into EC2; the private half written to `directory`."""
    private = Ed25519PrivateKey.generate()
    path = directory / name
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    clients.client("ec2").import_key_pair(KeyName=name, PublicKeyMaterial=public)
    return path


def _image_only_tests() -> set[str]:
    found = set()
    for path in (REPO / "templates" / "_common" / "tests").glob("test_*.py"):
        lines = path.read_text().splitlines()
        for marker, line in itertools.pairwise(lines):
            if marker.strip() == "@pytest.mark.image_only" and line.startswith("def test_"):
                found.add(line.split("(")[0].removeprefix("def "))
    return found


def test_live_verification_over_instance_connect_changes_nothing(
    module_clients: AwsClients, verified_good_ami: str, tmp_path: Path
) -> None:
    """No key pair at launch: verify gets in with a key pushed by EC2 Instance Connect, runs
    the image's suite (image_only checks skipped), tags nothing and creates nothing."""
    ec2 = module_clients.client("ec2")
    tags_before = tags_dict(ec2.describe_images(ImageIds=[verified_good_ami])["Images"][0]["Tags"])
    instance_id = _run_instance(module_clients, verified_good_ami)
    keys_before = ec2.describe_key_pairs()["KeyPairs"]
    groups_before = ec2.describe_security_groups()["SecurityGroups"]
    try:
        result = verify_instance(
            module_clients,
            instance_id,
            templates_dir=REPO / "templates",
            output_dir=tmp_path,
            expected_ami=verified_good_ami,
            progress=Progress(quiet=True),
        )
        assert result.outcome is Outcome.VERIFIED, (result.error, result.failing_tests)
        assert result.instance_id == instance_id
        assert any(name.startswith("base/tests/") for name in result.durations)
        # the launch-key check ran, and passed: an instance launched without a key pair has none
        assert any("test_authorized_keys_hold_only_the_launch_key" in n for n in result.durations)
        image_only = _image_only_tests()
        assert len(image_only) >= 3 and result.skipped >= len(image_only)
        state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
        assert state["Instances"][0]["State"]["Name"] == "running"  # left as it was
        assert ec2.describe_key_pairs()["KeyPairs"] == keys_before
        assert ec2.describe_security_groups()["SecurityGroups"] == groups_before
        after = tags_dict(ec2.describe_images(ImageIds=[verified_good_ami])["Images"][0]["Tags"])
        assert after == tags_before  # the image's verdict is factory verify's, untouched
        assert result.summary_path is not None and result.summary_path.is_file()
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])


def test_cli_verify_instance_reports_the_running_instance(
    module_clients: AwsClients, verified_good_ami: str, tmp_path: Path
) -> None:
    instance_id = _run_instance(module_clients, verified_good_ami)
    try:
        proc = _factory("-O", "json", "verify", "--instance", instance_id, tmp_path=tmp_path)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        [result] = json.loads(out)["results"]
        assert result["live"] is True and result["outcome"] == "verified"
        assert result["instance_id"] == instance_id and result["ami_id"] == verified_good_ami
        text = _factory("verify", "--instance", instance_id, tmp_path=tmp_path)
        shown, _ = text.communicate(timeout=300)
        assert shown.startswith(f"{instance_id} ({verified_good_ami})  verified"), shown
    finally:
        module_clients.client("ec2").terminate_instances(InstanceIds=[instance_id])


def test_live_verification_with_the_instances_key_pair(
    module_clients: AwsClients, verified_good_ami: str, tmp_path: Path
) -> None:
    name = f"live-{os.getpid()}-{time.monotonic_ns()}"
    key = _key_pair(module_clients, tmp_path, name)
    stranger = _key_pair(module_clients, tmp_path, name + "-other")
    ec2 = module_clients.client("ec2")
    instance_id = _run_instance(module_clients, verified_good_ami, KeyName=name)
    try:
        result = verify_instance(
            module_clients,
            instance_id,
            templates_dir=REPO / "templates",
            output_dir=tmp_path,
            ssh_key=key,
            progress=Progress(quiet=True),
        )
        assert result.outcome is Outcome.VERIFIED, (result.error, result.failing_tests)
        # the launch-key check compared authorized_keys with this very key pair
        assert any("test_authorized_keys_hold_only_the_launch_key" in n for n in result.durations)
        wrong = verify_instance(
            module_clients,
            instance_id,
            templates_dir=REPO / "templates",
            output_dir=tmp_path,
            ssh_key=stranger,
            progress=Progress(quiet=True),
        )
        assert wrong.outcome is Outcome.ERROR
        assert wrong.error is not None and "keeps refusing --ssh-key" in wrong.error
        assert wrong.live and wrong.instance_id == instance_id  # says which instance refused
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
        ec2.delete_key_pair(KeyName=name)
        ec2.delete_key_pair(KeyName=name + "-other")


# The group's user data: starts the app when the image has it (base does not).
GROUP_START_APP = """#!/bin/sh
if [ -f /etc/default/factory-app ]; then
  sed -i "s/^BIND=.*/BIND=$(hostname -i | cut -d' ' -f1)/" /etc/default/factory-app
  /etc/rc.local
fi
exit 0
"""
# A launch configuration that breaks this version's service: healthy instances (user data
# exits 0), but the app's configuration names no port.
GROUP_BREAKS_APP = """#!/bin/sh
[ -f /etc/default/factory-app ] && sed -i 's/^PORT=.*/PORT=http/' /etc/default/factory-app
exit 0
"""


def _group_images(clients: AwsClients, group: str) -> dict[str, str]:
    asg = clients.client("autoscaling")
    ids = [
        i["InstanceId"]
        for i in asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
            "AutoScalingGroups"
        ][0]["Instances"]
    ]
    reservations = clients.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"]: i["ImageId"] for r in reservations for i in r["Instances"]}


def _rollout(group: str, ami: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FACTORY_STATE_DIR": str(tmp_path / "state")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "factory.cli",
            "-O",
            "json",
            "rollout",
            group,
            "--ami",
            ami,
            "--min-healthy",
            "50",
            "--warmup",
            "0",
            "--verify-live",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_rollout_verify_live_rolls_back_what_fails_live_and_keeps_what_passes(
    module_clients: AwsClients, verified_good_ami: str, app_result: VerifyResult, tmp_path: Path
) -> None:
    """The app image passed verify; rolled out to a group whose launch configuration breaks
    it, the live suite fails and the group goes back to base by itself. Fixed, it stays."""
    assert app_result.ok, (app_result.error, app_result.failing_tests)
    app_ami = app_result.ami_id
    ec2 = module_clients.client("ec2")
    asg = module_clients.client("autoscaling")
    name = f"live-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    template = ec2.create_launch_template(
        LaunchTemplateName=name,
        LaunchTemplateData={
            "ImageId": verified_good_ami,
            "InstanceType": "t3.micro",
            "UserData": base64.b64encode(GROUP_BREAKS_APP.encode()).decode(),
        },
    )["LaunchTemplate"]
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name,
        MinSize=0,
        MaxSize=4,
        DesiredCapacity=2,
        AvailabilityZones=["us-east-1a"],
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplateId"], "Version": "1"},
    )
    try:
        failed = _rollout(name, app_ami, tmp_path)
        assert failed.returncode == 1, failed.stderr[-2000:]
        assert "live verification failed" in failed.stderr
        assert "test_app.py" in failed.stderr  # names what failed on the live instance
        assert set(_group_images(module_clients, name).values()) == {verified_good_ami}

        # the launch configuration fixed (a new version, base image, starts the app)
        fixed = ec2.create_launch_template_version(
            LaunchTemplateId=template["LaunchTemplateId"],
            SourceVersion="1",
            LaunchTemplateData={"UserData": base64.b64encode(GROUP_START_APP.encode()).decode()},
        )["LaunchTemplateVersion"]["VersionNumber"]
        asg.update_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={
                "LaunchTemplateId": template["LaunchTemplateId"],
                "Version": str(fixed),
            },
        )
        passed = _rollout(name, app_ami, tmp_path)
        assert passed.returncode == 0, passed.stderr[-3000:]
        report = json.loads(passed.stdout)
        assert report["status"] == "Successful" and report["verify_live"] == "passed"
        assert " 0 failed" in report["verify_live_detail"]
        assert set(_group_images(module_clients, name).values()) == {app_ami}
    finally:
        asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
        ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
