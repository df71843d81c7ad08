"""Glue between stages: what happens to an image after each step.

Provenance follows the image: every build and every verification appends a signed
attestation. The nightly `factory pipeline run` (roadmap) grows from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from factory.aws import AwsClients
from factory.build import BuildPlan, BuildResult, build_facts
from factory.config import FactoryConfig
from factory.errors import ConfigError
from factory.output import Progress
from factory.provenance import Attestation, record_build, record_verification
from factory.signing import signer_from_config
from factory.verify import VerifyResult


@dataclass(frozen=True)
class ProvenanceRecord:
    ami_id: str
    step: str  # build | verification
    uri: str
    envelope_digest: str


def _attestation_fields(attestation: Attestation) -> tuple[str, str]:
    return attestation.uri, attestation.digest


def attest_build(
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
    signer = signer_from_config(config, clients)
    records = []
    for ami_id in result.ami_ids:
        attestation = record_build(clients, signer, ami_id, facts, bucket=config.provenance.bucket)
        uri, digest = _attestation_fields(attestation)
        progress.info(f"{ami_id}: build provenance signed and stored at {uri}")
        records.append(ProvenanceRecord(ami_id, "build", uri, digest))
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
        uri, digest = _attestation_fields(attestation)
        progress.info(f"{r.ami_id}: verification provenance appended to {uri}")
        records.append(ProvenanceRecord(r.ami_id, "verification", uri, digest))
    return tuple(records)
