"""AWS KMS: the provenance signing key (ECC P-256, sign and verify) and EBS key ownership."""

from __future__ import annotations

from dataclasses import dataclass

from factory.aws.api import call, module_permissions, requires
from factory.aws.session import AwsClients

NOT_FOUND = ("NotFoundException",)


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    arn: str
    spec: str  # ECC_NIST_P256, SYMMETRIC_DEFAULT, ...
    usage: str  # SIGN_VERIFY, ENCRYPT_DECRYPT
    manager: str  # AWS (aws/ebs and other AWS managed keys) | CUSTOMER


@requires("kms:DescribeKey")
def describe(clients: AwsClients, key_id: str) -> KeyInfo | None:
    """A key by id, ARN or alias; None when it does not exist."""
    found = call(clients.client("kms"), "DescribeKey", ok=NOT_FOUND, about=key_id, KeyId=key_id)
    if found is None:
        return None
    meta = found["KeyMetadata"]
    return KeyInfo(
        key_id=str(meta["KeyId"]),
        arn=str(meta["Arn"]),
        spec=str(meta.get("KeySpec") or meta.get("CustomerMasterKeySpec") or ""),
        usage=str(meta.get("KeyUsage", "")),
        manager=str(meta.get("KeyManager", "")),
    )


@requires("kms:CreateKey", "kms:TagResource")
def create_signing_key(clients: AwsClients, description: str, tags: dict[str, str]) -> str:
    """A new ECC P-256 SIGN_VERIFY key; its id."""
    created = call(
        clients.client("kms"),
        "CreateKey",
        KeySpec="ECC_NIST_P256",
        KeyUsage="SIGN_VERIFY",
        Description=description,
        Tags=[{"TagKey": k, "TagValue": v} for k, v in sorted(tags.items())],
    )
    return str(created["KeyMetadata"]["KeyId"])


@requires("kms:CreateAlias")
def create_alias(clients: AwsClients, alias: str, key_id: str) -> bool:
    """Name the key; False when the alias already names a key (another runner won the race)."""
    done = call(
        clients.client("kms"),
        "CreateAlias",
        ok=("AlreadyExistsException",),
        about=alias,
        AliasName=alias,
        TargetKeyId=key_id,
    )
    return done is not None


@requires("kms:ScheduleKeyDeletion")
def schedule_deletion(clients: AwsClients, key_id: str, days: int = 7) -> None:
    call(
        clients.client("kms"),
        "ScheduleKeyDeletion",
        about=key_id,
        KeyId=key_id,
        PendingWindowInDays=days,
    )


@requires("kms:Sign")
def sign_digest(clients: AwsClients, key_id: str, digest: bytes) -> bytes:
    """ECDSA over a SHA-256 digest (MessageType=DIGEST: RAW messages stop at 4096 bytes)."""
    response = call(
        clients.client("kms"),
        "Sign",
        about=key_id,
        KeyId=key_id,
        Message=digest,
        MessageType="DIGEST",
        SigningAlgorithm="ECDSA_SHA_256",
    )
    return bytes(response["Signature"])


@requires("kms:GetPublicKey")
def public_key_der(clients: AwsClients, key_id: str) -> bytes:
    return bytes(
        call(clients.client("kms"), "GetPublicKey", about=key_id, KeyId=key_id)["PublicKey"]
    )


# ---- added for provenance ----

UNREADABLE = (
    "NotFoundException",
    "AccessDeniedException",
    "DisabledException",
    "KMSInvalidStateException",
)


@requires("kms:GetPublicKey")
def readable_public_key_der(clients: AwsClients, key_id: str) -> bytes | None:
    """The key's public half, or None when this caller cannot read it (gone, disabled, pending
    deletion, not allowed): a verifier then names the key it could not trust."""
    found = call(clients.client("kms"), "GetPublicKey", ok=UNREADABLE, about=key_id, KeyId=key_id)
    return bytes(found["PublicKey"]) if found is not None else None


PERMISSIONS = module_permissions(__name__)
