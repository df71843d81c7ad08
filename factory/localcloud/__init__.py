"""The local cloud: AWS as boto3 and Packer see it, on this machine, with no AWS account.

A moto server (in this package's own process) is the control plane; extensions add the APIs
moto lacks; the runtime turns EC2 instances into sandboxes running a real sshd. Nothing outside
this package imports it, except the CLI's `local` command group.
"""

from __future__ import annotations

ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"
ACCESS_KEY_ID = "AKIALOCALCLOUD000000"
SECRET_ACCESS_KEY = "localcloud-dummy-secret-key-0000000000000"  # noqa: S105
