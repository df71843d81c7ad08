"""Recording a step: build, verification, promotion, each one signed line in the image's file.

Each record is gather (the image as EC2 shows it, the build line to extend) -> plan (pure: the
Statement, where it goes, the reports stored beside it) -> apply (store the reports, sign,
append, point the AMI's `factory:provenance-uri`/`-digest` tags at the newest line).
`attest_build` and `attest_verifications` are what the build and verify stages call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory import tags as T
from factory.aws import AwsClients, images
from factory.aws.model import Image
from factory.config import FactoryConfig
from factory.errors import ConfigError
from factory.output import Progress
from factory.provenance.signing import Signer, sign_envelope, signer_from_config
from factory.provenance.statements import (
    BuildFacts,
    ParentRef,
    Stage,
    build_statement,
    derived_statement,
    promotion_byproducts,
    stage_of,
    verification_byproducts,
)
from factory.provenance.store import (
    JUNIT,
    VERIFY_RESULT,
    append_line,
    default_bucket,
    ensure_bucket,
    junit_summary,
    object_key,
    parse_s3_uri,
    read_envelopes,
    store_report,
)

if TYPE_CHECKING:
    from factory.verify import VerifyResult


@dataclass(frozen=True)
class Attestation:
    """One recorded step: where it is, and the digest the AMI's tag now carries."""

    ami_id: str
    stage: str
    uri: str
    digest: str
    keyid: str
    statement: Mapping[str, Any] = field(metadata={"internal": True})


@dataclass(frozen=True)
class Report:
    """A file stored beside the attestation before the line that names it is signed."""

    key: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class AttestationPlan:
    """One step to record: the Statement to sign, the file it goes to, the reports it names."""

    ami_id: str
    bucket: str
    key: str
    statement: Mapping[str, Any]
    reports: tuple[Report, ...] = ()


@dataclass(frozen=True)
class AttestedImage:
    """An image whose provenance a later step extends: as it is now, and its newest build."""

    image: Image
    uri: str
    build: Mapping[str, Any]


# ---- gather -----------------------------------------------------------------------------------


def _image(clients: AwsClients, ami_id: str) -> Image:
    image = images.get(clients, ami_id)
    if image is None:
        raise ConfigError(f"image {ami_id} not found in {clients.region}")
    return image


def parent_ref(clients: AwsClients, source_ami: str) -> ParentRef:
    """The source image as the build depended on it (its identity, its newest attestation)."""
    image = images.get(clients, source_ami)
    if image is None:
        return ParentRef(source_ami, None, None, None)
    return ParentRef(
        source_ami,
        image.identity.digest,
        image.tags.get(T.PROVENANCE_URI),
        image.tags.get(T.PROVENANCE_DIGEST),
    )


def gather_attested(clients: AwsClients, ami_id: str) -> AttestedImage:
    """The image and the newest build line of its attestation file (which a step extends)."""
    image = _image(clients, ami_id)
    uri = image.tags.get(T.PROVENANCE_URI)
    if not uri:
        raise ConfigError(f"{ami_id} has no {T.PROVENANCE_URI} tag: no build attestation to extend")
    builds = [
        env.statement()
        for _line, env in read_envelopes(clients, uri)
        if env is not None and stage_of(env.statement()) == Stage.BUILD
    ]
    if not builds:
        raise ConfigError(f"{uri} holds no build attestation")
    return AttestedImage(image, uri, builds[-1])


# ---- plan -------------------------------------------------------------------------------------


def plan_build(
    image: Image,
    parent: ParentRef,
    facts: BuildFacts,
    *,
    account: str,
    bucket: str,
    at: datetime,
) -> AttestationPlan:
    """The build's line: the Statement naming the image, its source image and its files."""
    statement = build_statement(image.identity, image.region, account, facts, parent, at=at)
    key = object_key(account, image.region, image.ami_id)
    return AttestationPlan(image.ami_id, bucket, key, statement)


def plan_verification(
    attested: AttestedImage,
    *,
    account: str,
    bucket: str,
    junit: bytes,
    verify_result_digest: str,
    passed: bool | None,
    suite_digest: str | None,
    summary: bytes | None,
    at: datetime,
) -> AttestationPlan:
    """The verification's line, with the JUnit report (and verify's result) stored beside it.

    The result counts as passed only if verify's verdict (`passed`, default: the JUnit totals)
    and the JUnit totals agree.
    """
    image = attested.image
    totals = junit_summary(junit)
    junit_key = object_key(account, image.region, image.ami_id, JUNIT)
    reports = [Report(junit_key, junit, "application/xml")]
    result_uri = None
    if summary is not None:
        result_key = object_key(account, image.region, image.ami_id, VERIFY_RESULT)
        reports.append(Report(result_key, summary, "application/json"))
        result_uri = f"s3://{bucket}/{result_key}"
    byproducts = verification_byproducts(
        verify_result_digest=verify_result_digest,
        passed=totals.passed and passed is not False,
        suite_digest=suite_digest,
        result_uri=result_uri,
        junit_uri=f"s3://{bucket}/{junit_key}",
        junit_sha256=hashlib.sha256(junit).hexdigest(),
        junit_totals=totals.totals(),
    )
    statement = derived_statement(
        attested.build,
        identity=image.identity,
        region=image.region,
        account=account,
        stage=Stage.VERIFICATION,
        byproducts=byproducts,
        at=at,
    )
    key = object_key(account, image.region, image.ami_id)
    return AttestationPlan(image.ami_id, bucket, key, statement, tuple(reports))


def plan_promotion(
    attested: AttestedImage,
    *,
    account: str,
    bucket: str,
    copies: Sequence[tuple[str, str, str]],
    at: datetime,
) -> AttestationPlan:
    """The promotion's line: one byproduct per copy (account, region, AMI id)."""
    image = attested.image
    if not copies:
        raise ConfigError(f"a promotion of {image.ami_id} names no copy; nothing to attest")
    statement = derived_statement(
        attested.build,
        identity=image.identity,
        region=image.region,
        account=account,
        stage=Stage.PROMOTION,
        byproducts=promotion_byproducts(copies),
        at=at,
    )
    key = object_key(account, image.region, image.ami_id)
    return AttestationPlan(image.ami_id, bucket, key, statement)


# ---- apply ------------------------------------------------------------------------------------


def apply_attestation(clients: AwsClients, signer: Signer, plan: AttestationPlan) -> Attestation:
    """Store the reports, sign the Statement, append its line, tag the AMI with where it is."""
    ensure_bucket(clients, plan.bucket)
    for report in plan.reports:
        store_report(clients, plan.bucket, report.key, report.body, report.content_type)
    envelope = sign_envelope(dict(plan.statement), signer)
    append_line(clients, plan.bucket, plan.key, envelope.to_json())
    uri = f"s3://{plan.bucket}/{plan.key}"
    images.tag(
        clients, [plan.ami_id], {T.PROVENANCE_URI: uri, T.PROVENANCE_DIGEST: envelope.digest}
    )
    return Attestation(
        plan.ami_id, stage_of(plan.statement), uri, envelope.digest, signer.keyid, plan.statement
    )


# ---- the stage functions: gather, plan, apply in one call --------------------------------------


def record_build(
    clients: AwsClients,
    signer: Signer,
    ami_id: str,
    facts: BuildFacts,
    *,
    bucket: str | None = None,
) -> Attestation:
    """After a build: sign the build's Statement, store it, tag the AMI with its location."""
    image = _image(clients, ami_id)
    plan = plan_build(
        image,
        parent_ref(clients, facts.source_ami),
        facts,
        account=clients.account_id,
        bucket=bucket or default_bucket(clients),
        at=datetime.now(UTC),
    )
    return apply_attestation(clients, signer, plan)


def record_verification(
    clients: AwsClients,
    signer: Signer,
    ami_id: str,
    verify_result_digest: str,
    junit_path: Path,
    *,
    passed: bool | None = None,
    suite_digest: str | None = None,
    summary_path: Path | None = None,
    bucket: str | None = None,
) -> Attestation:
    """After verify: store the JUnit report (and the result summary) beside the attestation
    and append a Statement with them as byproducts.

    `passed` is verify's verdict (default: the JUnit totals); the result counts as passed
    only if both agree. `summary_path` is the file `verify_result_digest` is the sha256 of.
    """
    attested = gather_attested(clients, ami_id)
    plan = plan_verification(
        attested,
        account=clients.account_id,
        bucket=bucket or parse_s3_uri(attested.uri)[0],
        junit=junit_path.read_bytes(),
        verify_result_digest=verify_result_digest,
        passed=passed,
        suite_digest=suite_digest,
        summary=summary_path.read_bytes() if summary_path is not None else None,
        at=datetime.now(UTC),
    )
    return apply_attestation(clients, signer, plan)


def record_promotion(
    clients: AwsClients,
    signer: Signer,
    ami_id: str,
    *,
    copies: Sequence[tuple[str, str, str]],
    bucket: str | None = None,
) -> Attestation:
    """After a promotion: append a Statement naming every copy it produced or reused.

    `copies` are (account, region, AMI id) of each copy, one byproduct each.
    """
    attested = gather_attested(clients, ami_id)
    plan = plan_promotion(
        attested,
        account=clients.account_id,
        bucket=bucket or parse_s3_uri(attested.uri)[0],
        copies=copies,
        at=datetime.now(UTC),
    )
    return apply_attestation(clients, signer, plan)


# ---- what the build and verify stages call: every build and verification is attested ---------


@dataclass(frozen=True)
class ProvenanceRecord:
    ami_id: str
    step: str  # build | verification
    uri: str
    envelope_digest: str


def attest_build(
    config: FactoryConfig,
    clients: AwsClients,
    ami_ids: Sequence[str],
    facts: BuildFacts,
    progress: Progress,
) -> tuple[ProvenanceRecord, ...]:
    """Sign and store the build attestation of every AMI a build made."""
    signer = signer_from_config(config, clients)
    records = []
    for ami_id in ami_ids:
        attestation = record_build(clients, signer, ami_id, facts, bucket=config.provenance.bucket)
        progress.info(f"{ami_id}: build provenance signed and stored at {attestation.uri}")
        records.append(ProvenanceRecord(ami_id, "build", attestation.uri, attestation.digest))
    return tuple(records)


def attest_verifications(
    config: FactoryConfig,
    clients: AwsClients,
    results: Sequence[VerifyResult],
    progress: Progress,
) -> tuple[ProvenanceRecord, ...]:
    """Append a verification attestation for each image whose suite ran (passed or failed)."""
    records = []
    signer = None
    for r in results:
        if r.tagged_status is None or r.junit_path is None or r.result_sha256 is None:
            continue  # the suite never ran (launch or SSH error) or the image is not ours
        signer = signer or signer_from_config(config, clients)
        try:
            attestation = record_verification(
                clients,
                signer,
                r.ami_id,
                r.result_sha256,
                r.junit_path,
                passed=r.ok,
                suite_digest=r.suite_digest,
                summary_path=r.summary_path,
                bucket=config.provenance.bucket,
            )
        except ConfigError as exc:  # an image built without provenance: nothing to extend
            progress.warn(f"{r.ami_id}: verification not attested: {exc}")
            continue
        progress.info(f"{r.ami_id}: verification provenance appended to {attestation.uri}")
        records.append(
            ProvenanceRecord(r.ami_id, "verification", attestation.uri, attestation.digest)
        )
    return tuple(records)
