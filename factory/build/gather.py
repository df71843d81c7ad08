"""What a build is made of, read but not changed: the rendered template, the provisioners and
their digests, the parent image resolved now, and a verified AMI already built from the same
inputs (the dedupe key), if there is one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factory import tags as T
from factory.aws import AwsClients, images, packer_endpoint
from factory.aws.model import Image
from factory.catalog import refuse_revoked_parent
from factory.config import FactoryConfig
from factory.errors import ConfigError, RefusedError
from factory.git import GitState, git_state
from factory.packer import PACKER, PackerVersion, detect_version
from factory.render import Family, Rendered, RenderSettings, load_family, render, resolve_variables

_EPOCH = datetime.min.replace(tzinfo=UTC)


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


# ---- the parent image ------------------------------------------------------------------------


class NoVerifiedParent(RefusedError):
    """The parent family has no verified image yet (a run that builds it first can go on)."""


@dataclass(frozen=True)
class ParentImage:
    """The image a build starts from (its `factory:source-ami`): the newest match of the
    family's source filter, or the parent family's newest verified image."""

    ami_id: str
    name: str
    owner: str
    parent_family: str | None = None  # set when the parent is a factory image (lineage)


def _newest(found: Iterable[Image]) -> Image | None:
    """The most recently created image (EC2's CreationDate, then the build's created-at)."""
    candidates = list(found)
    if not candidates:
        return None
    return max(candidates, key=lambda i: (i.creation_date or _EPOCH, i.tags.get(T.CREATED_AT, "")))


def resolve_parent(clients: AwsClients, family: Family) -> ParentImage:
    """The family's parent image, resolved now: the filter's newest match, or the parent
    family's newest verified (not revoked) image."""
    spec = family.source
    if spec.parent:
        verified = images.find(
            clients, tags={T.FAMILY: spec.parent, T.STATUS: T.Status.VERIFIED.value}
        )
        newest = _newest(i for i in verified if not i.revoked)
        if newest is None:
            raise NoVerifiedParent(
                f"no verified {spec.parent} image in {clients.region} for family {family.name}; "
                f"build and verify {spec.parent} first "
                f"(factory build {spec.parent}, factory verify)"
            )
        refuse_revoked_parent(clients, newest.ami_id)
        return ParentImage(newest.ami_id, newest.name, newest.owner_id, spec.parent)
    if not spec.owners or not spec.name:
        raise ConfigError(
            f"family {family.name} names no source image; add [source] to family.toml"
        )
    newest = _newest(images.find(clients, owners=spec.owners, name=spec.name, state="available"))
    if newest is None:
        raise ConfigError(
            f"no image named {spec.name} owned by {', '.join(spec.owners)} in {clients.region}; "
            "check the region (or start the local cloud with `factory local up`)"
        )
    refuse_revoked_parent(clients, newest.ami_id)
    return ParentImage(newest.ami_id, newest.name, newest.owner_id)


def find_reusable(clients: AwsClients, family: str, key: str) -> str | None:
    """A verified, unrevoked AMI of `family` built from the same inputs, if there is one."""
    same_inputs = images.find(
        clients,
        tags={T.FAMILY: family, T.DEDUPE_KEY: key, T.STATUS: T.Status.VERIFIED.value},
    )
    newest = _newest(i for i in same_inputs if not i.revoked)
    return newest.ami_id if newest is not None else None


# ---- the facts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildInputs:
    """Everything a build plan is made from, as read now (nothing written, nothing built)."""

    family: Family
    variables: Mapping[str, Any]
    rendered: Rendered = field(repr=False)
    provisioners: tuple[ProvisionerFile, ...]
    provisioners_dir: Path
    parent: ParentImage
    packer_version: PackerVersion
    git: GitState
    region: str
    endpoint: str | None  # the EC2 endpoint Packer must use (None: AWS's own)
    build_root: Path
    reusable_ami: str | None  # a verified AMI with the same dedupe key (reused unless rebuild)

    @property
    def dedupe_key(self) -> str:
        return dedupe_key(self.rendered.digest, self.provisioners, self.parent.ami_id)


def gather_build(
    config: FactoryConfig,
    clients: AwsClients,
    family_name: str,
    given: Mapping[str, Any],
    *,
    packer: str = PACKER,
) -> BuildInputs:
    """Render the family, resolve its parent image, look for a reusable AMI (reads only)."""
    family = load_family(config.templates_dir, family_name)
    variables = resolve_variables(family, given)
    clients.credentials_env()  # no credentials: fail before anything else
    version = detect_version(packer)
    endpoint = packer_endpoint(clients)
    rendered = render(
        family, variables, RenderSettings(version.plugins, endpoint is not None, clients.region)
    )
    files = provisioner_files(config.provisioners_dir, family.provisioners)
    parent = resolve_parent(clients, family)
    key = dedupe_key(rendered.digest, files, parent.ami_id)
    return BuildInputs(
        family=family,
        variables=variables,
        rendered=rendered,
        provisioners=files,
        provisioners_dir=config.provisioners_dir,
        parent=parent,
        packer_version=version,
        git=git_state(config.root),
        region=clients.region,
        endpoint=endpoint,
        build_root=config.build_dir,
        reusable_ami=find_reusable(clients, family.name, key),
    )
