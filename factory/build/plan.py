"""The build plan (pure): the build's id and version, how its images and Packer's builder
instance will be tagged, where its build dir goes, and whether a verified AMI is reused instead.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factory import __version__
from factory import tags as T
from factory.build.gather import BuildInputs, ProvisionerFile
from factory.render import Rendered, hcl


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
    inputs: BuildInputs,
    *,
    now: datetime,
    rebuild: bool = False,
    suffix: str | None = None,
) -> BuildPlan:
    """What the build will do and how its images will be tagged (pure)."""
    family, rendered, git = inputs.family, inputs.rendered, inputs.git
    build_id, version = new_build_id(family.name, now, suffix)
    key = inputs.dedupe_key
    image_tags = {
        T.FAMILY: family.name,
        T.VERSION: version,
        T.BUILD_ID: build_id,
        T.GIT_COMMIT: git.commit or "unknown",
        T.GIT_DIRTY: "true" if git.dirty else "false",
        T.TEMPLATE_DIGEST: rendered.digest,
        T.SOURCE_AMI: inputs.parent.ami_id,
        T.PACKER_VERSION: inputs.packer_version.text,
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
        region=inputs.region,
        source_ami=inputs.parent.ami_id,
        source_name=inputs.parent.name,
        template_digest=rendered.digest,
        provisioners=inputs.provisioners,
        dedupe_key=key,
        image_tags=image_tags,
        run_tags=run_tags,
        build_dir=inputs.build_root / build_id,
        packer_version=inputs.packer_version.text,
        packer_init=inputs.packer_version.plugins,
        git_commit=git.commit,
        git_dirty=git.dirty,
        reuse_ami=None if rebuild else inputs.reusable_ami,
        variables=dict(inputs.variables),
        endpoint=inputs.endpoint,
        hcl=rendered.hcl,
        template_files=family.templates,
        provisioners_dir=inputs.provisioners_dir,
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
