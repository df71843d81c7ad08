"""Local cloud extension: KMS Sign and Verify with AWS's MessageType semantics.

moto signs for real (ECDSA/RSA with a private key it keeps), but ignores `MessageType`:
with `DIGEST` it hashes the digest again, so the signature does not verify against the
public key. AWS signs the given digest as is, and refuses `RAW` messages over 4096 bytes.
These handlers do what AWS does, on moto's own keys, so `GetPublicKey` still matches.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from moto.core.exceptions import JsonRESTError
from moto.kms.models import kms_backends

from factory.localcloud.app import ActionRequest, ActionResponse, ExtensionError

RAW_LIMIT = 4096  # bytes: AWS KMS's limit for MessageType=RAW

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "ECDSA_SHA_256": hashes.SHA256,
    "ECDSA_SHA_384": hashes.SHA384,
    "ECDSA_SHA_512": hashes.SHA512,
    "RSASSA_PSS_SHA_256": hashes.SHA256,
    "RSASSA_PSS_SHA_384": hashes.SHA384,
    "RSASSA_PSS_SHA_512": hashes.SHA512,
    "RSASSA_PKCS1_V1_5_SHA_256": hashes.SHA256,
    "RSASSA_PKCS1_V1_5_SHA_384": hashes.SHA384,
    "RSASSA_PKCS1_V1_5_SHA_512": hashes.SHA512,
}


def _key(request: ActionRequest) -> Any:
    backend = kms_backends[request.account_id][request.region]
    key_id = str(request.params.get("KeyId", ""))
    try:
        key = backend.describe_key(key_id)
    except JsonRESTError as exc:
        raise ExtensionError(exc.error_type, exc.message) from None
    if key.key_usage != "SIGN_VERIFY":
        raise ExtensionError(
            "InvalidKeyUsageException",
            f"{key.arn} key usage is {key.key_usage} which is not valid for signing.",
        )
    if key.key_state != "Enabled":
        raise ExtensionError("KMSInvalidStateException", f"{key.arn} is {key.key_state}.")
    return key


def _prepare(request: ActionRequest, key: Any) -> tuple[bytes, str, Any, Any]:
    """(message-or-digest, algorithm, signature algorithm arg, padding or None)."""
    algorithm = str(request.params.get("SigningAlgorithm", ""))
    if algorithm not in key.signing_algorithms:
        raise ExtensionError(
            "ValidationException",
            f"Value '{algorithm}' at 'SigningAlgorithm' failed to satisfy constraint: "
            f"Member must satisfy enum value set: {key.signing_algorithms}",
        )
    message = base64.b64decode(str(request.params.get("Message", "")))
    if not message:
        raise ExtensionError("ValidationException", "Message must have length >= 1")
    message_type = str(request.params.get("MessageType") or "RAW")
    hash_cls = _HASHES[algorithm]
    if message_type == "DIGEST":
        if len(message) != hash_cls().digest_size:
            raise ExtensionError(
                "ValidationException",
                f"Digest is invalid length for algorithm {algorithm}.",
            )
        chosen: Any = utils.Prehashed(hash_cls())
    elif message_type == "RAW":
        if len(message) > RAW_LIMIT:
            raise ExtensionError(
                "ValidationException",
                f"Value at 'message' failed to satisfy constraint: Member must have length "
                f"less than or equal to {RAW_LIMIT}",
            )
        chosen = hash_cls()
    else:
        raise ExtensionError("ValidationException", f"MessageType {message_type!r} is not valid")
    pad: padding.AsymmetricPadding | None = None
    if algorithm.startswith("RSASSA_PSS"):
        pad = padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=padding.PSS.DIGEST_LENGTH)
    elif algorithm.startswith("RSASSA_PKCS1"):
        pad = padding.PKCS1v15()
    return message, algorithm, chosen, pad


def sign(request: ActionRequest) -> ActionResponse:
    key = _key(request)
    message, algorithm, chosen, pad = _prepare(request, key)
    private = key.private_key.private_key
    if isinstance(private, ec.EllipticCurvePrivateKey):
        signature = private.sign(message, ec.ECDSA(chosen))
    elif isinstance(private, rsa.RSAPrivateKey):
        signature = private.sign(message, pad, chosen)
    else:
        raise ExtensionError("UnsupportedOperationException", "key type cannot sign")
    return _json(
        {
            "KeyId": key.arn,
            "Signature": base64.b64encode(signature).decode(),
            "SigningAlgorithm": algorithm,
        }
    )


def verify(request: ActionRequest) -> ActionResponse:
    key = _key(request)
    message, algorithm, chosen, pad = _prepare(request, key)
    signature = base64.b64decode(str(request.params.get("Signature", "")))
    public = key.private_key.private_key.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, message, ec.ECDSA(chosen))
        else:
            public.verify(signature, message, pad, chosen)
    except InvalidSignature:
        # AWS answers an invalid signature with an error, not SignatureValid=false
        raise ExtensionError(
            "KMSInvalidSignatureException", "The signature is not valid."
        ) from None
    return _json({"KeyId": key.arn, "SignatureValid": True, "SigningAlgorithm": algorithm})


def _json(body: dict[str, Any]) -> ActionResponse:
    return ActionResponse(json.dumps(body), content_type="application/x-amz-json-1.1")


def install(cloud: Any) -> None:
    cloud.app.register("kms", "Sign", sign)
    cloud.app.register("kms", "Verify", verify)
