"""`factory pipeline run` against the local cloud: real Packer, sshd and testinfra.

A templates dir with the real `base` and the deliberately broken fixture family: base is built,
verified and published to dev, broken is reported failed, the run exits 1 and releases its lock,
nothing is left running; a second run reuses base's AMI and moves no channel; a held lock makes
a run exit 3 naming the holder; --dry-run takes no lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from factory import tags as T
from factory.aws import AwsClients, AwsTarget
from factory.pipeline import LOCK_PARAMETER, LockInfo, read_lock

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FACTORY = [sys.executable, "-m", "factory"]


@dataclass(frozen=True)
class Project:
    root: Path
    config: Path
    clients: AwsClients

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FACTORY, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env=dict(os.environ),
            check=False,
        )


@pytest.fixture(scope="module")
def project(local_cloud: Any, tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("nightly")
    templates = root / "templates"
    templates.mkdir()
    (templates / "_common").symlink_to(REPO / "templates" / "_common")
    (templates / "base").symlink_to(REPO / "templates" / "base")
    (templates / "broken").symlink_to(REPO / "tests" / "fixtures" / "templates" / "broken")
    config = root / "factory.toml"
    config.write_text(
        f'[factory]\ntemplates_dir = "{templates}"\nprovisioners_dir = "{REPO / "provisioners"}"\n'
        f'state_dir = "{root / ".factory"}"\n'
    )
    clients = AwsClients(AwsTarget("us-east-1", endpoint_url=local_cloud.endpoint_url))
    return Project(root, config, clients)


def _channel(clients: AwsClients, family: str, channel: str = "dev") -> str | None:
    ssm = clients.client("ssm")
    try:
        return str(ssm.get_parameter(Name=f"/factory/{family}/{channel}")["Parameter"]["Value"])
    except ssm.exceptions.ParameterNotFound:
        return None


def _leftovers(clients: AwsClients) -> list[str]:
    """Builder and verify instances still alive, temporary key pairs and groups."""
    ec2 = clients.client("ec2")
    alive = [
        i["InstanceId"]
        for r in ec2.describe_instances(
            Filters=[
                {"Name": "tag-key", "Values": [T.BUILD_ID, T.VERIFY_RUN]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping"]},
            ]
        )["Reservations"]
        for i in r["Instances"]
    ]
    keys = [
        k["KeyName"]
        for k in ec2.describe_key_pairs()["KeyPairs"]
        if k["KeyName"].startswith(("factory-base-", "factory-broken-", "factory-verify-"))
    ]
    groups = [
        g["GroupName"]
        for g in ec2.describe_security_groups()["SecurityGroups"]
        if g["GroupName"].startswith(("packer_", "factory-verify-"))
    ]
    return alive + keys + groups


@pytest.fixture(scope="module")
def first_run(project: Project) -> dict[str, Any]:
    report = project.root / "nightly.md"
    # --rebuild: the session's local cloud may already hold a base built from the same inputs
    # (other test modules build it too); this run must build its own
    result = project.run("pipeline", "run", "--rebuild", "-O", "json", "--report", str(report))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "broken" in result.stderr and "Traceback" not in result.stderr
    doc = dict(json.loads(result.stdout))
    doc["_report"] = report.read_text()
    return doc


def test_base_is_verified_and_published_broken_fails_lock_released(
    project: Project, first_run: dict[str, Any]
) -> None:
    rows = {r["family"]: r for r in first_run["families"]}
    assert list(rows) == ["base", "broken"]
    base, broken = rows["base"], rows["broken"]
    assert base["ok"] and base["build"] == "built" and base["verify"] == "verified"
    assert base["tests_total"] > 0 and base["tests_failed"] == 0
    assert base["channel_changed"] and _channel(project.clients, "base") == base["ami_id"]
    assert not broken["ok"] and broken["build"] == "failed" and broken["ami_id"] is None
    assert _channel(project.clients, "broken") is None
    assert not first_run["ok"] and first_run["lock_released"]
    assert read_lock(project.clients) is None
    assert _leftovers(project.clients) == []
    report = first_run["_report"]
    assert "| base |" in report and "| broken |" in report and "FAILED" in report


def test_second_run_reuses_base_and_moves_no_channel(
    project: Project, first_run: dict[str, Any]
) -> None:
    base_ami = first_run["families"][0]["ami_id"]
    plan = project.run("pipeline", "run", "--dry-run", "-O", "json")
    assert plan.returncode == 0, plan.stderr[-2000:]
    planned = {f["family"]: f for f in json.loads(plan.stdout)["families"]}
    assert planned["base"]["action"] == "reuse" and planned["base"]["ami_id"] == base_ami
    assert planned["base"]["channel_move"] == "none"
    assert read_lock(project.clients) is None  # a dry run takes no lock

    result = project.run("pipeline", "run", "base", "-O", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout)["families"][0]
    assert row["build"] == "reused" and row["ami_id"] == base_ami
    assert row["verify"] == "already-verified" and not row["channel_changed"]
    assert _channel(project.clients, "base") == base_ami
    assert read_lock(project.clients) is None


def test_a_held_lock_exits_3_naming_the_holder(project: Project) -> None:
    now = datetime.now(UTC)
    holder = LockInfo(LOCK_PARAMETER, "ci@other-runner:99", "run-x", now, now + timedelta(hours=1))
    project.clients.client("ssm").put_parameter(
        Name=LOCK_PARAMETER, Value=holder.value(), Type="String"
    )
    try:
        result = project.run("pipeline", "run", "base")
        assert result.returncode == 3, result.stderr
        assert "ci@other-runner:99" in result.stderr and "since" in result.stderr
        held = read_lock(project.clients)
        assert held is not None and held.run_id == "run-x"
    finally:
        unlocked = project.run("pipeline", "unlock", "--force")
    assert unlocked.returncode == 0, unlocked.stderr
    assert read_lock(project.clients) is None
