"""The local cloud's control plane over HTTP: up/down/status/env and fault injection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
import pytest

from factory.aws import AwsClients, AwsTarget, call
from factory.errors import AwsError
from factory.localcloud import control

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control.LocalCloudStatus]:
    state = tmp_path_factory.mktemp("cp")
    status = control.up(state, instances=False)
    yield status
    control.down(state)


def _factory(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_up_twice_status_env_down(tmp_path: Path) -> None:
    state = tmp_path / "lc"
    first = _factory("local", "up", "--no-instances", "--state-dir", str(state), "-O", "json")
    assert first.returncode == 0, first.stderr
    started = json.loads(first.stdout)
    assert started["running"] and not started["already_running"]
    assert (state / "server.pid").read_text().strip() == str(started["pid"])

    again = json.loads(
        _factory("local", "up", "--no-instances", "--state-dir", str(state), "-O", "json").stdout
    )
    assert again["already_running"] and again["pid"] == started["pid"]

    env_text = _factory("local", "env", "--state-dir", str(state)).stdout
    exports = dict(line.removeprefix("export ").split("=", 1) for line in env_text.splitlines())
    assert exports["AWS_ENDPOINT_URL"] == started["endpoint_url"]
    ec2 = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=exports["AWS_ENDPOINT_URL"],
        aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"].strip("'"),
    )
    assert ec2.describe_regions()["Regions"]

    status = _factory("local", "status", "--state-dir", str(state))
    assert "running at " + started["endpoint_url"] in status.stdout

    down = _factory("local", "down", "--state-dir", str(state))
    assert down.returncode == 0
    assert not control.status(state).running
    assert not control._alive(started["pid"])
    assert "not running" in _factory("local", "status", "--state-dir", str(state)).stdout


def test_endpoint_not_answering_is_a_one_line_config_error() -> None:
    clients = AwsClients(AwsTarget("us-east-1", endpoint_url="http://127.0.0.1:9"))
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "x")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "y")
    from factory.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot reach"):
        call(clients.client("ec2"), "DescribeImages", Owners=["self"])


def _set_faults(status: control.LocalCloudStatus, faults: list[dict[str, object]]) -> None:
    req = urllib.request.Request(
        f"{status.endpoint_url}/_localcloud/faults", data=json.dumps(faults).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def test_injected_throttling_is_retried_by_the_adaptive_client(
    control_plane: control.LocalCloudStatus,
) -> None:
    env = control.env_vars(control_plane)
    session = boto3.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    clients = AwsClients(AwsTarget("us-east-1", endpoint_url=control_plane.endpoint_url), session)
    _set_faults(
        control_plane,
        [{"service": "ec2", "action": "DescribeImages", "error": "Throttling", "count": 2}],
    )
    try:
        images = call(clients.client("ec2"), "DescribeImages", Owners=["self"])
        assert images["Images"] == []
        assert clients.counter.calls["DescribeImages"] == 1  # one logical call, retried inside
    finally:
        _set_faults(control_plane, [])


def test_injected_5xx_without_retries_is_an_aws_error(
    control_plane: control.LocalCloudStatus,
) -> None:
    env = control.env_vars(control_plane)
    ec2 = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=control_plane.endpoint_url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    _set_faults(control_plane, [{"service": "ec2", "action": "DescribeImages", "error": "503"}])
    try:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            ec2.describe_images(Owners=["self"])
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        with pytest.raises(AwsError, match="DescribeImages"):
            call(ec2, "DescribeImages", Owners=["self"])
    finally:
        _set_faults(control_plane, [])
