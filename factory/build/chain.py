"""The build chain, written once: build (or reuse) -> attest the build -> verify -> attest the
verification. `factory build [--verify]` and every family of the nightly pipeline run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from factory import __version__
from factory import tags as T
from factory.aws import AwsClients, images
from factory.build.apply import BuildResult, apply_build
from factory.build.plan import BuildPlan
from factory.config import FactoryConfig
from factory.errors import ConfigError
from factory.output import Progress
from factory.provenance import (
    BuildFacts,
    ProvenanceRecord,
    attest_build,
    attest_verifications,
    file_digests,
)

if TYPE_CHECKING:  # factory.verify imports paramiko: only a chain that verifies pays for it
    from factory.verify import VerifyResult


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


class VerifyWhen(StrEnum):
    """Whether the chain verifies what the build produced."""

    NEVER = "never"  # `factory build` without --verify
    ALWAYS = "always"  # `factory build --verify`: a reused image is verified again
    UNVERIFIED = "unverified"  # the nightly pipeline: an image already verified is not


class Workers(Protocol):
    """The two steps of the chain that act outside this process: Packer, and a test instance
    per image. Tests of the stages above substitute fakes."""

    def build(self, plan: BuildPlan) -> BuildResult: ...

    def verify_images(self, ami_ids: Sequence[str]) -> Sequence[VerifyResult]: ...


@dataclass(frozen=True)
class AwsWorkers:
    """The real ones: `packer build` and `factory verify`'s instance and suite."""

    config: FactoryConfig
    clients: AwsClients
    progress: Progress

    def build(self, plan: BuildPlan) -> BuildResult:
        return apply_build(plan, self.clients, self.progress)  # sweeps what a failure left

    def verify_images(self, ami_ids: Sequence[str]) -> Sequence[VerifyResult]:
        from factory.verify import verify_images

        return verify_images(  # removes its instance, key pair and group in every case
            self.clients,
            list(ami_ids),
            templates_dir=self.config.templates_dir,
            output_dir=self.config.state_dir / "verify",
            progress=self.progress,
        )


@dataclass(frozen=True)
class VerifiedBuild:
    """What the chain did: the build, its attestations, and the verdicts if it verified."""

    build: BuildResult
    provenance: tuple[ProvenanceRecord, ...] = ()
    verification: tuple[VerifyResult, ...] = ()
    already_verified: bool = False  # UNVERIFIED and every image was verified: nothing ran


def _all_verified(clients: AwsClients, ami_ids: Sequence[str]) -> bool:
    found = images.get_many(clients, ami_ids)
    return bool(ami_ids) and all(a in found and found[a].verified for a in ami_ids)


def build_and_verify(
    config: FactoryConfig,
    clients: AwsClients,
    plan: BuildPlan,
    progress: Progress,
    *,
    verify: VerifyWhen = VerifyWhen.NEVER,
    provenance: bool = True,
    workers: Workers | None = None,
) -> VerifiedBuild:
    """Build (or reuse) as planned, attest the build, verify, attest the verification.

    A failed build stops the chain (its result says why; nothing is attested). Provenance is
    signed and stored unless `provenance` is False.
    """
    workers = workers or AwsWorkers(config, clients, progress)
    result = workers.build(plan)
    if result.status == "failed" or not result.ami_ids:
        return VerifiedBuild(result)
    records = attest(config, clients, plan, result, progress) if provenance else ()
    if verify is VerifyWhen.NEVER:
        return VerifiedBuild(result, records)
    if verify is VerifyWhen.UNVERIFIED and _all_verified(clients, result.ami_ids):
        return VerifiedBuild(result, records, already_verified=True)
    verdicts = tuple(workers.verify_images(result.ami_ids))
    if provenance:
        records += attest_verifications(config, clients, verdicts, progress)
    return VerifiedBuild(result, records, verdicts)
