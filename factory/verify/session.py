"""The SSH session and the testinfra run: an ephemeral key (only its public half leaves this
machine), waiting until sshd answers with the pinned host key and accepts ours, then the
family's pytest-testinfra suite in a child pytest process over that pinned connection
(testinfra caches hosts per process, so a reused address never hands back a stale connection).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from factory import process
from factory.errors import ConfigError, VerificationError
from factory.redact import register_secret
from factory.verify.hostkeys import ConsoleHostKeys, HostKey, PinnedKeyPolicy
from factory.verify.job import Job
from factory.verify.results import TestSummary, parse_junit
from factory.verify.suite import HOST_ALIAS
from factory.verify_plugin import CONTEXT_ENV

AUTH_GRACE = 120.0  # seconds sshd may refuse the launch key before verify gives up
PYTEST_INI = "[pytest]\naddopts =\nconsole_output_style = classic\n"


# ---- keys --------------------------------------------------------------------------------------


def make_key(workdir: Path, comment: str) -> tuple[Path, str]:
    """An ed25519 key made here (private half in `workdir`, 0600) and its public line."""
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
    key_path = workdir / "id_ed25519"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(pem)
    return key_path, f"{public} {comment}"


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


# ---- signing in --------------------------------------------------------------------------------


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class SshAccess:
    """How verify signs in, and what it says when the instance keeps refusing the key."""

    user: str
    key_path: Path
    key_description: str = "the launch key"
    auth_hint: str = "is --ssh-user the image's login user?"
    auth_grace: float = AUTH_GRACE  # cloud-init may install the key a little after sshd starts
    before_connect: Callable[[], None] = field(default=_nothing)  # e.g. push the key again


def _sign_in(address: str, user: str, pkey: paramiko.PKey, pins: ConsoleHostKeys) -> HostKey:
    """One SSH sign-in and a command; the host key it accepted (any other raises HostKeyError)."""
    policy = PinnedKeyPolicy(pins)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(policy)
    try:
        client.connect(
            address,
            port=22,
            username=user,
            pkey=pkey,
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
            allow_agent=False,
            look_for_keys=False,
        )
        _, stdout, _ = client.exec_command("true", timeout=30)
        stdout.channel.recv_exit_status()
    finally:
        client.close()
    assert policy.accepted is not None
    return policy.accepted


@dataclass
class _SignInAttempts:
    """Tries to sign in; remembers the last failure, and for how long the key was refused."""

    job: Job
    address: str
    access: SshAccess
    pkey: paramiko.PKey
    pins: ConsoleHostKeys
    last_error: str = "no answer"
    refused_since: float | None = None

    def __call__(self) -> HostKey | None:
        self.access.before_connect()
        try:
            return _sign_in(self.address, self.access.user, self.pkey, self.pins)
        except paramiko.AuthenticationException as exc:
            self.refused_since = self.refused_since or time.monotonic()
            if time.monotonic() - self.refused_since > self.access.auth_grace:
                raise VerificationError(
                    f"{self.job.target.ami_id}: SSH at {self.address} keeps refusing "
                    f"{self.access.key_description} for user {self.access.user!r} ({exc}); "
                    f"{self.access.auth_hint}"
                ) from None
            self.last_error = f"{type(exc).__name__}: {exc}"
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
        return None


def wait_ssh(
    job: Job, address: str, access: SshAccess, pins: ConsoleHostKeys, known_hosts: Path
) -> HostKey:
    """Until sshd answers with a pinned key and accepts ours; then write known_hosts."""
    attempts = _SignInAttempts(
        job, address, access, paramiko.PKey.from_path(str(access.key_path)), pins
    )
    accepted = job.wait_for(
        attempts,
        f"SSH at {address} did not accept the verifier's key",
        last_error=lambda: attempts.last_error,
    )
    known_hosts.write_text(accepted.known_hosts_line(address) + "\n")
    known_hosts.chmod(0o600)
    return accepted


# ---- the pytest run (pure parts) ---------------------------------------------------------------


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


def suite_context(
    job: Job,
    *,
    address: str,
    instance_id: str,
    public_key: str,
    launch_public_key: str,
    live: bool,
) -> dict[str, Any]:
    """What the suite's `image` fixture reads (factory.verify_plugin): the AMI and the access."""
    return {
        "ami_id": job.target.ami_id,
        "region": job.clients.region,
        "name": job.target.name,
        "tags": dict(job.target.tags),
        "ssh_user": job.settings.ssh_user,
        "verifier_public_key": public_key,
        "launch_public_key": launch_public_key,  # "" when the instance has no key pair
        "live": live,
        "instance_id": instance_id,
        "address": address,
    }


# ---- the pytest run ----------------------------------------------------------------------------

_FAILED_LINE = re.compile(r"^(\S+::\S+) (FAILED|ERROR)\b")  # -v prints "NODE_ID OUTCOME"


def _write_run_files(
    job: Job, address: str, key_path: Path, known_hosts: Path, context: Mapping[str, Any]
) -> tuple[Path, Path, Path]:
    """ssh_config, pytest.ini and the context file, in the job's scratch directory."""
    ssh_config = job.workdir / "ssh_config"
    ssh_config.write_text(ssh_config_text(address, job.settings.ssh_user, key_path, known_hosts))
    ini_path = job.workdir / "pytest.ini"
    ini_path.write_text(PYTEST_INI)
    context_path = job.workdir / "image.json"
    context_path.write_text(json.dumps(dict(context), indent=2))
    return ssh_config, ini_path, context_path


def run_suite(
    job: Job, *, address: str, key_path: Path, known_hosts: Path, context: Mapping[str, Any]
) -> tuple[TestSummary, Path]:
    """Run the target's suite against `address` in a child pytest; its summary and JUnit file."""
    job.result_dir.mkdir(parents=True, exist_ok=True)
    junit_path = job.result_dir / "junit.xml"
    ssh_config, ini_path, context_path = _write_run_files(
        job, address, key_path, known_hosts, context
    )
    argv = pytest_argv(
        job.target.suite.dirs,
        ssh_config=ssh_config,
        junit_path=junit_path,
        ini_path=ini_path,
        ami_id=job.target.ami_id,
    )
    env = process.child_env(
        {
            CONTEXT_ENV: str(context_path),
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )

    def on_line(line: str) -> None:  # say which tests fail as they do
        match = _FAILED_LINE.match(line)
        if match:
            node = match.group(1).replace(f"[paramiko://{HOST_ALIAS}]", "")
            job.say(f"{match.group(2)} {node}")

    proc = process.run(
        argv,
        env=env,
        cwd=suite_root(job.target.suite.dirs),  # -v prints node ids relative to it
        timeout=job.settings.suite_timeout,
        on_stdout_line=on_line,
        error_class=VerificationError,
        cancel=job.interrupts.cancelled,  # --parallel workers get no signals themselves
    )
    ami_id = job.target.ami_id
    if not junit_path.is_file() or proc.returncode not in (0, 1):
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])
        what = "collected no tests" if proc.returncode == 5 else f"exited {proc.returncode}"
        raise VerificationError(f"{ami_id}: the test run {what}: {tail}")
    summary = parse_junit(junit_path.read_text())
    if summary.total == 0:
        raise VerificationError(f"{ami_id}: the suite ran no tests")
    return summary, junit_path
