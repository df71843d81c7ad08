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
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from factory import process
from factory import tags as T
from factory.aws import AwsClients, aws_errors, call, paginate, tag_list, tags_dict
from factory.catalog import deprecation_passed, describe_image, is_revoked
from factory.config import Environment, FactoryConfig
from factory.errors import AwsError, ConfigError, FactoryError, Interrupted, RefusedError
from factory.output import Progress

# IAM permissions promotion uses: in the source account, then in each target account.
PERMISSIONS = (
    "ec2:DescribeImages",
    "ec2:DescribeImageAttribute",
    "ec2:DescribeSnapshots",
    "ec2:ModifyImageAttribute",
    "ec2:ModifySnapshotAttribute",
    "kms:DescribeKey",
    "sts:GetCallerIdentity",
    "sts:AssumeRole",
    "ec2:CopyImage",
    "ec2:CreateTags",
    "ec2:DeregisterImage",
)

# Per-image decisions of the source account that a copy must not inherit.
NOT_COPIED = frozenset({T.KEEP, T.RETIRE_PHASE, T.PROVENANCE_URI, T.PROVENANCE_DIGEST})
DONE_STATES = frozenset({"available"})
LIVE_STATES = frozenset({"available", "pending"})
DEFAULT_TIMEOUT = 3600.0


def promoted_from(account: str, region: str, ami_id: str) -> str:
    return f"{account}:{region}:{ami_id}"


# ---- facts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceImage:
    """The image to promote, as the refusal rules and the copies need it."""

    ami_id: str
    account: str
    region: str
    name: str
    description: str
    state: str
    snapshot_ids: tuple[str, ...]
    encrypted: bool
    aws_managed_key: bool  # encrypted under aws/ebs: cannot be shared with another account
    shared_with: tuple[str, ...]  # accounts with launch permission already
    deprecation_time: str | None
    tags: Mapping[str, str] = field(metadata={"internal": True})

    @property
    def family(self) -> str | None:
        return self.tags.get(T.FAMILY)

    @property
    def status(self) -> str:
        return self.tags.get(T.STATUS, "missing")

    @property
    def promoted_from(self) -> str:
        return promoted_from(self.account, self.region, self.ami_id)

    def deprecated(self, now: datetime) -> bool:
        if self.tags.get(T.RETIRE_PHASE) == "deprecated":
            return True
        return deprecation_passed(self.deprecation_time, now)


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
        meta = clients.client("kms").describe_key(KeyId=key_id)["KeyMetadata"]
    except Exception:  # noqa: BLE001 - unknown (no kms:DescribeKey): let CopyImage decide
        return False
    return str(meta.get("KeyManager")) == "AWS"


def source_facts(clients: AwsClients, ami_id: str) -> SourceImage:
    """The source image in the clients' account and region, or a ConfigError."""
    image = describe_image(clients, ami_id)
    if image is None:
        raise ConfigError(f"image {ami_id} not found in {clients.region}; check the id and region")
    snapshot_ids = tuple(
        str(m["Ebs"]["SnapshotId"])
        for m in image.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    )
    encrypted = any(m.get("Ebs", {}).get("Encrypted") for m in image.get("BlockDeviceMappings", []))
    aws_managed = False
    ec2 = clients.client("ec2")
    if snapshot_ids:
        snapshots = call(ec2, "DescribeSnapshots", SnapshotIds=list(snapshot_ids))["Snapshots"]
        for snapshot in snapshots:
            if snapshot.get("Encrypted"):
                encrypted = True
                aws_managed = aws_managed or _aws_managed(clients, snapshot.get("KmsKeyId"))
    attribute = call(ec2, "DescribeImageAttribute", ImageId=ami_id, Attribute="launchPermission")
    shared = tuple(
        sorted(str(p["UserId"]) for p in attribute.get("LaunchPermissions", []) if "UserId" in p)
    )
    return SourceImage(
        ami_id=ami_id,
        account=str(image.get("OwnerId") or clients.account_id),
        region=clients.region,
        name=str(image.get("Name", "")),
        description=str(image.get("Description") or ""),
        state=str(image.get("State", "available")),
        snapshot_ids=snapshot_ids,
        encrypted=encrypted,
        aws_managed_key=encrypted and aws_managed,
        shared_with=shared,
        deprecation_time=image.get("DeprecationTime"),
        tags=tags_dict(image.get("Tags")),
    )


def find_copy(clients: AwsClients, origin: str) -> tuple[str, str] | None:
    """(AMI id, state) of a live copy tagged `factory:promoted-from = origin` owned here."""
    found = [
        (str(i["ImageId"]), str(i.get("State", "available")))
        for i in paginate(
            clients.client("ec2"),
            "DescribeImages",
            "Images",
            Owners=["self"],
            Filters=[{"Name": f"tag:{T.PROMOTED_FROM}", "Values": [origin]}],
        )
        if str(i.get("State", "available")) in LIVE_STATES
    ]
    # an available copy beats one still pending; the id breaks ties so reruns agree
    found.sort(key=lambda f: (f[1] != "available", f[0]))
    return found[0] if found else None


def target_facts(clients: AwsClients, source: SourceImage) -> TargetFacts:
    existing = find_copy(clients, source.promoted_from)
    return TargetFacts(
        clients.account_id,
        clients.region,
        existing[0] if existing else None,
        existing[1] if existing else None,
    )


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
    description: str = field(default="", metadata={"internal": True})
    snapshot_ids: tuple[str, ...] = field(default=(), metadata={"internal": True})
    copy_tags: Mapping[str, str] = field(default_factory=dict, metadata={"internal": True})

    def describe(self) -> str:
        lines = [
            f"promote {self.source_ami} ({self.name}, {self.source_account}/{self.source_region}) "
            f"to {self.environment}"
        ]
        for step in self.steps:
            where = f"{step.account}/{step.region}"
            if step.action == "reuse":
                lines.append(f"  {where}: reuse {step.ami_id} (already promoted)")
            elif step.action == "source":
                lines.append(f"  {where}: the image itself lives here; nothing to copy")
            else:
                extra = []
                if step.share:
                    extra.append(f"share launch and snapshot permission with {step.account}")
                if step.kms_key:
                    extra.append(f"encrypt with {step.kms_key}")
                suffix = f" ({'; '.join(extra)})" if extra else ""
                lines.append(f"  {where}: copy{suffix}")
        if self.channel:
            lines.append(f"  then set channel {self.family}/{self.channel} in each region")
        return "\n".join(lines)


def refuse_unpromotable(source: SourceImage, now: datetime) -> None:
    """Only verified images travel; never revoked, retired or unfinished ones."""
    if is_revoked(source.tags):
        reason = source.tags.get(T.REVOKED_REASON, "no reason recorded")
        raise RefusedError(f"{source.ami_id} is revoked ({reason}); it cannot be promoted")
    if source.deprecated(now):
        raise RefusedError(f"{source.ami_id} is retired (deprecated); promote a current image")
    if source.status != T.Status.VERIFIED.value:
        raise RefusedError(
            f"{source.ami_id} is not verified ({T.STATUS}={source.status}); run "
            f"`factory verify {source.ami_id}` first"
        )
    if source.state != "available":
        raise RefusedError(f"{source.ami_id} is {source.state}, not available; wait and retry")


def copy_tags(source: SourceImage) -> dict[str, str]:
    """The source's factory tags (verdict included) and where the copy came from."""
    out = {k: v for k, v in source.tags.items() if T.is_factory_tag(k) and k not in NOT_COPIED}
    out[T.PROMOTED_FROM] = source.promoted_from
    return out


def plan_promotion(
    source: SourceImage,
    environment: Environment,
    targets: Sequence[TargetFacts],
    *,
    channel: str | None = None,
    now: datetime | None = None,
) -> PromotionPlan:
    """Pure: which copies to make or reuse; RefusedError if the image may not travel."""
    refuse_unpromotable(source, now or datetime.now(UTC))
    if not targets:
        raise ConfigError(f"environment {environment.name} has no regions to promote to")
    steps = []
    for target in targets:
        cross = target.account != source.account
        if cross and source.aws_managed_key:
            raise RefusedError(
                f"{source.ami_id} is encrypted with the default EBS key (aws/ebs), which cannot "
                f"be shared with account {target.account}; rebuild it encrypted with a "
                "customer-managed KMS key"
            )
        if not cross and target.region == source.region:
            steps.append(
                CopyStep(target.account, target.region, "source", source.ami_id, False, False, None)
            )
        elif target.existing_ami:
            steps.append(
                CopyStep(
                    target.account, target.region, "reuse", target.existing_ami, cross, False, None
                )
            )
        else:
            share = cross and target.account not in source.shared_with
            steps.append(
                CopyStep(
                    target.account,
                    target.region,
                    "copy",
                    None,
                    cross,
                    share,
                    environment.kms_key,
                )
            )
    return PromotionPlan(
        source_ami=source.ami_id,
        source_account=source.account,
        source_region=source.region,
        environment=environment.name,
        family=source.family,
        name=source.name,
        promoted_from=source.promoted_from,
        channel=channel,
        steps=tuple(steps),
        description=source.description,
        snapshot_ids=source.snapshot_ids,
        copy_tags=copy_tags(source),
    )


# ---- apply ------------------------------------------------------------------------------------


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

    def describe(self) -> str:
        lines = [
            f"{c.account}/{c.region}  {c.ami_id}  {c.action}  {c.state}  {c.seconds:.1f}s"
            for c in self.copies
        ]
        lines += [
            f"{s.account}/{s.region}  {s.parameter} -> {s.ami_id}"
            f"{'' if s.changed else ' (unchanged)'}"
            for s in self.channels
        ]
        if self.attestation:
            lines.append(f"promotion attested in {self.attestation}")
        return "\n".join(lines)


Key = tuple[str, str]  # (account, region)


@dataclass
class _Run:
    """What this run created, for the cleanup of a failed or interrupted promotion."""

    created: dict[Key, str] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)
    started: dict[Key, float] = field(default_factory=dict)
    done: dict[Key, PromotedCopy] = field(default_factory=dict)


def _share(plan: PromotionPlan, source: AwsClients, account: str, *, add: bool = True) -> None:
    """Grant (or withdraw) launch permission on the image and its snapshots to `account`."""
    ec2 = source.client("ec2")
    call(
        ec2,
        "ModifyImageAttribute",
        ImageId=plan.source_ami,
        LaunchPermission={"Add" if add else "Remove": [{"UserId": account}]},
    )
    for snapshot in plan.snapshot_ids:
        call(
            ec2,
            "ModifySnapshotAttribute",
            SnapshotId=snapshot,
            Attribute="createVolumePermission",
            OperationType="add" if add else "remove",
            UserIds=[account],
        )


def _copy(plan: PromotionPlan, step: CopyStep, target: AwsClients) -> str:
    """CopyImage in the target account and region; returns the new AMI id (tagged)."""
    ec2 = target.client("ec2")
    tags = tag_list(dict(plan.copy_tags))
    kwargs: dict[str, Any] = {
        "SourceImageId": plan.source_ami,
        "SourceRegion": plan.source_region,
        "Name": plan.name,
        "TagSpecifications": [{"ResourceType": "image", "Tags": tags}],
    }
    if plan.description:
        kwargs["Description"] = plan.description
    if step.kms_key:
        kwargs["Encrypted"] = True
        kwargs["KmsKeyId"] = step.kms_key
    with aws_errors(f"ec2:CopyImage {plan.source_ami} -> {step.account}/{step.region}"):
        ami_id = str(ec2.copy_image(**kwargs)["ImageId"])
    return ami_id


def _state(target: AwsClients, ami_id: str) -> tuple[str, str]:
    image = describe_image(target, ami_id)
    if image is None:
        return "deregistered", "the image is gone"
    reason = str((image.get("StateReason") or {}).get("Message", ""))
    return str(image.get("State", "available")), reason


def _wait(
    pending: dict[Key, str],
    targets: Mapping[Key, AwsClients],
    run: _Run,
    actions: Mapping[Key, str],
    progress: Progress,
    timeout: float,
    sleep: Callable[[float], None],
) -> None:
    """Poll every pending copy until it is available; a failed copy raises AwsError."""
    total = len(pending) + len(run.done)
    deadline = time.monotonic() + timeout
    delay = 1.0
    with progress.task(f"waiting for {len(pending)} copy(ies) to become available", total) as bar:
        bar.update(len(run.done))
        while pending:
            for key, ami_id in list(pending.items()):
                state, reason = _state(targets[key], ami_id)
                if state in DONE_STATES:
                    del pending[key]
                    seconds = round(time.monotonic() - run.started[key], 2)
                    run.done[key] = PromotedCopy(*key, ami_id, actions[key], state, seconds)
                    progress.info(f"{key[0]}/{key[1]}: {ami_id} available ({seconds:.1f}s)")
                elif state not in LIVE_STATES:
                    raise AwsError(
                        f"copy {ami_id} in {key[0]}/{key[1]} is {state}"
                        f"{f': {reason}' if reason else ''}"
                    )
            bar.update(len(run.done), f"{len(pending)} pending" if pending else None)
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise AwsError(
                    f"copies still pending after {timeout:.0f}s: "
                    + ", ".join(f"{a} ({k[0]}/{k[1]})" for k, a in sorted(pending.items()))
                )
            sleep(delay)
            delay = min(delay * 1.5, 15.0)


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
            call(
                targets[key].client("ec2"),
                "DeregisterImage",
                ImageId=ami_id,
                DeleteAssociatedSnapshots=True,
            )
            said.append(f"deregistered partial copy {ami_id} in {key[0]}/{key[1]}")
        except FactoryError as exc:
            said.append(f"could not deregister {ami_id} in {key[0]}/{key[1]}: {exc.message}")
    for account in run.shared:
        try:
            _share(plan, source, account, add=False)
            said.append(f"withdrew the launch permission of {account} on {plan.source_ami}")
        except FactoryError as exc:
            said.append(f"could not withdraw the share with {account}: {exc.message}")
    return said


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
        _share(plan, source, step.account)
    ami_id = _copy(plan, step, target)
    run.created[(step.account, step.region)] = ami_id
    # endpoints that ignore TagSpecifications on CopyImage still get the tags
    call(
        target.client("ec2"), "CreateTags", Resources=[ami_id], Tags=tag_list(dict(plan.copy_tags))
    )
    progress.info(f"{step.account}/{step.region}: copying {plan.source_ami} to {ami_id}")
    return ami_id, "copied"


def apply_promotion(
    plan: PromotionPlan,
    source: AwsClients,
    targets: Mapping[Key, AwsClients],
    *,
    progress: Progress,
    wait: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[tuple[PromotedCopy, ...], tuple[str, ...]]:
    """Copy (or reuse) into every target; wait until available unless `wait` is False.

    Returns the copies and warnings. A failure or interrupt deregisters the copies this run
    made that are not available yet, and re-raises with what was cleaned in the message.
    """
    run = _Run()
    pending: dict[Key, str] = {}
    actions: dict[Key, str] = {}
    warnings: list[str] = []
    interrupts = process.Interrupts()  # SIGTERM like Ctrl-C; the cleanup is not cut short
    with interrupts.installed():
        try:
            try:
                for step in plan.steps:
                    key = (step.account, step.region)
                    run.started[key] = time.monotonic()
                    pending[key], actions[key] = _start(
                        plan, step, source, targets[key], run, progress
                    )
                if wait:
                    _wait(pending, targets, run, actions, progress, timeout, sleep)
                else:
                    for key, ami_id in pending.items():
                        state, _ = _state(targets[key], ami_id)
                        run.done[key] = PromotedCopy(*key, ami_id, actions[key], state, 0.0)
            except KeyboardInterrupt:  # Ctrl-C outside our handler (a worker, a test)
                raise Interrupted(signal.SIGINT) from None
        except Exception as exc:
            with interrupts.shielded():
                cleaned = _cleanup(plan, source, targets, run)
            for line in cleaned:
                progress.warn(f"cleanup: {line}")
            what = "; ".join(cleaned) if cleaned else "nothing to clean up"
            if isinstance(exc, Interrupted):
                raise
            if isinstance(exc, FactoryError):
                raise type(exc)(f"{exc.message}; cleanup: {what}", exc.exit_code) from None
            raise
    if run.shared and wait:
        # every copy is available and independent of the source: the share is not needed
        for account in run.shared:
            _share(plan, source, account, add=False)
    elif run.shared:
        warnings.append(
            f"{plan.source_ami} stays shared with {', '.join(run.shared)} until the copies "
            "finish (--no-wait)"
        )
    order = {(s.account, s.region): i for i, s in enumerate(plan.steps)}
    copies = tuple(sorted(run.done.values(), key=lambda c: order[(c.account, c.region)]))
    return copies, tuple(warnings)


# ---- the stage: facts, plan, apply, channels, attestation --------------------------------------


def _attested_copies(source: AwsClients, ami_id: str) -> set[str]:
    """ARNs of copies earlier promotion attestations of `ami_id` already name."""
    from factory.provenance import read_envelopes

    image = describe_image(source, ami_id)
    uri = tags_dict(image.get("Tags")).get(T.PROVENANCE_URI) if image else None
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
    from factory.provenance import record_promotion
    from factory.signing import signer_from_config

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
    image = source_facts(source, ami_id)
    refuse_unpromotable(image, datetime.now(UTC))
    if channel is not None and image.family is None:
        raise RefusedError(f"{ami_id} has no {T.FAMILY} tag; it cannot be published to a channel")
    facts = [target_facts(clients, image) for clients in targets.values()]
    plan = plan_promotion(image, environment, facts, channel=channel)
    if dry_run:
        return plan
    copies, warnings = apply_promotion(
        plan, source, targets, progress=progress, wait=wait, timeout=timeout
    )
    published = publish(plan, copies, targets, config.channels)
    uri = attest(config, source, ami_id, copies, progress)
    return PromotionResult(
        plan.source_ami,
        plan.environment,
        plan.promoted_from,
        copies,
        published,
        uri,
        warnings,
    )
