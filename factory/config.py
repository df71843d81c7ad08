"""Configuration: factory.toml, then the environment, then flags; validated once, passed down."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from factory.errors import ConfigError

CONFIG_FILE = "factory.toml"
DEFAULT_REGION = "us-east-1"
DEFAULT_CHANNELS = ("dev", "staging", "prod")
MAX_DAYS = 36500  # retention periods beyond a century are typos (and overflow datetime)

REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
CHANNEL = re.compile(r"^[A-Za-z0-9_.-]+$")  # one component of an SSM parameter path
ACCOUNT = re.compile(r"^[0-9]{12}$")

_KEYS = {
    "top level": {"factory", "provenance", "retire", "environments"},
    "[factory]": {
        "region",
        "regions",
        "channels",
        "templates_dir",
        "provisioners_dir",
        "state_dir",
        "profile",
        "role_arn",
        "endpoint_url",
    },
    "[provenance]": {"bucket", "kms_key", "key_file"},
    "[environments]": {"account", "role_arn", "regions", "kms_key"},
}


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


def check_region(region: str, what: str) -> str:
    """An AWS region name (us-east-1), or a ConfigError saying where the bad one came from."""
    if not REGION.match(region):
        raise ConfigError(f"{what}: {region!r} is not an AWS region; use a name like us-east-1")
    return region


def _table(doc: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: [{key}] must be a table")
    return value


def _known_keys(table: Mapping[str, Any], kind: str, where: str) -> None:
    unknown = sorted(set(table) - _KEYS[kind])
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; use one of {', '.join(sorted(_KEYS[kind]))}"
        )


def _opt_str(table: Mapping[str, Any], key: str, what: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{what}.{key} must be a string")
    return value or None


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what} must be a list of strings")
    return tuple(value)


def _regions(value: Any, what: str) -> tuple[str, ...]:
    return tuple(check_region(r, what) for r in _str_tuple(value, what))


def _retention(table: Mapping[str, Any], base: RetentionPolicy, what: str) -> RetentionPolicy:
    known = {"keep", "min_age_days", "grace_days", "audit_days"}
    values: dict[str, int] = {}
    for key, value in table.items():
        if key == "families":
            continue
        if key not in known:
            raise ConfigError(f"{what}: unknown key {key!r}; use one of {', '.join(sorted(known))}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{what}.{key} must be a non-negative integer")
        if key != "keep" and value > MAX_DAYS:
            raise ConfigError(f"{what}.{key} must be at most {MAX_DAYS} days")
        values[key] = value
    return replace(base, **values)


def _resolve_region(
    region: str | None, env: Mapping[str, str], main: Mapping[str, Any], source: str
) -> str:
    """The flag, else AWS_REGION / AWS_DEFAULT_REGION, else factory.region; checked."""
    if region:
        return check_region(region, "--region")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if env.get(name):
            return check_region(env[name], name)
    file_region = main.get("region", DEFAULT_REGION)
    if not isinstance(file_region, str):
        raise ConfigError(f"{source}: factory.region must be a string")
    return check_region(file_region, f"{source}: factory.region")


def _provenance(doc: Mapping[str, Any], env: Mapping[str, str], source: str) -> ProvenanceConfig:
    prov = _table(doc, "provenance", source)
    _known_keys(prov, "[provenance]", f"{source}: [provenance]")
    what = f"{source}: provenance"
    # the environment overrides the file, as for every other setting
    key_file = env.get("FACTORY_SIGNING_KEY") or _opt_str(prov, "key_file", what)
    return ProvenanceConfig(
        bucket=env.get("FACTORY_PROVENANCE_BUCKET") or _opt_str(prov, "bucket", what),
        kms_key=env.get("FACTORY_KMS_KEY") or _opt_str(prov, "kms_key", what),
        key_file=Path(key_file) if key_file else None,
    )


def _environments(doc: Mapping[str, Any], source: str) -> dict[str, Environment]:
    environments = {}
    for name, table in _table(doc, "environments", source).items():
        where = f"{source}: environments.{name}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: [environments.{name}] must be a table")
        _known_keys(table, "[environments]", f"{source}: [environments.{name}]")
        account = table.get("account")
        if account is not None and (isinstance(account, bool) or not ACCOUNT.match(str(account))):
            raise ConfigError(f"{where}.account must be a 12-digit AWS account id, as a string")
        environments[name] = Environment(
            name=name,
            account=str(account) if account is not None else None,
            role_arn=_opt_str(table, "role_arn", where),
            regions=_regions(table.get("regions", []), f"{where}.regions"),
            kms_key=_opt_str(table, "kms_key", where),
        )
    return environments


def _channels(main: Mapping[str, Any], source: str) -> tuple[str, ...]:
    what = f"{source}: factory.channels"
    channels = _str_tuple(main.get("channels", list(DEFAULT_CHANNELS)), what)
    if not channels:
        raise ConfigError(f"{what} is empty; list at least one channel")
    for channel in channels:
        if not CHANNEL.match(channel):
            raise ConfigError(
                f"{what}: {channel!r} is not a channel name; use letters, digits, '.', '_' and '-'"
            )
    return channels


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
    _known_keys(doc, "top level", source)
    main = _table(doc, "factory", source)
    _known_keys(main, "[factory]", f"{source}: [factory]")

    def _dir(key: str, default: str) -> Path:
        value = main.get(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: factory.{key} must be a path string")
        p = Path(value)
        return p if p.is_absolute() else root / p

    state_dir = Path(env["FACTORY_STATE_DIR"]) if env.get("FACTORY_STATE_DIR") else None
    resolved_region = _resolve_region(region, env, main, source)
    regions = _regions(main.get("regions", [resolved_region]), f"{source}: factory.regions")
    if resolved_region not in regions:
        regions = (resolved_region, *regions)

    retire = _table(doc, "retire", source)
    retention = _retention(retire, RetentionPolicy(), f"{source}: retire")
    families = _table(retire, "families", f"{source}: retire")
    family_retention = {
        name: _retention(
            _table(families, name, f"{source}: retire.families"),
            retention,
            f"{source}: retire.families.{name}",
        )
        for name in families
    }
    what = f"{source}: factory"
    return FactoryConfig(
        root=root,
        templates_dir=_dir("templates_dir", "templates"),
        provisioners_dir=_dir("provisioners_dir", "provisioners"),
        state_dir=state_dir or _dir("state_dir", ".factory"),
        region=resolved_region,
        regions=regions,
        profile=profile or env.get("AWS_PROFILE") or _opt_str(main, "profile", what),
        role_arn=env.get("FACTORY_ROLE_ARN") or _opt_str(main, "role_arn", what),
        endpoint_url=env.get("AWS_ENDPOINT_URL") or _opt_str(main, "endpoint_url", what),
        channels=_channels(main, source),
        provenance=_provenance(doc, env, source),
        retention=retention,
        family_retention=family_retention,
        environments=_environments(doc, source),
    )
