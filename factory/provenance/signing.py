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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from factory.aws import AwsClients, keys
from factory.config import FactoryConfig
from factory.errors import AwsError, ConfigError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
DEFAULT_KMS_ALIAS = "alias/ami-factory-provenance"


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
            key = keys.describe(self.clients, self.key_id)
            if key is None:
                raise AwsError(
                    f"kms:DescribeKey {self.key_id}: NotFoundException: no such key in "
                    f"{self.clients.region}; set [provenance] kms_key to an existing key",
                    code="NotFoundException",
                )
            if (key.spec, key.usage) != ("ECC_NIST_P256", "SIGN_VERIFY"):
                raise ConfigError(
                    f"KMS key {self.key_id} must be an ECC_NIST_P256 SIGN_VERIFY key "
                    f"(it is {key.spec} {key.usage}); set [provenance] kms_key to such a key"
                )
            self._arn = key.arn
        return self._arn

    def sign(self, message: bytes) -> bytes:
        return keys.sign_digest(self.clients, self.keyid, hashlib.sha256(message).digest())

    def public_key_pem(self) -> bytes:
        if self._public_pem is None:
            key = serialization.load_der_public_key(keys.public_key_der(self.clients, self.keyid))
            self._public_pem = key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return self._public_pem


def ensure_kms_key(clients: AwsClients, alias: str = DEFAULT_KMS_ALIAS) -> str:
    """The factory's default signing key (alias), created on first use; returns the alias."""
    if keys.describe(clients, alias) is not None:
        return alias
    key_id = keys.create_signing_key(
        clients, "ami-factory provenance signing key", {"factory:purpose": "provenance"}
    )
    if not keys.create_alias(clients, alias, key_id):
        # another runner created the alias first: use theirs, and drop ours
        keys.schedule_deletion(clients, key_id, 7)
    return alias


def configured_key_file(config: FactoryConfig) -> Path | None:
    """`[provenance] key_file`, relative to the repository root; None when KMS signs."""
    path = config.provenance.key_file
    if path is None or path.is_absolute():
        return path
    return config.root / path


def signer_from_config(config: FactoryConfig, clients: AwsClients) -> Signer:
    """The configured signer: a key file if set, else the KMS key (default alias, created once)."""
    path = configured_key_file(config)
    if path is not None:
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


@dataclass(frozen=True)
class KeyInfo:
    """A signing key by its keyid and public half (and the file it was written to, if any)."""

    keyid: str
    path: str | None
    public_key_pem: str


def create_key_file(path: Path) -> KeyInfo:
    """`provenance keygen`: a new key file for offline signing, and its public half."""
    signer = generate_key_file(path)
    return KeyInfo(signer.keyid, str(path), signer.public_key_pem().decode())


def export_public_key(config: FactoryConfig, clients: AwsClients, out: Path | None) -> KeyInfo:
    """`provenance public-key`: the configured signer's public key, written to `out` if given,
    for offline `verify --public-key`."""
    signer = signer_from_config(config, clients)
    pem = signer.public_key_pem().decode()
    if out is not None:
        try:
            out.write_text(pem)
        except OSError as exc:
            raise ConfigError(
                f"cannot write {out}: {exc.strerror}; pass --out a file in an existing directory"
            ) from None
    return KeyInfo(signer.keyid, str(out) if out else None, pem)


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


def verify_envelope(
    envelope: Envelope, trusted: dict[str, ec.EllipticCurvePublicKey]
) -> str | None:
    """None if a signature verifies with a trusted key, else what is wrong (one line)."""
    if not envelope.signatures:
        return "envelope has no signatures"
    message = pae(envelope.payload_type, envelope.payload)
    problems = []
    for keyid, signature in envelope.signatures:
        candidates = [trusted[keyid]] if keyid in trusted else list(trusted.values())
        if not candidates:
            problems.append(f"no trusted public key for keyid {keyid}")
            continue
        for key in candidates:
            try:
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
                return None
            except InvalidSignature:
                continue
        known = "the given public key" if keyid not in trusted else f"key {keyid}"
        problems.append(f"signature by {keyid} does not verify with {known}")
    return "; ".join(problems)


# ---- the keys a verifier trusts ---------------------------------------------------------------


def trusted_public_key(path: Path | None) -> ec.EllipticCurvePublicKey | None:
    """The public key in `path` (`verify --public-key`), or None when none was given."""
    if path is None:
        return None
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror}") from None
    return load_public_key(pem, str(path))


class TrustedKeys:
    """Public keys a signature may verify with: the one given, else KMS's or the key file's."""

    def __init__(
        self,
        clients: AwsClients,
        public_key: ec.EllipticCurvePublicKey | None,
        key_file: Path | None = None,
    ) -> None:
        self.clients = clients
        self.pinned = public_key
        self.key_file = key_file
        self._cache: dict[str, ec.EllipticCurvePublicKey | None] = {}

    def for_keyids(self, keyids: Sequence[str]) -> dict[str, ec.EllipticCurvePublicKey]:
        if self.pinned is not None:
            return {"(given public key)": self.pinned}
        out = {}
        for keyid in keyids:
            if keyid not in self._cache:
                self._cache[keyid] = self._lookup(keyid)
            key = self._cache[keyid]
            if key is not None:
                out[keyid] = key
        return out

    def _lookup(self, keyid: str) -> ec.EllipticCurvePublicKey | None:
        if keyid.startswith("arn:aws:kms:"):
            region = keyid.split(":")[3]
            regional = (
                self.clients if region == self.clients.region else self.clients.for_region(region)
            )
            der = keys.readable_public_key_der(regional, keyid)
            if der is None:
                return None
            key = serialization.load_der_public_key(der)
            return key if isinstance(key, ec.EllipticCurvePublicKey) else None
        if self.key_file is not None and self.key_file.is_file():
            key = load_public_key(self.key_file.read_bytes(), str(self.key_file))
            return key if keyid_for(key) == keyid else None
        return None
