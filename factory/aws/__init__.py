"""AWS in one place: sessions and clients (`session`), the one call helper (`api`), the one wait
helper (`wait`), the typed values (`model`) and a small gateway per service, each declaring the
IAM actions it uses: `images`, `instances`, `groups` (Auto Scaling and launch templates),
`parameters` (SSM), `objects` (S3), `keys` (KMS).

Stages call gateways and never a boto3 client.
"""

from __future__ import annotations

from factory.aws.api import aws_errors, call, error_code, paginate, tag_list, tags_dict
from factory.aws.session import (
    AwsClients,
    AwsTarget,
    CallCounter,
    clients_from_config,
    packer_endpoint,
    register_session_credentials,
)

__all__ = [
    "AwsClients",
    "AwsTarget",
    "CallCounter",
    "aws_errors",
    "call",
    "clients_from_config",
    "error_code",
    "packer_endpoint",
    "paginate",
    "register_session_credentials",
    "tag_list",
    "tags_dict",
]
