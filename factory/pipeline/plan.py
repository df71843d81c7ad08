"""What a nightly run will do, decided once: `gather_nightly` reads each family's build inputs
and channel, `plan_nightly` (pure) says per family reuse, build or error and how its channel
moves. `--dry-run` prints the plan; a run applies that very plan (`factory.pipeline.run`).

A family whose parent is built earlier in the same run builds on tonight's parent: its inputs
do not exist before then, so the plan says "build" and the run gathers them at its turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from factory.aws import AwsClients
from factory.build import BuildInputs, NoVerifiedParent, gather_build
from factory.channels import channel_state
from factory.config import FactoryConfig
from factory.errors import ConfigError, FactoryError, Interrupted
from factory.pipeline.lock import LOCK_PARAMETER
from factory.render import FAMILY_FILE, list_families, load_family

BUILDS = frozenset({"build", "rebuild"})


def discover_families(templates_dir: Path, names: Sequence[str] = ()) -> tuple[str, ...]:
    """The families to run: the given ones, else every one with a family.toml; parents first,
    then by name (so `app` builds on tonight's `base`)."""
    known = [f for f in list_families(templates_dir) if (templates_dir / f / FAMILY_FILE).is_file()]
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"unknown family {', '.join(unknown)} in {templates_dir} "
                f"(families: {', '.join(known) or 'none'})"
            )
        chosen = list(dict.fromkeys(names))
    else:
        chosen = known
    parents = {name: load_family(templates_dir, name).source.parent for name in chosen}

    def depth(name: str, seen: frozenset[str] = frozenset()) -> int:
        parent = parents.get(name)
        if parent is None or parent not in parents or name in seen:
            return 0
        return 1 + depth(parent, seen | {name})

    return tuple(sorted(chosen, key=lambda n: (depth(n), n)))


@dataclass(frozen=True)
class FamilyFacts:
    """What can be known about a family without building: its build inputs, the channel."""

    family: str
    dedupe_key: str | None
    source_ami: str | None
    reuse_ami: str | None  # a verified AMI with the same inputs (None: would build)
    channel_ami: str | None  # what the channel holds now
    error: str | None = None  # the family cannot even be planned (e.g. no verified parent)
    parent: str | None = None  # the parent family (family.toml [source] parent)
    parent_unverified: bool = False  # the error is only that the parent has no verified image
    inputs: BuildInputs | None = field(default=None, repr=False)


@dataclass(frozen=True)
class FamilyPlan:
    family: str
    action: str  # reuse | build | rebuild | error
    ami_id: str | None
    dedupe_key: str | None
    source_ami: str | None
    channel: str
    channel_ami: str | None
    channel_move: str  # none | set | after-verify
    error: str | None = None
    # what the run builds from; None: gathered at its turn (it builds on tonight's parent)
    inputs: BuildInputs | None = field(default=None, repr=False, metadata={"internal": True})


@dataclass(frozen=True)
class NightlyPlan:
    channel: str
    rebuild: bool
    retire: bool
    lock_parameter: str
    lock_ttl: float
    families: tuple[FamilyPlan, ...]


def gather_family(
    config: FactoryConfig, clients: AwsClients, family: str, channel: str
) -> FamilyFacts:
    """A family's build inputs (render, parent image, reusable AMI) and its channel; nothing is
    written or built. What stops it from being planned is recorded, not raised."""
    parent = None
    try:
        parent = load_family(config.templates_dir, family).source.parent
        try:
            inputs = gather_build(config, clients, family, {})
        except NoVerifiedParent as exc:  # the run may build the parent first: keep the channel
            current = channel_state(clients, family, channel).ami_id
            return FamilyFacts(
                family, None, None, None, current, exc.message, parent, parent_unverified=True
            )
        current = channel_state(clients, family, channel).ami_id
    except (Interrupted, KeyboardInterrupt):
        raise
    except FactoryError as exc:
        return FamilyFacts(family, None, None, None, None, error=exc.message, parent=parent)
    return FamilyFacts(
        family,
        inputs.dedupe_key,
        inputs.parent.ami_id,
        inputs.reusable_ami,
        current,
        parent=parent,
        inputs=inputs,
    )


def gather_nightly(
    config: FactoryConfig, clients: AwsClients, families: Sequence[str], channel: str
) -> tuple[FamilyFacts, ...]:
    """The facts of every family, in the order they will run."""
    return tuple(gather_family(config, clients, family, channel) for family in families)


def _after_parent(f: FamilyFacts, channel: str, rebuild: bool) -> FamilyPlan:
    """A family that builds on a parent built earlier tonight (no reuse can match it)."""
    action = "rebuild" if rebuild else "build"
    return FamilyPlan(f.family, action, None, None, None, channel, f.channel_ami, "after-verify")


def _family_plan(f: FamilyFacts, channel: str, rebuild: bool) -> FamilyPlan:
    if f.error is not None:
        action, move, ami = "error", "none", None
    elif f.reuse_ami and not rebuild:
        move = "none" if f.channel_ami == f.reuse_ami else "set"
        action, ami = "reuse", f.reuse_ami
    else:
        action, move, ami = ("rebuild" if rebuild else "build"), "after-verify", None
    return FamilyPlan(
        family=f.family,
        action=action,
        ami_id=ami,
        dedupe_key=f.dedupe_key,
        source_ami=f.source_ami,
        channel=channel,
        channel_ami=f.channel_ami,
        channel_move=move,
        error=f.error,
        inputs=f.inputs,
    )


def plan_nightly(
    facts: Sequence[FamilyFacts],
    *,
    channel: str,
    rebuild: bool,
    retire: bool,
    lock_ttl: float,
    lock_parameter: str = LOCK_PARAMETER,
) -> NightlyPlan:
    """What a run will do (pure): reuse or build each family, and how its channel moves."""
    rows: list[FamilyPlan] = []
    building: set[str] = set()
    for f in facts:
        if f.parent in building and (f.error is None or f.parent_unverified):
            row = _after_parent(f, channel, rebuild)
        else:
            row = _family_plan(f, channel, rebuild)
        if row.action in BUILDS:
            building.add(f.family)
        rows.append(row)
    return NightlyPlan(channel, rebuild, retire, lock_parameter, lock_ttl, tuple(rows))
