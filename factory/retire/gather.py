"""The facts retire decides from: the factory's images and snapshots in every region, and every
use of them in every region and environment account (reads only).

Deregistration is the irreversible step, so the images a first plan would deregister also get
the per-image checks (launch permissions, DescribeImageReferences) before the facts are final.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from factory import tags
from factory.aws import AwsClients, images
from factory.aws.images import Snapshot
from factory.aws.model import Image
from factory.config import FactoryConfig
from factory.environments import EnvironmentTarget, every_environment
from factory.output import Progress
from factory.retire.inuse import (
    InUseReport,
    ScanTarget,
    Usage,
    call_counts,
    calls_since,
    gather_image_references,
    gather_in_use,
    gather_launch_permissions,
)
from factory.retire.plan import (
    RetireFacts,
    RetireSettings,
    deregistrations_due,
    might_be_deregistered,
    plan_decisions,
)

SNAPSHOT_TAG_FILTER = f"{tags.PREFIX}*"


@dataclass(frozen=True)
class RetireScope:
    """Where retire looks and acts: the factory's own account in each configured region (its
    images live there) and every environment's account and region (uses live there too)."""

    own: tuple[AwsClients, ...]
    environments: tuple[EnvironmentTarget, ...] = ()
    # The own clients' calls when the scope was made: the plan's calls count from there, so
    # reaching and checking the environments' accounts is part of making the plan.
    calls_before: Mapping[str, int] | None = None

    @classmethod
    def from_config(cls, config: FactoryConfig, own: Sequence[AwsClients]) -> RetireScope:
        """The configured environments' clients, each checked to act in its account."""
        before = call_counts(own)
        return cls(tuple(own), tuple(every_environment(config)), before)

    @property
    def owner_account(self) -> str:
        return self.own[0].account_id

    def every_clients(self) -> list[AwsClients]:
        return [*self.own, *(e.clients for e in self.environments)]

    def targets(self) -> list[ScanTarget]:
        """Each account and region once (an environment may be the factory's own account)."""
        seen: set[tuple[str, str]] = set()
        out = []
        candidates = [ScanTarget(c) for c in self.own] + [
            ScanTarget(e.clients, e.environment) for e in self.environments
        ]
        for target in candidates:
            key = (target.clients.account_id, target.clients.region)
            if key not in seen:
                seen.add(key)
                out.append(target)
        return out

    def clients_for(self, region: str) -> AwsClients:
        return next(c for c in self.own if c.region == region)


# ---- images and snapshots ----------------------------------------------------------------------


def gather_images(clients: AwsClients, family: str | None = None) -> list[Image]:
    """The factory's own images in one region (deprecated too): one call per 1,000 images."""
    return [
        image
        for image in images.find(clients, tags={tags.FAMILY: family}, include_deprecated=True)
        if image.family
    ]


def gather_snapshot_users(clients: AwsClients) -> dict[str, set[str]]:
    """snapshot id -> the ids of every own image (factory's or not) that uses it."""
    users: dict[str, set[str]] = {}
    for image in images.find(clients, include_deprecated=True):
        for snapshot_id in image.snapshot_ids:
            users.setdefault(snapshot_id, set()).add(image.ami_id)
    return users


def gather_snapshots(clients: AwsClients) -> list[Snapshot]:
    """The factory's own snapshots in one region (tagged factory:*)."""
    account = clients.account_id
    return [
        snap
        for snap in images.snapshots(clients, owner=account, tag_key=SNAPSHOT_TAG_FILTER)
        if snap.owner_id in ("", account) and any(tags.is_factory_tag(k) for k in snap.tags)
    ]


# ---- everything the plan needs -----------------------------------------------------------------


def gather_retire(
    scope: RetireScope, settings: RetireSettings, *, progress: Progress | None = None
) -> RetireFacts:
    """The facts in every region and account, read in parallel; then the per-image checks of
    the images a plan would deregister."""
    everyone = scope.every_clients()
    before = call_counts(everyone) if scope.calls_before is None else scope.calls_before
    owner = scope.owner_account
    report, found, snapshots, users = _gather_in_parallel(scope, settings, owner)
    if progress:
        progress.info(
            f"retire: {len(found)} images in {len(scope.own)} region(s); "
            f"{len(report.usages)} uses found in {len(report.scopes)} scope(s)"
        )
    usages: dict[str, list[Usage]] = {k: list(v) for k, v in report.by_ami().items()}
    notes = list(report.notes)
    for region, ami_ids in sorted(_deregistrations_due(found, usages, settings).items()):
        more, note = _gather_per_image(scope.clients_for(region), ami_ids)
        for usage in more:
            usages.setdefault(usage.ami_id, []).append(usage)
        notes += [note] if note else []
    return RetireFacts(
        images=tuple(found),
        usages={k: tuple(v) for k, v in usages.items()},
        snapshots=tuple(snapshots),
        used_snapshots={r: frozenset(u) for r, u in users.items()},
        calls_by_operation=calls_since(before, call_counts(everyone)),
        scopes=report.scopes,
        notes=tuple(sorted(set(notes))),
    )


def _deregistrations_due(
    found: Sequence[Image], usages: Mapping[str, Sequence[Usage]], settings: RetireSettings
) -> dict[str, list[str]]:
    """Region -> the images a plan made from the facts so far would deregister (a first plan,
    of only the families where an image's grace is over)."""
    now, policy_for = settings.now, settings.policy_for
    families = {(i.region, i.family) for i in found if might_be_deregistered(i, policy_for, now)}
    if not families:
        return {}
    candidates = [i for i in found if (i.region, i.family) in families]
    first = plan_decisions(candidates, usages, policy_for, now, family=settings.family)
    return deregistrations_due(first)


def _gather_in_parallel(
    scope: RetireScope, settings: RetireSettings, owner: str
) -> tuple[InUseReport, list[Image], list[Snapshot], dict[str, set[str]]]:
    """The in-use scan, and each region's images (and snapshots, when asked), at once."""
    own = scope.own
    targets = scope.targets()
    with ThreadPoolExecutor(max_workers=max(2, len(own) + 1)) as pool:
        in_use = pool.submit(gather_in_use, targets, owner_account=owner)
        listed = [pool.submit(gather_images, c, settings.family) for c in own]
        snaps: dict[str, tuple[Future[list[Snapshot]], Future[dict[str, set[str]]]]] = (
            {
                c.region: (pool.submit(gather_snapshots, c), pool.submit(gather_snapshot_users, c))
                for c in own
            }
            if settings.snapshots
            else {}
        )
        report = in_use.result()
        found = [image for future in listed for image in future.result()]
        snapshots = [s for listing, _ in snaps.values() for s in listing.result()]
        users = {region: set(u.result()) for region, (_, u) in snaps.items()}
    return report, found, snapshots, users


def _gather_per_image(
    clients: AwsClients, ami_ids: Sequence[str]
) -> tuple[list[Usage], str | None]:
    """Launch permissions and DescribeImageReferences for images about to be deregistered."""
    usages = list(gather_launch_permissions(clients, ami_ids))
    references, note = gather_image_references(clients, ami_ids)
    return usages + list(references), note
