"""`factory build/render/validate` against the local cloud with the real Packer binary.

The test family `smoke` (tests/fixtures/templates, communicator "none") covers the driver,
events, manifest, tagging, dedupe, failures and signals in about a second per build; the real
`base` and `app` families are built once over SSH and the app's service is asked over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from factory import tags as T
from factory.aws import AwsClients, AwsTarget, tags_dict

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FACTORY = [sys.executable, "-m", "factory"]
HOSTILE_NOTE = 'a"b ${c} %{d} \\e, f'
REQUIRED_TAGS = (
    T.FAMILY,
    T.VERSION,
    T.BUILD_ID,
    T.GIT_COMMIT,
    T.GIT_DIRTY,
    T.TEMPLATE_DIGEST,
    T.SOURCE_AMI,
    T.PACKER_VERSION,
    T.FACTORY_VERSION,
    T.STATUS,
    T.CREATED_AT,
    T.DEDUPE_KEY,
)


@dataclass(frozen=True)
class Project:
    root: Path
    config: Path
    clients: AwsClients
    endpoint: str

    def run(
        self, *args: str, timeout: float = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FACTORY, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env=env or dict(os.environ),
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*FACTORY, "--config", str(self.config), *args],
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def faults(self, specs: list[dict[str, Any]]) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/_localcloud/faults", method="POST", data=json.dumps(specs).encode()
        )
        urllib.request.urlopen(request, timeout=10).read()


def _project(root: Path, templates: Path, local_cloud: Any) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "factory.toml"
    config.write_text(
        f'[factory]\ntemplates_dir = "{templates}"\nprovisioners_dir = "{REPO / "provisioners"}"\n'
        f'state_dir = "{root / ".factory"}"\n'
    )
    clients = AwsClients(AwsTarget("us-east-1", endpoint_url=local_cloud.endpoint_url))
    return Project(root, config, clients, local_cloud.endpoint_url)


@pytest.fixture(scope="module")
def smoke(local_cloud: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = _project(
        tmp_path_factory.mktemp("smoke"), REPO / "tests/fixtures/templates", local_cloud
    )
    yield project
    project.faults([])


def _image(clients: AwsClients, ami_id: str) -> dict[str, Any]:
    return dict(clients.client("ec2").describe_images(ImageIds=[ami_id])["Images"][0])


def _live_instances(clients: AwsClients, build_id: str) -> list[str]:
    reservations = clients.client("ec2").describe_instances(
        Filters=[
            {"Name": f"tag:{T.BUILD_ID}", "Values": [build_id]},
            {
                "Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped"],
            },
        ]
    )["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"]]


def _images_of(clients: AwsClients, build_id: str) -> list[dict[str, Any]]:
    return list(
        clients.client("ec2").describe_images(
            Owners=["self"], Filters=[{"Name": f"tag:{T.BUILD_ID}", "Values": [build_id]}]
        )["Images"]
    )


def _key_pairs(clients: AwsClients, build_id: str) -> list[str]:
    pairs = clients.client("ec2").describe_key_pairs()["KeyPairs"]
    return [p["KeyName"] for p in pairs if p["KeyName"] == f"factory-{build_id}"]


def _build_json(project: Project, *args: str) -> dict[str, Any]:
    result = project.run("build", "smoke", "--output", "json", *args)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def first_build(smoke: Project) -> dict[str, Any]:
    return _build_json(
        smoke, "--var", f"note={HOSTILE_NOTE}", "--var", 'extra_tags={"team": "x,y"}'
    )


def test_build_tags_the_ami_and_snapshots_candidate(
    smoke: Project, first_build: dict[str, Any]
) -> None:
    assert first_build["status"] == "built"
    (built,) = first_build["images"]
    image = _image(smoke.clients, built["ami_id"])
    image_tags = tags_dict(image["Tags"])
    assert set(REQUIRED_TAGS) <= set(image_tags)
    assert image_tags[T.STATUS] == "candidate"
    assert image_tags[T.FAMILY] == "smoke"
    assert image_tags[T.BUILD_ID] == first_build["build_id"]
    assert image_tags[T.PACKER_VERSION] == first_build["packer_version"]
    assert image_tags[T.SOURCE_AMI] == first_build["source_ami"]
    assert image_tags[T.DEDUPE_KEY] == first_build["dedupe_key"]
    # hostile values arrive in AWS exactly as given: nothing interpolated or injected
    assert image_tags["factory-test:note"] == HOSTILE_NOTE
    assert image_tags["team"] == "x,y"
    assert image["Name"] == first_build["name"] and "latest" not in image["Name"]
    snapshots = built["snapshot_ids"]
    assert snapshots
    snap = smoke.clients.client("ec2").describe_snapshots(SnapshotIds=snapshots)["Snapshots"][0]
    assert tags_dict(snap["Tags"])[T.STATUS] == "candidate"


def test_build_dir_has_its_own_manifest_log_and_no_credentials(
    smoke: Project, first_build: dict[str, Any]
) -> None:
    build_dir = Path(first_build["build_dir"])
    manifest = json.loads((build_dir / "manifest.json").read_text())
    assert [b["artifact_id"] for b in manifest["builds"]] == [
        f"us-east-1:{first_build['images'][0]['ami_id']}"
    ]
    assert "amazon-ebs.smoke" in (build_dir / "packer.log").read_text()
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    for path in build_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path
    hcl_file = build_dir / "image.pkr.hcl"
    fmt = subprocess.run(
        ["packer", "fmt", "-check", str(hcl_file)], capture_output=True, check=False
    )
    assert fmt.returncode == 0


def test_nothing_of_the_build_is_left_running(smoke: Project, first_build: dict[str, Any]) -> None:
    assert _live_instances(smoke.clients, first_build["build_id"]) == []
    assert _key_pairs(smoke.clients, first_build["build_id"]) == []


def test_unchanged_inputs_reuse_the_verified_image_unless_rebuild(
    smoke: Project, first_build: dict[str, Any]
) -> None:
    second = _build_json(
        smoke, "--var", f"note={HOSTILE_NOTE}", "--var", 'extra_tags={"team": "x,y"}'
    )
    assert second["status"] == "built"  # the first is only a candidate: no reuse yet
    assert second["build_id"] != first_build["build_id"]
    assert second["name"] != first_build["name"]
    assert second["dedupe_key"] == first_build["dedupe_key"]
    verified = second["images"][0]["ami_id"]
    smoke.clients.client("ec2").create_tags(
        Resources=[verified], Tags=[{"Key": T.STATUS, "Value": "verified"}]
    )
    reused = smoke.run(
        "build", "smoke", "--var", f"note={HOSTILE_NOTE}", "--var", 'extra_tags={"team": "x,y"}'
    )
    assert reused.returncode == 0, reused.stderr
    assert reused.stdout.startswith(f"{verified}  reused")
    different = _build_json(smoke, "--var", "note=other")
    assert different["status"] == "built" and different["dedupe_key"] != first_build["dedupe_key"]
    forced = _build_json(
        smoke, "--rebuild", "--var", f"note={HOSTILE_NOTE}", "--var", 'extra_tags={"team": "x,y"}'
    )
    assert forced["status"] == "built" and forced["images"][0]["ami_id"] != verified


def test_dry_run_changes_nothing(smoke: Project) -> None:
    before = len(smoke.clients.client("ec2").describe_images(Owners=["self"])["Images"])
    result = smoke.run("build", "smoke", "--dry-run", "--output", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["family"] == "smoke" and plan["source_ami"].startswith("ami-")
    assert not Path(plan["build_dir"]).exists()
    assert len(smoke.clients.client("ec2").describe_images(Owners=["self"])["Images"]) == before


def test_failed_build_reports_packers_error_and_tags_nothing(smoke: Project) -> None:
    smoke.faults([{"service": "ec2", "action": "CreateImage", "error": "UnauthorizedOperation"}])
    try:
        result = smoke.run("build", "smoke", "--var", "note=fails", "--output", "json")
    finally:
        smoke.faults([])
    assert result.returncode == 1
    assert "UnauthorizedOperation" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: build smoke-")
    assert "Traceback" not in result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "failed" and outcome["images"] == []
    assert any("UnauthorizedOperation" in line for line in outcome["errors"])
    assert _live_instances(smoke.clients, outcome["build_id"]) == []
    assert _key_pairs(smoke.clients, outcome["build_id"]) == []
    assert _images_of(smoke.clients, outcome["build_id"]) == []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_stop_packer_and_leave_nothing(smoke: Project, signum: int, code: int) -> None:
    # StopInstances is slow: the signal arrives while the builder instance is running
    smoke.faults([{"service": "ec2", "action": "StopInstances", "latency": 4.0}])
    try:
        proc = smoke.popen("build", "smoke", "--var", f"note=signal-{signum}")
        assert proc.stderr is not None
        build_id = None
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if " as smoke-" in line and build_id is None:
                build_id = line.split(" as ", 1)[1].split()[0]
            if "Stopping the source instance" in line:
                proc.send_signal(signum)
                break
        _, rest_err = proc.communicate(timeout=180)
    finally:
        smoke.faults([])
    assert proc.returncode == code, "".join(lines) + rest_err
    assert build_id is not None
    assert "interrupted" in rest_err
    assert _live_instances(smoke.clients, build_id) == []
    assert _key_pairs(smoke.clients, build_id) == []
    assert [
        tags_dict(i.get("Tags")).get(T.STATUS)
        for i in _images_of(smoke.clients, build_id)
        if tags_dict(i.get("Tags")).get(T.STATUS) == "candidate"
    ] == []


def test_render_list_vars_and_bad_input(smoke: Project) -> None:
    listing = smoke.run("render", "smoke", "--list-vars", "--output", "json")
    assert listing.returncode == 0, listing.stderr
    names = [v["name"] for v in json.loads(listing.stdout)["variables"]]
    assert names == ["instance_type", "note", "extra_tags"]
    out = smoke.root / "out.pkr.hcl"
    rendered = smoke.run("render", "smoke", "--var", "note=${x}", "-o", str(out))
    assert rendered.returncode == 0, rendered.stderr
    assert 'ami_description = "$${x}"' in out.read_text()
    for args, message in [
        (("render", "../../etc"), "invalid family name"),
        (("render", "nope"), "unknown family 'nope'"),
        (("render", "smoke", "--var", "nope=1"), "unknown variable 'nope'"),
        (("render", "smoke", "--var", "note"), "malformed --var"),
        (("build", "smoke", "--var", "instance_type"), "malformed --var"),
        (("validate", "../x"), "invalid family name"),
    ]:
        result = smoke.run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
        assert message in result.stderr


def test_validate_names_the_templates_own_line(smoke: Project) -> None:
    good = smoke.run("validate", "smoke")
    assert good.returncode == 0, good.stderr + good.stdout
    assert "valid" in good.stdout
    bad = smoke.run("validate", "broken")
    assert bad.returncode == 1
    template = REPO / "tests/fixtures/templates/broken/image.pkr.hcl.j2"
    line = next(
        n
        for n, text in enumerate(template.read_text().splitlines(), 1)
        if "no_such_setting" in text
    )
    assert f"{template}:{line}" in bad.stdout + bad.stderr
    assert "no_such_setting" in bad.stdout


def test_bad_setup_is_a_one_line_error(smoke: Project) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="y",
        AWS_REGION="us-east-1",
    )
    for env_change, message in [
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach"),
        ({"PATH": "/nonexistent"}, "packer not found"),
    ]:
        run_env = {**os.environ, **env_change}
        if "PATH" in env_change:
            run_env["PATH"] = "/nonexistent"
        result = subprocess.run(
            [*FACTORY, "--config", str(smoke.config), "build", "smoke"],
            capture_output=True,
            text=True,
            env=run_env,
            check=False,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    no_creds = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")
    }
    no_creds.update(
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
    )
    result = subprocess.run(
        [*FACTORY, "--config", str(smoke.config), "build", "smoke"],
        capture_output=True,
        text=True,
        env=no_creds,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2 and "no AWS credentials" in result.stderr, result.stderr


# ---- the real families, over SSH --------------------------------------------------------------


@pytest.fixture(scope="module")
def real(local_cloud: Any, tmp_path_factory: pytest.TempPathFactory) -> Project:
    return _project(tmp_path_factory.mktemp("real"), REPO / "templates", local_cloud)


@pytest.fixture(scope="module")
def base_build(real: Project) -> dict[str, Any]:
    result = real.run("build", "base", "--output", "json", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout))


def test_base_builds_over_ssh_from_the_owner_pinned_debian_image(
    real: Project, base_build: dict[str, Any]
) -> None:
    image = _image(real.clients, base_build["images"][0]["ami_id"])
    source = _image(real.clients, base_build["source_ami"])
    assert source["OwnerId"] == "136693071363" and source["Name"].startswith("debian-12-amd64-")
    assert tags_dict(image["Tags"])[T.STATUS] == "candidate"
    log = Path(base_build["log_file"]).read_text()
    assert "Connected to SSH!" in log
    assert "provisioners/common/90-cleanup.sh" in log


def test_app_refuses_a_revoked_or_unverified_base_and_builds_on_the_verified_one(
    real: Project, base_build: dict[str, Any]
) -> None:
    ec2 = real.clients.client("ec2")
    base_ami = base_build["images"][0]["ami_id"]
    refused = real.run("build", "app")
    assert refused.returncode == 2 and "no verified base" in refused.stderr, refused.stderr
    ec2.create_tags(Resources=[base_ami], Tags=[{"Key": T.STATUS, "Value": "verified"}])
    result = real.run("build", "app", "--output", "json", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    app = json.loads(result.stdout)
    assert app["source_ami"] == base_ami
    app_ami = app["images"][0]["ami_id"]
    assert tags_dict(_image(real.clients, app_ami)["Tags"])[T.SOURCE_AMI] == base_ami
    _check_app_service(real, app_ami, app)
    ec2.create_tags(
        Resources=[base_ami],
        Tags=[
            {"Key": T.STATUS, "Value": "revoked"},
            {"Key": T.REVOKED_AT, "Value": "2026-01-01T00:00:00Z"},
        ],
    )
    try:
        refused = real.run("build", "app", "--rebuild")
        assert refused.returncode == 2 and "no verified base" in refused.stderr, refused.stderr
    finally:
        ec2.delete_tags(Resources=[base_ami], Tags=[{"Key": T.REVOKED_AT}])
        ec2.create_tags(Resources=[base_ami], Tags=[{"Key": T.STATUS, "Value": "verified"}])


def _check_app_service(real: Project, app_ami: str, app: dict[str, Any]) -> None:
    """Launch the app image; the service the provisioner installed answers with its release."""
    ec2 = real.clients.client("ec2")
    user_data = (
        # what systemd's rc-local compatibility does at boot on an instance without systemd
        "#!/bin/sh\n/etc/rc.local\n"
    )
    instance = ec2.run_instances(
        ImageId=app_ami, MinCount=1, MaxCount=1, InstanceType="t3.micro", UserData=user_data
    )["Instances"][0]  # boto3 base64-encodes it
    instance_id = instance["InstanceId"]
    try:
        address = None
        body = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            described = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
                "Instances"
            ][0]
            address = described.get("PrivateIpAddress")
            if address and described["State"]["Name"] == "running":
                try:
                    with urllib.request.urlopen(f"http://{address}:8080/", timeout=2) as response:
                        body = response.read().decode()
                    break
                except OSError:
                    pass
            time.sleep(0.5)
        assert "FACTORY_FAMILY=app" in body, body
        assert f"FACTORY_BUILD_ID={app['build_id']}" in body
        with urllib.request.urlopen(f"http://{address}:8080/health", timeout=2) as response:
            assert response.read() == b"ok\n"
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
