"""Verify: an image is tested on a real instance before it may reach a channel or a fleet.

For each AMI: an ephemeral key pair, a temporary security group that admits SSH from this
machine only, one instance; its SSH host key is pinned from the console output; the family's
pytest-testinfra suite runs over that pinned connection; the AMI is tagged verified or failed
with the suite and result digests; everything is removed afterwards (also on Ctrl-C).

The package, by seam:

- `suite`: which test directories, and their digest;
- `hostkeys`: the host keys on the console, the pinned-key policy;
- `results`: JUnit parsing, the JSON summary and its digest, the verdict, the exit decision;
- `plan`: gather_verify (the AMIs, the suites) -> plan_verify (pure);
- `job`: one verification in progress, and the skeleton every kind follows;
- `lifecycle`: the test instance, its key pair and security group, and their removal;
- `session`: the SSH session and the testinfra run;
- `fresh`: apply_verify and verify_images (each image on a fresh instance, N at a time);
- `live`: verify_instance (a running instance, over its key pair or EC2 Instance Connect).

The pytest plugin the suite runs with is `factory.verify_plugin`: outside this package, so the
child pytest imports only paramiko and testinfra, not boto3 and the rest of the factory.
"""

from __future__ import annotations

from factory.verify.fresh import FreshVerification, apply_verify, verify_images
from factory.verify.hostkeys import (
    ConsoleHostKeys,
    HostKey,
    HostKeyError,
    PinnedKeyPolicy,
    parse_console_host_keys,
)
from factory.verify.lifecycle import caller_cidr
from factory.verify.live import (
    DEFAULT_LIVE_TIMEOUT,
    LiveFacts,
    LivePlan,
    apply_live,
    gather_live,
    plan_live,
    verify_instance,
)
from factory.verify.plan import (
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_SSH_USER,
    VerifyFacts,
    VerifyPlan,
    VerifySettings,
    VerifyTarget,
    gather_verify,
    plan_verify,
)
from factory.verify.results import (
    CleanupReport,
    KeptInstance,
    Outcome,
    TestCase,
    TestSummary,
    VerifyReport,
    VerifyResult,
    parse_junit,
    require_verified,
    summary_document,
    verdict_tags,
)
from factory.verify.session import load_private_key, pytest_argv, ssh_config_text, suite_root
from factory.verify.suite import HOST_ALIAS, Suite, load_suite, suite_dirs_for

__all__ = [
    "DEFAULT_INSTANCE_TYPE",
    "DEFAULT_LIVE_TIMEOUT",
    "DEFAULT_SSH_USER",
    "HOST_ALIAS",
    "CleanupReport",
    "ConsoleHostKeys",
    "FreshVerification",
    "HostKey",
    "HostKeyError",
    "KeptInstance",
    "LiveFacts",
    "LivePlan",
    "Outcome",
    "PinnedKeyPolicy",
    "Suite",
    "TestCase",
    "TestSummary",
    "VerifyFacts",
    "VerifyPlan",
    "VerifyReport",
    "VerifyResult",
    "VerifySettings",
    "VerifyTarget",
    "apply_live",
    "apply_verify",
    "caller_cidr",
    "gather_live",
    "gather_verify",
    "load_private_key",
    "load_suite",
    "parse_console_host_keys",
    "parse_junit",
    "plan_live",
    "plan_verify",
    "pytest_argv",
    "require_verified",
    "ssh_config_text",
    "suite_dirs_for",
    "suite_root",
    "summary_document",
    "verdict_tags",
    "verify_images",
    "verify_instance",
]
