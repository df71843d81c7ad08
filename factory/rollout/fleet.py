"""The fleet file (GitOps): which family/channel each Auto Scaling group should run.

`fleet.toml` declares, per group, the image family and channel it follows:

    [defaults]            # optional: refresh settings for every group
    min_healthy = 90
    warmup = 60

    [groups.web-prod]
    family = "web"
    channel = "prod"
    region = "eu-west-1"  # optional; default: the configured region
    min_healthy = 50      # optional per-group override (also max_healthy, warmup, checkpoints)
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from factory.config import check_region
from factory.errors import ConfigError
from factory.rollout.plan import RefreshSettings

_SETTING_KEYS = {"min_healthy", "max_healthy", "warmup", "checkpoints", "checkpoint_delay"}
# what AWS's instance refresh accepts for each setting (as rollout's flags check them)
_RANGES = {
    "min_healthy": (0, 100),
    "max_healthy": (100, 200),
    "warmup": (0, None),
    "checkpoint_delay": (0, None),
}
_GROUP_KEYS = {"family", "channel", "region"} | _SETTING_KEYS


@dataclass(frozen=True)
class FleetGroup:
    """One group of the fleet file."""

    name: str
    family: str
    channel: str
    region: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # overrides of RefreshSettings

    def refresh_settings(self, base: RefreshSettings) -> RefreshSettings:
        values: dict[str, Any] = {}
        for key, value in self.settings.items():
            if key == "checkpoints":
                values[key] = tuple(int(v) for v in value)
            else:
                values[key] = int(value)
        return replace(base, **values)


@dataclass(frozen=True)
class Fleet:
    path: str
    groups: tuple[FleetGroup, ...]


def _settings(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _SETTING_KEYS & table.keys():
        value = table[key]
        if key == "checkpoints":
            if (
                not isinstance(value, list)
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                or any(not 1 <= v <= 100 for v in value)
                or value != sorted(set(value))
            ):
                raise ConfigError(
                    f"{where}: checkpoints must be ascending percentages 1..100, like [20, 50, 100]"
                )
        elif not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be a whole number")
        else:
            low, high = _RANGES[key]
            if value < low or (high is not None and value > high):
                bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise ConfigError(f"{where}: {key} must be {bounds}")
        out[key] = value
    return out


def _region(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: region must be a string")
    return None if value is None else check_region(value, f"{where} region")


def parse_fleet(
    text: str, path: str = "fleet.toml", channels: Sequence[str] | None = None
) -> Fleet:
    """Parse and validate a fleet file (ConfigError naming the file and key on any mistake)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown_top = set(doc) - {"defaults", "groups"}
    if unknown_top:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown_top))}")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: [defaults] must be a table")
    unknown = set(defaults) - _SETTING_KEYS - {"region"}
    if unknown:
        raise ConfigError(f"{path}: [defaults] has unknown key(s) {', '.join(sorted(unknown))}")
    base = _settings(defaults, f"{path} [defaults]")
    groups_table = doc.get("groups", {})
    if not isinstance(groups_table, dict) or not groups_table:
        raise ConfigError(
            f'{path}: no groups; add one like [groups.web-prod] family = "web" channel = "prod"'
        )
    groups = []
    for name, table in sorted(groups_table.items()):
        where = f"{path} [groups.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = set(table) - _GROUP_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("family", "channel"):
            if not isinstance(table.get(key), str) or not table[key]:
                raise ConfigError(f"{where}: {key} is required (a string)")
        if channels is not None and table["channel"] not in channels:
            raise ConfigError(
                f"{where}: unknown channel {table['channel']!r}; use one of {', '.join(channels)}"
            )
        region = _region(table.get("region", defaults.get("region")), where)
        groups.append(
            FleetGroup(
                name=name,
                family=table["family"],
                channel=table["channel"],
                region=region,
                settings={**base, **_settings(table, where)},
            )
        )
    return Fleet(path, tuple(groups))


def load_fleet(path: Path, channels: Sequence[str] | None = None) -> Fleet:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"fleet file {path} not found; pass --fleet PATH") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"fleet file {path}: {reason}; pass --fleet a TOML file") from None
    return parse_fleet(text, str(path), channels)
