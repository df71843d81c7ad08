"""The instance runtime's pure parts: addresses, user data, the image store's layers, sweep."""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from imagekit import wait_for
from moto.core.types import Base64EncodedString

from factory.errors import FactoryError
from factory.localcloud import runtime
from factory.localcloud.baseimage import DEBIAN_12_NAME_PATTERN, DEBIAN_OWNER_ID, debootstrap_argv
from factory.localcloud.layers import BASE_LAYER, ImageStore, copy_tree
from factory.localcloud.sandbox import BootSpec, unshare_argv


def test_address_block_is_stable_per_state_dir_and_clear_of_common_addresses(
    tmp_path: Path,
) -> None:
    a = runtime.address_block(tmp_path / "a")
    assert a == runtime.address_block(tmp_path / "a")
    blocks = {runtime.address_block(tmp_path / str(i)) for i in range(40)}
    assert len(blocks) > 20  # different state dirs spread over different /16s
    for block in blocks:
        assert block.prefixlen == 16
        assert block.subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))
        assert block.network_address.packed[1] not in (0, 255)


@pytest.mark.runtime  # binding port 22 needs root, as the runtime's sshds do
def test_pool_hands_out_distinct_addresses_and_skips_bound_ones() -> None:
    pool = runtime.AddressPool(ipaddress.IPv4Network("127.231.0.0/16"))
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.231.0.1", 22))
        blocker.listen()
        first = pool.allocate()
    assert first == "127.231.0.2"
    second = pool.allocate()
    assert second == "127.231.0.3"
    pool.release(first)
    assert pool.allocate() == "127.231.0.4"  # a freed address is reused last


def test_boot_spec_hostname_and_unshare_argv(tmp_path: Path) -> None:
    spec = BootSpec("i-1", "127.20.0.7", (tmp_path,), "", "", "admin")
    assert spec.hostname == "ip-127-20-0-7"
    argv = unshare_argv(tmp_path / "boot.json")
    assert "unshare" in argv
    if argv[0] == "setpriv":  # the sandbox dies with the local cloud
        assert argv[1:3] == ["--pdeathsig", "KILL"]
    for flag in ("--pid", "--mount", "--fork", "--kill-child"):
        assert flag in argv
    assert argv[-1] == str(tmp_path / "boot.json")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, b""),
        (b"#!/bin/sh\necho hi\n", b"#!/bin/sh\necho hi\n"),
        (base64.b64encode(b"#!/bin/sh\nexit 3\n").decode(), b"#!/bin/sh\nexit 3\n"),
        ("#!/bin/sh\nplain text\n", b"#!/bin/sh\nplain text\n"),
    ],
)
def test_user_data_is_normalised_to_base64(value: object, expected: bytes) -> None:
    assert base64.b64decode(runtime.user_data_b64(value)) == expected


def test_user_data_from_moto_base64_string() -> None:
    value = Base64EncodedString.from_raw_string("#!/bin/sh\ntrue\n")
    assert base64.b64decode(runtime.user_data_b64(value)) == b"#!/bin/sh\ntrue\n"


def test_debian_constants_match_the_official_amis() -> None:
    assert DEBIAN_OWNER_ID == "136693071363"
    assert DEBIAN_12_NAME_PATTERN == "debian-12-amd64-*"
    assert runtime.BASE_IMAGE_NAME.startswith("debian-12-amd64-")
    argv = debootstrap_argv(Path("/x"), "http://deb.debian.org/debian")
    assert "--variant=minbase" in argv
    assert any("openssh-server" in a and "python3" in a and "sudo" in a for a in argv)


def _layer_dir(root: Path, name: str, content: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "file").write_text(content)
    return path


def test_store_refcounts_layers_across_images_and_instances(tmp_path: Path) -> None:
    base = _layer_dir(tmp_path, "base", "base")
    store = ImageStore(tmp_path / "layers", base)
    store.hold("ami:ami-base", (BASE_LAYER,))
    upper = _layer_dir(tmp_path, "upper", "built")
    layer = store.add_layer(upper, move=True)
    assert not upper.exists()  # moved, not copied
    store.hold("ami:ami-1", (layer, BASE_LAYER))
    store.hold("ami:ami-2", (layer, BASE_LAYER))  # CopyImage shares the layers
    store.hold("instance:i-1", (layer, BASE_LAYER))
    assert store.paths((layer, BASE_LAYER))[0].joinpath("file").read_text() == "built"
    assert store.release("ami:ami-1") == []
    assert store.release("ami:ami-2") == []  # the instance still uses it
    layer_path = tmp_path / "layers" / layer
    assert layer_path.is_dir()
    assert store.release("instance:i-1") == [layer]
    assert not layer_path.exists()
    # the base layer is never deleted, even when nothing holds it
    assert store.release("ami:ami-base") == []
    assert base.is_dir()
    assert store.release("ami:unknown") == []


def test_store_copy_keeps_the_source(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "layers", _layer_dir(tmp_path, "base", "b"))
    upper = _layer_dir(tmp_path, "upper", "live")
    layer = store.add_layer(upper, move=False)
    assert (upper / "file").read_text() == "live"
    assert (store.paths((layer,))[0] / "file").read_text() == "live"
    store.clear()
    assert not (tmp_path / "layers" / layer).exists()
    assert store.layer_count() == 1


@pytest.mark.runtime  # whiteouts (mknod 0/0) and trusted xattrs need root
def test_copy_tree_keeps_whiteouts_opaque_dirs_and_owners(tmp_path: Path) -> None:
    src = tmp_path / "upper"
    (src / "etc/opaque").mkdir(parents=True)
    os.setxattr(src / "etc/opaque", "trusted.overlay.opaque", b"y")
    os.mknod(src / "etc/deleted", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (src / "etc/owned").write_text("x")
    os.chown(src / "etc/owned", 1000, 1000)
    copy_tree(src, tmp_path / "copy")
    copied = tmp_path / "copy"
    st = os.lstat(copied / "etc/deleted")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(copied / "etc/opaque", "trusted.overlay.opaque") == b"y"
    assert os.stat(copied / "etc/owned").st_uid == 1000


def test_sweep_kills_leftover_sandbox_processes_and_removes_directories(tmp_path: Path) -> None:
    state = tmp_path / "state"
    instance_dir = state / "instances" / "i-left"
    instance_dir.mkdir(parents=True)
    (state / "layers" / "layer-x").mkdir(parents=True)
    # a process whose command line looks like a sandbox's init of this state dir
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "guest_init", str(instance_dir)],
    )
    try:
        wait_for(  # until exec: before it the cmdline is pytest's
            lambda: b"guest_init" in Path(f"/proc/{proc.pid}/cmdline").read_bytes(),
            timeout=10,
            what="the stand-in process to exec",
            interval=0.01,
        )
        runtime.sweep(state)
        wait_for(
            lambda: proc.poll() is not None, timeout=5, what="the sweep to end it", interval=0.05
        )
        assert proc.returncode is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert not (state / "instances").exists()
    assert not (state / "layers").exists()
    runtime.sweep(tmp_path / "missing")  # nothing there: nothing to do


def test_a_listener_on_all_addresses_is_reported_clearly() -> None:
    pool = runtime.AddressPool(ipaddress.IPv4Network("127.232.0.0/16"))
    with socket.socket() as listener:
        # a high port stands in for 22: binding 0.0.0.0:22 would disturb other local clouds
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert runtime.wildcard_listener(port)
        with pytest.raises(FactoryError, match=rf"port {port} is taken on all addresses"):
            pool.check_port(port)
    assert not runtime.wildcard_listener(port)
    pool.check_port(port)  # free again: no error
