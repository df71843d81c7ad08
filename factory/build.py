"""`factory build`: render a family, run the real Packer, tag what it made.

`prepare_build` gathers the facts (render, resolve the source image, look for a reusable AMI
with the same dedupe key), `plan_build` turns them into a `BuildPlan` (pure), and
`apply_build` writes the build dir, runs Packer, reads the AMI ids from the manifest
post-processor and tags AMIs and snapshots `candidate`. An interrupted or failed Packer run
is followed by a sweep of whatever still carries the build's `factory:build-id` tag.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from factory import __version__
from factory import tags as T
from factory.aws import (
    AwsClients,
    aws_errors,
    call,
    packer_endpoint,
    paginate,
    tag_list,
    tags_dict,
)
from factory.catalog import is_revoked, refuse_revoked_parent
from factory.config import FactoryConfig
from factory.errors import ConfigError, FactoryError, Interrupted, PackerError, RefusedError
from factory.git import GitState, git_state
from factory.output import Progress, dumps, to_jsonable
from factory.packer import (
    PACKER,
    Event,
    PackerVersion,
    build_argv,
    detect_version,
    error_lines,
    init_argv,
    map_error_lines,
    packer_env,
    progress_text,
    read_manifest,
    run_packer,
    validate_argv,
)
from factory.process import run
from factory.provenance import BuildFacts, ProvenanceRecord, attest_build, file_digests
from factory.render import (
    Family,
    Rendered,
    RenderSettings,
    hcl,
    load_family,
    render,
    resolve_variables,
)

PERMISSIONS = (
    "ec2:DescribeImages",
    "ec2:DescribeInstances",
    "ec2:CreateTags",
    "ec2:TerminateInstances",
    "ec2:DescribeKeyPairs",
    "ec2:DeleteKeyPair",
    "ec2:DeleteSecurityGroup",
    "ec2:DeregisterImage",
    "ec2:DeleteSnapshot",
    # and what Packer's amazon-ebs builder needs (RunInstances, CreateImage, ...)
)

TEMPLATE_FILE = "image.pkr.hcl"
VAR_FILE = "build.pkrvars.hcl"
MANIFEST_FILE = "manifest.json"
LOG_FILE = "packer.log"
RESULT_FILE = "result.json"
PACKER_TIMEOUT = 3 * 3600.0


# ---- facts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceImage:
    ami_id: str
    name: str
    owner: str
    parent_family: str | None = None  # set when the source is a factory image (lineage)


@dataclass(frozen=True)
class ProvisionerFile:
    path: str  # relative to the provisioners dir, e.g. base/10-updates.sh
    sha256: str


def provisioner_files(
    provisioners_dir: Path, folders: Sequence[str]
) -> tuple[ProvisionerFile, ...]:
    out: list[ProvisionerFile] = []
    for folder in folders:
        base = provisioners_dir / folder
        if not base.is_dir():
            raise ConfigError(f"provisioner folder {base} not found; create it or fix family.toml")
        for file in sorted(p for p in base.rglob("*") if p.is_file()):
            rel = file.relative_to(provisioners_dir).as_posix()
            out.append(ProvisionerFile(rel, hashlib.sha256(file.read_bytes()).hexdigest()))
    return tuple(out)


def dedupe_key(
    template_digest: str, provisioners: Sequence[ProvisionerFile], source_ami: str
) -> str:
    """Same key = same inputs: rendered HCL, provisioner contents, resolved source AMI."""
    doc = {
        "template": template_digest,
        "provisioners": [[p.path, p.sha256] for p in provisioners],
        "source_ami": source_ami,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _newest(images: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    def _key(image: Mapping[str, Any]) -> tuple[str, str]:
        created = tags_dict(image.get("Tags")).get(T.CREATED_AT, "")
        return (str(image.get("CreationDate", "")), created)

    return max(images, key=_key) if images else None


def resolve_source(clients: AwsClients, family: Family) -> SourceImage:
    """The family's source image, resolved now: the filter's newest match, or the parent
    family's newest verified (not revoked) image."""
    ec2 = clients.client("ec2")
    spec = family.source
    if spec.parent:
        images = [
            image
            for image in paginate(
                ec2,
                "DescribeImages",
                "Images",
                Owners=["self"],
                Filters=[
                    {"Name": f"tag:{T.FAMILY}", "Values": [spec.parent]},
                    {"Name": f"tag:{T.STATUS}", "Values": [T.Status.VERIFIED.value]},
                ],
            )
            if not is_revoked(tags_dict(image.get("Tags")))
        ]
        newest = _newest(images)
        if newest is None:
            raise RefusedError(
                f"no verified {spec.parent} image in {clients.region} for family {family.name}; "
                f"build and verify {spec.parent} first "
                f"(factory build {spec.parent}, factory verify)"
            )
        ami_id = str(newest["ImageId"])
        refuse_revoked_parent(clients, ami_id)
        return SourceImage(
            ami_id, str(newest.get("Name", "")), str(newest.get("OwnerId", "")), spec.parent
        )
    if not spec.owners or not spec.name:
        raise ConfigError(
            f"family {family.name} names no source image; add [source] to family.toml"
        )
    images = list(
        paginate(
            ec2,
            "DescribeImages",
            "Images",
            Owners=list(spec.owners),
            Filters=[
                {"Name": "name", "Values": [spec.name]},
                {"Name": "state", "Values": ["available"]},
            ],
        )
    )
    newest = _newest(images)
    if newest is None:
        raise ConfigError(
            f"no image named {spec.name} owned by {', '.join(spec.owners)} in {clients.region}; "
            "check the region (or start the local cloud with `factory local up`)"
        )
    ami_id = str(newest["ImageId"])
    refuse_revoked_parent(clients, ami_id)
    return SourceImage(ami_id, str(newest.get("Name", "")), str(newest.get("OwnerId", "")))


def find_reusable(clients: AwsClients, family: str, key: str) -> str | None:
    """A verified, unrevoked AMI of `family` built from the same inputs, if there is one."""
    images = [
        image
        for image in paginate(
            clients.client("ec2"),
            "DescribeImages",
            "Images",
            Owners=["self"],
            Filters=[
                {"Name": f"tag:{T.FAMILY}", "Values": [family]},
                {"Name": f"tag:{T.DEDUPE_KEY}", "Values": [key]},
                {"Name": f"tag:{T.STATUS}", "Values": [T.Status.VERIFIED.value]},
            ],
        )
        if not is_revoked(tags_dict(image.get("Tags")))
    ]
    newest = _newest(images)
    return str(newest["ImageId"]) if newest is not None else None


# ---- plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildPlan:
    family: str
    build_id: str
    version: str
    ami_name: str
    region: str
    source_ami: str
    source_name: str
    template_digest: str
    provisioners: tuple[ProvisionerFile, ...]
    dedupe_key: str
    image_tags: Mapping[str, str]
    run_tags: Mapping[str, str]
    build_dir: Path
    packer_version: str
    packer_init: bool
    git_commit: str | None
    git_dirty: bool
    reuse_ami: str | None  # an existing verified AMI with the same dedupe key (no build)
    variables: Mapping[str, Any]
    endpoint: str | None = field(default=None, metadata={"internal": True})
    hcl: str = field(default="", repr=False, metadata={"internal": True})
    template_files: tuple[Path, ...] = field(default=(), metadata={"internal": True})
    provisioners_dir: Path | None = field(default=None, metadata={"internal": True})
    rendered: Rendered | None = field(default=None, repr=False, metadata={"internal": True})


def new_build_id(family: str, now: datetime, suffix: str | None = None) -> tuple[str, str]:
    """(build id, version): versioned by UTC time, unique by a random suffix; never `latest`."""
    version = now.strftime("%Y%m%d.%H%M%S")
    suffix = suffix or secrets.token_hex(3)
    return f"{family}-{now:%Y%m%d-%H%M%S}-{suffix}", version


def plan_build(
    *,
    family: Family,
    rendered: Rendered,
    variables: Mapping[str, Any],
    provisioners: tuple[ProvisionerFile, ...],
    provisioners_dir: Path,
    source: SourceImage,
    packer_version: PackerVersion,
    git: GitState,
    region: str,
    endpoint: str | None,
    build_root: Path,
    now: datetime,
    reusable_ami: str | None,
    rebuild: bool,
    suffix: str | None = None,
) -> BuildPlan:
    """What the build will do and how its images will be tagged (pure)."""
    build_id, version = new_build_id(family.name, now, suffix)
    key = dedupe_key(rendered.digest, provisioners, source.ami_id)
    image_tags = {
        T.FAMILY: family.name,
        T.VERSION: version,
        T.BUILD_ID: build_id,
        T.GIT_COMMIT: git.commit or "unknown",
        T.GIT_DIRTY: "true" if git.dirty else "false",
        T.TEMPLATE_DIGEST: rendered.digest,
        T.SOURCE_AMI: source.ami_id,
        T.PACKER_VERSION: packer_version.text,
        T.FACTORY_VERSION: __version__,
        T.STATUS: T.Status.BUILDING.value,  # candidate only once Packer has succeeded
        T.CREATED_AT: now.astimezone(UTC).isoformat(timespec="seconds"),
        T.DEDUPE_KEY: key,
        "Name": build_id,
    }
    run_tags = {T.BUILD_ID: build_id, T.FAMILY: family.name, "Name": f"factory-build {build_id}"}
    return BuildPlan(
        family=family.name,
        build_id=build_id,
        version=version,
        ami_name=build_id,
        region=region,
        source_ami=source.ami_id,
        source_name=source.name,
        template_digest=rendered.digest,
        provisioners=provisioners,
        dedupe_key=key,
        image_tags=image_tags,
        run_tags=run_tags,
        build_dir=build_root / build_id,
        packer_version=packer_version.text,
        packer_init=packer_version.plugins,
        git_commit=git.commit,
        git_dirty=git.dirty,
        reuse_ami=None if rebuild else reusable_ami,
        variables=dict(variables),
        endpoint=endpoint,
        hcl=rendered.hcl,
        template_files=family.templates,
        provisioners_dir=provisioners_dir,
        rendered=rendered,
    )


def var_file_text(plan: BuildPlan) -> str:
    """The per-build Packer variables (no secrets: credentials travel in the environment)."""
    values: dict[str, Any] = {
        "build_id": plan.build_id,
        "version": plan.version,
        "ami_name": plan.ami_name,
        "source_ami": plan.source_ami,
        "image_tags": dict(plan.image_tags),
        "run_tags": dict(plan.run_tags),
    }
    if plan.endpoint:
        values["endpoint"] = plan.endpoint
    width = max(len(k) for k in values)
    return "".join(f"{k.ljust(width)} = {hcl(v)}\n" for k, v in values.items())


def write_build_dir(plan: BuildPlan) -> Path:
    """The build dir: rendered HCL, the variable file, the provisioners it uploads."""
    plan.build_dir.mkdir(parents=True, exist_ok=False)
    (plan.build_dir / TEMPLATE_FILE).write_text(plan.hcl)
    (plan.build_dir / VAR_FILE).write_text(var_file_text(plan))
    if plan.provisioners_dir is not None:
        for file in plan.provisioners:
            target = plan.build_dir / "provisioners" / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(plan.provisioners_dir / file.path, target)
    return plan.build_dir


# ---- apply ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    region: str
    ami_id: str
    snapshot_ids: tuple[str, ...]


@dataclass(frozen=True)
class SweepReport:
    """What a failed or interrupted build left in the cloud, and what was removed."""

    instances: tuple[str, ...] = ()
    key_pairs: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    leftovers: tuple[str, ...] = ()  # what could not be removed


@dataclass(frozen=True)
class BuildResult:
    family: str
    build_id: str
    status: str  # built | reused | failed | planned
    version: str
    name: str
    images: tuple[BuiltImage, ...]
    source_ami: str
    dedupe_key: str
    template_digest: str
    packer_version: str
    build_dir: Path | None
    log_file: Path | None
    manifest: Path | None
    seconds: float
    errors: tuple[str, ...] = ()
    sweep: SweepReport | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def ami_ids(self) -> tuple[str, ...]:
        return tuple(i.ami_id for i in self.images)


def _progress_handler(progress: Progress) -> Any:
    def _on_event(event: Event) -> None:
        text = progress_text(event)
        if text:
            for line in text.splitlines():
                if line.strip():
                    progress.info(line.rstrip())

    return _on_event


def _snapshots(image: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(
        str(m["Ebs"]["SnapshotId"])
        for m in image.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    )


def tag_candidates(
    clients: AwsClients, plan: BuildPlan, ami_ids: Sequence[str]
) -> tuple[BuiltImage, ...]:
    """Tag each built AMI and its snapshots with the build's facts and status=candidate."""
    ec2 = clients.client("ec2")
    images = list(paginate(ec2, "DescribeImages", "Images", ImageIds=list(ami_ids)))
    found = {str(i["ImageId"]): i for i in images}
    missing = [a for a in ami_ids if a not in found]
    if missing:
        raise PackerError(f"Packer's manifest names {', '.join(missing)}, which does not exist")
    final = {**plan.image_tags, T.STATUS: T.Status.CANDIDATE.value}
    built = []
    for ami_id in ami_ids:
        snapshots = _snapshots(found[ami_id])
        call(ec2, "CreateTags", Resources=[ami_id, *snapshots], Tags=tag_list(final))
        built.append(BuiltImage(clients.region, ami_id, snapshots))
    return tuple(built)


def sweep_build(clients: AwsClients, build_id: str, *, wait: float = 120.0) -> SweepReport:
    """Remove what a build left behind: its builder instance (by tag), the temporary key pair
    and security group, and any image it registered (none of them was ever a candidate)."""
    ec2 = clients.client("ec2")
    leftovers: list[str] = []
    reservations = paginate(
        ec2,
        "DescribeInstances",
        "Reservations",
        Filters=[
            {"Name": f"tag:{T.BUILD_ID}", "Values": [build_id]},
            {
                "Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped"],
            },
        ],
    )
    instances = [i for r in reservations for i in r.get("Instances", [])]
    instance_ids = [str(i["InstanceId"]) for i in instances]
    group_ids = sorted(
        {
            str(g["GroupId"])
            for i in instances
            for g in i.get("SecurityGroups", [])
            if str(g.get("GroupName", "")).startswith("packer_")
        }
    )
    if instance_ids:
        call(ec2, "TerminateInstances", InstanceIds=instance_ids)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            states = [
                i["State"]["Name"]
                for r in paginate(
                    ec2, "DescribeInstances", "Reservations", InstanceIds=instance_ids
                )
                for i in r.get("Instances", [])
            ]
            if all(s == "terminated" for s in states):
                break
            time.sleep(1.0)
        else:
            leftovers.extend(f"instance {i} (still shutting down)" for i in instance_ids)
    key_pairs: list[str] = []
    key_name = f"factory-{build_id}"
    pairs = call(ec2, "DescribeKeyPairs", Filters=[{"Name": "key-name", "Values": [key_name]}])
    for pair in pairs.get("KeyPairs", []):
        call(ec2, "DeleteKeyPair", KeyName=pair["KeyName"])
        key_pairs.append(str(pair["KeyName"]))
    groups: list[str] = []
    for group_id in group_ids:
        try:
            with aws_errors(f"ec2:DeleteSecurityGroup {group_id}"):
                ec2.delete_security_group(GroupId=group_id)
            groups.append(group_id)
        except FactoryError as exc:
            if "NotFound" not in str(exc):
                leftovers.append(f"security group {group_id} ({exc})")
    images: list[str] = []
    for image in paginate(
        ec2,
        "DescribeImages",
        "Images",
        Owners=["self"],
        Filters=[{"Name": f"tag:{T.BUILD_ID}", "Values": [build_id]}],
    ):
        ami_id = str(image["ImageId"])
        call(ec2, "DeregisterImage", ImageId=ami_id)
        for snapshot in _snapshots(image):
            try:
                call(ec2, "DeleteSnapshot", SnapshotId=snapshot)
            except FactoryError as exc:
                leftovers.append(f"snapshot {snapshot} ({exc})")
        images.append(ami_id)
    return SweepReport(
        tuple(instance_ids), tuple(key_pairs), tuple(groups), tuple(images), tuple(leftovers)
    )


def _sweep_quietly(clients: AwsClients, build_id: str, progress: Progress) -> SweepReport:
    try:
        report = sweep_build(clients, build_id)
    except FactoryError as exc:
        progress.warn(
            f"cleanup after {build_id} failed: {exc}; look for tag {T.BUILD_ID}={build_id}"
        )
        return SweepReport(leftovers=(str(exc),))
    removed = [*report.instances, *report.key_pairs, *report.security_groups, *report.images]
    if removed:
        progress.info(f"removed what the build left: {', '.join(removed)}")
    for leftover in report.leftovers:
        progress.warn(f"left behind: {leftover}")
    return report


def _result(plan: BuildPlan, status: str, started: float, **kw: Any) -> BuildResult:
    built = status == "built"
    return BuildResult(
        family=plan.family,
        build_id=plan.build_id,
        status=status,
        version=plan.version,
        name=plan.ami_name,
        images=kw.pop("images", ()),
        source_ami=plan.source_ami,
        dedupe_key=plan.dedupe_key,
        template_digest=plan.template_digest,
        packer_version=plan.packer_version,
        build_dir=plan.build_dir if status != "reused" else None,
        log_file=plan.build_dir / LOG_FILE if status != "reused" else None,
        manifest=plan.build_dir / MANIFEST_FILE if built else None,
        seconds=round(time.monotonic() - started, 3),
        tags={**plan.image_tags, T.STATUS: T.Status.CANDIDATE.value} if built else {},
        **kw,
    )


def apply_build(
    plan: BuildPlan,
    clients: AwsClients,
    progress: Progress,
    *,
    packer: str = PACKER,
) -> BuildResult:
    """Run the plan: reuse, or write the build dir, run Packer, tag the images it made."""
    started = time.monotonic()
    if plan.reuse_ami:
        progress.info(
            f"{plan.family}: inputs unchanged (dedupe key {plan.dedupe_key[:12]}), "
            f"reusing verified {plan.reuse_ami}; pass --rebuild to build anyway"
        )
        found = list(
            paginate(clients.client("ec2"), "DescribeImages", "Images", ImageIds=[plan.reuse_ami])
        )
        existing = found[0] if found else {}
        existing_tags = tags_dict(existing.get("Tags"))
        image = BuiltImage(clients.region, plan.reuse_ami, _snapshots(existing))
        return replace(
            _result(plan, "reused", started, images=(image,)),
            build_id=existing_tags.get(T.BUILD_ID, ""),
            version=existing_tags.get(T.VERSION, ""),
            name=str(existing.get("Name", "")),
            tags=existing_tags,
        )
    env = packer_env(clients.credentials_env())
    build_dir = write_build_dir(plan)
    log_file = build_dir / LOG_FILE
    (build_dir / "plan.json").write_text(json.dumps(_plan_record(plan), indent=2) + "\n")
    progress.info(
        f"building {plan.family} {plan.version} as {plan.build_id} from {plan.source_ami} "
        f"(log: {log_file})"
    )
    if plan.packer_init:
        init = run(
            init_argv(build_dir / TEMPLATE_FILE, packer), env=env, cwd=build_dir, timeout=600
        )
        if init.returncode != 0:
            lines = (init.stderr or init.stdout).strip().splitlines()[-3:]
            raise PackerError(f"packer init failed: {' | '.join(lines)}")
    try:
        packer_run = run_packer(
            build_argv(build_dir / TEMPLATE_FILE, build_dir / VAR_FILE, packer),
            env=env,
            cwd=build_dir,
            log_file=log_file,
            on_event=_progress_handler(progress),
            timeout=PACKER_TIMEOUT,
        )
    except Interrupted:
        progress.warn(f"interrupted: Packer has stopped; sweeping what {plan.build_id} left")
        _sweep_quietly(clients, plan.build_id, progress)
        raise
    if packer_run.returncode != 0:
        sweep = _sweep_quietly(clients, plan.build_id, progress)
        errors = tuple(e.replace(f"{build_dir}/", "") for e in packer_run.errors) or (
            f"packer exited {packer_run.returncode}",
        )
        if plan.rendered is not None:
            errors = tuple(map_error_lines(errors, plan.rendered.template_line))
        result = _result(plan, "failed", started, errors=errors, sweep=sweep)
        _write_result(result)
        return result
    images = read_manifest(build_dir / MANIFEST_FILE)
    ours = [i.ami_id for i in images if i.region == clients.region]
    if not ours:
        sweep = _sweep_quietly(clients, plan.build_id, progress)
        result = _result(
            plan,
            "failed",
            started,
            sweep=sweep,
            errors=(f"Packer succeeded but its manifest names no AMI in {clients.region}",),
        )
        _write_result(result)
        return result
    built = tag_candidates(clients, plan, ours)
    result = _result(plan, "built", started, images=built)
    _write_result(result)
    progress.info(f"built {', '.join(ours)} ({plan.ami_name}) in {result.seconds:.1f}s: candidate")
    return result


def _plan_record(plan: BuildPlan) -> dict[str, Any]:
    return dict(to_jsonable(plan))


def _write_result(result: BuildResult) -> None:
    if result.build_dir is not None and result.build_dir.is_dir():
        (result.build_dir / RESULT_FILE).write_text(dumps(result) + "\n")


def require_built(result: BuildResult) -> None:
    """Raise PackerError with Packer's own lines if the build failed."""
    if result.status == "failed":
        lines = list(result.errors[-5:])  # the failing step's output ends the list
        raise PackerError(
            f"build {result.build_id} failed: {' | '.join(lines)} (log: {result.log_file})"
        )


def build_facts(plan: BuildPlan, result: BuildResult, repo_root: Path) -> BuildFacts:
    """What provenance's `record_build` needs about a finished build (paths repo-relative)."""
    files = file_digests(repo_root, list(plan.template_files), "template")
    if plan.provisioners_dir is not None:
        files += file_digests(
            repo_root, [plan.provisioners_dir / p.path for p in plan.provisioners], "provisioner"
        )
    created = datetime.fromisoformat(plan.image_tags[T.CREATED_AT])
    return BuildFacts(
        family=plan.family,
        version=plan.version,
        build_id=plan.build_id,
        source_ami=plan.source_ami,
        files=files,
        git_commit=plan.git_commit,
        git_dirty=plan.git_dirty,
        packer_version=plan.packer_version,
        factory_version=__version__,
        template_digest=plan.template_digest,
        started_at=created,
        finished_at=created + timedelta(seconds=result.seconds),
    )


def attest(
    config: FactoryConfig,
    clients: AwsClients,
    plan: BuildPlan,
    result: BuildResult,
    progress: Progress,
) -> tuple[ProvenanceRecord, ...]:
    """Sign and store the build attestation of every AMI a build made (not of reused ones)."""
    if result.status != "built":
        return ()
    try:
        facts = build_facts(plan, result, config.root)
    except ConfigError as exc:  # e.g. templates outside the repository: nothing to pin them to
        progress.warn(f"build provenance not recorded: {exc}")
        return ()
    return attest_build(config, clients, result.ami_ids, facts, progress)


# ---- the whole stage -------------------------------------------------------------------------


def prepare_build(
    config: FactoryConfig,
    clients: AwsClients,
    family_name: str,
    given: Mapping[str, Any],
    *,
    rebuild: bool = False,
    packer: str = PACKER,
    now: datetime | None = None,
) -> BuildPlan:
    """Gather the facts (render, resolve the source image, find a reusable AMI) and plan."""
    family = load_family(config.templates_dir, family_name)
    variables = resolve_variables(family, given)
    clients.credentials_env()  # no credentials: fail before anything else
    version = detect_version(packer)
    endpoint = packer_endpoint(clients)
    rendered = render(
        family, variables, RenderSettings(version.plugins, endpoint is not None, clients.region)
    )
    files = provisioner_files(config.provisioners_dir, family.provisioners)
    source = resolve_source(clients, family)
    key = dedupe_key(rendered.digest, files, source.ami_id)
    reusable = None if rebuild else find_reusable(clients, family.name, key)
    return plan_build(
        family=family,
        rendered=rendered,
        variables=variables,
        provisioners=files,
        provisioners_dir=config.provisioners_dir,
        source=source,
        packer_version=version,
        git=git_state(config.root),
        region=clients.region,
        endpoint=endpoint,
        build_root=config.build_dir,
        now=now or datetime.now(UTC),
        reusable_ami=reusable,
        rebuild=rebuild,
    )


__all__ = [
    "BuildPlan",
    "BuildResult",
    "BuiltImage",
    "SourceImage",
    "SweepReport",
    "apply_build",
    "dedupe_key",
    "find_reusable",
    "plan_build",
    "prepare_build",
    "require_built",
    "resolve_source",
    "sweep_build",
]


# ---- validate ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidateResult:
    family: str
    valid: bool
    template_digest: str
    packer_version: str
    errors: tuple[str, ...]


VALIDATE_PLACEHOLDERS = {
    "build_id": "validate",
    "version": "0",
    "ami_name": "validate",
    "source_ami": "ami-00000000000000000",
}


def validate_family(
    config: FactoryConfig,
    family_name: str,
    given: Mapping[str, Any],
    *,
    region: str,
    endpoint: str | None,
    credentials: Mapping[str, str] | None = None,
    packer: str = PACKER,
) -> ValidateResult:
    """Render and `packer validate`, with Packer's errors pointed at the template's own lines."""
    family = load_family(config.templates_dir, family_name)
    variables = resolve_variables(family, given)
    version = detect_version(packer)
    rendered = render(
        family, variables, RenderSettings(version.plugins, endpoint is not None, region)
    )
    files = provisioner_files(config.provisioners_dir, family.provisioners)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="validate-", dir=config.state_dir) as tmp:
        work = Path(tmp)
        (work / TEMPLATE_FILE).write_text(rendered.hcl)
        values: dict[str, Any] = {**VALIDATE_PLACEHOLDERS, "image_tags": {}, "run_tags": {}}
        if endpoint:
            values["endpoint"] = endpoint
        (work / VAR_FILE).write_text("".join(f"{k} = {hcl(v)}\n" for k, v in values.items()))
        for file in files:
            target = work / "provisioners" / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(config.provisioners_dir / file.path, target)
        env = packer_env(credentials or {})
        if version.plugins:
            init = run(init_argv(work / TEMPLATE_FILE, packer), env=env, cwd=work, timeout=600)
            if init.returncode != 0:
                lines = (init.stderr or init.stdout).strip().splitlines()[-3:]
                raise PackerError(f"packer init failed: {' | '.join(lines)}")
        result = run(
            validate_argv(work / TEMPLATE_FILE, work / VAR_FILE, packer),
            env=env,
            cwd=work,
            timeout=300,
        )
        errors: list[str] = []
        if result.returncode != 0:
            raw = error_lines((), result.stderr, result.stdout)
            errors = [line.replace(str(work) + "/", "") for line in raw]
            errors = map_error_lines(errors, rendered.template_line)
    return ValidateResult(
        family.name, result.returncode == 0, rendered.digest, version.text, tuple(errors)
    )
