"""Moved to `factory.provenance.signing` (re-exported by `factory.provenance`).

Kept only so `from factory.signing import signer_from_config` (promote) still imports while
the stages move over; delete it once nothing imports `factory.signing`.
"""

from __future__ import annotations

from factory.provenance.signing import (
    DEFAULT_KMS_ALIAS,
    PAYLOAD_TYPE,
    Envelope,
    FileSigner,
    KmsSigner,
    Signer,
    ensure_kms_key,
    generate_key_file,
    keyid_for,
    load_public_key,
    pae,
    sign_envelope,
    signer_from_config,
    verify_envelope,
)

__all__ = [
    "DEFAULT_KMS_ALIAS",
    "PAYLOAD_TYPE",
    "Envelope",
    "FileSigner",
    "KmsSigner",
    "Signer",
    "ensure_kms_key",
    "generate_key_file",
    "keyid_for",
    "load_public_key",
    "pae",
    "sign_envelope",
    "signer_from_config",
    "verify_envelope",
]
