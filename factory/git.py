"""The commit a build came from, and whether the working tree had uncommitted changes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from factory.errors import ConfigError
from factory.process import child_env, run


@dataclass(frozen=True)
class GitState:
    commit: str | None  # None outside a git checkout (or without git)
    dirty: bool


def git_state(root: Path) -> GitState:
    """HEAD and the dirty flag (tracked files only) of the checkout holding `root`."""
    env = child_env({"GIT_OPTIONAL_LOCKS": "0"})
    try:
        head = run(["git", "-C", str(root), "rev-parse", "HEAD"], env=env, timeout=30)
    except ConfigError:  # git is not installed
        return GitState(None, False)
    if head.returncode != 0:
        return GitState(None, False)
    status = run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        env=env,
        timeout=60,
    )
    return GitState(head.stdout.strip(), bool(status.stdout.strip()))
