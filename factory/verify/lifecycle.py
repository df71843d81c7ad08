"""The test instance's life: a key pair (only the public half goes to EC2), a temporary
security group that admits SSH from this machine only, one instance launched from the image,
and their removal on success, failure, Ctrl-C and SIGTERM (`--keep` keeps the instance).

Everything is tagged with the run id (`factory:verify-run`), so cleanup also finds what an
interrupted call created before its answer arrived.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import time
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from factory import tags
from factory.aws import instances
from factory.aws.wait import Poller, TimedOut, wait_until
from factory.errors import AwsError, ConfigError, FactoryError, VerificationError
from factory.verify.job import Job
from factory.verify.results import CleanupReport, KeptInstance

CALLER_IP_URL = "https://checkip.amazonaws.com"
GROUP_RELEASE_TIMEOUT = 180.0  # a terminating instance still holds its group for a while on AWS
_GONE = ("shutting-down", "terminated", "stopping", "stopped")


@dataclass
class Resources:
    """What one verification created in AWS, so cleanup can find all of it."""

    run_id: str
    key_name: str
    group_name: str
    group_id: str | None = None
    key_imported: bool = False
    instance_id: str | None = None
    launch_requested: bool = False

    @classmethod
    def for_run(cls, run_id: str) -> Resources:
        name = f"factory-verify-{run_id}"
        return cls(run_id=run_id, key_name=name, group_name=name)


def resource_tags(job: Job) -> dict[str, str]:
    """The tags on the instance, key pair and group: a name for people, the run for cleanup."""
    return {"Name": f"factory-verify {job.target.ami_id}", tags.VERIFY_RUN: job.run_id}


# ---- making --------------------------------------------------------------------------------------


def vpc_for(job: Job) -> str:
    """The VPC the test instance goes in: its subnet's, else the region's default VPC."""
    if job.settings.subnet_id:
        return instances.subnet_vpc(job.clients, job.settings.subnet_id)
    vpc_id = instances.default_vpc(job.clients)
    if vpc_id is None:
        raise ConfigError(
            f"no default VPC in {job.clients.region}; pass --subnet for the test instance"
        )
    return vpc_id


def make_group(job: Job, res: Resources, vpc_id: str) -> None:
    res.group_id = instances.create_security_group(
        job.clients,
        res.group_name,
        f"factory verify {job.target.ami_id}: SSH from the verifier only",
        vpc_id,
        tags=resource_tags(job),
    )


def import_key(job: Job, res: Resources, public_key: str) -> None:
    res.key_imported = True  # set first: an interrupted call may still have created it
    instances.import_key_pair(job.clients, res.key_name, public_key, tags=resource_tags(job))


def launch(job: Job, res: Resources) -> str:
    """RunInstances with the run's key and group; the instance id."""
    job.interrupts.check()
    res.launch_requested = True
    instance = instances.run(
        job.clients,
        ami_id=job.target.ami_id,
        instance_type=job.settings.instance_type,
        key_name=res.key_name,
        security_group_ids=[res.group_id] if res.group_id else [],
        subnet_id=job.settings.subnet_id,
        user_data=job.settings.user_data,
        tags=resource_tags(job),
        client_token=res.run_id,
        terminate_on_shutdown=True,
    )
    res.instance_id = instance.instance_id
    job.say(f"launched {instance.instance_id} ({job.settings.instance_type})")
    return instance.instance_id


def wait_running(job: Job, instance_id: str) -> str:
    """Until the instance runs and has an address (returned); one that goes away is an error."""
    started = time.monotonic()
    states: list[str] = []

    def reachable() -> str | None:
        instance = instances.get(job.clients, instance_id)  # None: not visible yet
        if instance is None:
            return None
        if not states or instance.state != states[-1]:
            job.say(f"{instance_id} {instance.state} ({time.monotonic() - started:.1f}s)")
            states.append(instance.state)
        if instance.state in _GONE:
            reason = instance.state_reason or "no reason given"
            raise VerificationError(
                f"{job.target.ami_id}: test instance {instance_id} went {instance.state} ({reason})"
            )
        return instance.address if instance.state == "running" else None

    return job.wait_for(reachable, f"{instance_id} did not reach running")


def allow_ssh(job: Job, res: Resources, address: str) -> None:
    cidr = job.settings.ssh_cidr or caller_cidr(address)
    assert res.group_id is not None
    instances.allow_tcp(job.clients, res.group_id, 22, cidr, "factory verify")
    job.say(f"SSH allowed from {cidr} only")


def caller_cidr(address: str, *, lookup_public_ip: Callable[[], str] | None = None) -> str:
    """Who may SSH to an instance at `address`: this machine, as the instance will see it.

    The source address this machine uses towards the instance, unless the instance is on the
    public internet and we are not (behind NAT): then our public address.
    """
    target = ipaddress.ip_address(address)
    family = socket.AF_INET6 if target.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((address, 22))  # UDP: picks a route and source address, sends nothing
        source = ipaddress.ip_address(sock.getsockname()[0])
    if target.is_global and not source.is_global:
        public = (lookup_public_ip or _public_ip)()
        source = ipaddress.ip_address(public)
    return f"{source}/{source.max_prefixlen}"


def _public_ip() -> str:
    try:
        with urllib.request.urlopen(CALLER_IP_URL, timeout=10) as resp:
            return str(resp.read().decode().strip())
    except OSError as exc:
        raise ConfigError(
            f"cannot find this machine's public address ({exc}); pass --ssh-cidr"
        ) from None


# ---- removing ------------------------------------------------------------------------------------
# Cleanup runs after Ctrl-C too (shielded), so its waits are not cut short by the interrupt.


def clean_up(
    job: Job, res: Resources, *, keep: bool, address: str | None
) -> tuple[CleanupReport, KeptInstance | None]:
    """Remove the instance (unless kept), the key pair and the group, and the scratch files."""
    leftovers: list[str] = []
    terminated: list[str] = []
    kept: KeptInstance | None = None
    if keep and res.instance_id and address:
        kept = _kept(job, res, address)
    else:
        terminated = _terminate(job, res, leftovers)
    key_deleted = _delete_key_pair(job, res, leftovers)
    group_deleted = kept is None and _delete_group(job, res, leftovers)
    if kept is None:
        shutil.rmtree(job.workdir, ignore_errors=True)
    else:
        (job.workdir / "image.json").unlink(missing_ok=True)
    for line in leftovers:
        job.progress.warn(f"{job.target.ami_id}: cleanup left {line}")
    removed = [
        *terminated,
        *(["key pair"] if key_deleted else []),
        *(["security group"] if group_deleted else []),
    ]
    if removed:
        job.say("cleaned up: " + ", ".join(removed))
    report = CleanupReport(
        instances_terminated=tuple(terminated),
        key_pair_deleted=key_deleted,
        security_group_deleted=bool(group_deleted),
        leftovers=tuple(leftovers),
    )
    return report, kept


def _our_instances(job: Job, res: Resources) -> list[str]:
    """Our instances: the one we know, and any an interrupted RunInstances made."""
    ids = {res.instance_id} if res.instance_id else set()
    if res.launch_requested:
        found = instances.find(job.clients, tags={tags.VERIFY_RUN: res.run_id})
        ids |= {i.instance_id for i in found}
    return sorted(i for i in ids if i)


def _terminate(job: Job, res: Resources, leftovers: list[str]) -> list[str]:
    try:
        ids = _our_instances(job, res)
        if not ids:
            return []
        instances.terminate(job.clients, ids)
        _wait_terminated(job, ids)
        return ids
    except FactoryError as exc:
        leftovers.append(
            f"instance(s) of run {res.run_id} ({exc.message}); terminate them: aws ec2 "
            f"terminate-instances --instance-ids {res.instance_id or '<id>'}"
        )
        return []


def _wait_terminated(job: Job, ids: list[str]) -> None:
    """Until EC2 reports them terminated; past --boot-timeout the group's deletion waits on."""

    def terminated() -> bool | None:
        return all(i.state == "terminated" for i in instances.get_many(job.clients, ids)) or None

    with suppress(TimedOut):
        wait_until(
            terminated,
            timeout=job.settings.boot_timeout,
            what=f"{', '.join(ids)} did not terminate",
            poller=Poller(interval=1.0, max_interval=1.0),
        )


def _delete_key_pair(job: Job, res: Resources, leftovers: list[str]) -> bool:
    if not res.key_imported:
        return False
    try:
        instances.delete_key_pair(job.clients, res.key_name)
        return True
    except FactoryError as exc:
        leftovers.append(
            f"key pair {res.key_name} ({exc.message}); delete it: "
            f"aws ec2 delete-key-pair --key-name {res.key_name}"
        )
        return False


def _delete_group(job: Job, res: Resources, leftovers: list[str]) -> bool:
    if res.group_id is None:
        # CreateSecurityGroup may have succeeded before an interrupt: find it by name
        with suppress(FactoryError):
            found = instances.security_groups(job.clients, names=[res.group_name])
            res.group_id = found[0].group_id if found else None
    if res.group_id is None:
        return False
    try:
        _delete_group_when_free(job, res.group_id)
        return True
    except FactoryError as exc:
        leftovers.append(
            f"security group {res.group_id} ({exc.message}); delete it: "
            f"aws ec2 delete-security-group --group-id {res.group_id}"
        )
        return False


def _delete_group_when_free(job: Job, group_id: str) -> None:
    """Delete the group, retrying while a terminating instance still holds it."""
    held: list[AwsError] = []

    def deleted() -> bool | None:
        try:
            instances.delete_security_group(job.clients, group_id)
        except AwsError as exc:
            if exc.code != "DependencyViolation":
                raise
            held[:] = [exc]
            return None
        return True

    try:
        wait_until(
            deleted,
            timeout=GROUP_RELEASE_TIMEOUT,
            what=f"security group {group_id} still in use",
            poller=Poller(interval=3.0, max_interval=3.0),
        )
    except TimedOut:
        raise held[-1] from None  # AWS's own words: what still holds it


def _kept(job: Job, res: Resources, address: str) -> KeptInstance:
    key_path = job.workdir / "id_ed25519"
    known_hosts = job.workdir / "known_hosts"
    user = job.settings.ssh_user
    ssh = (
        f"ssh -i {key_path} -o UserKnownHostsFile={known_hosts} "
        f"-o StrictHostKeyChecking=yes {user}@{address}"
    )
    cleanup = (
        f"aws ec2 terminate-instances --instance-ids {res.instance_id} && "
        f"aws ec2 wait instance-terminated --instance-ids {res.instance_id} && "
        f"aws ec2 delete-security-group --group-id {res.group_id} && rm -rf {job.workdir}"
    )
    job.say(f"kept {res.instance_id}: {ssh}")
    return KeptInstance(
        instance_id=res.instance_id or "",
        user=user,
        address=address,
        key_path=key_path,
        known_hosts=known_hosts,
        security_group_id=res.group_id or "",
        ssh_command=ssh,
        cleanup_command=cleanup,
    )
