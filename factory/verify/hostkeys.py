"""The instance's SSH host key, pinned from its console: EC2 prints the host keys (and their
fingerprints) there at boot, so verify connects only to the machine it launched, never to
whatever answers at the address (paramiko's default would accept any key).
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

import paramiko

from factory.aws import instances
from factory.errors import VerificationError
from factory.verify.job import Job


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


class PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
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


def wait_console_keys(job: Job, instance_id: str) -> ConsoleHostKeys:
    """Until the instance has printed its host keys on the console (cloud-init does at boot)."""

    def printed() -> ConsoleHostKeys | None:
        return parse_console_host_keys(instances.console_output(job.clients, instance_id))

    return job.wait_for(
        printed, f"{instance_id} printed no SSH host keys on its console (cannot pin its host key)"
    )
