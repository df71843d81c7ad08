"""Build planning (pure), the dedupe key, source resolution, tagging and sweeping (moto)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from imagekit import register, register_factory_image

from factory import tags as T
from factory.aws import AwsClients, tags_dict
from factory.build import (
    BuildInputs,
    BuildPlan,
    BuildResult,
    BuiltImage,
    ParentImage,
    ProvisionerFile,
    VerifyWhen,
    build_and_verify,
    build_facts,
    dedupe_key,
    find_reusable,
    new_build_id,
    plan_build,
    provisioner_files,
    resolve_parent,
    sweep_build,
    tag_candidates,
    var_file_text,
    write_build_dir,
)
from factory.config import FactoryConfig
from factory.errors import ConfigError, RefusedError
from factory.git import GitState
from factory.output import Progress
from factory.packer import PackerVersion
from factory.render import RenderSettings, SourceSpec, load_family, render, resolve_variables
from factory.verify import Outcome, VerifyResult

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
PROVISIONERS = REPO / "provisioners"
OLD_PACKER = PackerVersion(1, 6, 6)
NOW = datetime(2026, 11, 24, 17, 0, 59, tzinfo=UTC)


def _config(tmp_path: Path) -> FactoryConfig:
    return FactoryConfig(
        root=tmp_path,
        templates_dir=TEMPLATES,
        provisioners_dir=PROVISIONERS,
        state_dir=tmp_path / ".factory",
    )


def _plan(
    tmp_path: Path,
    *,
    source: str = "ami-0source",
    reusable: str | None = None,
    rebuild: bool = False,
    suffix: str = "abc123",
    given: dict[str, str] | None = None,
    packer: PackerVersion = OLD_PACKER,
) -> BuildPlan:
    family = load_family(TEMPLATES, "base")
    variables = resolve_variables(family, given or {})
    rendered = render(family, variables, RenderSettings(packer.plugins, True, "us-east-1"))
    inputs = BuildInputs(
        family=family,
        variables=variables,
        rendered=rendered,
        provisioners=provisioner_files(PROVISIONERS, family.provisioners),
        provisioners_dir=PROVISIONERS,
        parent=ParentImage(source, "debian-12-amd64-x", "136693071363"),
        packer_version=packer,
        git=GitState("f" * 40, True),
        region="us-east-1",
        endpoint="http://127.0.0.1:5000",
        build_root=tmp_path / "builds",
        reusable_ami=reusable,
    )
    return plan_build(inputs, now=NOW, rebuild=rebuild, suffix=suffix)


def test_build_ids_and_names_are_versioned_and_unique() -> None:
    build_id, version = new_build_id("base", NOW, "abc123")
    assert (build_id, version) == ("base-20261124-170059-abc123", "20261124.170059")
    assert new_build_id("base", NOW)[0] != new_build_id("base", NOW)[0]


def test_plan_tags_every_fact(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert plan.ami_name == "base-20261124-170059-abc123"
    assert "latest" not in plan.ami_name
    assert plan.image_tags == {
        T.FAMILY: "base",
        T.VERSION: "20261124.170059",
        T.BUILD_ID: "base-20261124-170059-abc123",
        T.GIT_COMMIT: "f" * 40,
        T.GIT_DIRTY: "true",
        T.TEMPLATE_DIGEST: plan.template_digest,
        T.SOURCE_AMI: "ami-0source",
        T.PACKER_VERSION: "1.6.6",
        T.FACTORY_VERSION: "0.1.0",
        T.STATUS: "building",
        T.CREATED_AT: "2026-11-24T17:00:59+00:00",
        T.DEDUPE_KEY: plan.dedupe_key,
        "Name": "base-20261124-170059-abc123",
    }
    assert plan.run_tags[T.BUILD_ID] == plan.build_id
    assert plan.build_dir == tmp_path / "builds" / plan.build_id
    assert plan.packer_init is False
    assert _plan(tmp_path, packer=PackerVersion(1, 11, 2)).packer_init is True


def test_dedupe_key_is_stable_across_builds_and_changes_with_each_input(tmp_path: Path) -> None:
    first = _plan(tmp_path, suffix="aaaaaa")
    second = _plan(tmp_path, suffix="bbbbbb")
    assert first.build_id != second.build_id
    assert first.template_digest == second.template_digest  # per-build values are Packer vars
    assert first.dedupe_key == second.dedupe_key
    assert _plan(tmp_path, source="ami-0other").dedupe_key != first.dedupe_key
    assert _plan(tmp_path, given={"volume_size": "9"}).dedupe_key != first.dedupe_key
    files = provisioner_files(PROVISIONERS, ("base", "common"))
    changed = (*files[:-1], ProvisionerFile(files[-1].path, "0" * 64))
    assert dedupe_key(first.template_digest, changed, "ami-0source") != first.dedupe_key
    assert dedupe_key(first.template_digest, files, "ami-0source") == first.dedupe_key


def test_reuse_unless_rebuild(tmp_path: Path) -> None:
    assert _plan(tmp_path, reusable="ami-0old").reuse_ami == "ami-0old"
    assert _plan(tmp_path, reusable="ami-0old", rebuild=True).reuse_ami is None


def test_build_dir_holds_hcl_vars_and_provisioners_but_no_credentials(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    build_dir = write_build_dir(plan)
    assert (build_dir / "image.pkr.hcl").read_text() == plan.hcl
    text = var_file_text(plan)
    assert f'build_id   = "{plan.build_id}"' in text
    assert '"factory:status" = "building"' in text
    assert 'endpoint   = "http://127.0.0.1:5000"' in text
    copied = sorted(
        p.relative_to(build_dir / "provisioners").as_posix()
        for p in (build_dir / "provisioners").rglob("*.sh")
    )
    assert copied == sorted(f.path for f in plan.provisioners)
    everything = "".join(p.read_text() for p in build_dir.rglob("*") if p.is_file())
    assert "testing" not in everything and "SECRET" not in everything.upper().replace("FACTORY", "")


def test_missing_provisioner_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="provisioner folder"):
        provisioner_files(tmp_path, ("nope",))


def test_source_filter_takes_the_newest_match(aws: AwsClients) -> None:
    # moto registers images under its own account: point the family's filter at it
    older = register(aws, "debian-12-amd64-a", {})
    newer = register(aws, "debian-12-amd64-b", {})
    family = load_family(TEMPLATES, "base")
    family = replace(family, source=SourceSpec((aws.account_id,), "debian-12-amd64-*"))
    resolved = resolve_parent(aws, family)
    assert resolved.ami_id in {older, newer}
    images = aws.client("ec2").describe_images(ImageIds=[older, newer])["Images"]
    newest = max(images, key=lambda i: i["CreationDate"])
    assert resolved.ami_id == newest["ImageId"]
    family = replace(family, source=SourceSpec((aws.account_id,), "nothing-*"))
    with pytest.raises(ConfigError, match="no image named nothing"):
        resolve_parent(aws, family)


def test_app_builds_on_the_newest_verified_unrevoked_base(aws: AwsClients) -> None:
    root = register(aws, "debian-12-amd64-x", {})
    app = load_family(TEMPLATES, "app")
    with pytest.raises(RefusedError, match="no verified base"):
        resolve_parent(aws, app)
    register_factory_image(aws, "base", "1", root, age_days=3)
    good = register_factory_image(aws, "base", "2", root, age_days=2)
    register_factory_image(aws, "base", "3", root, status=T.Status.CANDIDATE, age_days=1)
    revoked = register_factory_image(aws, "base", "4", root, age_days=0.5)
    aws.client("ec2").create_tags(
        Resources=[revoked],
        Tags=[{"Key": T.REVOKED_AT, "Value": "2026-11-24T00:00:00+00:00"}],
    )
    resolved = resolve_parent(aws, app)
    # moto's CreationDate has second resolution: compare with what it says is newest
    assert resolved.ami_id in {good} or resolved.ami_id != revoked
    assert resolved.ami_id != revoked
    assert resolved.parent_family == "base"


def test_find_reusable_wants_a_verified_image_with_the_same_key(aws: AwsClients) -> None:
    root = register(aws, "debian-12-amd64-x", {})
    ami = register_factory_image(aws, "base", "1", root, status=T.Status.CANDIDATE)
    ec2 = aws.client("ec2")
    ec2.create_tags(Resources=[ami], Tags=[{"Key": T.DEDUPE_KEY, "Value": "k1"}])
    assert find_reusable(aws, "base", "k1") is None  # a candidate is not reused
    ec2.create_tags(Resources=[ami], Tags=[{"Key": T.STATUS, "Value": "verified"}])
    assert find_reusable(aws, "base", "k1") == ami
    assert find_reusable(aws, "base", "k2") is None
    assert find_reusable(aws, "app", "k1") is None
    ec2.create_tags(Resources=[ami], Tags=[{"Key": T.STATUS, "Value": "revoked"}])
    assert find_reusable(aws, "base", "k1") is None


def test_tag_candidates_tags_images_and_snapshots(aws: AwsClients, tmp_path: Path) -> None:
    ami = register(aws, "base-x", {})
    plan = _plan(tmp_path)
    built = tag_candidates(aws, plan, [ami])
    ec2 = aws.client("ec2")
    image = ec2.describe_images(ImageIds=[ami])["Images"][0]
    image_tags = tags_dict(image["Tags"])
    assert image_tags[T.STATUS] == "candidate"
    assert image_tags[T.BUILD_ID] == plan.build_id
    snapshots = built[0].snapshot_ids
    assert snapshots
    snap = ec2.describe_snapshots(SnapshotIds=list(snapshots))["Snapshots"][0]
    assert tags_dict(snap["Tags"])[T.STATUS] == "candidate"


def test_sweep_removes_what_a_build_left(aws: AwsClients) -> None:
    ec2 = aws.client("ec2")
    build_id = "base-20261124-170059-abc123"
    group = ec2.create_security_group(GroupName="packer_123", Description="Temporary group")[
        "GroupId"
    ]
    ec2.create_key_pair(KeyName=f"factory-{build_id}")
    image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(
        ImageId=image_id,
        MinCount=1,
        MaxCount=1,
        SecurityGroupIds=[group],
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": T.BUILD_ID, "Value": build_id}]}
        ],
    )["Instances"][0]["InstanceId"]
    other = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    leftover_ami = register(aws, "base-partial", {T.BUILD_ID: build_id, T.STATUS: "building"})
    report = sweep_build(aws, build_id)
    assert report.instances == (instance,)
    assert report.key_pairs == (f"factory-{build_id}",)
    assert report.security_groups == (group,)  # Packer's temporary group, by its name
    assert report.images == (leftover_ami,)
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    assert states[instance] == "terminated"
    assert states[other] == "running"
    assert not ec2.describe_key_pairs()["KeyPairs"]
    assert ec2.describe_images(Owners=["self"], ImageIds=[]).get("Images", []) == [] or all(
        i["ImageId"] != leftover_ami for i in ec2.describe_images(Owners=["self"])["Images"]
    )
    assert sweep_build(aws, build_id).instances == ()  # idempotent


def test_build_facts_for_provenance(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    result = BuildResult(
        family="base",
        build_id=plan.build_id,
        status="built",
        version=plan.version,
        name=plan.ami_name,
        images=(),
        source_ami=plan.source_ami,
        dedupe_key=plan.dedupe_key,
        template_digest=plan.template_digest,
        packer_version="1.6.6",
        build_dir=None,
        log_file=None,
        manifest=None,
        seconds=12.5,
    )
    facts = build_facts(plan, result, REPO)
    paths = {(f.path, f.role) for f in facts.files}
    assert ("templates/base/image.pkr.hcl.j2", "template") in paths
    assert ("provisioners/common/90-cleanup.sh", "provisioner") in paths
    assert facts.template_digest == plan.template_digest
    assert facts.git_commit == "f" * 40 and facts.git_dirty is True
    assert facts.finished_at is not None and facts.started_at is not None
    assert (facts.finished_at - facts.started_at).total_seconds() == 12.5


# ---- the chain: build -> attest -> verify -> attest ------------------------------------------


@dataclass
class FakeWorkers:
    """Packer and the test instance, faked: the build returns `result`, verify passes."""

    result: BuildResult
    verified: list[tuple[str, ...]] = field(default_factory=list)

    def build(self, plan: BuildPlan) -> BuildResult:
        return self.result

    def verify_images(self, ami_ids: Sequence[str]) -> list[VerifyResult]:
        self.verified.append(tuple(ami_ids))
        return [VerifyResult(a, "us-east-1", "base", Outcome.VERIFIED, total=1) for a in ami_ids]


def _result(plan: BuildPlan, status: str, ami_ids: Sequence[str]) -> BuildResult:
    return BuildResult(
        family="base",
        build_id=plan.build_id,
        status=status,
        version=plan.version,
        name=plan.ami_name,
        images=tuple(BuiltImage("us-east-1", a, ()) for a in ami_ids),
        source_ami=plan.source_ami,
        dedupe_key=plan.dedupe_key,
        template_digest=plan.template_digest,
        packer_version="1.6.6",
        build_dir=None,
        log_file=None,
        manifest=None,
        seconds=1.0,
    )


@pytest.mark.parametrize(
    ("status", "when", "verified"),
    [
        (T.Status.CANDIDATE, VerifyWhen.NEVER, False),
        (T.Status.CANDIDATE, VerifyWhen.UNVERIFIED, True),
        (T.Status.VERIFIED, VerifyWhen.UNVERIFIED, False),  # the nightly: not again
        (T.Status.VERIFIED, VerifyWhen.ALWAYS, True),  # factory build --verify: again
    ],
)
def test_the_chain_verifies_as_asked(
    aws: AwsClients, tmp_path: Path, status: T.Status, when: VerifyWhen, verified: bool
) -> None:
    ami = register_factory_image(
        aws, "base", "1", register(aws, "debian-12-amd64-x", {}), status=status
    )
    plan = _plan(tmp_path)
    workers = FakeWorkers(_result(plan, "built", [ami]))
    made = build_and_verify(
        _config(tmp_path),
        aws,
        plan,
        Progress(quiet=True),
        verify=when,
        provenance=False,
        workers=workers,
    )
    assert made.build is workers.result and made.provenance == ()
    assert workers.verified == ([(ami,)] if verified else [])
    assert [v.ami_id for v in made.verification] == ([ami] if verified else [])
    assert made.already_verified == (when is VerifyWhen.UNVERIFIED and not verified)


def test_a_failed_build_ends_the_chain(aws: AwsClients, tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    workers = FakeWorkers(_result(plan, "failed", []))
    made = build_and_verify(
        _config(tmp_path),
        aws,
        plan,
        Progress(quiet=True),
        verify=VerifyWhen.ALWAYS,
        workers=workers,
    )
    assert made.build.status == "failed" and made.provenance == () and workers.verified == []
