"""Clients for the accounts and regions the factory acts in: its own, and each environment's.

An environment (`[environments.NAME]`: an account, its role and regions) is reached with its
role (else the factory's own) and checked: credentials that act in another account than the
one configured are refused before anything is read or changed there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from factory.aws import AwsClients, AwsTarget
from factory.config import Environment, FactoryConfig
from factory.errors import ConfigError


def factory_clients(config: FactoryConfig, region: str | None = None) -> AwsClients:
    """The factory's own account, in `region` (default: the configured one)."""
    return AwsClients(
        AwsTarget(region or config.region, config.profile, config.role_arn, config.endpoint_url)
    )


def environment(config: FactoryConfig, name: str) -> Environment:
    """The named environment, or a ConfigError listing the configured ones."""
    found = config.environments.get(name)
    if found is None:
        known = ", ".join(sorted(config.environments)) or "none configured"
        raise ConfigError(
            f"unknown environment {name!r} ({known}); add [environments.{name}] to factory.toml"
        )
    return found


def environment_regions(config: FactoryConfig, env: Environment) -> tuple[str, ...]:
    return env.regions or config.regions


def environment_clients(config: FactoryConfig, env: Environment, region: str) -> AwsClients:
    """Clients acting in the environment's account in `region`, the account checked."""
    clients = AwsClients(
        AwsTarget(region, config.profile, env.role_arn or config.role_arn, config.endpoint_url)
    )
    if env.account and clients.account_id != env.account:
        raise ConfigError(
            f"environments.{env.name}.account is {env.account}, but its credentials act in "
            f"account {clients.account_id}; fix role_arn or account"
        )
    return clients


@dataclass(frozen=True)
class EnvironmentTarget:
    """One account and region of an environment, with clients acting there."""

    environment: str
    clients: AwsClients


def every_environment(
    config: FactoryConfig, names: Sequence[str] | None = None
) -> list[EnvironmentTarget]:
    """Clients for every region of every configured environment (or the named ones)."""
    chosen = names if names is not None else sorted(config.environments)
    out = []
    for name in chosen:
        env = environment(config, name)
        for region in environment_regions(config, env):
            out.append(EnvironmentTarget(name, environment_clients(config, env, region)))
    return out
