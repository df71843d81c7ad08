"""The `factory:` tag keys on AMIs, snapshots and groups: the factory's state lives in AWS.

Security teams and other tools query these; the README's tag reference table lists them.
"""

from __future__ import annotations

from enum import StrEnum

PREFIX = "factory:"

FAMILY = "factory:family"
VERSION = "factory:version"
BUILD_ID = "factory:build-id"
GIT_COMMIT = "factory:git-commit"
GIT_DIRTY = "factory:git-dirty"
TEMPLATE_DIGEST = "factory:template-digest"
SOURCE_AMI = "factory:source-ami"  # the parent image (lineage)
PACKER_VERSION = "factory:packer-version"
FACTORY_VERSION = "factory:factory-version"
STATUS = "factory:status"
CREATED_AT = "factory:created-at"
DEDUPE_KEY = "factory:dedupe-key"
SUITE_DIGEST = "factory:suite-digest"
RESULT_DIGEST = "factory:result-digest"
VERIFIED_AT = "factory:verified-at"
REVOKED_REASON = "factory:revoked-reason"
REVOKED_AT = "factory:revoked-at"
PROVENANCE_URI = "factory:provenance-uri"
PROVENANCE_DIGEST = "factory:provenance-digest"
KEEP = "factory:keep"  # any value: retire never touches this image
RETIRE_PHASE = "factory:retire-phase"  # deprecated (then the image is gone)
PROMOTED_FROM = "factory:promoted-from"  # source-account:region:ami of a copy
STATEFUL = "factory:stateful"  # on an Auto Scaling group: "true" refuses rollout without --force
VERIFY_RUN = "factory:verify-run"  # on verify's instance, key pair and group: cleanup finds them


class Status(StrEnum):
    """An image's life: building -> candidate -> verified | failed; revoked at any time."""

    BUILDING = "building"  # Packer is running: an interrupted build leaves only this
    CANDIDATE = "candidate"  # built, not yet tested
    VERIFIED = "verified"  # passed its test suite: may be published, promoted, rolled out
    FAILED = "failed"  # failed its test suite: never published
    REVOKED = "revoked"  # withdrawn: channels, builds and rollouts refuse it


def is_factory_tag(key: str) -> bool:
    return key.startswith(PREFIX)
