"""Signed provenance: an in-toto Statement v1 with a SLSA Provenance v1 predicate per AMI step.

Each step the image takes (build, verification, promotion) appends one DSSE envelope line to
`s3://BUCKET/provenance/ACCOUNT/REGION/AMI.intoto.jsonl`; the AMI's `factory:provenance-uri`
and `factory:provenance-digest` tags point at the file and its newest line. The JUnit report
of the verification is stored beside it (`AMI.junit.xml`) so the test result can be checked
offline. `verify_provenance` recomputes everything it can and names each difference.

The seams: `statements` (what a line says), `signing` (DSSE envelopes, key-file and KMS
signers, trusted keys), `store` (the S3 file and the reports beside it), `attest` (recording
a step), `check` (`provenance verify`) and `show` (`provenance show`).
"""

from __future__ import annotations

from factory.provenance.attest import (
    Attestation,
    AttestationPlan,
    AttestedImage,
    ProvenanceRecord,
    apply_attestation,
    attest_build,
    attest_verifications,
    gather_attested,
    plan_build,
    plan_promotion,
    plan_verification,
    record_build,
    record_promotion,
    record_verification,
)
from factory.provenance.check import Check, ProvenanceReport, verify_provenance
from factory.provenance.show import ProvenanceView, StepView, show_provenance
from factory.provenance.signing import (
    PAYLOAD_TYPE,
    Envelope,
    FileSigner,
    KeyInfo,
    KmsSigner,
    Signer,
    configured_key_file,
    create_key_file,
    export_public_key,
    generate_key_file,
    keyid_for,
    pae,
    sign_envelope,
    signer_from_config,
    trusted_public_key,
    verify_envelope,
)
from factory.provenance.statements import (
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    BuildFacts,
    FileDigest,
    ParentRef,
    Stage,
    file_digests,
    sha256_file,
)
from factory.provenance.store import (
    default_bucket,
    junit_summary,
    object_key,
    parse_s3_uri,
    read_envelopes,
)

__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Attestation",
    "AttestationPlan",
    "AttestedImage",
    "BuildFacts",
    "Check",
    "Envelope",
    "FileDigest",
    "FileSigner",
    "KeyInfo",
    "KmsSigner",
    "ParentRef",
    "ProvenanceRecord",
    "ProvenanceReport",
    "ProvenanceView",
    "Signer",
    "Stage",
    "StepView",
    "apply_attestation",
    "attest_build",
    "attest_verifications",
    "configured_key_file",
    "create_key_file",
    "default_bucket",
    "export_public_key",
    "file_digests",
    "gather_attested",
    "generate_key_file",
    "junit_summary",
    "keyid_for",
    "object_key",
    "pae",
    "parse_s3_uri",
    "plan_build",
    "plan_promotion",
    "plan_verification",
    "read_envelopes",
    "record_build",
    "record_promotion",
    "record_verification",
    "sha256_file",
    "show_provenance",
    "sign_envelope",
    "signer_from_config",
    "trusted_public_key",
    "verify_envelope",
    "verify_provenance",
]
