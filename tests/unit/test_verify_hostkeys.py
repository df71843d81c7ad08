"""Host key pinning: console parsing, fingerprints, and refusing a key the console did not print.

The SSH tests run a real paramiko SSH server in-process on 127.0.0.1 and connect to it with
the verifier's policy and with the pinned testinfra backend.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from factory.verify import (
    ConsoleHostKeys,
    HostKey,
    HostKeyError,
    PinnedKeyPolicy,
    parse_console_host_keys,
    ssh_config_text,
)
from factory.verify_plugin import PinnedParamikoBackend

Keys = dict[str, paramiko.PKey]
Server = tuple[int, paramiko.PKey, paramiko.PKey]


def _host_key(key: paramiko.PKey) -> HostKey:
    return HostKey(key.get_name(), key.get_base64())


@pytest.fixture(scope="module")
def keys() -> dict[str, paramiko.PKey]:
    return {
        "ed25519": _ed25519(),
        "ecdsa": paramiko.ECDSAKey.generate(),
        "rsa": paramiko.RSAKey.generate(2048),
    }


def _ed25519() -> paramiko.PKey:
    pem = (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem))


def _console(keys: Keys, prefix: str = "", keys_block: bool = True) -> str:
    """Console output as cloud-init prints it on EC2 (optionally with a line prefix)."""
    fps = [
        f"{k.get_bits()} {_host_key(k).fingerprint} root@ip-10-0-0-1 ({kind.upper()})"
        for kind, k in keys.items()
    ]
    lines = [
        "[    4.120000] cloud-init[612]: Cloud-init v. 22.4.2 running 'modules:final'",
        "#" * 61,
        "-----BEGIN SSH HOST KEY FINGERPRINTS-----",
        *fps,
        "-----END SSH HOST KEY FINGERPRINTS-----",
        "#" * 61,
    ]
    if keys_block:
        lines += [
            "-----BEGIN SSH HOST KEY KEYS-----",
            *[f"{k.get_name()} {k.get_base64()} root@ip-10-0-0-1" for k in keys.values()],
            "-----END SSH HOST KEY KEYS-----",
        ]
    lines.append("Debian GNU/Linux 12 ip-10-0-0-1 ttyS0")
    return "\n".join(prefix + line for line in lines) + "\n"


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "ec2: ", "[   12.345678] cloud-init[812]: "])
def test_parses_both_blocks_with_any_line_prefix(keys: Keys, prefix: str) -> None:
    pins = parse_console_host_keys(_console(keys, prefix))
    assert pins is not None
    assert set(pins.keys) == {_host_key(k) for k in keys.values()}
    assert pins.fingerprints == {_host_key(k).fingerprint for k in keys.values()}


def test_no_blocks_means_nothing_to_pin() -> None:
    assert parse_console_host_keys("Debian GNU/Linux 12\nlogin: \n") is None
    # an unfinished block (console still being written) pins nothing either
    assert parse_console_host_keys("-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAA") is None


def test_fingerprints_only_pin_by_fingerprint(keys: Keys) -> None:
    pins = parse_console_host_keys(_console(keys, keys_block=False))
    assert pins is not None and pins.keys == ()
    assert pins.accepts(_host_key(keys["ed25519"]))
    assert not pins.accepts(_host_key(paramiko.ECDSAKey.generate()))


def test_keys_that_disagree_with_the_fingerprints_are_refused(keys: Keys) -> None:
    other = paramiko.ECDSAKey.generate()
    console = _console(keys).replace(keys["ecdsa"].get_base64(), other.get_base64())
    with pytest.raises(HostKeyError, match="not among its printed fingerprints"):
        parse_console_host_keys(console)


def test_the_last_boot_wins(keys: Keys) -> None:
    """After a reboot with new host keys the console holds both boots: pin the latest."""
    first = {"ed25519": _ed25519()}
    second = {"ed25519": keys["ed25519"]}
    pins = parse_console_host_keys(_console(first) + _console(second))
    assert pins is not None
    assert pins.keys == (_host_key(keys["ed25519"]),)


def test_garbage_key_lines_are_ignored(keys: Keys) -> None:
    console = _console(keys).replace(
        "-----END SSH HOST KEY KEYS-----",
        "ssh-ed25519 AAAAnotbase64!!\n"
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIAgZ\n"  # an ed25519 blob claiming to be rsa
        "-----END SSH HOST KEY KEYS-----",
    )
    pins = parse_console_host_keys(console)
    assert pins is not None and len(pins.keys) == 3


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_fingerprints_are_what_ssh_keygen_prints(tmp_path: Path) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    sha = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    md5 = subprocess.run(
        ["ssh-keygen", "-l", "-E", "md5", "-f", f"{key}.pub"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    assert HostKey(kind, blob).fingerprint == sha
    assert HostKey(kind, blob).md5_fingerprint == md5
    # old cloud-init printed bare MD5 hex: accepted as well
    bare = md5.removeprefix("MD5:")
    pins = parse_console_host_keys(
        "-----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
        f"256 {bare} /etc/ssh/ssh_host_ed25519_key.pub (ED25519)\n"
        "-----END SSH HOST KEY FINGERPRINTS-----\n"
    )
    assert pins is not None and pins.accepts(HostKey(kind, blob))


def test_known_hosts_line() -> None:
    key = HostKey("ssh-ed25519", "AAAAC3Nz")
    assert key.known_hosts_line("127.40.0.1") == "127.40.0.1 ssh-ed25519 AAAAC3Nz"
    assert key.known_hosts_line("10.0.0.1", 2222) == "[10.0.0.1]:2222 ssh-ed25519 AAAAC3Nz"


# --- a real SSH handshake ----------------------------------------------------------------


class _Server(paramiko.ServerInterface):
    def __init__(self, authorized: paramiko.PKey) -> None:
        self.authorized = authorized
        self.requests_answered = threading.Semaphore(0)  # released by _Transport

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = key.get_base64() == self.authorized.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        def _reply() -> None:
            # after paramiko has sent the exec request's success reply, never before it
            assert self.requests_answered.acquire(timeout=10)
            channel.sendall(b"hello\n")
            channel.send_exit_status(0)
            channel.close()

        threading.Thread(target=_reply, daemon=True).start()
        return True


class _Transport(paramiko.Transport):
    """Tells the server interface when it has answered a channel request (SUCCESS sent)."""

    def _send_user_message(self, data: Any) -> None:
        super()._send_user_message(data)
        if data.asbytes()[:1] == paramiko.common.cMSG_CHANNEL_SUCCESS:
            self.server_object.requests_answered.release()


@pytest.fixture
def ssh_server(keys: Keys) -> Iterator[Server]:
    """A paramiko SSH server on 127.0.0.1: (port, its host key, the client key it accepts)."""
    host_key, client_key = keys["ed25519"], paramiko.ECDSAKey.generate()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = threading.Event()
    transports: list[paramiko.Transport] = []

    def _serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            transport = _Transport(conn)
            transport.add_server_key(host_key)
            transports.append(transport)
            try:
                transport.start_server(server=_Server(client_key))
            except (paramiko.SSHException, EOFError, OSError):  # the client hung up: expected
                continue

    thread = threading.Thread(target=_serve, daemon=True)
    thread.start()
    yield port, host_key, client_key
    stop.set()
    listener.close()
    for transport in transports:
        transport.close()
    thread.join(timeout=5)


def _connect(port: int, client_key: paramiko.PKey, pins: ConsoleHostKeys) -> PinnedKeyPolicy:
    policy = PinnedKeyPolicy(pins)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(policy)
    try:
        client.connect(
            "127.0.0.1",
            port=port,
            username="admin",
            pkey=client_key,
            allow_agent=False,
            look_for_keys=False,
            timeout=5,
        )
    finally:
        client.close()
    return policy


def test_policy_accepts_the_printed_key(ssh_server: Server) -> None:
    port, host_key, client_key = ssh_server
    policy = _connect(port, client_key, ConsoleHostKeys(keys=(_host_key(host_key),)))
    assert policy.accepted == _host_key(host_key)


def test_policy_refuses_any_other_key(ssh_server: Server) -> None:
    port, _host, client_key = ssh_server
    impostor = _host_key(_ed25519())
    pins = ConsoleHostKeys(fingerprints=frozenset({impostor.fingerprint}))
    with pytest.raises(HostKeyError, match="not the key the instance printed"):
        _connect(port, client_key, pins)


def test_testinfra_backend_is_pinned_by_known_hosts(ssh_server: Server, tmp_path: Path) -> None:
    """The backend verify's pytest uses: the right key runs commands, any other is refused."""
    port, host_key, client_key = ssh_server
    key_path = tmp_path / "id"
    client_key.write_private_key_file(str(key_path))
    known_hosts = tmp_path / "known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text(ssh_config_text("127.0.0.1", "admin", key_path, known_hosts, port=port))

    known_hosts.write_text(_host_key(host_key).known_hosts_line("127.0.0.1", port) + "\n")
    backend = PinnedParamikoBackend("instance", ssh_config=str(config))
    assert backend.run("echo hello").stdout == "hello\n"
    sock = backend.client.get_transport().sock
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    known_hosts.write_text(_host_key(_ed25519()).known_hosts_line("127.0.0.1", port) + "\n")
    with pytest.raises(paramiko.BadHostKeyException):
        PinnedParamikoBackend("instance", ssh_config=str(config)).run("true")

    known_hosts.write_text("")  # unknown host: refused, never accepted with a warning
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        PinnedParamikoBackend("instance", ssh_config=str(config)).run("true")
