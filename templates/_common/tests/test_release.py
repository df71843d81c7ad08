"""The image says what it is: /etc/factory-release matches the AMI's factory tags."""

from __future__ import annotations

import re
from typing import Any

import pytest

RELEASE_FILE = "/etc/factory-release"


def _key(name: str) -> str:
    """FACTORY_BUILD_ID, build_id, build-id -> build-id"""
    name = name.strip().lower().replace("_", "-")
    return name.removeprefix("factory-").removeprefix("factory:")


@pytest.fixture(scope="module")
def release(host: Any) -> dict[str, str]:
    f = host.file(RELEASE_FILE)
    assert f.is_file, f"{RELEASE_FILE} is missing"
    values = {}
    for line in f.content_string.splitlines():
        match = re.match(r"\s*([A-Za-z][\w:.-]*)\s*=\s*(.*?)\s*$", line)
        if match and not line.lstrip().startswith("#"):
            values[_key(match.group(1))] = match.group(2).strip("\"'")
    return values


def test_release_file_matches_image_tags(release: dict[str, str], image: Any) -> None:
    mismatched = {
        field: (release.get(field), image.tags.get(f"factory:{field}"))
        for field in ("family", "version", "build-id")
        if release.get(field) is None or release.get(field) != image.tags.get(f"factory:{field}")
    }
    assert mismatched == {}, f"{RELEASE_FILE} vs AMI tags (file, tag): {mismatched}"


def test_release_file_is_root_owned_and_read_only(host: Any) -> None:
    f = host.file(RELEASE_FILE)
    assert f.user == "root"
    assert f.mode & 0o022 == 0, f"mode {f.mode:o}"
