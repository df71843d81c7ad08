"""What an attestation says: an in-toto Statement v1 with a SLSA Provenance v1 predicate.

The build's Statement names the AMI (subject, by its identity digest), the source image and the
files the build read (resolved dependencies). A later step (verification, promotion) repeats
the build's definition with the image as it is now and the step's own byproducts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factory.aws.model import ImageIdentity
from factory.errors import ConfigError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/ami-factory/ami-factory/buildtypes/packer-ami/v1"
BUILDER_ID = "https://github.com/ami-factory/ami-factory/builder/v1"
MAX_CHAIN = 20  # how many parents `show` and `verify` follow before they stop
FILE_ROLES = frozenset({"template", "provisioner", "test-suite"})


class Stage:
    """The step an attestation line records (`internalParameters.stage`)."""

    BUILD = "build"
    VERIFICATION = "verification"
    PROMOTION = "promotion"


# ---- facts handed in by the build and verify stages -------------------------------------------


@dataclass(frozen=True)
class FileDigest:
    """A file the build depended on, by its path relative to the repository root."""

    path: str
    sha256: str
    role: str  # template | provisioner | test-suite


@dataclass(frozen=True)
class BuildFacts:
    """What the build stage knows when its AMI exists (see `record_build`)."""

    family: str
    version: str
    build_id: str
    source_ami: str
    files: tuple[FileDigest, ...]
    git_commit: str | None
    git_dirty: bool
    packer_version: str
    factory_version: str
    template_digest: str | None = None  # the rendered HCL's sha256 (factory:template-digest)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    repository: str | None = None  # e.g. the git remote URL


@dataclass(frozen=True)
class ParentRef:
    """The source image as a resolved dependency, with its own attestation if it has one."""

    ami_id: str
    identity_digest: str | None  # None if the source image could not be described
    attestation_uri: str | None
    attestation_digest: str | None


# ---- digests ----------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """The digest of one attestation line: what the AMI's tag and a child's dependency name."""
    return hashlib.sha256(text.encode()).hexdigest()


def file_digests(root: Path, paths: Sequence[Path], role: str) -> tuple[FileDigest, ...]:
    """Digests of `paths` (files or folders, recursively), named relative to `root`."""
    out: list[FileDigest] = []
    root = root.resolve()
    for given in paths:
        path = given if given.is_absolute() else root / given
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            try:
                rel = file.resolve().relative_to(root).as_posix()
            except ValueError:
                raise ConfigError(f"{file} is outside the repository {root}") from None
            out.append(FileDigest(rel, sha256_file(file), role))
    return tuple(out)


def dependency_digest(dep: Mapping[str, Any]) -> str | None:
    """The sha256 a dependency or byproduct names, if any."""
    value = dep.get("digest", {}).get("sha256")
    return str(value) if value else None


# ---- statements -------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that have a value (SLSA wants absent fields left out, not null)."""
    return {k: v for k, v in fields.items() if v is not None}


def subject_for(identity: ImageIdentity, region: str, account: str) -> dict[str, Any]:
    return {
        "name": f"arn:aws:ec2:{region}::image/{identity.ami_id}",
        "digest": {"sha256": identity.digest},
        "annotations": {"account": account, "region": region, **identity.as_dict()},
    }


def _dependencies(region: str, facts: BuildFacts, parent: ParentRef) -> list[dict[str, Any]]:
    """The source image first, then every file by role and path, then the git commit."""
    parent_annotations: dict[str, Any] = {"role": "source-ami"}
    if parent.attestation_uri:
        parent_annotations["attestation_uri"] = parent.attestation_uri
        parent_annotations["attestation_digest"] = parent.attestation_digest
    dependencies: list[dict[str, Any]] = [
        {
            "uri": f"arn:aws:ec2:{region}::image/{parent.ami_id}",
            "name": parent.ami_id,
            "digest": {"sha256": parent.identity_digest} if parent.identity_digest else {},
            "annotations": parent_annotations,
        }
    ]
    dependencies += [
        {
            "uri": f"file:{f.path}",
            "name": f.path,
            "digest": {"sha256": f.sha256},
            "annotations": {"role": f.role},
        }
        for f in sorted(facts.files, key=lambda f: (f.role, f.path))
    ]
    if facts.git_commit:
        dependencies.append(
            {
                "uri": f"git+{facts.repository or 'file:.'}@{facts.git_commit}",
                "name": "git",
                "digest": {"gitCommit": facts.git_commit},
                "annotations": {"role": "source", "dirty": facts.git_dirty},
            }
        )
    return dependencies


def build_statement(
    identity: ImageIdentity,
    region: str,
    account: str,
    facts: BuildFacts,
    parent: ParentRef,
    *,
    at: datetime,
) -> dict[str, Any]:
    """The build's Statement: subject = the AMI, predicate = SLSA Provenance v1.

    `at` is when the build finished if its facts do not say.
    """
    return {
        "_type": STATEMENT_TYPE,
        "subject": [subject_for(identity, region, account)],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": _present(
                    family=facts.family,
                    version=facts.version,
                    source_ami=facts.source_ami,
                    template_digest=facts.template_digest,
                ),
                "internalParameters": {
                    "stage": Stage.BUILD,
                    "git_dirty": facts.git_dirty,
                },
                "resolvedDependencies": _dependencies(region, facts, parent),
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": {
                        "ami-factory": facts.factory_version,
                        "packer": facts.packer_version,
                    },
                },
                "metadata": _present(
                    invocationId=facts.build_id,
                    startedOn=_time(facts.started_at),
                    finishedOn=_time(facts.finished_at or at),
                ),
                "byproducts": [],
            },
        },
    }


def stage_of(statement: Mapping[str, Any]) -> str:
    """The step a Statement records ("" when it names none)."""
    return str(
        statement.get("predicate", {})
        .get("buildDefinition", {})
        .get("internalParameters", {})
        .get("stage", "")
    )


def derived_statement(
    build: Mapping[str, Any],
    *,
    identity: ImageIdentity,
    region: str,
    account: str,
    stage: str,
    byproducts: list[dict[str, Any]],
    at: datetime,
) -> dict[str, Any]:
    """A later step's Statement: the build's definition, the image now, new byproducts."""
    statement: dict[str, Any] = json.loads(json.dumps(build))
    statement["subject"] = [subject_for(identity, region, account)]
    predicate = statement["predicate"]
    predicate["buildDefinition"]["internalParameters"]["stage"] = stage
    run = predicate["runDetails"]
    run["metadata"] = {
        "invocationId": f"{run['metadata'].get('invocationId', '')}/{stage}",
        "startedOn": _time(at),
        "finishedOn": _time(at),
    }
    run["byproducts"] = byproducts
    return statement


def verification_byproducts(
    *,
    verify_result_digest: str,
    passed: bool,
    suite_digest: str | None,
    result_uri: str | None,
    junit_uri: str,
    junit_sha256: str,
    junit_totals: Mapping[str, int],
) -> list[dict[str, Any]]:
    """The verification's byproducts: verify's result (and its stored file) and the JUnit report."""
    result: dict[str, Any] = {
        "name": "verify-result",
        "digest": {"sha256": verify_result_digest},
        "annotations": {"result": "passed" if passed else "failed"},
    }
    if suite_digest:
        result["annotations"]["suite_digest"] = suite_digest
    if result_uri is not None:
        result["uri"] = result_uri
    junit = {
        "name": "junit.xml",
        "uri": junit_uri,
        "digest": {"sha256": junit_sha256},
        "annotations": dict(junit_totals),
    }
    return [result, junit]


def promotion_byproducts(copies: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """One byproduct per copy (account, region, AMI id) a promotion produced or reused."""
    return [
        {
            "name": "promoted-copy",
            "uri": f"arn:aws:ec2:{region}:{account}:image/{copy_ami}",
            "annotations": {"account": account, "region": region, "ami_id": copy_ami},
        }
        for account, region, copy_ami in copies
    ]


def byproducts_of(statement: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Statement's byproducts ([] when it has none or is malformed)."""
    products = statement.get("predicate", {}).get("runDetails", {}).get("byproducts", [])
    return list(products) if isinstance(products, list) else []
