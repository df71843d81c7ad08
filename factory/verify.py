"""Verify: an image is tested on a real instance before it may reach a channel or a fleet.

For each AMI: an ephemeral key pair (made here, only the public half goes to EC2), a temporary
security group that admits SSH from this machine only, one instance; its SSH host key is pinned
from the console output (EC2 prints the host keys there at boot); then the family's
pytest-testinfra suite runs over one pinned paramiko connection in a child pytest process
(testinfra caches hosts per process, so a reused address never hands back a stale connection).
JUnit XML and a JSON summary are kept; the AMI is tagged verified or failed with the suite and
result digests. The instance, key pair and group are always removed: on success, failure,
Ctrl-C and SIGTERM (`keep` keeps the instance for debugging).

Public entry point: `verify_images(clients, ami_ids, ...) -> list[VerifyResult]`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from factory import process, tags
from factory.aws import AwsClients, aws_errors, call, error_code, paginate, tag_list, tags_dict
from factory.errors import ConfigError, FactoryError, Interrupted, RefusedError, VerificationError
from factory.output import Progress
from factory.redact import register_secret
from factory.verify_plugin import CONTEXT_ENV

# What verify does in AWS, for least-privilege policies (infra/ derives its role from these).
PERMISSIONS = (
    "ec2:DescribeImages",
    "ec2:DescribeVpcs",
    "ec2:DescribeSubnets",
    "ec2:ImportKeyPair",
    "ec2:DeleteKeyPair",
    "ec2:CreateSecurityGroup",
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:DescribeSecurityGroups",
    "ec2:DeleteSecurityGroup",
    "ec2:RunInstances",
    "ec2:DescribeInstances",
    "ec2:GetConsoleOutput",
    "ec2:TerminateInstances",
    "ec2:CreateTags",
    "sts:GetCallerIdentity",  # only our own images get the verdict tags
)

COMMON_SUITE = "_common"
HOST_ALIAS = "instance"  # the suite's hostspec names this alias: test ids do not carry the IP
DEFAULT_INSTANCE_TYPE = "t3.micro"
DEFAULT_SSH_USER = "admin"  # Debian's cloud images
CALLER_IP_URL = "https://checkip.amazonaws.com"
AUTH_GRACE = 120.0  # seconds sshd may refuse the launch key before verify gives up


# ---------------------------------------------------------------------------------------------
# settings, facts, plan


@dataclass(frozen=True)
class VerifySettings:
    """How to verify: instance shape, SSH, concurrency, limits."""

    instance_type: str = DEFAULT_INSTANCE_TYPE
    ssh_user: str = DEFAULT_SSH_USER
    subnet_id: str | None = None  # default: the region's default VPC
    ssh_cidr: str | None = None  # who may reach the instance (default: this machine, computed)
    keep: bool = False
    parallel: int = 1
    boot_timeout: float = 600.0  # launch until SSH accepts the verifier's key
    suite_timeout: float = 1800.0
    # launch-time configuration, as the fleet's launch template would pass it (not printed)
    user_data: str | None = field(default=None, metadata={"internal": True})


@dataclass(frozen=True)
class ImageFacts:
    """What DescribeImages says about one AMI."""

    ami_id: str
    name: str
    state: str
    owner_id: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def family(self) -> str | None:
        return self.tags.get(tags.FAMILY)


@dataclass(frozen=True)
class Suite:
    """The test directories an image is verified with, and a digest of every file in them."""

    dirs: tuple[Path, ...]
    files: tuple[str, ...]
    digest: str


@dataclass(frozen=True)
class VerifyTarget:
    ami_id: str
    name: str
    family: str | None
    suite: Suite
    tags: Mapping[str, str] = field(default_factory=dict)
    tag_verdict: bool = True  # only our own images get the verdict tags (AWS refuses others)


@dataclass(frozen=True)
class VerifyPlan:
    region: str
    targets: tuple[VerifyTarget, ...]
    settings: VerifySettings
    warnings: tuple[str, ...] = ()


def describe_images(clients: AwsClients, ami_ids: Sequence[str]) -> tuple[ImageFacts, ...]:
    """The AMIs to verify, in the order asked; a missing one is an error naming it."""
    ec2 = clients.client("ec2")
    wanted = list(dict.fromkeys(ami_ids))
    found: dict[str, ImageFacts] = {}
    for ami_id in wanted:
        # one id per call: AWS fails the whole call (InvalidAMIID.*) when any id is unknown
        with aws_errors("ec2:DescribeImages"):
            try:
                images = ec2.describe_images(ImageIds=[ami_id])["Images"]
            except Exception as exc:
                if not str(error_code(exc)).startswith("InvalidAMIID"):
                    raise
                images = []
        for image in images:
            found[image["ImageId"]] = ImageFacts(
                ami_id=image["ImageId"],
                name=image.get("Name", ""),
                state=image.get("State", "unknown"),
                owner_id=str(image.get("OwnerId", "")),
                tags=tags_dict(image.get("Tags")),
            )
    missing = [ami for ami in wanted if ami not in found]
    if missing:
        raise ConfigError(
            f"no such image in {clients.region}: {', '.join(missing)}; "
            "check the id and the region (`factory images list`)"
        )
    return tuple(found[ami] for ami in wanted)


FAMILY_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


def suite_dirs_for(templates_dir: Path, family: str | None) -> tuple[Path, ...]:
    """The default suite: what every golden image must pass, then the family's own tests."""
    dirs = [templates_dir / COMMON_SUITE / "tests"]
    if family:
        # the family comes from a tag anyone who can tag the AMI may set: never a path
        if not FAMILY_NAME.fullmatch(family) or ".." in family:
            raise RefusedError(
                f"family tag {family!r} is not a family name; fix the AMI's {tags.FAMILY} "
                "tag or pass --suite"
            )
        family_tests = templates_dir / family / "tests"
        if family_tests.is_dir():
            dirs.append(family_tests)
    return tuple(dirs)


def _suite_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def load_suite(dirs: Sequence[Path]) -> Suite:
    """Read a suite's directories and digest them: the digest names exactly what was run."""
    resolved: list[Path] = []
    for directory in dirs:
        if not directory.is_dir():
            raise ConfigError(
                f"test suite directory {directory} not found; pass an existing --suite"
            )
        resolved.append(directory.resolve())
    digest = hashlib.sha256()
    names: list[str] = []
    for directory in resolved:
        for path in _suite_files(directory):
            # named relative to the family folder: "_common/tests/test_ssh.py"
            rel = path.relative_to(directory.parent.parent).as_posix()
            names.append(rel)
            digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    if not any(n.rsplit("/", 1)[-1].startswith("test_") for n in names):
        raise ConfigError(
            f"no test_*.py files in {', '.join(map(str, resolved))}; a suite needs at least one"
        )
    return Suite(dirs=tuple(resolved), files=tuple(names), digest=f"sha256:{digest.hexdigest()}")


def plan_verify(
    region: str,
    account_id: str,
    images: Sequence[ImageFacts],
    suites: Mapping[str, Suite],
    settings: VerifySettings,
    *,
    default_suite: bool = True,
) -> VerifyPlan:
    """Which images to verify with which suite (`suites` is keyed by AMI id); pure."""
    if settings.parallel < 1:
        raise ConfigError("--parallel must be at least 1")
    if not images:
        raise ConfigError("no images to verify; name at least one AMI id")
    if settings.ssh_cidr is not None:
        _check_cidr(settings.ssh_cidr)
    warnings: list[str] = []
    targets: list[VerifyTarget] = []
    for image in images:
        if image.state != "available":
            raise RefusedError(
                f"{image.ami_id} is {image.state}, not available; wait for it or pick another image"
            )
        if image.tags.get(tags.STATUS) == tags.Status.REVOKED:
            reason = image.tags.get(tags.REVOKED_REASON, "no reason recorded")
            raise RefusedError(
                f"{image.ami_id} is revoked ({reason}); verify refuses revoked images"
            )
        if image.family is None and default_suite:
            warnings.append(
                f"{image.ami_id} has no {tags.FAMILY} tag: only the shared suite applies"
            )
        own = image.owner_id in ("", account_id)
        if not own:
            warnings.append(
                f"{image.ami_id} belongs to account {image.owner_id}: its verdict is not tagged"
            )
        targets.append(
            VerifyTarget(
                ami_id=image.ami_id,
                name=image.name,
                family=image.family,
                suite=suites[image.ami_id],
                tags=dict(image.tags),
                tag_verdict=own,
            )
        )
    return VerifyPlan(
        region=region, targets=tuple(targets), settings=settings, warnings=tuple(warnings)
    )


def _check_cidr(cidr: str) -> None:
    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(
            f"--ssh-cidr {cidr!r} is not a CIDR block (like 203.0.113.7/32)"
        ) from None


# ---------------------------------------------------------------------------------------------
# host keys from the console


class HostKeyError(VerificationError):
    """The instance's host key could not be pinned, or did not match the pinned one."""


FINGERPRINTS_BLOCK = "SSH HOST KEY FINGERPRINTS"
KEYS_BLOCK = "SSH HOST KEY KEYS"
_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
_KEY_LINE = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(t) for t in _KEY_TYPES) + r")\s+(AAAA[A-Za-z0-9+/]+=*)"
)
_FINGERPRINT_LINE = re.compile(
    r"\b\d+\s+(SHA256:[A-Za-z0-9+/]{43}|MD5(?::[0-9a-f]{2}){16}|(?:[0-9a-f]{2}:){15}[0-9a-f]{2})\b"
)


@dataclass(frozen=True)
class HostKey:
    key_type: str
    blob: str  # base64, as in known_hosts

    @property
    def fingerprint(self) -> str:
        """OpenSSH's SHA256 fingerprint (`ssh-keygen -l`)."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def md5_fingerprint(self) -> str:
        digest = hashlib.md5(base64.b64decode(self.blob)).hexdigest()  # noqa: S324 - a fingerprint
        return "MD5:" + ":".join(digest[i : i + 2] for i in range(0, 32, 2))

    def known_hosts_line(self, address: str, port: int = 22) -> str:
        host = address if port == 22 else f"[{address}]:{port}"
        return f"{host} {self.key_type} {self.blob}"


@dataclass(frozen=True)
class ConsoleHostKeys:
    """The host keys an instance printed on its console at boot (the last complete blocks)."""

    fingerprints: frozenset[str] = frozenset()
    keys: tuple[HostKey, ...] = ()

    def accepts(self, key: HostKey) -> bool:
        if self.keys:
            return key in self.keys
        return key.fingerprint in self.fingerprints or key.md5_fingerprint in self.fingerprints


def _blocks(console: str, name: str) -> list[list[str]]:
    begin, end = f"-----BEGIN {name}-----", f"-----END {name}-----"
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in console.splitlines():
        if begin in line:
            current = []
        elif end in line:
            if current is not None:
                blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _valid_key(key_type: str, blob: str) -> bool:
    try:
        raw = base64.b64decode(blob, validate=True)
    except ValueError:
        return False
    if len(raw) < 4:
        return False
    length = int.from_bytes(raw[:4], "big")
    return raw[4 : 4 + length] == key_type.encode()


def parse_console_host_keys(console: str) -> ConsoleHostKeys | None:
    """The host keys and fingerprints in EC2-style console output, or None if none are there.

    Cloud-init prints `-----BEGIN SSH HOST KEY FINGERPRINTS-----` (`256 SHA256:... (ED25519)`)
    and `-----BEGIN SSH HOST KEY KEYS-----` (`ssh-ed25519 AAAA...`) blocks, lines sometimes
    prefixed (`ec2: `, a timestamp). When both are printed they must agree.
    """
    fingerprint_blocks = _blocks(console, FINGERPRINTS_BLOCK)
    key_blocks = _blocks(console, KEYS_BLOCK)
    fingerprints: set[str] = set()
    for line in fingerprint_blocks[-1] if fingerprint_blocks else []:
        match = _FINGERPRINT_LINE.search(line)
        if match:
            value = match.group(1)
            fingerprints.add(value if value.startswith(("SHA256:", "MD5:")) else f"MD5:{value}")
    keys: list[HostKey] = []
    for line in key_blocks[-1] if key_blocks else []:
        match = _KEY_LINE.search(line)
        if match and _valid_key(match.group(1), match.group(2)):
            keys.append(HostKey(match.group(1), match.group(2)))
    if not fingerprints and not keys:
        return None
    if fingerprints and keys:
        stray = [
            k.fingerprint
            for k in keys
            if k.fingerprint not in fingerprints and k.md5_fingerprint not in fingerprints
        ]
        if stray:
            raise HostKeyError(
                f"the console's host keys ({', '.join(stray)}) are not among its printed "
                "fingerprints; refusing to trust either"
            )
    return ConsoleHostKeys(frozenset(fingerprints), tuple(dict.fromkeys(keys)))


class _PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Accept the server's key only if the instance printed it on its console."""

    def __init__(self, pins: ConsoleHostKeys) -> None:
        self.pins = pins
        self.accepted: HostKey | None = None

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        presented = HostKey(key.get_name(), key.get_base64())
        if not self.pins.accepts(presented):
            raise HostKeyError(
                f"{hostname} presented host key {presented.fingerprint}, which is not the key "
                "the instance printed on its console; refusing to connect"
            )
        self.accepted = presented


# ---------------------------------------------------------------------------------------------
# results


class Outcome(StrEnum):
    VERIFIED = "verified"  # every test passed
    FAILED = "failed"  # the suite ran and something failed
    ERROR = "error"  # the suite could not run (launch, SSH, host key, pytest itself)


@dataclass(frozen=True)
class TestCase:
    __test__ = False  # a result, not a pytest test class

    name: str  # "_common/tests/test_ssh.py::test_password_login_disabled"
    outcome: str  # passed | failed | error | skipped
    seconds: float
    message: str = ""


@dataclass(frozen=True)
class TestSummary:
    __test__ = False  # a result, not a pytest test class

    passed: int
    failed: int
    errors: int
    skipped: int
    seconds: float
    tests: tuple[TestCase, ...]

    @property
    def total(self) -> int:
        return len(self.tests)

    @property
    def failing(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tests if t.outcome in ("failed", "error"))

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and not self.failing


@dataclass(frozen=True)
class KeptInstance:
    """How to reach an instance kept with --keep (the key stays on disk until you delete it)."""

    instance_id: str
    user: str
    address: str
    key_path: Path
    known_hosts: Path
    security_group_id: str
    ssh_command: str
    cleanup_command: str


@dataclass(frozen=True)
class CleanupReport:
    instances_terminated: tuple[str, ...] = ()
    key_pair_deleted: bool = False
    security_group_deleted: bool = False
    leftovers: tuple[str, ...] = ()  # what could not be removed, with the command to do it


@dataclass(frozen=True)
class VerifyResult:
    """One image's verdict; junit_path, summary_path and result_digest are provenance byproducts."""

    ami_id: str
    region: str
    family: str | None
    outcome: Outcome
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    total: int = 0
    failing_tests: tuple[str, ...] = ()
    durations: Mapping[str, float] = field(default_factory=dict)
    suite_dirs: tuple[Path, ...] = ()
    suite_digest: str = ""
    result_digest: str | None = None
    junit_path: Path | None = None
    summary_path: Path | None = None
    tagged_status: str | None = None  # the factory:status written to the AMI, if any
    verified_at: str | None = None
    instance_id: str | None = None
    instance_type: str = ""
    address: str | None = None
    launch_seconds: float = 0.0
    test_seconds: float = 0.0
    cleanup_seconds: float = 0.0
    total_seconds: float = 0.0
    error: str | None = None
    kept: KeptInstance | None = None
    cleanup: CleanupReport = field(default_factory=CleanupReport)
    live: bool = False  # a running instance verify did not launch (nothing tagged)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.VERIFIED

    @property
    def result_sha256(self) -> str | None:
        """The result digest as bare hex (in-toto digests carry no `sha256:` prefix)."""
        return self.result_digest.removeprefix("sha256:") if self.result_digest else None

    @property
    def byproducts(self) -> dict[str, Path]:
        """Files to record in provenance (name -> path), present when the suite ran."""
        found = {"junit": self.junit_path, "summary": self.summary_path}
        return {name: path for name, path in found.items() if path is not None}


@dataclass(frozen=True)
class VerifyReport:
    """What `factory verify` prints: every image's result."""

    results: tuple[VerifyResult, ...]
    all_verified: bool

    @classmethod
    def of(cls, results: Sequence[VerifyResult]) -> VerifyReport:
        return cls(results=tuple(results), all_verified=all(r.ok for r in results))


def parse_junit(xml_text: str) -> TestSummary:
    """Per-test outcomes and durations from pytest's JUnit XML (xunit1 or xunit2)."""
    try:
        root = ET.fromstring(xml_text)  # noqa: S314 - our own pytest run's output
    except ET.ParseError as exc:
        raise VerificationError(f"pytest wrote unreadable JUnit XML ({exc})") from None
    cases: list[TestCase] = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                text = child.get("message") or (child.text or "").strip()
                message = text.splitlines()[0][:300] if text else ""
                break
        cases.append(
            TestCase(
                name=_test_name(case.get("classname", ""), case.get("name", ""), case.get("file")),
                outcome=outcome,
                seconds=round(float(case.get("time") or 0.0), 4),
                message=message,
            )
        )
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    seconds = sum(float(s.get("time") or 0.0) for s in suites)
    count = {
        o: sum(1 for c in cases if c.outcome == o) for o in ("passed", "failed", "error", "skipped")
    }
    return TestSummary(
        passed=count["passed"],
        failed=count["failed"],
        errors=count["error"],
        skipped=count["skipped"],
        seconds=round(seconds, 3),
        tests=tuple(cases),
    )


def _test_name(classname: str, name: str, file: str | None) -> str:
    """JUnit's `_common.tests.test_ssh` + `test_x[paramiko://instance]` as a pytest node id.

    -> `_common/tests/test_ssh.py::test_x` (the host parameter is the same for every test).
    """
    name = name.replace(f"[paramiko://{HOST_ALIAS}]", "").replace(f"paramiko://{HOST_ALIAS}-", "")
    name = name.replace(f"-paramiko://{HOST_ALIAS}]", "]")
    parts = classname.split(".")
    # the module is the last dotted part starting with test_; what follows are test classes
    index = max((i for i, p in enumerate(parts) if p.startswith("test_")), default=len(parts) - 1)
    module = "/".join(parts[: index + 1]) + ".py" if parts and parts[0] else (file or "")
    qualified = "::".join([module, *parts[index + 1 :], name]) if module else name
    return qualified


def summary_document(
    target: VerifyTarget,
    summary: TestSummary,
    *,
    instance_id: str,
    junit_sha256: str,
    started_at: str,
    finished_at: str,
) -> dict[str, Any]:
    """The JSON summary: what ran on what, and how it went; its digest is the result digest."""
    return {
        "ami_id": target.ami_id,
        "family": target.family,
        "instance_id": instance_id,
        "suite_digest": target.suite.digest,
        "suite_files": list(target.suite.files),
        "started_at": started_at,
        "finished_at": finished_at,
        "passed": summary.passed,
        "failed": summary.failed,
        "errors": summary.errors,
        "skipped": summary.skipped,
        "total": summary.total,
        "seconds": summary.seconds,
        "failing": list(summary.failing),
        "tests": [
            {"name": t.name, "outcome": t.outcome, "seconds": t.seconds, "message": t.message}
            for t in summary.tests
        ],
        "junit_sha256": junit_sha256,
    }


def verdict_tags(
    outcome: Outcome, suite_digest: str, result_digest: str, verified_at: str
) -> dict[str, str]:
    """The tags written on the AMI after its suite ran."""
    status = tags.Status.VERIFIED if outcome is Outcome.VERIFIED else tags.Status.FAILED
    return {
        tags.STATUS: status.value,
        tags.SUITE_DIGEST: suite_digest,
        tags.RESULT_DIGEST: result_digest,
        tags.VERIFIED_AT: verified_at,
    }


# ---------------------------------------------------------------------------------------------
# pytest invocation (pure)


def ssh_config_text(
    address: str, user: str, key_path: Path, known_hosts: Path, port: int = 22
) -> str:
    return (
        f"Host {HOST_ALIAS}\n"
        f"  HostName {address}\n"
        f"  Port {port}\n"
        f"  User {user}\n"
        f"  IdentityFile {key_path}\n"
        f"  UserKnownHostsFile {known_hosts}\n"
        "  StrictHostKeyChecking yes\n"
    )


def suite_root(suite_dirs: Sequence[Path]) -> Path:
    """The folder test names are relative to: templates/ for templates/FAMILY/tests."""
    return Path(os.path.commonpath([d.parent.parent for d in suite_dirs]))


def pytest_argv(
    suite_dirs: Sequence[Path],
    *,
    ssh_config: Path,
    junit_path: Path,
    ini_path: Path,
    ami_id: str,
    python: str = sys.executable,
) -> tuple[str, ...]:
    """The pytest command: hermetic (no auto-loaded plugins, own ini), pinned paramiko host.

    Run with PYTEST_DISABLE_PLUGIN_AUTOLOAD=1: only testinfra and our plugin are loaded.
    """
    root = suite_root(suite_dirs)
    return (
        python,
        "-m",
        "pytest",
        "-p",
        "testinfra.plugin",
        "-p",
        "factory.verify_plugin",
        "-p",
        "no:cacheprovider",
        "-c",
        str(ini_path),
        "--rootdir",
        str(root),
        "--confcutdir",
        str(root),
        "--import-mode=importlib",
        "--hosts",
        f"paramiko://{HOST_ALIAS}?ssh_config={ssh_config}",
        "--junitxml",
        str(junit_path),
        "-o",
        "junit_family=xunit2",
        "-o",
        f"junit_suite_name={ami_id}",
        "-v",
        "--tb=short",
        "--no-header",
        *(str(d) for d in suite_dirs),
    )


PYTEST_INI = "[pytest]\naddopts =\nconsole_output_style = classic\n"


def caller_cidr(address: str, *, lookup_public_ip: Callable[[], str] | None = None) -> str:
    """Who may SSH to an instance at `address`: this machine, as the instance will see it.

    The source address this machine uses towards the instance, unless the instance is on the
    public internet and we are not (behind NAT): then our public address.
    """
    target = ipaddress.ip_address(address)
    family = socket.AF_INET6 if target.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((address, 22))  # UDP: picks a route and source address, sends nothing
        source = ipaddress.ip_address(sock.getsockname()[0])
    if target.is_global and not source.is_global:
        public = (lookup_public_ip or _public_ip)()
        source = ipaddress.ip_address(public)
    return f"{source}/{source.max_prefixlen}"


def _public_ip() -> str:
    try:
        with urllib.request.urlopen(CALLER_IP_URL, timeout=10) as resp:
            return str(resp.read().decode().strip())
    except OSError as exc:
        raise ConfigError(
            f"cannot find this machine's public address ({exc}); pass --ssh-cidr"
        ) from None


# ---------------------------------------------------------------------------------------------
# signals


# ---------------------------------------------------------------------------------------------
# one image


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class _Resources:
    """What one verification created in AWS and on disk, so cleanup can find all of it."""

    run_id: str
    workdir: Path
    key_name: str
    group_name: str
    group_id: str | None = None
    key_imported: bool = False
    instance_id: str | None = None
    launch_requested: bool = False


class _Verification:
    """Verifies one image: launch, pin, test, tag, clean up."""

    def __init__(
        self,
        *,
        clients: AwsClients,
        target: VerifyTarget,
        settings: VerifySettings,
        output_dir: Path,
        progress: Progress,
        interrupts: process.Interrupts,
    ) -> None:
        self.clients = clients
        self.ec2 = clients.client("ec2")
        self.target = target
        self.settings = settings
        self.progress = progress
        self.interrupts = interrupts
        self.run_id = f"{target.ami_id}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        self.result_dir = output_dir / target.ami_id / self.run_id
        self.started = time.monotonic()
        self._address: str | None = None

    # what the SSH wait says when the instance refuses the key (the live kind says otherwise)
    live = False  # the live kind verifies an instance it did not launch
    auth_grace = AUTH_GRACE
    key_description = "the launch key"
    auth_hint = "is --ssh-user the image's login user?"

    def _before_connect(self) -> None:
        """Called before each SSH attempt (the live kind pushes its key here)."""

    def say(self, message: str) -> None:
        self.progress.info(f"{self.target.ami_id}: {message}")

    def run(self) -> VerifyResult:
        workdir = Path(tempfile.mkdtemp(prefix="factory-verify-"))
        res = _Resources(
            run_id=self.run_id,
            workdir=workdir,
            key_name=f"factory-verify-{self.run_id}",
            group_name=f"factory-verify-{self.run_id}",
        )
        result = VerifyResult(
            ami_id=self.target.ami_id,
            region=self.clients.region,
            family=self.target.family,
            outcome=Outcome.ERROR,
            suite_dirs=self.target.suite.dirs,
            suite_digest=self.target.suite.digest,
            instance_type=self.settings.instance_type,
            live=self.live,
        )
        keep = False
        try:
            result = self._verify(res, result)
            keep = self.settings.keep
        except Interrupted:
            raise  # never kept: the person interrupting wants everything gone
        except FactoryError as exc:
            result = replace(
                result,
                outcome=Outcome.ERROR,
                error=exc.message,
                instance_id=res.instance_id,
                address=self._address,
            )
            self.say(f"error: {exc.message}")
            keep = self.settings.keep
        finally:
            with self.interrupts.shielded():
                cleanup_started = time.monotonic()
                report, kept = self._cleanup(res, keep=keep, address=self._address)
                result = replace(
                    result,
                    cleanup=report,
                    kept=kept,
                    cleanup_seconds=round(time.monotonic() - cleanup_started, 3),
                    total_seconds=round(time.monotonic() - self.started, 3),
                )
        return result

    # -- the steps

    def _verify(self, res: _Resources, result: VerifyResult) -> VerifyResult:
        launch_started = time.monotonic()
        key_path, public_key = self._make_key(res)
        vpc_id = self._vpc_id()
        self._create_group(res, vpc_id)
        self._import_key(res, public_key)
        self._launch(res)
        assert res.instance_id is not None
        result = replace(result, instance_id=res.instance_id)
        address = self._wait_running(res.instance_id)
        self._address = address
        result = replace(result, address=address)
        self._allow_ssh(res, address)
        pins = self._wait_console_keys(res.instance_id)
        known_hosts = res.workdir / "known_hosts"
        self._wait_ssh(address, key_path, pins, known_hosts)
        result = replace(result, launch_seconds=round(time.monotonic() - launch_started, 3))
        self.say(
            f"{res.instance_id} at {address} is up, host key pinned "
            f"({result.launch_seconds:.1f}s); running {len(self.target.suite.files)} suite files"
        )

        test_started = time.monotonic()
        summary, junit_path = self._run_suite(res, address, key_path, known_hosts, public_key)
        result = replace(result, test_seconds=round(time.monotonic() - test_started, 3))
        return self._record(res, result, summary, junit_path, test_started)

    def _make_key(self, res: _Resources) -> tuple[Path, str]:
        """An ed25519 key made here: only its public half is sent to EC2."""
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        register_secret(pem)
        for line in pem.splitlines():
            register_secret(line if len(line) >= 40 else None)
        public = (
            private.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        public = f"{public} {res.key_name}"
        key_path = res.workdir / "id_ed25519"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(pem)
        return key_path, public

    def _vpc_id(self) -> str:
        if self.settings.subnet_id:
            subnets = call(self.ec2, "DescribeSubnets", SubnetIds=[self.settings.subnet_id])[
                "Subnets"
            ]
            return str(subnets[0]["VpcId"])
        vpcs = call(self.ec2, "DescribeVpcs", Filters=[{"Name": "is-default", "Values": ["true"]}])
        if not vpcs["Vpcs"]:
            raise ConfigError(
                f"no default VPC in {self.clients.region}; pass --subnet for the test instance"
            )
        return str(vpcs["Vpcs"][0]["VpcId"])

    def _tag_spec(self, resource_type: str) -> list[dict[str, Any]]:
        return [
            {
                "ResourceType": resource_type,
                "Tags": tag_list(
                    {
                        "Name": f"factory-verify {self.target.ami_id}",
                        tags.VERIFY_RUN: self.run_id,
                    }
                ),
            }
        ]

    def _create_group(self, res: _Resources, vpc_id: str) -> None:
        created = call(
            self.ec2,
            "CreateSecurityGroup",
            GroupName=res.group_name,
            Description=f"factory verify {self.target.ami_id}: SSH from the verifier only",
            VpcId=vpc_id,
            TagSpecifications=self._tag_spec("security-group"),
        )
        res.group_id = str(created["GroupId"])

    def _import_key(self, res: _Resources, public_key: str) -> None:
        res.key_imported = True  # set first: an interrupted call may still have created it
        call(
            self.ec2,
            "ImportKeyPair",
            KeyName=res.key_name,
            PublicKeyMaterial=public_key.encode(),
            TagSpecifications=self._tag_spec("key-pair"),
        )

    def _launch(self, res: _Resources) -> None:
        self.interrupts.check()
        kwargs: dict[str, Any] = {
            "ImageId": self.target.ami_id,
            "InstanceType": self.settings.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "KeyName": res.key_name,
            "SecurityGroupIds": [res.group_id],
            "ClientToken": self.run_id[-64:],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": self._tag_spec("instance"),
        }
        if self.settings.subnet_id:
            kwargs["SubnetId"] = self.settings.subnet_id
        if self.settings.user_data:
            kwargs["UserData"] = self.settings.user_data  # boto3 base64-encodes it
        res.launch_requested = True
        reservation = call(self.ec2, "RunInstances", **kwargs)
        res.instance_id = str(reservation["Instances"][0]["InstanceId"])
        self.say(f"launched {res.instance_id} ({self.settings.instance_type})")

    def _deadline_loop(
        self, what: str, last_error: Callable[[], str] | None = None
    ) -> Iterator[float]:
        """Yields elapsed seconds until the boot timeout, sleeping a growing interval between."""
        started = time.monotonic()
        delay = 0.2
        while True:
            self.interrupts.check()
            elapsed = time.monotonic() - started
            if elapsed > self.settings.boot_timeout:
                detail = f" (last error: {last_error()})" if last_error else ""
                raise VerificationError(
                    f"{self.target.ami_id}: {what} within {self.settings.boot_timeout:.0f}s"
                    f"{detail}; see the instance's console output, or raise --boot-timeout"
                )
            yield elapsed
            self.interrupts.cancelled.wait(delay)
            delay = min(delay * 1.5, 5.0)

    def _wait_running(self, instance_id: str) -> str:
        last_state = ""
        for elapsed in self._deadline_loop(f"{instance_id} did not reach running"):
            reservations = call(self.ec2, "DescribeInstances", InstanceIds=[instance_id])
            instance = reservations["Reservations"][0]["Instances"][0]
            state = instance["State"]["Name"]
            if state != last_state:
                self.say(f"{instance_id} {state} ({elapsed:.1f}s)")
                last_state = state
            if state in ("shutting-down", "terminated", "stopping", "stopped"):
                reason = instance.get("StateReason", {}).get("Message", "no reason given")
                raise VerificationError(
                    f"{self.target.ami_id}: test instance {instance_id} went {state} ({reason})"
                )
            address = instance.get("PublicIpAddress") or instance.get("PrivateIpAddress")
            if state == "running" and address:
                return str(address)
        raise AssertionError("unreachable")

    def _allow_ssh(self, res: _Resources, address: str) -> None:
        cidr = self.settings.ssh_cidr or caller_cidr(address)
        call(
            self.ec2,
            "AuthorizeSecurityGroupIngress",
            GroupId=res.group_id,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [{"CidrIp": cidr, "Description": "factory verify"}]
                    if ":" not in cidr
                    else [],
                    "Ipv6Ranges": [{"CidrIpv6": cidr, "Description": "factory verify"}]
                    if ":" in cidr
                    else [],
                }
            ],
        )
        self.say(f"SSH allowed from {cidr} only")

    def _wait_console_keys(self, instance_id: str) -> ConsoleHostKeys:
        for _ in self._deadline_loop(
            f"{instance_id} printed no SSH host keys on its console (cannot pin its host key)"
        ):
            output = call(self.ec2, "GetConsoleOutput", InstanceId=instance_id).get("Output") or ""
            pins = parse_console_host_keys(output)
            if pins is not None:
                return pins
        raise AssertionError("unreachable")

    def _wait_ssh(
        self, address: str, key_path: Path, pins: ConsoleHostKeys, known_hosts: Path
    ) -> None:
        """Until sshd answers with a pinned key and accepts ours; then write known_hosts."""
        pkey = paramiko.PKey.from_path(str(key_path))
        last_error = ["no answer"]
        refused_since: float | None = None
        waiting = f"SSH at {address} did not accept the verifier's key"
        for _ in self._deadline_loop(waiting, lambda: last_error[0]):
            self._before_connect()
            policy = _PinnedKeyPolicy(pins)  # raises HostKeyError on any other key: no retry
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(policy)
            try:
                client.connect(
                    address,
                    port=22,
                    username=self.settings.ssh_user,
                    pkey=pkey,
                    timeout=10,
                    banner_timeout=10,
                    auth_timeout=10,
                    allow_agent=False,
                    look_for_keys=False,
                )
                _, stdout, _ = client.exec_command("true", timeout=30)
                stdout.channel.recv_exit_status()
            except paramiko.AuthenticationException as exc:
                # cloud-init may install the key a little after sshd starts; not for minutes
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > self.auth_grace:
                    raise VerificationError(
                        f"{self.target.ami_id}: SSH at {address} keeps refusing "
                        f"{self.key_description} for user {self.settings.ssh_user!r} ({exc}); "
                        f"{self.auth_hint}"
                    ) from None
                last_error[0] = f"{type(exc).__name__}: {exc}"
                continue
            except (OSError, EOFError, paramiko.SSHException) as exc:
                last_error[0] = f"{type(exc).__name__}: {exc}"
                continue
            finally:
                client.close()
            assert policy.accepted is not None
            known_hosts.write_text(policy.accepted.known_hosts_line(address) + "\n")
            known_hosts.chmod(0o600)
            return

    def _context(self, address: str, public_key: str) -> dict[str, Any]:
        return {
            "ami_id": self.target.ami_id,
            "region": self.clients.region,
            "name": self.target.name,
            "tags": dict(self.target.tags),
            "ssh_user": self.settings.ssh_user,
            "verifier_public_key": public_key,
            "launch_public_key": public_key,  # the instance was launched with the verifier's key
            "live": False,
            "instance_id": "",
            "address": address,
        }

    def _run_suite(
        self, res: _Resources, address: str, key_path: Path, known_hosts: Path, public_key: str
    ) -> tuple[TestSummary, Path]:
        self.result_dir.mkdir(parents=True, exist_ok=True)
        junit_path = self.result_dir / "junit.xml"
        ssh_config = res.workdir / "ssh_config"
        ssh_config.write_text(
            ssh_config_text(address, self.settings.ssh_user, key_path, known_hosts)
        )
        ini_path = res.workdir / "pytest.ini"
        ini_path.write_text(PYTEST_INI)
        context_path = res.workdir / "image.json"
        context = self._context(address, public_key) | {"instance_id": res.instance_id}
        context_path.write_text(json.dumps(context, indent=2))
        argv = pytest_argv(
            self.target.suite.dirs,
            ssh_config=ssh_config,
            junit_path=junit_path,
            ini_path=ini_path,
            ami_id=self.target.ami_id,
        )
        env = process.child_env(
            {
                CONTEXT_ENV: str(context_path),
                "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        # -v prints "NODE_ID OUTCOME" per test; say which ones fail as they do
        failed_line = re.compile(r"^(\S+::\S+) (FAILED|ERROR)\b")

        def on_line(line: str) -> None:
            match = failed_line.match(line)
            if match:
                node = match.group(1).replace(f"[paramiko://{HOST_ALIAS}]", "")
                self.say(f"{match.group(2)} {node}")

        proc = process.run(
            argv,
            env=env,
            cwd=suite_root(self.target.suite.dirs),  # -v prints node ids relative to it
            timeout=self.settings.suite_timeout,
            on_stdout_line=on_line,
            error_class=VerificationError,
            cancel=self.interrupts.cancelled,  # --parallel workers get no signals themselves
        )
        if not junit_path.is_file() or proc.returncode not in (0, 1):
            tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])
            what = "collected no tests" if proc.returncode == 5 else f"exited {proc.returncode}"
            raise VerificationError(f"{self.target.ami_id}: the test run {what}: {tail}")
        summary = parse_junit(junit_path.read_text())
        if summary.total == 0:
            raise VerificationError(f"{self.target.ami_id}: the suite ran no tests")
        return summary, junit_path

    def _record(
        self,
        res: _Resources,
        result: VerifyResult,
        summary: TestSummary,
        junit_path: Path,
        test_started: float,
    ) -> VerifyResult:
        outcome = Outcome.VERIFIED if summary.all_passed else Outcome.FAILED
        finished_at = _now()
        started_at = datetime.fromtimestamp(
            time.time() - (time.monotonic() - test_started), UTC
        ).strftime("%Y-%m-%dT%H:%M:%SZ")
        document = summary_document(
            self.target,
            summary,
            instance_id=res.instance_id or "",
            junit_sha256=_sha256_file(junit_path),
            started_at=started_at,
            finished_at=finished_at,
        )
        summary_path = self.result_dir / "summary.json"
        summary_path.write_text(json.dumps(document, indent=2) + "\n")
        result_digest = _sha256_file(summary_path)
        verdict = verdict_tags(outcome, self.target.suite.digest, result_digest, finished_at)
        if self.target.tag_verdict:
            call(self.ec2, "CreateTags", Resources=[self.target.ami_id], Tags=tag_list(verdict))
        word = "verified" if outcome is Outcome.VERIFIED else "FAILED"
        self.say(
            f"{word}: {summary.passed} passed, {summary.failed + summary.errors} failed, "
            f"{summary.skipped} skipped in {summary.seconds:.2f}s"
            + (f"; failing: {', '.join(summary.failing)}" if summary.failing else "")
        )
        return replace(
            result,
            outcome=outcome,
            passed=summary.passed,
            failed=summary.failed,
            errors=summary.errors,
            skipped=summary.skipped,
            total=summary.total,
            failing_tests=summary.failing,
            durations={t.name: t.seconds for t in summary.tests},
            result_digest=result_digest,
            junit_path=junit_path,
            summary_path=summary_path,
            tagged_status=verdict[tags.STATUS] if self.target.tag_verdict else None,
            verified_at=finished_at,
        )

    # -- cleanup

    def _cleanup(
        self, res: _Resources, *, keep: bool, address: str | None
    ) -> tuple[CleanupReport, KeptInstance | None]:
        leftovers: list[str] = []
        terminated: list[str] = []
        kept: KeptInstance | None = None
        if keep and res.instance_id and address:
            kept = self._kept(res, address)
        else:
            terminated = self._terminate(res, leftovers)
        key_deleted = self._delete_key_pair(res, leftovers)
        group_deleted = kept is None and self._delete_group(res, leftovers)
        if kept is None:
            shutil.rmtree(res.workdir, ignore_errors=True)
        else:
            (res.workdir / "image.json").unlink(missing_ok=True)
        for line in leftovers:
            self.progress.warn(f"{self.target.ami_id}: cleanup left {line}")
        if terminated or key_deleted or group_deleted:
            self.say(
                "cleaned up: "
                + ", ".join(
                    [
                        *terminated,
                        *(["key pair"] if key_deleted else []),
                        *(["security group"] if group_deleted else []),
                    ]
                )
            )
        return CleanupReport(
            instances_terminated=tuple(terminated),
            key_pair_deleted=key_deleted,
            security_group_deleted=bool(group_deleted),
            leftovers=tuple(leftovers),
        ), kept

    def _run_instances(self, res: _Resources) -> list[str]:
        """Our instances: the one we know, and any an interrupted RunInstances made."""
        ids = {res.instance_id} if res.instance_id else set()
        if res.launch_requested:
            for reservation in paginate(
                self.ec2,
                "DescribeInstances",
                "Reservations",
                Filters=[{"Name": f"tag:{tags.VERIFY_RUN}", "Values": [res.run_id]}],
            ):
                for instance in reservation["Instances"]:
                    if instance["State"]["Name"] != "terminated":
                        ids.add(instance["InstanceId"])
        return sorted(i for i in ids if i)

    def _terminate(self, res: _Resources, leftovers: list[str]) -> list[str]:
        try:
            ids = self._run_instances(res)
            if not ids:
                return []
            call(self.ec2, "TerminateInstances", InstanceIds=ids)
            deadline = time.monotonic() + self.settings.boot_timeout
            while time.monotonic() < deadline:
                reservations = call(self.ec2, "DescribeInstances", InstanceIds=ids)["Reservations"]
                states = {i["State"]["Name"] for r in reservations for i in r["Instances"]}
                if states <= {"terminated"}:
                    break
                time.sleep(1.0)
            return ids
        except FactoryError as exc:
            leftovers.append(
                f"instance(s) of run {res.run_id} ({exc.message}); terminate them: aws ec2 "
                f"terminate-instances --instance-ids {res.instance_id or '<id>'}"
            )
            return []

    def _delete_key_pair(self, res: _Resources, leftovers: list[str]) -> bool:
        if not res.key_imported:
            return False
        try:
            call(self.ec2, "DeleteKeyPair", KeyName=res.key_name)
            return True
        except FactoryError as exc:
            leftovers.append(
                f"key pair {res.key_name} ({exc.message}); delete it: "
                f"aws ec2 delete-key-pair --key-name {res.key_name}"
            )
            return False

    def _delete_group(self, res: _Resources, leftovers: list[str]) -> bool:
        if res.group_id is None:
            # CreateSecurityGroup may have succeeded before an interrupt: find it by name
            with suppress(FactoryError):
                groups = call(
                    self.ec2,
                    "DescribeSecurityGroups",
                    Filters=[{"Name": "group-name", "Values": [res.group_name]}],
                )
                res.group_id = next((g["GroupId"] for g in groups["SecurityGroups"]), None)
        if res.group_id is None:
            return False
        deadline = time.monotonic() + 180.0
        while True:
            try:
                with aws_errors("ec2:DeleteSecurityGroup"):
                    try:
                        self.ec2.delete_security_group(GroupId=res.group_id)
                    except Exception as exc:
                        # a terminating instance still holds the group for a while on AWS
                        if error_code(exc) == "DependencyViolation" and time.monotonic() < deadline:
                            time.sleep(3.0)
                            continue
                        if error_code(exc) == "InvalidGroup.NotFound":
                            return True
                        raise
                return True
            except FactoryError as exc:
                leftovers.append(
                    f"security group {res.group_id} ({exc.message}); delete it: "
                    f"aws ec2 delete-security-group --group-id {res.group_id}"
                )
                return False

    def _kept(self, res: _Resources, address: str) -> KeptInstance:
        key_path = res.workdir / "id_ed25519"
        known_hosts = res.workdir / "known_hosts"
        ssh = (
            f"ssh -i {key_path} -o UserKnownHostsFile={known_hosts} "
            f"-o StrictHostKeyChecking=yes {self.settings.ssh_user}@{address}"
        )
        cleanup = (
            f"aws ec2 terminate-instances --instance-ids {res.instance_id} && "
            f"aws ec2 wait instance-terminated --instance-ids {res.instance_id} && "
            f"aws ec2 delete-security-group --group-id {res.group_id} && rm -rf {res.workdir}"
        )
        self.say(f"kept {res.instance_id}: {ssh}")
        return KeptInstance(
            instance_id=res.instance_id or "",
            user=self.settings.ssh_user,
            address=address,
            key_path=key_path,
            known_hosts=known_hosts,
            security_group_id=res.group_id or "",
            ssh_command=ssh,
            cleanup_command=cleanup,
        )


# ---------------------------------------------------------------------------------------------
# a running instance (`factory rollout --verify-live`)

# What live verification does in AWS, beyond reading the image (see PERMISSIONS).
LIVE_PERMISSIONS = (
    "ec2:DescribeInstances",
    "ec2:DescribeImages",
    "ec2:DescribeKeyPairs",
    "ec2:GetConsoleOutput",
    "ec2-instance-connect:SendSSHPublicKey",
)
EIC_REPUSH = 40.0  # seconds between EC2 Instance Connect pushes (AWS keeps a key 60 s)
LIVE_AUTH_GRACE = 20.0  # an instance in service refusing the key will not change its mind
DEFAULT_LIVE_TIMEOUT = 180.0


@dataclass(frozen=True)
class InstanceFacts:
    """What DescribeInstances says about an instance verify did not launch."""

    instance_id: str
    ami_id: str
    state: str
    address: str | None
    zone: str
    key_name: str | None
    instance_type: str = ""


def describe_instance(clients: AwsClients, instance_id: str) -> InstanceFacts:
    try:
        with aws_errors(f"ec2:DescribeInstances {instance_id}"):
            reservations = clients.client("ec2").describe_instances(InstanceIds=[instance_id])[
                "Reservations"
            ]
    except FactoryError as exc:
        if "InvalidInstanceID" not in exc.message:
            raise
        reservations = []
    instances = [i for r in reservations for i in r["Instances"]]
    if not instances:
        raise ConfigError(f"no such instance in {clients.region}: {instance_id}")
    instance = instances[0]
    return InstanceFacts(
        instance_id=instance_id,
        ami_id=str(instance.get("ImageId", "")),
        state=str(instance["State"]["Name"]),
        address=instance.get("PublicIpAddress") or instance.get("PrivateIpAddress"),
        zone=str(instance.get("Placement", {}).get("AvailabilityZone", "")),
        key_name=instance.get("KeyName"),
        instance_type=str(instance.get("InstanceType", "")),
    )


def key_pair_public_key(clients: AwsClients, key_name: str | None) -> str:
    """The public half of an EC2 key pair ("" when there is none or EC2 no longer has it)."""
    if not key_name:
        return ""
    try:
        with aws_errors(f"ec2:DescribeKeyPairs {key_name}"):
            pairs = clients.client("ec2").describe_key_pairs(
                KeyNames=[key_name], IncludePublicKey=True
            )["KeyPairs"]
    except FactoryError as exc:
        if "InvalidKeyPair" not in exc.message:
            raise
        return ""
    return str(pairs[0].get("PublicKey", "")).strip() if pairs else ""


def load_private_key(path: Path) -> tuple[paramiko.PKey, str]:
    """An SSH private key file and its public line; a one-line error when it cannot be used."""
    try:
        pkey = paramiko.PKey.from_path(str(path))
    except FileNotFoundError:
        raise ConfigError(f"--ssh-key {path}: no such file") from None
    except paramiko.PasswordRequiredException:
        raise ConfigError(
            f"--ssh-key {path} is encrypted; give an unencrypted copy (verify runs unattended)"
        ) from None
    except (OSError, ValueError, paramiko.SSHException) as exc:
        raise ConfigError(f"--ssh-key {path} is not an SSH private key ({exc})") from None
    return pkey, f"{pkey.get_name()} {pkey.get_base64()}"


class _LiveVerification(_Verification):
    """Runs an image's suite on an instance verify did not launch, and leaves it as it was.

    Access: `ssh_key` (the private half of the instance's key pair), or else an ephemeral key
    pushed with EC2 Instance Connect (kept alive while the suite runs: AWS keeps it 60 s). The
    host key is pinned from the console output, as for a fresh instance. Nothing is created in
    AWS and nothing is tagged: the image's verdict stays what `factory verify` recorded.
    """

    live = True
    auth_grace = LIVE_AUTH_GRACE

    def __init__(self, *, instance: InstanceFacts, ssh_key: Path | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.instance = instance
        self.ssh_key = ssh_key
        self.run_id = (
            f"live-{instance.instance_id}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        )
        self.result_dir = self.result_dir.parent / self.run_id
        self._public_key = ""
        self._launch_key = ""
        self._pushed_at: float | None = None
        self.key_description = (
            f"--ssh-key {ssh_key}" if ssh_key else "the key pushed with EC2 Instance Connect"
        )
        self.auth_hint = (
            "is it the private half of the instance's key pair, and --ssh-user its login user?"
            if ssh_key
            else "does the image have EC2 Instance Connect (the ec2-instance-connect package), "
            "and is --ssh-user its login user? Or pass --ssh-key with the instance's key pair"
        )

    def _verify(self, res: _Resources, result: VerifyResult) -> VerifyResult:
        started = time.monotonic()
        instance_id = self.instance.instance_id
        res.instance_id = instance_id
        address = self.instance.address
        if not address:
            raise VerificationError(f"{instance_id} has no IP address to reach it at")
        self._address = address
        result = replace(result, instance_id=instance_id, address=address)
        if self.ssh_key is not None:
            key_path = self.ssh_key
            _, self._public_key = load_private_key(key_path)
            launch_key = self._public_key
        else:
            key_path, self._public_key = self._make_key(res)
            launch_key = key_pair_public_key(self.clients, self.instance.key_name)
        pins = self._wait_console_keys(instance_id)
        known_hosts = res.workdir / "known_hosts"
        self._wait_ssh(address, key_path, pins, known_hosts)
        result = replace(result, launch_seconds=round(time.monotonic() - started, 3))
        self.say(
            f"{instance_id} at {address}: host key pinned, signed in "
            f"({result.launch_seconds:.1f}s); running {len(self.target.suite.files)} suite files"
        )
        self._launch_key = launch_key
        test_started = time.monotonic()
        with self._key_kept_alive():
            summary, junit_path = self._run_suite(
                res, address, key_path, known_hosts, self._public_key
            )
        result = replace(result, test_seconds=round(time.monotonic() - test_started, 3))
        return self._record(res, result, summary, junit_path, test_started)

    def _context(self, address: str, public_key: str) -> dict[str, Any]:
        return super()._context(address, public_key) | {
            "launch_public_key": self._launch_key,
            "live": True,
        }

    def _before_connect(self) -> None:
        if self.ssh_key is None and (
            self._pushed_at is None or time.monotonic() - self._pushed_at > EIC_REPUSH / 2
        ):
            self._push()

    def _push(self) -> None:
        zone = {"AvailabilityZone": self.instance.zone} if self.instance.zone else {}
        call(
            self.clients.client("ec2-instance-connect"),
            "SendSSHPublicKey",
            InstanceId=self.instance.instance_id,
            InstanceOSUser=self.settings.ssh_user,
            SSHPublicKey=self._public_key,
            **zone,
        )
        self._pushed_at = time.monotonic()

    @contextmanager
    def _key_kept_alive(self) -> Iterator[None]:
        """Push the key now and every EIC_REPUSH seconds until the suite is done."""
        if self.ssh_key is not None:
            yield
            return
        self._push()
        done = threading.Event()

        def _repush() -> None:
            while not done.wait(EIC_REPUSH):
                try:
                    self._push()
                except FactoryError as exc:
                    self.progress.warn(f"{self.instance.instance_id}: key push failed: {exc}")

        pusher = threading.Thread(target=_repush, name="eic-push", daemon=True)
        pusher.start()
        try:
            yield
        finally:
            done.set()
            pusher.join(5.0)

    def _cleanup(
        self, res: _Resources, *, keep: bool, address: str | None
    ) -> tuple[CleanupReport, KeptInstance | None]:
        """Nothing was created in AWS: only the local scratch directory (the key) goes."""
        shutil.rmtree(res.workdir, ignore_errors=True)
        return CleanupReport(), None


def verify_instance(
    clients: AwsClients,
    instance_id: str,
    *,
    templates_dir: Path,
    output_dir: Path,
    expected_ami: str | None = None,
    suite_dirs: Sequence[Path] = (),
    settings: VerifySettings | None = None,
    ssh_key: Path | None = None,
    progress: Progress | None = None,
) -> VerifyResult:
    """Run the image's suite against a running instance (say, one an instance refresh made).

    The suite is the one `factory verify` runs for the instance's AMI (its family's), with
    the context saying `live`: tests marked `image_only` (build leftovers a running server may
    legitimately have, like files in /tmp) are skipped. The result is not tagged on the AMI.
    """
    settings = settings or VerifySettings(boot_timeout=DEFAULT_LIVE_TIMEOUT)
    if ssh_key is not None:
        load_private_key(ssh_key)  # a bad key is a usage error, before anything runs
    facts = describe_instance(clients, instance_id)
    if facts.state != "running":
        raise RefusedError(f"{instance_id} is {facts.state}, not running: nothing to verify")
    if expected_ami and facts.ami_id != expected_ami:
        raise RefusedError(f"{instance_id} runs {facts.ami_id}, not {expected_ami}")
    (image,) = describe_images(clients, [facts.ami_id])
    dirs = tuple(suite_dirs) or suite_dirs_for(templates_dir, image.family)
    target = VerifyTarget(
        ami_id=image.ami_id,
        name=image.name,
        family=image.family,
        suite=load_suite(dirs),
        tags=dict(image.tags),
        tag_verdict=False,
    )
    interrupts = process.Interrupts()
    job = _LiveVerification(
        instance=facts,
        ssh_key=ssh_key,
        clients=clients,
        target=target,
        settings=replace(settings, instance_type=facts.instance_type, keep=False),
        output_dir=output_dir,
        progress=progress or Progress(quiet=True),
        interrupts=interrupts,
    )
    with interrupts.installed():
        return job.run()


# ---------------------------------------------------------------------------------------------
# many images


def apply_verify(
    plan: VerifyPlan,
    clients: AwsClients,
    *,
    output_dir: Path,
    progress: Progress | None = None,
) -> list[VerifyResult]:
    """Verify every image of the plan, `plan.settings.parallel` at a time; results in plan order.

    Raises `Interrupted` on SIGINT/SIGTERM after every instance, key pair and group is gone.
    """
    progress = progress or Progress(quiet=True)
    for warning in plan.warnings:
        progress.warn(warning)
    interrupts = process.Interrupts()
    jobs = [
        _Verification(
            clients=clients,
            target=target,
            settings=plan.settings,
            output_dir=output_dir,
            progress=progress,
            interrupts=interrupts,
        )
        for target in plan.targets
    ]
    with interrupts.installed():
        if plan.settings.parallel == 1 or len(jobs) == 1:
            results = []
            for job in jobs:
                results.append(job.run())
                interrupts.check()  # a signal that arrived while cleanup was shielded
            return results
        return _run_parallel(jobs, plan.settings.parallel, interrupts)


def _run_parallel(
    jobs: list[_Verification], workers: int, interrupts: process.Interrupts
) -> list[VerifyResult]:
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify")
    futures: list[Future[VerifyResult]] = [pool.submit(job.run) for job in jobs]
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # an unexpected error in one job stops the others
    except BaseException:
        # Ctrl-C/SIGTERM (or a bug): stop the other jobs; each cleans up what it created
        interrupts.cancelled.set()
        with interrupts.shielded():
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [f.result() for f in futures]


def verify_images(
    clients: AwsClients,
    ami_ids: Sequence[str],
    *,
    templates_dir: Path,
    output_dir: Path,
    suite_dirs: Sequence[Path] = (),
    settings: VerifySettings | None = None,
    progress: Progress | None = None,
) -> list[VerifyResult]:
    """Verify AMIs end to end: plan (facts from AWS and the suites), then apply.

    `suite_dirs` replaces the default suite (templates/_common/tests + templates/FAMILY/tests).
    Returns one result per AMI; use `require_verified` to turn failures into an error.
    """
    plan = plan_for(
        clients,
        ami_ids,
        templates_dir=templates_dir,
        suite_dirs=suite_dirs,
        settings=settings or VerifySettings(),
    )
    return apply_verify(plan, clients, output_dir=output_dir, progress=progress)


def plan_for(
    clients: AwsClients,
    ami_ids: Sequence[str],
    *,
    templates_dir: Path,
    suite_dirs: Sequence[Path] = (),
    settings: VerifySettings,
) -> VerifyPlan:
    """Gather the facts (DescribeImages, suite files) and plan."""
    if not ami_ids:
        raise ConfigError("no images to verify; name at least one AMI id")
    images = describe_images(clients, ami_ids)
    suites: dict[str, Suite] = {}
    by_dirs: dict[tuple[Path, ...], Suite] = {}
    for image in images:
        dirs = tuple(suite_dirs) or suite_dirs_for(templates_dir, image.family)
        if dirs not in by_dirs:
            by_dirs[dirs] = load_suite(dirs)
        suites[image.ami_id] = by_dirs[dirs]
    return plan_verify(
        clients.region,
        clients.account_id,
        images,
        suites,
        settings,
        default_suite=not suite_dirs,
    )


def require_verified(results: Sequence[VerifyResult]) -> None:
    """Raise VerificationError (exit 1) unless every image passed, naming what failed."""
    bad = [r for r in results if not r.ok]
    if not bad:
        return
    parts = []
    for r in bad:
        if r.outcome is Outcome.FAILED:
            names = ", ".join(r.failing_tests[:5]) + (" ..." if len(r.failing_tests) > 5 else "")
            parts.append(f"{r.ami_id} failed {len(r.failing_tests)} test(s): {names}")
        else:
            parts.append(f"{r.ami_id} could not be verified: {r.error}")
    raise VerificationError("; ".join(parts))
