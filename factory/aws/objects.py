"""S3 objects: the provenance store (attestations, JUnit reports, result files) and its bucket."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from factory.aws.api import call, module_permissions, paginate, requires
from factory.aws.session import AwsClients

MISSING = ("NoSuchKey", "NoSuchBucket", "404", "NotFound")
CHANGED = ("PreconditionFailed", "ConditionalRequestConflict")


@dataclass(frozen=True)
class StoredObject:
    body: bytes
    etag: str


def uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


@requires("s3:ListBucket")  # IAM authorises HeadBucket as ListBucket
def bucket_exists(clients: AwsClients, bucket: str) -> bool:
    return (
        call(clients.client("s3"), "HeadBucket", ok=MISSING, about=bucket, Bucket=bucket)
        is not None
    )


@requires("s3:CreateBucket", "s3:PutBucketVersioning")
def create_versioned_bucket(clients: AwsClients, bucket: str) -> None:
    """A bucket in the clients' region that keeps every version of every object."""
    s3 = clients.client("s3")
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if clients.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": clients.region}
    call(s3, "CreateBucket", ok=("BucketAlreadyOwnedByYou",), about=bucket, **kwargs)
    call(
        s3,
        "PutBucketVersioning",
        about=bucket,
        Bucket=bucket,
        VersioningConfiguration={"Status": "Enabled"},
    )


@requires("s3:GetObject")
def get(clients: AwsClients, bucket: str, key: str) -> StoredObject | None:
    """The object's bytes and ETag, or None when it (or its bucket) does not exist."""
    found = call(
        clients.client("s3"),
        "GetObject",
        ok=MISSING,
        about=uri(bucket, key),
        Bucket=bucket,
        Key=key,
    )
    if found is None:
        return None
    return StoredObject(bytes(found["Body"].read()), str(found.get("ETag", "")))


@requires("s3:PutObject")
def put(
    clients: AwsClients,
    bucket: str,
    key: str,
    body: bytes,
    *,
    content_type: str = "application/octet-stream",
    if_match: str | None = None,
    if_none_match: bool = False,
) -> bool:
    """Write the object; with a condition (ETag or "must not exist"), False when it failed
    because someone else wrote first."""
    kwargs: dict[str, Any] = {
        "Bucket": bucket,
        "Key": key,
        "Body": body,
        "ContentType": content_type,
    }
    if if_match is not None:
        kwargs["IfMatch"] = if_match
    if if_none_match:
        kwargs["IfNoneMatch"] = "*"
    conditional = if_match is not None or if_none_match
    done = call(
        clients.client("s3"),
        "PutObject",
        ok=CHANGED if conditional else (),
        about=uri(bucket, key),
        **kwargs,
    )
    return done is not None


@requires("s3:ListBucket")
def keys(clients: AwsClients, bucket: str, prefix: str) -> Iterator[str]:
    """The keys under `prefix` (none when the bucket does not exist)."""
    for item in paginate(
        clients.client("s3"),
        "ListObjectsV2",
        "Contents",
        ok=MISSING,
        about=uri(bucket, prefix),
        Bucket=bucket,
        Prefix=prefix,
    ):
        yield str(item["Key"])


PERMISSIONS = module_permissions(__name__)
