"""Promotion: copy a verified image into an environment's account and regions (dev -> prod).

The same image everywhere: each target account owns an independent copy (CopyImage run *in*
the target account after the source shared launch and snapshot permissions with it; within
one account, CopyImage across regions). A copy carries the source's name, description and
`factory:` tags, plus `factory:promoted-from = ACCOUNT:REGION:AMI`, which is also how a rerun
finds it again instead of copying twice.

Verification transfers, it is not repeated: the copy carries the source's verdict tags
(`factory:status=verified`, suite and result digests, verified-at), and the source's signed
provenance gets a promotion attestation naming every copy. Channels in the target account
then accept the copy like any verified image.

`gather_source` and `gather_targets` read, `plan_promotion` decides (pure), `apply_promotion`
copies, publishes and attests; `promote` is the three in a row, as the CLI runs them.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from factory import process
from factory import tags as T
from factory.aws import AwsClients, images, keys
from factory.aws.model import Image
from factory.aws.wait import Poller, wait_until
from factory.config import Environment, FactoryConfig
from factory.environments import environment_clients
from factory.errors import AwsError, ConfigError, FactoryError, Interrupted, RefusedError
from factory.output import Progress

# Per-image decisions of the source account that a copy must not inherit.
NOT_COPIED = frozenset({T.KEEP, T.RETIRE_PHASE, T.PROVENANCE_URI, T.PROVENANCE_DIGEST})
DONE_STATES = frozenset({"available"})
LIVE_STATES = frozenset({"available", "pending"})
DEFAULT_TIMEOUT = 3600.0
# Reading a KMS key's manager is not allowed: unknown, CopyImage decides (it refuses aws/ebs).
KEY_NOT_READABLE = frozenset({"AccessDeniedException", "AccessDenied"})

Key = tuple[str, str]  # (account, region)


def promoted_from(account: str, region: str, ami_id: str) -> str:
    return f"{account}:{region}:{ami_id}"


# ---- facts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionSource:
    """The image to promote: the AMI as EC2 describes it, and what promotion derives about it."""

    image: Image
    account: str  # the owner: where the copies come from
    aws_managed_key: bool  # encrypted under aws/ebs: cannot be shared with another account
    shared_with: tuple[str, ...]  # accounts with launch permission already

    @property
    def ami_id(self) -> str:
        return self.image.ami_id

    @property
    def promoted_from(self) -> str:
        return promoted_from(self.account, self.image.region, self.image.ami_id)


@dataclass(frozen=True)
class TargetFacts:
    """One target account and region, and the copy already promoted there (if any)."""

    account: str
    region: str
    existing_ami: str | None = None
    existing_state: str | None = None


def _aws_managed(clients: AwsClients, key_id: str | None) -> bool:
    if not key_id:
        return True  # encrypted without a named key: the account's default aws/ebs key
    try:
        key = keys.describe(clients, key_id)
    except AwsError as exc:
        if exc.code in KEY_NOT_READABLE:
            return False
        raise
    return key is not None and key.manager == "AWS"


def gather_source(clients: AwsClients, ami_id: str) -> PromotionSource:
    """The source image in the clients' account and region, or a ConfigError."""
    image = images.get(clients, ami_id)
    if image is None:
        raise ConfigError(f"image {ami_id} not found in {clients.region}; check the id and region")
    aws_managed = False
    for snapshot in images.snapshots(clients, snapshot_ids=image.snapshot_ids):
        if snapshot.encrypted:
            aws_managed = aws_managed or _aws_managed(clients, snapshot.kms_key_id)
    shared = sorted(p.user_id for p in images.launch_permissions(clients, ami_id) if p.user_id)
    return PromotionSource(
        image=image,
        account=image.owner_id or clients.account_id,
        aws_managed_key=aws_managed,
        shared_with=tuple(shared),
    )


def find_copy(clients: AwsClients, origin: str) -> tuple[str, str] | None:
    """(AMI id, state) of a live copy tagged `factory:promoted-from = origin` owned here."""
    found = [
        (i.ami_id, i.state)
        for i in images.find(clients, tags={T.PROMOTED_FROM: origin})
        if i.state in LIVE_STATES
    ]
    # an available copy beats one still pending; the id breaks ties so reruns agree
    found.sort(key=lambda f: (f[1] != "available", f[0]))
    return found[0] if found else None


def gather_targets(
    targets: Mapping[Key, AwsClients], source: PromotionSource
) -> tuple[TargetFacts, ...]:
    """Each target account and region, and the copy of `source` already there (if any)."""
    facts = []
    for clients in targets.values():
        existing = find_copy(clients, source.promoted_from)
        facts.append(
            TargetFacts(
                clients.account_id,
                clients.region,
                existing[0] if existing else None,
                existing[1] if existing else None,
            )
        )
    return tuple(facts)


def environment_targets(
    config: FactoryConfig, environment: Environment, regions: Sequence[str]
) -> dict[Key, AwsClients]:
    """Clients acting in the environment's account in each region, the account checked."""
    targets = {}
    for region in regions:
        clients = environment_clients(config, environment, region)
        targets[(clients.account_id, region)] = clients
    return targets


# ---- plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyStep:
    """What happens in one target account and region."""

    account: str
    region: str
    action: str  # copy | reuse | source (the target is where the image already lives)
    ami_id: str | None  # the copy reused (or the source itself); None until copied
    cross_account: bool
    share: bool  # grant launch + createVolume permission to the account first
    kms_key: str | None


@dataclass(frozen=True)
class PromotionPlan:
    source_ami: str
    source_account: str
    source_region: str
    environment: str
    family: str | None
    name: str
    promoted_from: str
    channel: str | None
    steps: tuple[CopyStep, ...]
    image: Image = field(repr=False, metadata={"internal": True})  # the source, as EC2 has it
    copy_tags: Mapping[str, str] = field(default_factory=dict, metadata={"internal": True})


def refuse_unpromotable(
    source: PromotionSource, now: datetime, *, channel: str | None = None
) -> None:
    """Only verified images travel; never revoked, retired or unfinished ones."""
    image = source.image
    if image.revoked:
        reason = image.tags.get(T.REVOKED_REASON, "no reason recorded")
        raise RefusedError(f"{image.ami_id} is revoked ({reason}); it cannot be promoted")
    if image.tags.get(T.RETIRE_PHASE) == "deprecated" or image.deprecated(now):
        raise RefusedError(f"{image.ami_id} is retired (deprecated); promote a current image")
    if not image.verified:
        raise RefusedError(
            f"{image.ami_id} is not verified ({T.STATUS}={image.status or 'missing'}); run "
            f"`factory verify {image.ami_id}` first"
        )
    if image.state != "available":
        raise RefusedError(f"{image.ami_id} is {image.state}, not available; wait and retry")
    if channel is not None and image.family is None:
        raise RefusedError(
            f"{image.ami_id} has no {T.FAMILY} tag; it cannot be published to a channel"
        )


def copy_tags(source: PromotionSource) -> dict[str, str]:
    """The source's factory tags (verdict included) and where the copy came from."""
    tags = source.image.tags
    out = {k: v for k, v in tags.items() if T.is_factory_tag(k) and k not in NOT_COPIED}
    out[T.PROMOTED_FROM] = source.promoted_from
    return out


def _step(source: PromotionSource, target: TargetFacts, environment: Environment) -> CopyStep:
    cross = target.account != source.account
    if cross and source.aws_managed_key:
        raise RefusedError(
            f"{source.ami_id} is encrypted with the default EBS key (aws/ebs), which cannot "
            f"be shared with account {target.account}; rebuild it encrypted with a "
            "customer-managed KMS key"
        )
    where = (target.account, target.region)
    if not cross and target.region == source.image.region:
        return CopyStep(*where, "source", source.ami_id, False, False, None)
    if target.existing_ami:
        return CopyStep(*where, "reuse", target.existing_ami, cross, False, None)
    share = cross and target.account not in source.shared_with
    return CopyStep(*where, "copy", None, cross, share, environment.kms_key)


def plan_promotion(
    source: PromotionSource,
    environment: Environment,
    targets: Sequence[TargetFacts],
    *,
    channel: str | None = None,
    now: datetime | None = None,
) -> PromotionPlan:
    """Pure: which copies to make or reuse; RefusedError if the image may not travel."""
    refuse_unpromotable(source, now or datetime.now(UTC), channel=channel)
    if not targets:
        raise ConfigError(f"environment {environment.name} has no regions to promote to")
    return PromotionPlan(
        source_ami=source.ami_id,
        source_account=source.account,
        source_region=source.image.region,
        environment=environment.name,
        family=source.image.family,
        name=source.image.name,
        promoted_from=source.promoted_from,
        channel=channel,
        steps=tuple(_step(source, target, environment) for target in targets),
        image=source.image,
        copy_tags=copy_tags(source),
    )


# ---- apply: the copies ------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotedCopy:
    account: str
    region: str
    ami_id: str
    action: str  # copied | reused | source
    state: str
    seconds: float


@dataclass(frozen=True)
class ChannelSet:
    account: str
    region: str
    parameter: str
    ami_id: str
    changed: bool


@dataclass(frozen=True)
class PromotionResult:
    source_ami: str
    environment: str
    promoted_from: str
    copies: tuple[PromotedCopy, ...]
    channels: tuple[ChannelSet, ...] = ()
    attestation: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class _Run:
    """What this run created, for the cleanup of a failed or interrupted promotion."""

    created: dict[Key, str] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)
    started: dict[Key, float] = field(default_factory=dict)
    actions: dict[Key, str] = field(default_factory=dict)
    pending: dict[Key, str] = field(default_factory=dict)  # started, not yet available
    done: dict[Key, PromotedCopy] = field(default_factory=dict)


def _state(target: AwsClients, ami_id: str) -> tuple[str, str]:
    image = images.get(target, ami_id)
    if image is None:
        return "deregistered", "the image is gone"
    return image.state, image.state_reason


def _start(
    plan: PromotionPlan,
    step: CopyStep,
    source: AwsClients,
    target: AwsClients,
    run: _Run,
    progress: Progress,
) -> tuple[str, str]:
    """Start one step: share if needed, then CopyImage and tag; (AMI id, action)."""
    if step.action != "copy":
        return str(step.ami_id), "reused" if step.action == "reuse" else "source"
    if step.share and step.account not in run.shared:
        progress.info(f"sharing {plan.source_ami} (launch, snapshots) with {step.account}")
        run.shared.append(step.account)
        images.share(source, plan.image, step.account)
    ami_id = images.copy(
        target,
        source_ami=plan.source_ami,
        source_region=plan.source_region,
        name=plan.name,
        description=plan.image.description,
        tags=plan.copy_tags,
        kms_key_id=step.kms_key,
    )
    run.created[(step.account, step.region)] = ami_id
    # endpoints that ignore TagSpecifications on CopyImage still get the tags
    images.tag(target, [ami_id], plan.copy_tags)
    progress.info(f"{step.account}/{step.region}: copying {plan.source_ami} to {ami_id}")
    return ami_id, "copied"


def _poll(targets: Mapping[Key, AwsClients], run: _Run, progress: Progress) -> None:
    """One look at every pending copy; a failed copy raises AwsError."""
    for key, ami_id in list(run.pending.items()):
        state, reason = _state(targets[key], ami_id)
        if state in DONE_STATES:
            del run.pending[key]
            seconds = round(time.monotonic() - run.started[key], 2)
            run.done[key] = PromotedCopy(*key, ami_id, run.actions[key], state, seconds)
            progress.info(f"{key[0]}/{key[1]}: {ami_id} available ({seconds:.1f}s)")
        elif state not in LIVE_STATES:
            raise AwsError(
                f"copy {ami_id} in {key[0]}/{key[1]} is {state}{f': {reason}' if reason else ''}"
            )


def _wait(
    targets: Mapping[Key, AwsClients],
    run: _Run,
    progress: Progress,
    timeout: float,
    poller: Poller,
) -> None:
    """Poll every pending copy until it is available; a failed copy raises AwsError."""
    total = len(run.pending) + len(run.done)
    with progress.task(
        f"waiting for {len(run.pending)} copy(ies) to become available", total
    ) as bar:
        bar.update(len(run.done))

        def all_available() -> bool | None:
            _poll(targets, run, progress)
            bar.update(len(run.done), f"{len(run.pending)} pending" if run.pending else None)
            return True if not run.pending else None

        wait_until(
            all_available,
            timeout=timeout,
            poller=poller,
            what=lambda: (
                "copies did not become available: "
                + ", ".join(f"{a} ({k[0]}/{k[1]})" for k, a in sorted(run.pending.items()))
            ),
        )


def _cleanup(
    plan: PromotionPlan, source: AwsClients, targets: Mapping[Key, AwsClients], run: _Run
) -> list[str]:
    """Deregister the copies this run created that are not available; withdraw new shares."""
    said = []
    for key, ami_id in sorted(run.created.items()):
        if key in run.done:
            said.append(f"kept {ami_id} in {key[0]}/{key[1]} (available; a rerun reuses it)")
            continue
        try:
            images.deregister(targets[key], ami_id, delete_snapshots=True)
            said.append(f"deregistered partial copy {ami_id} in {key[0]}/{key[1]}")
        except FactoryError as exc:
            said.append(f"could not deregister {ami_id} in {key[0]}/{key[1]}: {exc.message}")
    for account in run.shared:
        try:
            images.share(source, plan.image, account, add=False)
            said.append(f"withdrew the launch permission of {account} on {plan.source_ami}")
        except FactoryError as exc:
            said.append(f"could not withdraw the share with {account}: {exc.message}")
    return said


def _copy_all(
    plan: PromotionPlan,
    source: AwsClients,
    targets: Mapping[Key, AwsClients],
    run: _Run,
    progress: Progress,
    *,
    wait: bool,
    timeout: float,
    poller: Poller,
) -> None:
    """Start every step, then wait for the copies (or only look at them with `wait` False)."""
    for step in plan.steps:
        key = (step.account, step.region)
        run.started[key] = time.monotonic()
        run.pending[key], run.actions[key] = _start(plan, step, source, targets[key], run, progress)
    if wait:
        _wait(targets, run, progress, timeout, poller)
        return
    for key, ami_id in run.pending.items():
        state, _ = _state(targets[key], ami_id)
        run.done[key] = PromotedCopy(*key, ami_id, run.actions[key], state, 0.0)


def copy_images(
    plan: PromotionPlan,
    source: AwsClients,
    targets: Mapping[Key, AwsClients],
    *,
    progress: Progress,
    wait: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    poller: Poller | None = None,
) -> tuple[tuple[PromotedCopy, ...], tuple[str, ...]]:
    """Copy (or reuse) into every target; wait until available unless `wait` is False.

    Returns the copies and warnings. A failure or interrupt deregisters the copies this run
    made that are not available yet, and re-raises with what was cleaned in the message.
    """
    run = _Run()
    interrupts = process.Interrupts()  # SIGTERM like Ctrl-C; the cleanup is not cut short
    poller = poller or Poller(
        interval=1.0, max_interval=15.0, factor=1.5, cancelled=interrupts.cancelled
    )
    with interrupts.installed():
        try:
            try:
                _copy_all(
                    plan, source, targets, run, progress, wait=wait, timeout=timeout, poller=poller
                )
            except KeyboardInterrupt:  # Ctrl-C outside our handler (a worker, a test)
                raise Interrupted(signal.SIGINT) from None
        except BaseException as exc:  # clean up after anything, then raise it on
            with interrupts.shielded():
                cleaned = _cleanup(plan, source, targets, run)
            for line in cleaned:
                progress.warn(f"cleanup: {line}")
            what = "; ".join(cleaned) if cleaned else "nothing to clean up"
            if isinstance(exc, FactoryError) and not isinstance(exc, Interrupted):
                raise type(exc)(f"{exc.message}; cleanup: {what}", exc.exit_code) from None
            raise
    warnings: list[str] = []
    if run.shared and wait:
        # every copy is available and independent of the source: the share is not needed
        for account in run.shared:
            images.share(source, plan.image, account, add=False)
    elif run.shared:
        warnings.append(
            f"{plan.source_ami} stays shared with {', '.join(run.shared)} until the copies "
            "finish (--no-wait)"
        )
    order = {(s.account, s.region): i for i, s in enumerate(plan.steps)}
    copies = tuple(sorted(run.done.values(), key=lambda c: order[(c.account, c.region)]))
    return copies, tuple(warnings)


# ---- apply: channels and attestation ----------------------------------------------------------


def _attested_copies(source: AwsClients, ami_id: str) -> set[str]:
    """ARNs of copies earlier promotion attestations of `ami_id` already name."""
    from factory.provenance import read_envelopes

    image = images.get(source, ami_id)
    uri = image.tags.get(T.PROVENANCE_URI) if image is not None else None
    if not uri:
        return set()
    named: set[str] = set()
    for _line, envelope in read_envelopes(source, uri):
        if envelope is None:
            continue
        try:
            products = envelope.statement()["predicate"]["runDetails"]["byproducts"]
        except (ValueError, KeyError, TypeError):
            continue
        named |= {str(p.get("uri")) for p in products if p.get("name") == "promoted-copy"}
    return named


def attest(
    config: FactoryConfig,
    source: AwsClients,
    ami_id: str,
    copies: Sequence[PromotedCopy],
    progress: Progress,
) -> str | None:
    """Append a promotion attestation naming the copies no earlier one names; its URI."""
    from factory.provenance import record_promotion, signer_from_config

    wanted = [c for c in copies if c.action != "source"]
    try:
        named = _attested_copies(source, ami_id)
        new = [
            (c.account, c.region, c.ami_id)
            for c in wanted
            if f"arn:aws:ec2:{c.region}:{c.account}:image/{c.ami_id}" not in named
        ]
        if not new:
            return None
        attestation = record_promotion(
            source,
            signer_from_config(config, source),
            ami_id,
            copies=new,
            bucket=config.provenance.bucket,
        )
    except ConfigError as exc:  # an image built without provenance: nothing to extend
        progress.warn(f"{ami_id}: promotion not attested: {exc.message}")
        return None
    progress.info(f"{ami_id}: promotion provenance appended to {attestation.uri}")
    return attestation.uri


def publish(
    plan: PromotionPlan,
    copies: Sequence[PromotedCopy],
    targets: Mapping[Key, AwsClients],
    channels: Sequence[str],
) -> tuple[ChannelSet, ...]:
    """Set the plan's channel to each copy in its own account and region (verified only)."""
    from factory.channels import ChannelChange, set_channel

    if not plan.channel or plan.family is None:
        return ()
    out = []
    for copy in copies:
        change = set_channel(
            targets[(copy.account, copy.region)],
            channels,
            plan.family,
            plan.channel,
            copy.ami_id,
            reason=f"promoted from {plan.promoted_from} to {plan.environment}",
        )
        assert isinstance(change, ChannelChange)
        out.append(
            ChannelSet(copy.account, copy.region, change.parameter, copy.ami_id, change.changed)
        )
    return tuple(out)


def apply_promotion(
    config: FactoryConfig,
    plan: PromotionPlan,
    source: AwsClients,
    targets: Mapping[Key, AwsClients],
    *,
    progress: Progress,
    wait: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> PromotionResult:
    """Copy (or reuse), publish each copy to the plan's channel, attest the promotion."""
    copies, warnings = copy_images(
        plan, source, targets, progress=progress, wait=wait, timeout=timeout
    )
    published = publish(plan, copies, targets, config.channels)
    uri = attest(config, source, plan.source_ami, copies, progress)
    return PromotionResult(
        plan.source_ami, plan.environment, plan.promoted_from, copies, published, uri, warnings
    )


# ---- the stage ----------------------------------------------------------------------------------


def promote(
    config: FactoryConfig,
    source: AwsClients,
    ami_id: str,
    environment: Environment,
    targets: Mapping[Key, AwsClients],
    *,
    channel: str | None,
    dry_run: bool,
    wait: bool,
    progress: Progress,
    timeout: float = DEFAULT_TIMEOUT,
) -> PromotionPlan | PromotionResult:
    """Gather facts, plan (refusing unpromotable images), and unless dry_run apply it."""
    if channel is not None:
        from factory.channels import check_channel

        check_channel(channel, config.channels)
        if not wait:
            raise ConfigError("--channel needs the copies available; drop --no-wait")
    image = gather_source(source, ami_id)
    now = datetime.now(UTC)
    refuse_unpromotable(image, now, channel=channel)  # before the targets are read
    plan = plan_promotion(
        image, environment, gather_targets(targets, image), channel=channel, now=now
    )
    if dry_run:
        return plan
    return apply_promotion(
        config, plan, source, targets, progress=progress, wait=wait, timeout=timeout
    )
