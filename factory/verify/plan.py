"""Which images to verify, with which suite, how: the facts (gather_verify reads the AMIs and
the suite files) and the plan (plan_verify, pure), which `factory verify --dry-run` prints and
apply_verify carries out."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from factory import tags
from factory.aws import AwsClients, images
from factory.aws.model import Image
from factory.errors import ConfigError, RefusedError
from factory.verify.suite import Suite, load_suites

DEFAULT_INSTANCE_TYPE = "t3.micro"
DEFAULT_SSH_USER = "admin"  # Debian's cloud images


@dataclass(frozen=True)
class VerifySettings:
    """How to verify: instance shape, SSH, concurrency, limits."""

    instance_type: str = DEFAULT_INSTANCE_TYPE
    ssh_user: str = DEFAULT_SSH_USER
    subnet_id: str | None = None  # default: the region's default VPC
    ssh_cidr: str | None = None  # who may reach the instance (default: this machine, computed)
    keep: bool = False
    parallel: int = 1
    boot_timeout: float = 600.0  # launch until SSH accepts the verifier's key
    suite_timeout: float = 1800.0
    # launch-time configuration, as the fleet's launch template would pass it (not printed)
    user_data: str | None = field(default=None, metadata={"internal": True})


@dataclass(frozen=True)
class VerifyTarget:
    ami_id: str
    name: str
    family: str | None
    suite: Suite
    tags: Mapping[str, str] = field(default_factory=dict)
    tag_verdict: bool = True  # only our own images get the verdict tags (AWS refuses others)


@dataclass(frozen=True)
class VerifyFacts:
    """What verify reads before it plans: the AMIs (in the order asked) and their suites."""

    region: str
    account_id: str
    images: tuple[Image, ...]
    suites: Mapping[str, Suite]  # by AMI id
    default_suite: bool = True  # False: --suite replaced the families' suites


@dataclass(frozen=True)
class VerifyPlan:
    region: str
    targets: tuple[VerifyTarget, ...]
    settings: VerifySettings
    warnings: tuple[str, ...] = ()


def no_such_images(region: str, missing: Iterable[str]) -> ConfigError:
    return ConfigError(
        f"no such image in {region}: {', '.join(missing)}; "
        "check the id and the region (`factory images list`)"
    )


def gather_images(clients: AwsClients, ami_ids: Sequence[str]) -> tuple[Image, ...]:
    """The AMIs to verify, in the order asked; a missing one is an error naming it."""
    wanted = list(dict.fromkeys(ami_ids))
    found = images.get_many(clients, wanted)
    missing = [ami for ami in wanted if ami not in found]
    if missing:
        raise no_such_images(clients.region, missing)
    return tuple(found[ami] for ami in wanted)


def gather_verify(
    clients: AwsClients,
    ami_ids: Sequence[str],
    *,
    templates_dir: Path,
    suite_dirs: Sequence[Path] = (),
) -> VerifyFacts:
    """Read what a plan needs: the AMIs from EC2, their suites from disk (digested).

    `suite_dirs` replaces the default suite (templates/_common/tests + templates/FAMILY/tests).
    """
    if not ami_ids:
        raise ConfigError("no images to verify; name at least one AMI id")
    found = gather_images(clients, ami_ids)
    suites = load_suites(templates_dir, [(i.ami_id, i.family) for i in found], suite_dirs)
    return VerifyFacts(
        region=clients.region,
        account_id=clients.account_id,
        images=found,
        suites=suites,
        default_suite=not suite_dirs,
    )


def plan_verify(facts: VerifyFacts, settings: VerifySettings) -> VerifyPlan:
    """Which images to verify with which suite; refuses what must not be verified. Pure."""
    if settings.parallel < 1:
        raise ConfigError("--parallel must be at least 1")
    if not facts.images:
        raise ConfigError("no images to verify; name at least one AMI id")
    if settings.ssh_cidr is not None:
        _check_cidr(settings.ssh_cidr)
    warnings: list[str] = []
    targets: list[VerifyTarget] = []
    for image in facts.images:
        _refuse_unverifiable(image)
        if image.family is None and facts.default_suite:
            warnings.append(
                f"{image.ami_id} has no {tags.FAMILY} tag: only the shared suite applies"
            )
        own = image.owner_id in ("", facts.account_id)
        if not own:
            warnings.append(
                f"{image.ami_id} belongs to account {image.owner_id}: its verdict is not tagged"
            )
        targets.append(target_for(image, facts.suites[image.ami_id], tag_verdict=own))
    return VerifyPlan(
        region=facts.region, targets=tuple(targets), settings=settings, warnings=tuple(warnings)
    )


def target_for(image: Image, suite: Suite, *, tag_verdict: bool) -> VerifyTarget:
    return VerifyTarget(
        ami_id=image.ami_id,
        name=image.name,
        family=image.family,
        suite=suite,
        tags=dict(image.tags),
        tag_verdict=tag_verdict,
    )


def _refuse_unverifiable(image: Image) -> None:
    if image.state != "available":
        raise RefusedError(
            f"{image.ami_id} is {image.state}, not available; wait for it or pick another image"
        )
    if image.revoked:
        reason = image.tags.get(tags.REVOKED_REASON, "no reason recorded")
        raise RefusedError(f"{image.ami_id} is revoked ({reason}); verify refuses revoked images")


def _check_cidr(cidr: str) -> None:
    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(
            f"--ssh-cidr {cidr!r} is not a CIDR block (like 203.0.113.7/32)"
        ) from None
