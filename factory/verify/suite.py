"""Which tests an image is verified with: the shared suite, then its family's; and a digest of
every file in them, so a verdict names exactly what ran."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from factory import tags
from factory.errors import ConfigError, RefusedError

COMMON_SUITE = "_common"
HOST_ALIAS = "instance"  # the suite's hostspec names this alias: test ids do not carry the IP
FAMILY_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class Suite:
    """The test directories an image is verified with, and a digest of every file in them."""

    dirs: tuple[Path, ...]
    files: tuple[str, ...]
    digest: str


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


def load_suites(
    templates_dir: Path, families: Sequence[tuple[str, str | None]], suite_dirs: Sequence[Path]
) -> dict[str, Suite]:
    """Each AMI's suite (`families`: AMI id and family), each directory set read once.

    `suite_dirs` replaces the default suite for every image.
    """
    suites: dict[str, Suite] = {}
    by_dirs: dict[tuple[Path, ...], Suite] = {}
    for ami_id, family in families:
        dirs = tuple(suite_dirs) or suite_dirs_for(templates_dir, family)
        if dirs not in by_dirs:
            by_dirs[dirs] = load_suite(dirs)
        suites[ami_id] = by_dirs[dirs]
    return suites
