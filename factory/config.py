"""Configuration: factory.toml, then the environment, then flags; validated once, passed down."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from factory.errors import ConfigError

CONFIG_FILE = "factory.toml"
DEFAULT_REGION = "us-east-1"
DEFAULT_CHANNELS = ("dev", "staging", "prod")


@dataclass(frozen=True)
class RetentionPolicy:
    """What `factory retire` keeps for a family."""

    keep: int = 3
    min_age_days: int = 7
    grace_days: int = 7
    audit_days: int = 90


@dataclass(frozen=True)
class Environment:
    """An account and its regions that images are promoted to (dev -> staging -> prod)."""

    name: str
    account: str | None = None
    role_arn: str | None = None
    regions: tuple[str, ...] = ()
    kms_key: str | None = None


@dataclass(frozen=True)
class ProvenanceConfig:
    """Where attestations live and what signs them."""

    bucket: str | None = None  # default: factory-provenance-<account>-<region>
    kms_key: str | None = None  # alias or ARN of an ECC_NIST_P256 SIGN_VERIFY key
    key_file: Path | None = None  # a PEM private key for offline signing


@dataclass(frozen=True)
class FactoryConfig:
    """Everything a command needs to know before it talks to AWS."""

    root: Path
    templates_dir: Path
    provisioners_dir: Path
    state_dir: Path
    region: str = DEFAULT_REGION
    regions: tuple[str, ...] = (DEFAULT_REGION,)
    profile: str | None = None
    role_arn: str | None = None
    endpoint_url: str | None = None
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    family_retention: Mapping[str, RetentionPolicy] = field(default_factory=dict)
    environments: Mapping[str, Environment] = field(default_factory=dict)

    @property
    def build_dir(self) -> Path:
        return self.state_dir / "builds"

    def retention_for(self, family: str) -> RetentionPolicy:
        return self.family_retention.get(family, self.retention)


def _table(doc: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: [{key}] must be a table")
    return value


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what} must be a list of strings")
    return tuple(value)


def _retention(table: Mapping[str, Any], base: RetentionPolicy, what: str) -> RetentionPolicy:
    known = {"keep", "min_age_days", "grace_days", "audit_days"}
    values: dict[str, int] = {}
    for key, value in table.items():
        if key == "families":
            continue
        if key not in known:
            raise ConfigError(f"{what}: unknown key {key!r}; use one of {', '.join(sorted(known))}")
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{what}.{key} must be a non-negative integer")
        values[key] = value
    return replace(base, **values)


def load_config(
    root: Path | None = None,
    config_file: Path | None = None,
    *,
    region: str | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> FactoryConfig:
    """Load factory.toml (if any), then the environment, then explicit flags."""
    env = os.environ if environ is None else environ
    root = (root or Path.cwd()).resolve()
    path = config_file or root / CONFIG_FILE
    doc: Mapping[str, Any] = {}
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} not found; pass an existing file to --config")
    if path.is_file():
        try:
            doc = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file") from None
        root = path.resolve().parent
    source = str(path)
    main = _table(doc, "factory", source)

    def _dir(key: str, default: str) -> Path:
        value = main.get(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: factory.{key} must be a path string")
        p = Path(value)
        return p if p.is_absolute() else root / p

    state_dir = Path(env["FACTORY_STATE_DIR"]) if env.get("FACTORY_STATE_DIR") else None
    resolved_region = (
        region
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or str(main.get("region", DEFAULT_REGION))
    )
    regions = _str_tuple(main.get("regions", [resolved_region]), f"{source}: factory.regions")
    if resolved_region not in regions:
        regions = (resolved_region, *regions)

    prov = _table(doc, "provenance", source)
    key_file = prov.get("key_file") or env.get("FACTORY_SIGNING_KEY")
    provenance = ProvenanceConfig(
        bucket=prov.get("bucket") or env.get("FACTORY_PROVENANCE_BUCKET"),
        kms_key=prov.get("kms_key") or env.get("FACTORY_KMS_KEY"),
        key_file=Path(key_file) if key_file else None,
    )

    retire = _table(doc, "retire", source)
    retention = _retention(retire, RetentionPolicy(), f"{source}: retire")
    families = _table(retire, "families", f"{source}: retire")
    family_retention = {
        name: _retention(table, retention, f"{source}: retire.families.{name}")
        for name, table in families.items()
    }

    environments = {}
    for name, table in _table(doc, "environments", source).items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: [environments.{name}] must be a table")
        environments[name] = Environment(
            name=name,
            account=str(table["account"]) if "account" in table else None,
            role_arn=table.get("role_arn"),
            regions=_str_tuple(table.get("regions", []), f"environments.{name}.regions"),
            kms_key=table.get("kms_key"),
        )

    channels = _str_tuple(main.get("channels", list(DEFAULT_CHANNELS)), "factory.channels")
    return FactoryConfig(
        root=root,
        templates_dir=_dir("templates_dir", "templates"),
        provisioners_dir=_dir("provisioners_dir", "provisioners"),
        state_dir=state_dir or _dir("state_dir", ".factory"),
        region=resolved_region,
        regions=regions,
        profile=profile or env.get("AWS_PROFILE") or main.get("profile"),
        role_arn=env.get("FACTORY_ROLE_ARN") or main.get("role_arn"),
        endpoint_url=env.get("AWS_ENDPOINT_URL") or main.get("endpoint_url"),
        channels=channels,
        provenance=provenance,
        retention=retention,
        family_retention=family_retention,
        environments=environments,
    )
