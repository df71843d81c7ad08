"""Running a build plan: reuse the verified AMI it names, or write the build dir, run the real
Packer, read the AMI ids from the manifest post-processor and tag AMIs and snapshots
`candidate`. A failed or interrupted Packer run is followed by a sweep (`factory.build.sweep`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from factory import tags as T
from factory.aws import AwsClients, images
from factory.build.plan import BuildPlan, var_file_text
from factory.build.sweep import SweepReport, sweep_quietly
from factory.errors import Interrupted, PackerError
from factory.output import Progress, dumps, to_jsonable
from factory.packer import (
    PACKER,
    Event,
    PackerRun,
    build_argv,
    map_error_lines,
    packer_env,
    progress_text,
    read_manifest,
    run_init,
    run_packer,
)

TEMPLATE_FILE = "image.pkr.hcl"
VAR_FILE = "build.pkrvars.hcl"
MANIFEST_FILE = "manifest.json"
LOG_FILE = "packer.log"
RESULT_FILE = "result.json"
PACKER_TIMEOUT = 3 * 3600.0


@dataclass(frozen=True)
class BuiltImage:
    region: str
    ami_id: str
    snapshot_ids: tuple[str, ...]


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


def tag_candidates(
    clients: AwsClients, plan: BuildPlan, ami_ids: Sequence[str]
) -> tuple[BuiltImage, ...]:
    """Tag each built AMI and its snapshots with the build's facts and status=candidate."""
    found = images.get_many(clients, ami_ids)
    missing = [a for a in ami_ids if a not in found]
    if missing:
        raise PackerError(f"Packer's manifest names {', '.join(missing)}, which does not exist")
    final = {**plan.image_tags, T.STATUS: T.Status.CANDIDATE.value}
    built = []
    for ami_id in ami_ids:
        snapshots = found[ami_id].snapshot_ids
        images.tag(clients, [ami_id, *snapshots], final)
        built.append(BuiltImage(clients.region, ami_id, snapshots))
    return tuple(built)


def _progress_handler(progress: Progress) -> Callable[[Event], None]:
    def _on_event(event: Event) -> None:
        text = progress_text(event)
        if text:
            for line in text.splitlines():
                if line.strip():
                    progress.info(line.rstrip())

    return _on_event


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


def _write_result(result: BuildResult) -> BuildResult:
    if result.build_dir is not None and result.build_dir.is_dir():
        (result.build_dir / RESULT_FILE).write_text(dumps(result) + "\n")
    return result


def _reuse(plan: BuildPlan, clients: AwsClients, progress: Progress) -> BuildResult:
    """The verified AMI the plan names, as the result of this build."""
    started = time.monotonic()
    reused = str(plan.reuse_ami)
    progress.info(
        f"{plan.family}: inputs unchanged (dedupe key {plan.dedupe_key[:12]}), "
        f"reusing verified {reused}; pass --rebuild to build anyway"
    )
    existing = images.get(clients, reused)
    existing_tags = dict(existing.tags) if existing is not None else {}
    snapshots = existing.snapshot_ids if existing is not None else ()
    return replace(
        _result(plan, "reused", started, images=(BuiltImage(clients.region, reused, snapshots),)),
        build_id=existing_tags.get(T.BUILD_ID, ""),
        version=existing_tags.get(T.VERSION, ""),
        name=existing.name if existing is not None else "",
        tags=existing_tags,
    )


def _packer(plan: BuildPlan, clients: AwsClients, progress: Progress, packer: str) -> PackerRun:
    """Write the build dir and run `packer build` (init first where Packer wants it)."""
    env = packer_env(clients.credentials_env())
    build_dir = write_build_dir(plan)
    log_file = build_dir / LOG_FILE
    (build_dir / "plan.json").write_text(json.dumps(to_jsonable(plan), indent=2) + "\n")
    progress.info(
        f"building {plan.family} {plan.version} as {plan.build_id} from {plan.source_ami} "
        f"(log: {log_file})"
    )
    if plan.packer_init:
        run_init(build_dir / TEMPLATE_FILE, env=env, cwd=build_dir, packer=packer)
    try:
        return run_packer(
            build_argv(build_dir / TEMPLATE_FILE, build_dir / VAR_FILE, packer),
            env=env,
            cwd=build_dir,
            log_file=log_file,
            on_event=_progress_handler(progress),
            timeout=PACKER_TIMEOUT,
        )
    except Interrupted:
        progress.warn(f"interrupted: Packer has stopped; sweeping what {plan.build_id} left")
        sweep_quietly(clients, plan.build_id, progress)
        raise


def apply_build(
    plan: BuildPlan,
    clients: AwsClients,
    progress: Progress,
    *,
    packer: str = PACKER,
) -> BuildResult:
    """Run the plan: reuse, or write the build dir, run Packer, tag the images it made."""
    if plan.reuse_ami:
        return _reuse(plan, clients, progress)
    started = time.monotonic()
    packer_run = _packer(plan, clients, progress, packer)
    if packer_run.returncode != 0:
        sweep = sweep_quietly(clients, plan.build_id, progress)
        errors = tuple(e.replace(f"{plan.build_dir}/", "") for e in packer_run.errors) or (
            f"packer exited {packer_run.returncode}",
        )
        if plan.rendered is not None:
            errors = tuple(map_error_lines(errors, plan.rendered.template_line))
        return _write_result(_result(plan, "failed", started, errors=errors, sweep=sweep))
    made = read_manifest(plan.build_dir / MANIFEST_FILE)
    ours = [i.ami_id for i in made if i.region == clients.region]
    if not ours:
        sweep = sweep_quietly(clients, plan.build_id, progress)
        missing = f"Packer succeeded but its manifest names no AMI in {clients.region}"
        return _write_result(_result(plan, "failed", started, sweep=sweep, errors=(missing,)))
    result = _write_result(
        _result(plan, "built", started, images=tag_candidates(clients, plan, ours))
    )
    progress.info(f"built {', '.join(ours)} ({plan.ami_name}) in {result.seconds:.1f}s: candidate")
    return result


def require_built(result: BuildResult) -> None:
    """Raise PackerError with Packer's own lines if the build failed."""
    if result.status == "failed":
        lines = list(result.errors[-5:])  # the failing step's output ends the list
        raise PackerError(
            f"build {result.build_id} failed: {' | '.join(lines)} (log: {result.log_file})"
        )
