"""Verify's plan: suites and their digests, which images may be verified, the pytest command,
who may SSH in, and cleanup that finds what an interrupted launch created (moto in-process).
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory import process, tags
from factory.aws import AwsClients, AwsTarget, tag_list
from factory.aws.model import Image
from factory.cli import cli
from factory.errors import ConfigError, Interrupted, RefusedError, VerificationError
from factory.output import Progress
from factory.verify import (
    HOST_ALIAS,
    Suite,
    VerifyFacts,
    VerifySettings,
    VerifyTarget,
    caller_cidr,
    gather_verify,
    load_suite,
    plan_verify,
    pytest_argv,
    ssh_config_text,
    suite_dirs_for,
    suite_root,
)
from factory.verify.job import Job, new_run_id
from factory.verify.lifecycle import Resources, clean_up, resource_tags

REPO = Path(__file__).resolve().parents[2]


def _family(root: Path, family: str, files: dict[str, str]) -> Path:
    tests_dir = root / family / "tests"
    tests_dir.mkdir(parents=True)
    for name, text in files.items():
        (tests_dir / name).write_text(text)
    return tests_dir


# --- suites -------------------------------------------------------------------------------


def test_default_suite_is_common_then_family(tmp_path: Path) -> None:
    common = _family(tmp_path, "_common", {"test_a.py": "def test_a(host): pass\n"})
    base = _family(tmp_path, "base", {"test_b.py": "def test_b(host): pass\n"})
    assert suite_dirs_for(tmp_path, "base") == (common, base)
    assert suite_dirs_for(tmp_path, "app") == (common,)  # no app/tests: only the shared suite
    assert suite_dirs_for(tmp_path, None) == (common,)


@pytest.mark.parametrize("family", ["../../etc", "/abs", "a/b", "..", "Base Image"])
def test_a_family_tag_is_never_a_path(tmp_path: Path, family: str) -> None:
    with pytest.raises(RefusedError, match="not a family name"):
        suite_dirs_for(tmp_path, family)


def test_suite_digest_names_exactly_what_runs(tmp_path: Path) -> None:
    common = _family(tmp_path, "_common", {"test_a.py": "A = 1\n", "conftest.py": "X = 1\n"})
    suite = load_suite([common])
    assert suite.files == ("_common/tests/conftest.py", "_common/tests/test_a.py")
    assert suite.digest.startswith("sha256:") and len(suite.digest) == 71
    # bytecode caches do not change it ...
    (common / "__pycache__").mkdir()
    (common / "__pycache__" / "test_a.cpython-311.pyc").write_bytes(b"\0")
    assert load_suite([common]).digest == suite.digest
    # ... any change to a test or a fixture does
    (common / "conftest.py").write_text("X = 2\n")
    changed = load_suite([common]).digest
    assert changed != suite.digest
    (common / "test_new.py").write_text("")
    assert load_suite([common]).digest not in (suite.digest, changed)


def test_suite_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found; pass an existing --suite"):
        load_suite([tmp_path / "nope"])
    empty = _family(tmp_path, "x", {"conftest.py": ""})
    with pytest.raises(ConfigError, match="no test_"):
        load_suite([empty])


def test_the_shipped_common_suite_loads() -> None:
    suite = load_suite(suite_dirs_for(REPO / "templates", "base"))
    assert "_common/tests/test_sshd.py" in suite.files
    assert "_common/tests/conftest.py" in suite.files


# --- plan ---------------------------------------------------------------------------------

SUITE = Suite(
    dirs=(Path("/t/_common/tests"),), files=("_common/tests/test_a.py",), digest="sha256:x"
)


def _image(ami: str = "ami-1", **kw: object) -> Image:
    values: dict[str, object] = {
        "name": "base-1",
        "state": "available",
        "owner_id": "111",
        "tags": {tags.FAMILY: "base"},
    }
    values.update(kw)
    return Image(ami_id=ami, region="r", **values)  # type: ignore[arg-type]


def _facts(
    images: list[Image],
    suites: dict[str, Suite],
    *,
    region: str = "r",
    account_id: str = "111",
    default_suite: bool = True,
) -> VerifyFacts:
    return VerifyFacts(region, account_id, tuple(images), suites, default_suite=default_suite)


def test_plan_verifies_each_image_with_its_suite() -> None:
    plan = plan_verify(
        _facts(
            [_image("ami-1"), _image("ami-2")],
            {"ami-1": SUITE, "ami-2": SUITE},
            region="eu-west-1",
        ),
        VerifySettings(parallel=2),
    )
    assert [t.ami_id for t in plan.targets] == ["ami-1", "ami-2"]
    assert all(t.family == "base" and t.tag_verdict for t in plan.targets)
    assert plan.region == "eu-west-1" and plan.warnings == ()


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (_image(state="pending"), RefusedError, "is pending, not available"),
        (
            _image(tags={tags.STATUS: "revoked", tags.REVOKED_REASON: "CVE-1"}),
            RefusedError,
            r"revoked \(CVE-1\)",
        ),
    ],
)
def test_plan_refuses(image: Image, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        plan_verify(_facts([image], {"ami-1": SUITE}), VerifySettings())


def test_plan_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="--parallel"):
        plan_verify(_facts([_image()], {"ami-1": SUITE}), VerifySettings(parallel=0))
    with pytest.raises(ConfigError, match="not a CIDR"):
        plan_verify(_facts([_image()], {"ami-1": SUITE}), VerifySettings(ssh_cidr="me"))
    with pytest.raises(ConfigError, match="no images"):
        plan_verify(_facts([], {}), VerifySettings())


def test_plan_warns_and_does_not_tag_what_is_not_ours() -> None:
    plan = plan_verify(
        _facts([_image(owner_id="136693071363", tags={})], {"ami-1": SUITE}), VerifySettings()
    )
    assert plan.targets[0].tag_verdict is False
    assert any("belongs to account 136693071363" in w for w in plan.warnings)
    assert any("no factory:family tag" in w for w in plan.warnings)
    explicit = plan_verify(
        _facts([_image(tags={})], {"ami-1": SUITE}, default_suite=False), VerifySettings()
    )
    assert explicit.warnings == ()


# --- the pytest run -----------------------------------------------------------------------


def test_pytest_argv_is_hermetic_and_pinned(tmp_path: Path) -> None:
    dirs = (tmp_path / "templates/_common/tests", tmp_path / "templates/base/tests")
    argv = pytest_argv(
        dirs,
        ssh_config=tmp_path / "ssh_config",
        junit_path=tmp_path / "j.xml",
        ini_path=tmp_path / "pytest.ini",
        ami_id="ami-1",
        python="/py",
    )
    assert argv[:3] == ("/py", "-m", "pytest")
    joined = " ".join(argv)
    assert "-p testinfra.plugin" in joined and "-p factory.verify_plugin" in joined
    assert f"--hosts paramiko://{HOST_ALIAS}?ssh_config={tmp_path / 'ssh_config'}" in joined
    assert f"--junitxml {tmp_path / 'j.xml'}" in joined
    assert f"--rootdir {tmp_path / 'templates'}" in joined
    assert argv[-2:] == tuple(str(d) for d in dirs)
    assert suite_root(dirs) == tmp_path / "templates"


def test_ssh_config_pins_the_host_key(tmp_path: Path) -> None:
    text = ssh_config_text("127.40.0.9", "admin", tmp_path / "id", tmp_path / "kh")
    assert f"Host {HOST_ALIAS}\n" in text
    assert "HostName 127.40.0.9" in text and "User admin" in text
    assert f"UserKnownHostsFile {tmp_path / 'kh'}" in text
    assert "StrictHostKeyChecking yes" in text


def test_caller_cidr_is_this_machine_as_the_instance_sees_it() -> None:
    assert caller_cidr("127.40.0.9") == "127.0.0.1/32"

    def public() -> str:
        return "198.51.100.7"

    try:
        source = caller_cidr("8.8.8.8", lookup_public_ip=public)
    except OSError:
        pytest.skip("no route to a public address here")
    local = ipaddress.ip_network(source)
    # a public instance sees our public address when we are behind NAT, else our own
    assert source == "198.51.100.7/32" or local.is_global


# --- cleanup finds what an interrupted launch left (moto in-process) ------------------------


def _any_ami(clients: AwsClients) -> str:
    return str(clients.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"])


def test_cleanup_removes_what_an_interrupted_run_created(aws: AwsClients, tmp_path: Path) -> None:
    """RunInstances returned but we never saw the id (signal): the run tag still finds it."""
    ec2 = aws.client("ec2")
    ami = _any_ami(aws)
    target = VerifyTarget(ami_id=ami, name="x", family=None, suite=SUITE)
    workdir = tmp_path / "work"
    workdir.mkdir()
    job = Job(
        clients=aws,
        target=target,
        settings=VerifySettings(),
        run_id=new_run_id(ami),
        result_dir=tmp_path / "results",
        workdir=workdir,
        progress=Progress(quiet=True),
        interrupts=process.Interrupts(),
    )
    res = Resources(run_id=job.run_id, key_name=f"k-{job.run_id}", group_name=f"g-{job.run_id}")
    ec2.create_security_group(GroupName=res.group_name, Description="d")  # id never recorded
    ec2.import_key_pair(
        KeyName=res.key_name,
        PublicKeyMaterial=(
            b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAgZOqzRVcRmoC+m94oIRQqIF+YX8evADqRXiGP4fvb6"
        ),
    )
    res.key_imported = True
    ec2.run_instances(
        ImageId=ami,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list(resource_tags(job))}],
    )
    res.launch_requested = True  # ... and the reply was lost

    report, kept = clean_up(job, res, keep=False, address=None)

    assert kept is None and report.leftovers == ()
    assert len(report.instances_terminated) == 1
    assert report.key_pair_deleted and report.security_group_deleted
    states = {
        i["State"]["Name"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["InstanceId"] in report.instances_terminated
    }
    assert states == {"terminated"}
    assert (
        ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [res.key_name]}])["KeyPairs"]
        == []
    )
    assert (
        ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [res.group_name]}])[
            "SecurityGroups"
        ]
        == []
    )
    assert not workdir.exists()


def test_gather_names_missing_images(aws: AwsClients, tmp_path: Path) -> None:
    _family(tmp_path, "_common", {"test_a.py": "def test_a(host): pass\n"})
    with pytest.raises(ConfigError, match="no such image in us-east-1: ami-12345678"):
        gather_verify(aws, ["ami-12345678"], templates_dir=tmp_path)


def test_cli_dry_run_prints_the_plan(aws: AwsClients, tmp_path: Path) -> None:
    common = _family(tmp_path / "templates", "_common", {"test_a.py": "def test_a(host): pass\n"})
    ami = _any_ami(aws)
    ec2 = aws.client("ec2")
    instance = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]
    own = ec2.create_image(InstanceId=instance["InstanceId"], Name="base-1")["ImageId"]
    ec2.create_tags(Resources=[own], Tags=[{"Key": tags.FAMILY, "Value": "base"}])
    before = ec2.describe_instances()["Reservations"]

    result = CliRunner().invoke(
        cli,
        [
            "--config",
            str(_config(tmp_path)),
            "verify",
            own,
            "--dry-run",
            "-O",
            "json",
            "--parallel",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["targets"][0]["ami_id"] == own
    assert plan["targets"][0]["suite"]["files"] == ["_common/tests/test_a.py"]
    assert plan["targets"][0]["suite"]["dirs"] == [str(common)]
    assert plan["settings"]["parallel"] == 2
    assert ec2.describe_instances()["Reservations"] == before  # nothing launched


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "factory.toml"
    path.write_text('[factory]\ntemplates_dir = "templates"\nstate_dir = "state"\n')
    return path


def test_a_cancelled_worker_interrupts_its_child_promptly() -> None:
    """--parallel runs pytest from worker threads, where no signal arrives: `cancel` stands in."""
    cancel = threading.Event()
    running = threading.Event()  # the child said it runs
    outcome: list[BaseException] = []

    def _worker() -> None:
        try:
            process.run(
                ["sh", "-c", "echo running; exec sleep 30"],
                cancel=cancel,
                on_stdout_line=lambda _line: running.set(),
            )
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=_worker)
    worker.start()
    assert running.wait(timeout=5)
    cancel.set()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert time.monotonic() - started < 5
    assert len(outcome) == 1 and isinstance(outcome[0], Interrupted)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify"], "name at least one AMI id (or --instance"),
        (["verify", "ami-1", "--instance", "i-1"], "drop AMI ids"),
        (["verify", "--instance", "i-1", "--keep"], "drop AMI ids, --keep"),
        (["verify", "ami-1", "--ssh-key", "k"], "--ssh-key goes with --instance"),
        (["verify", "--instance", "i-1", "--ssh-key", "/nonexistent"], "no such file"),
    ],
)
def test_cli_verify_instance_bad_input_changes_nothing(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # any AWS call would fail
    result = CliRunner().invoke(cli, args, standalone_mode=False)
    assert isinstance(result.exception, ConfigError), result.output
    assert message in result.exception.message


# --- boot waits: what did not happen, and Ctrl-C ends them ----------------------------------


def _job(tmp_path: Path, boot_timeout: float) -> Job:
    return Job(
        clients=AwsClients(AwsTarget("us-east-1")),  # no call is made
        target=VerifyTarget(ami_id="ami-1", name="x", family=None, suite=SUITE),
        settings=VerifySettings(boot_timeout=boot_timeout),
        run_id="ami-1-run",
        result_dir=tmp_path / "results",
        workdir=tmp_path,
        progress=Progress(quiet=True),
        interrupts=process.Interrupts(),
    )


def test_a_boot_wait_says_what_did_not_happen(tmp_path: Path) -> None:
    with pytest.raises(VerificationError) as info:
        _job(tmp_path, 1.0).wait_for(lambda: None, "i-1 did not reach running", lambda: "refused")
    assert info.value.message == (
        "ami-1: i-1 did not reach running within 1s (last error: refused); see the instance's "
        "console output, or raise --boot-timeout"
    )


def test_ctrl_c_ends_a_boot_wait_before_the_next_poll(tmp_path: Path) -> None:
    job = _job(tmp_path, 600.0)
    polls: list[int] = []

    def _check() -> None:
        polls.append(1)
        job.interrupts.cancelled.set()  # as the signal handler does

    with pytest.raises(Interrupted):
        job.wait_for(_check, "i-1 did not reach running")
    assert polls == [1]
