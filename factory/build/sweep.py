"""After a failed or interrupted Packer run: remove whatever still carries the build's
`factory:build-id` tag (the builder instance, Packer's temporary key pair and security group,
an image registered before the failure). None of it was ever a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

from factory import tags as T
from factory.aws import AwsClients, images, instances
from factory.aws.model import Instance
from factory.aws.wait import Poller, TimedOut, wait_until
from factory.errors import AwsError, FactoryError
from factory.output import Progress

# Packer's builder instance until it is gone for good (shutting-down is on its way)
BUILDER_STATES = ("pending", "running", "stopping", "stopped")
PACKER_GROUP_PREFIX = "packer_"  # the temporary security group amazon-ebs creates


@dataclass(frozen=True)
class SweepReport:
    """What a failed or interrupted build left in the cloud, and what was removed."""

    instances: tuple[str, ...] = ()
    key_pairs: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    leftovers: tuple[str, ...] = ()  # what could not be removed


def _packer_groups(clients: AwsClients, builders: list[Instance]) -> list[str]:
    """The temporary security groups the builder instances use."""
    used = {g for i in builders for g in i.security_group_ids}
    if not used:
        return []
    return sorted(
        g.group_id
        for g in instances.security_groups(clients)
        if g.group_id in used and g.name.startswith(PACKER_GROUP_PREFIX)
    )


def _terminate(clients: AwsClients, instance_ids: list[str], wait: float) -> list[str]:
    """Terminate and wait until terminated; what is still shutting down after `wait`."""
    instances.terminate(clients, instance_ids)

    def terminated() -> bool | None:
        states = [i.state for i in instances.get_many(clients, instance_ids)]
        return True if all(s == "terminated" for s in states) else None

    try:
        wait_until(
            terminated,
            timeout=wait,
            what=f"{', '.join(instance_ids)} did not terminate",
            poller=Poller(interval=1.0, max_interval=1.0),
        )
    except TimedOut:
        return [f"instance {i} (still shutting down)" for i in instance_ids]
    return []


def _remove_images(clients: AwsClients, build_id: str, leftovers: list[str]) -> list[str]:
    """Deregister the build's images and delete their snapshots; the images removed."""
    removed: list[str] = []
    for image in images.find(clients, tags={T.BUILD_ID: build_id}):
        images.deregister(clients, image.ami_id)
        for snapshot in image.snapshot_ids:
            try:
                images.delete_snapshot(clients, snapshot)
            except AwsError as exc:
                leftovers.append(f"snapshot {snapshot} ({exc})")
        removed.append(image.ami_id)
    return removed


def sweep_build(clients: AwsClients, build_id: str, *, wait: float = 120.0) -> SweepReport:
    """Remove what a build left behind: its builder instance (by tag), the temporary key pair
    and security group, and any image it registered (none of them was ever a candidate)."""
    leftovers: list[str] = []
    builders = instances.find(clients, tags={T.BUILD_ID: build_id}, states=BUILDER_STATES)
    instance_ids = [i.instance_id for i in builders]
    group_ids = _packer_groups(clients, builders)
    if instance_ids:
        leftovers += _terminate(clients, instance_ids, wait)
    key_pairs: list[str] = []
    for pair in instances.key_pairs(clients, names=[f"factory-{build_id}"]):
        instances.delete_key_pair(clients, pair.name)
        key_pairs.append(pair.name)
    groups: list[str] = []
    for group_id in group_ids:
        try:
            instances.delete_security_group(clients, group_id)  # already gone is fine
            groups.append(group_id)
        except AwsError as exc:
            leftovers.append(f"security group {group_id} ({exc})")
    removed = _remove_images(clients, build_id, leftovers)
    return SweepReport(
        tuple(instance_ids), tuple(key_pairs), tuple(groups), tuple(removed), tuple(leftovers)
    )


def sweep_quietly(clients: AwsClients, build_id: str, progress: Progress) -> SweepReport:
    """Sweep, saying what was removed and what was left; a failing sweep is a warning."""
    try:
        report = sweep_build(clients, build_id)
    except FactoryError as exc:
        progress.warn(
            f"cleanup after {build_id} failed: {exc}; look for tag {T.BUILD_ID}={build_id}"
        )
        return SweepReport(leftovers=(str(exc),))
    removed = [*report.instances, *report.key_pairs, *report.security_groups, *report.images]
    if removed:
        progress.info(f"removed what the build left: {', '.join(removed)}")
    for leftover in report.leftovers:
        progress.warn(f"left behind: {leftover}")
    return report
