"""`factory local`: options are checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from factory.cli import cli
from factory.localcloud import baseimage, control


@pytest.mark.parametrize("port", ["0", "99999", "-1"])
def test_up_refuses_a_port_out_of_range_before_starting(
    port: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started: list[object] = []
    monkeypatch.setattr(control, "up", lambda *a, **kw: started.append(a))
    result = CliRunner().invoke(
        cli, ["local", "up", "--no-instances", "--state-dir", str(tmp_path), "--port", port]
    )
    assert result.exit_code == 2
    assert "is not in the range 1<=x<=65535" in result.output
    assert started == []


def _fake_up(state_dir: Path, **_: object) -> control.LocalCloudStatus:
    return control.LocalCloudStatus(
        running=True,
        state_dir=state_dir,
        pid=1234,
        port=4566,
        endpoint_url="http://127.0.0.1:4566",
        log_file=state_dir / "server.log",
    )


@pytest.mark.parametrize(
    ("extra", "cached", "says_base_image"),
    [
        (["--no-instances"], False, False),
        (["--no-instances"], True, False),
        ([], True, False),
        ([], False, True),
    ],
    ids=["no-instances", "no-instances-cached", "instances-cached", "instances-first-start"],
)
def test_up_mentions_building_the_base_image_only_when_it_will(
    extra: list[str],
    cached: bool,
    says_base_image: bool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    if cached:
        marker = baseimage.base_rootfs_path(cache) / baseimage.COMPLETE_MARKER
        marker.parent.mkdir(parents=True)
        marker.touch()
    monkeypatch.setattr(control, "up", _fake_up)
    argv = ["local", "up", "--state-dir", str(tmp_path / "state"), "--image-cache", str(cache)]
    result = CliRunner().invoke(cli, [*argv, *extra])
    assert result.exit_code == 0, result.output
    assert "starting the local cloud" in result.stderr
    assert ("builds the base image" in result.stderr) is says_base_image, result.stderr


def test_up_looks_for_the_base_image_in_the_default_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FACTORY_LOCAL_IMAGE_CACHE", raising=False)
    state = tmp_path / "state"
    marker = baseimage.base_rootfs_path(state / "images") / baseimage.COMPLETE_MARKER
    marker.parent.mkdir(parents=True)
    marker.touch()
    monkeypatch.setattr(control, "up", _fake_up)
    result = CliRunner().invoke(cli, ["local", "up", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert "starting the local cloud" in result.stderr
    assert "base image" not in result.stderr
