"""DSSE envelopes and the keys that sign them: an AWS KMS key, or a PEM key file offline.

An envelope signs the Pre-Authentication Encoding (PAE) of its payload type and payload, as
the DSSE spec says, so a signature cannot be moved to another payload type. Signatures are
ECDSA P-256 over SHA-256, DER encoded (what KMS returns). Keys are named by a `keyid`: the
KMS key ARN, or `sha256:<hex>` of the public key's SubjectPublicKeyInfo for a key file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from factory.aws import AwsClients, call, error_code
from factory.config import FactoryConfig
from factory.errors import ConfigError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
DEFAULT_KMS_ALIAS = "alias/ami-factory-provenance"

# IAM permissions the signers use (infra/'s policies are derived from these).
PERMISSIONS = (
    "kms:Sign",
    "kms:GetPublicKey",
    "kms:DescribeKey",
    "kms:CreateKey",
    "kms:CreateAlias",
    "kms:ScheduleKeyDeletion",
)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body."""
    type_bytes = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


class Signer(Protocol):
    """Signs PAE bytes; knows its keyid and public key."""

    @property
    def keyid(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...

    def public_key_pem(self) -> bytes: ...


def keyid_for(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


class FileSigner:
    """A P-256 private key in a PEM file: for offline signing and tests."""

    def __init__(self, path: Path) -> None:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise ConfigError(
                f"signing key {path} not found; create one with `factory provenance keygen {path}`"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"signing key {path}: {exc.strerror}; set [provenance] key_file to a PEM file"
            ) from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"signing key {path} is not an unencrypted PEM key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ConfigError(f"signing key {path} must be an ECDSA P-256 key")
        self._key = key
        self.path = path

    @property
    def keyid(self) -> str:
        return keyid_for(self._key.public_key())

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class KmsSigner:
    """An AWS KMS asymmetric key (ECC_NIST_P256, SIGN_VERIFY): the private key never leaves KMS.

    Signs the SHA-256 digest (MessageType=DIGEST): RAW messages are limited to 4096 bytes and
    an attestation is larger than that.
    """

    def __init__(self, clients: AwsClients, key_id: str) -> None:
        self.clients = clients
        self.key_id = key_id
        self._arn: str | None = None
        self._public_pem: bytes | None = None

    @property
    def keyid(self) -> str:
        if self._arn is None:
            meta = call(self.clients.client("kms"), "DescribeKey", KeyId=self.key_id)["KeyMetadata"]
            if meta.get("KeySpec", meta.get("CustomerMasterKeySpec")) != "ECC_NIST_P256" or (
                meta.get("KeyUsage") != "SIGN_VERIFY"
            ):
                raise ConfigError(
                    f"KMS key {self.key_id} must be an ECC_NIST_P256 SIGN_VERIFY key "
                    f"(it is {meta.get('KeySpec')} {meta.get('KeyUsage')}); set "
                    "[provenance] kms_key to such a key"
                )
            self._arn = str(meta["Arn"])
        return self._arn

    def sign(self, message: bytes) -> bytes:
        digest = hashlib.sha256(message).digest()
        response = call(
            self.clients.client("kms"),
            "Sign",
            KeyId=self.keyid,
            Message=digest,
            MessageType="DIGEST",
            SigningAlgorithm="ECDSA_SHA_256",
        )
        return bytes(response["Signature"])

    def public_key_pem(self) -> bytes:
        if self._public_pem is None:
            der = call(self.clients.client("kms"), "GetPublicKey", KeyId=self.keyid)["PublicKey"]
            key = serialization.load_der_public_key(bytes(der))
            self._public_pem = key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return self._public_pem


def ensure_kms_key(clients: AwsClients, alias: str = DEFAULT_KMS_ALIAS) -> str:
    """The factory's default signing key (alias), created on first use; returns the alias."""
    kms = clients.client("kms")
    try:
        kms.describe_key(KeyId=alias)
        return alias
    except Exception as exc:  # noqa: BLE001 - only NotFound means "create it"
        if error_code(exc) != "NotFoundException":
            call(kms, "DescribeKey", KeyId=alias)  # re-raise as a FactoryError
    key = call(
        kms,
        "CreateKey",
        KeySpec="ECC_NIST_P256",
        KeyUsage="SIGN_VERIFY",
        Description="ami-factory provenance signing key",
        Tags=[{"TagKey": "factory:purpose", "TagValue": "provenance"}],
    )["KeyMetadata"]
    try:
        kms.create_alias(AliasName=alias, TargetKeyId=key["KeyId"])
    except Exception as exc:  # noqa: BLE001 - another runner created it first: use theirs
        if error_code(exc) != "AlreadyExistsException":
            call(kms, "CreateAlias", AliasName=alias, TargetKeyId=key["KeyId"])
        call(kms, "ScheduleKeyDeletion", KeyId=key["KeyId"], PendingWindowInDays=7)
    return alias


def signer_from_config(config: FactoryConfig, clients: AwsClients) -> Signer:
    """The configured signer: a key file if set, else the KMS key (default alias, created once)."""
    if config.provenance.key_file is not None:
        path = config.provenance.key_file
        if not path.is_absolute():
            path = config.root / path
        return FileSigner(path)
    key_id = config.provenance.kms_key or ensure_kms_key(clients)
    return KmsSigner(clients, key_id)


def generate_key_file(path: Path) -> FileSigner:
    """Write a new P-256 private key (mode 0600) for offline signing; refuses to overwrite."""
    if path.exists():
        raise ConfigError(f"{path} already exists; choose another path or remove it first")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return FileSigner(path)


def load_public_key(pem: bytes, source: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        try:  # a private key file works too: take its public half
            key = serialization.load_pem_private_key(pem, password=None).public_key()
        except (ValueError, TypeError):
            raise ConfigError(f"{source} is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{source} is not an ECDSA public key")
    return key


# ---- envelopes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope: the payload and its signatures."""

    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, DER signature)

    def to_json(self) -> str:
        """One compact JSON line (the .intoto.jsonl format)."""
        return json.dumps(
            {
                "payloadType": self.payload_type,
                "payload": base64.b64encode(self.payload).decode(),
                "signatures": [
                    {"keyid": keyid, "sig": base64.b64encode(sig).decode()}
                    for keyid, sig in self.signatures
                ],
            },
            separators=(",", ":"),
        )

    @property
    def digest(self) -> str:
        """sha256 of the envelope's JSON line: what AMI tags and child attestations point to."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def statement(self) -> dict[str, Any]:
        value = json.loads(self.payload)
        if not isinstance(value, dict):
            raise ValueError("payload is not a JSON object")
        return value

    @classmethod
    def from_json(cls, line: str) -> Envelope:
        doc = json.loads(line)
        return cls(
            payload_type=str(doc["payloadType"]),
            payload=base64.b64decode(doc["payload"], validate=True),
            signatures=tuple(
                (str(s.get("keyid", "")), base64.b64decode(s["sig"], validate=True))
                for s in doc["signatures"]
            ),
        )


def sign_envelope(statement: dict[str, Any], signer: Signer) -> Envelope:
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    signature = signer.sign(pae(PAYLOAD_TYPE, payload))
    return Envelope(PAYLOAD_TYPE, payload, ((signer.keyid, signature),))


def verify_envelope(envelope: Envelope, keys: dict[str, ec.EllipticCurvePublicKey]) -> str | None:
    """None if a signature verifies with a trusted key, else what is wrong (one line)."""
    if not envelope.signatures:
        return "envelope has no signatures"
    message = pae(envelope.payload_type, envelope.payload)
    problems = []
    for keyid, signature in envelope.signatures:
        candidates = [keys[keyid]] if keyid in keys else list(keys.values())
        if not candidates:
            problems.append(f"no trusted public key for keyid {keyid}")
            continue
        for key in candidates:
            try:
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
                return None
            except InvalidSignature:
                continue
        known = "the given public key" if keyid not in keys else f"key {keyid}"
        problems.append(f"signature by {keyid} does not verify with {known}")
    return "; ".join(problems)
