"""Signed provenance: an in-toto Statement v1 with a SLSA Provenance v1 predicate per AMI step.

Each step the image takes (build, verification, promotion) appends one DSSE envelope line to
`s3://BUCKET/provenance/ACCOUNT/REGION/AMI.intoto.jsonl`; the AMI's `factory:provenance-uri`
and `factory:provenance-digest` tags point at the file and its newest line. The JUnit report
of the verification is stored beside it (`AMI.junit.xml`) so the test result can be checked
offline. `verify_provenance` recomputes everything it can and names each difference.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from factory import tags as T
from factory.aws import AwsClients, aws_errors, call, error_code, tag_list, tags_dict
from factory.catalog import ImageIdentity, describe_image, identity_of, is_revoked
from factory.config import FactoryConfig
from factory.errors import AwsError, ConfigError, FactoryError
from factory.output import Progress
from factory.process import child_env, run
from factory.signing import (
    PAYLOAD_TYPE,
    Envelope,
    Signer,
    keyid_for,
    load_public_key,
    sign_envelope,
    signer_from_config,
    verify_envelope,
)

if TYPE_CHECKING:
    from factory.verify import VerifyResult

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/ami-factory/ami-factory/buildtypes/packer-ami/v1"
BUILDER_ID = "https://github.com/ami-factory/ami-factory/builder/v1"
MAX_CHAIN = 20

PERMISSIONS = (
    "s3:GetObject",
    "s3:PutObject",
    "s3:CreateBucket",
    "s3:PutBucketVersioning",
    "s3:ListBucket",  # authorises HeadBucket (IAM has no s3:HeadBucket)
    "ec2:DescribeImages",
    "ec2:CreateTags",
    "kms:GetPublicKey",
)


class Stage:
    BUILD = "build"
    VERIFICATION = "verification"
    PROMOTION = "promotion"


# ---- facts handed in by the build and verify stages -------------------------------------------


@dataclass(frozen=True)
class FileDigest:
    """A file the build depended on, by its path relative to the repository root."""

    path: str
    sha256: str
    role: str  # template | provisioner | test-suite


@dataclass(frozen=True)
class BuildFacts:
    """What the build stage knows when its AMI exists (see `record_build`)."""

    family: str
    version: str
    build_id: str
    source_ami: str
    files: tuple[FileDigest, ...]
    git_commit: str | None
    git_dirty: bool
    packer_version: str
    factory_version: str
    template_digest: str | None = None  # the rendered HCL's sha256 (factory:template-digest)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    repository: str | None = None  # e.g. the git remote URL


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(root: Path, paths: Sequence[Path], role: str) -> tuple[FileDigest, ...]:
    """Digests of `paths` (files or folders, recursively), named relative to `root`."""
    out: list[FileDigest] = []
    root = root.resolve()
    for given in paths:
        path = given if given.is_absolute() else root / given
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            try:
                rel = file.resolve().relative_to(root).as_posix()
            except ValueError:
                raise ConfigError(f"{file} is outside the repository {root}") from None
            out.append(FileDigest(rel, sha256_file(file), role))
    return tuple(out)


# ---- statements -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParentRef:
    """The source image as a resolved dependency, with its own attestation if it has one."""

    ami_id: str
    identity_digest: str | None  # None if the source image could not be described
    attestation_uri: str | None
    attestation_digest: str | None


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _present(**fields: Any) -> dict[str, Any]:
    """The fields that have a value (SLSA wants absent fields left out, not null)."""
    return {k: v for k, v in fields.items() if v is not None}


def subject_for(identity: ImageIdentity, region: str, account: str) -> dict[str, Any]:
    return {
        "name": f"arn:aws:ec2:{region}::image/{identity.ami_id}",
        "digest": {"sha256": identity.digest},
        "annotations": {"account": account, "region": region, **identity.as_dict()},
    }


def build_statement(
    identity: ImageIdentity,
    region: str,
    account: str,
    facts: BuildFacts,
    parent: ParentRef,
) -> dict[str, Any]:
    """The build's Statement: subject = the AMI, predicate = SLSA Provenance v1."""
    parent_annotations: dict[str, Any] = {"role": "source-ami"}
    if parent.attestation_uri:
        parent_annotations["attestation_uri"] = parent.attestation_uri
        parent_annotations["attestation_digest"] = parent.attestation_digest
    source: dict[str, Any] = {
        "uri": f"arn:aws:ec2:{region}::image/{parent.ami_id}",
        "name": parent.ami_id,
        "digest": {"sha256": parent.identity_digest} if parent.identity_digest else {},
        "annotations": parent_annotations,
    }
    dependencies: list[dict[str, Any]] = [source]
    dependencies += [
        {
            "uri": f"file:{f.path}",
            "name": f.path,
            "digest": {"sha256": f.sha256},
            "annotations": {"role": f.role},
        }
        for f in sorted(facts.files, key=lambda f: (f.role, f.path))
    ]
    if facts.git_commit:
        dependencies.append(
            {
                "uri": f"git+{facts.repository or 'file:.'}@{facts.git_commit}",
                "name": "git",
                "digest": {"gitCommit": facts.git_commit},
                "annotations": {"role": "source", "dirty": facts.git_dirty},
            }
        )
    return {
        "_type": STATEMENT_TYPE,
        "subject": [subject_for(identity, region, account)],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": _present(
                    family=facts.family,
                    version=facts.version,
                    source_ami=facts.source_ami,
                    template_digest=facts.template_digest,
                ),
                "internalParameters": {
                    "stage": Stage.BUILD,
                    "git_dirty": facts.git_dirty,
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": {
                        "ami-factory": facts.factory_version,
                        "packer": facts.packer_version,
                    },
                },
                "metadata": _present(
                    invocationId=facts.build_id,
                    startedOn=_time(facts.started_at),
                    finishedOn=_time(facts.finished_at or datetime.now(UTC)),
                ),
                "byproducts": [],
            },
        },
    }


def _stage(statement: Mapping[str, Any]) -> str:
    return str(
        statement.get("predicate", {})
        .get("buildDefinition", {})
        .get("internalParameters", {})
        .get("stage", "")
    )


def _derived(
    build: Mapping[str, Any],
    *,
    identity: ImageIdentity,
    region: str,
    account: str,
    stage: str,
    byproducts: list[dict[str, Any]],
    at: datetime,
) -> dict[str, Any]:
    """A later step's Statement: the build's definition, the image now, new byproducts."""
    statement: dict[str, Any] = json.loads(json.dumps(build))
    statement["subject"] = [subject_for(identity, region, account)]
    predicate = statement["predicate"]
    predicate["buildDefinition"]["internalParameters"]["stage"] = stage
    run = predicate["runDetails"]
    run["metadata"] = {
        "invocationId": f"{run['metadata'].get('invocationId', '')}/{stage}",
        "startedOn": _time(at),
        "finishedOn": _time(at),
    }
    run["byproducts"] = byproducts
    return statement


# ---- storage ----------------------------------------------------------------------------------


def default_bucket(clients: AwsClients) -> str:
    return f"factory-provenance-{clients.account_id}-{clients.region}"


def provenance_bucket(config: FactoryConfig, clients: AwsClients) -> str:
    return config.provenance.bucket or default_bucket(clients)


def object_key(account: str, region: str, ami_id: str, suffix: str = ".intoto.jsonl") -> str:
    return f"provenance/{account}/{region}/{ami_id}{suffix}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ConfigError(f"{uri!r} is not an s3://BUCKET/KEY URI")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def ensure_bucket(clients: AwsClients, bucket: str) -> None:
    """Create the provenance bucket (versioned) on first use."""
    s3 = clients.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except Exception as exc:  # noqa: BLE001 - only "missing" means create
        if error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
            call(s3, "HeadBucket", Bucket=bucket)
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if clients.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": clients.region}
    call(s3, "CreateBucket", **kwargs)
    # versioning keeps every earlier state of an attestation file: tampering leaves a trace
    call(s3, "PutBucketVersioning", Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def _get_object(clients: AwsClients, bucket: str, key: str) -> tuple[bytes, str] | None:
    s3 = clients.client("s3")
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if error_code(exc) in {"NoSuchKey", "404", "NoSuchBucket"}:
            return None
        with aws_errors(f"s3:GetObject s3://{bucket}/{key}"):
            raise
        raise
    return bytes(response["Body"].read()), str(response.get("ETag", ""))


def read_envelopes(clients: AwsClients, uri: str) -> list[tuple[str, Envelope | None]]:
    """The attestation file's lines, each with its parsed envelope (None if unparseable)."""
    bucket, key = parse_s3_uri(uri)
    found = _get_object(clients, bucket, key)
    if found is None:
        raise ConfigError(f"no attestation at {uri}")
    out: list[tuple[str, Envelope | None]] = []
    for line in found[0].decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            out.append((line, Envelope.from_json(line)))
        except (ValueError, KeyError, TypeError):
            out.append((line, None))
    return out


def _append(clients: AwsClients, bucket: str, key: str, line: str) -> None:
    """Append one line with a conditional write (no lost update between two writers)."""
    s3 = clients.client("s3")
    for _attempt in range(5):
        found = _get_object(clients, bucket, key)
        body = (found[0] if found else b"") + line.encode() + b"\n"
        condition = {"IfMatch": found[1]} if found else {"IfNoneMatch": "*"}
        try:
            s3.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType="application/jsonl", **condition
            )
            return
        except Exception as exc:
            if error_code(exc) in {"PreconditionFailed", "ConditionalRequestConflict"}:
                continue
            with aws_errors(f"s3:PutObject s3://{bucket}/{key}"):
                raise
            raise
    raise AwsError(f"s3:PutObject s3://{bucket}/{key}: kept changing under us; retry")


@dataclass(frozen=True)
class Attestation:
    """One recorded step: where it is, and the digest the AMI's tag now carries."""

    ami_id: str
    stage: str
    uri: str
    digest: str
    keyid: str
    statement: Mapping[str, Any] = field(metadata={"internal": True})


def _record(
    clients: AwsClients,
    signer: Signer,
    ami_id: str,
    statement: dict[str, Any],
    bucket: str | None,
) -> Attestation:
    bucket = bucket or default_bucket(clients)
    ensure_bucket(clients, bucket)
    key = object_key(clients.account_id, clients.region, ami_id)
    envelope = sign_envelope(statement, signer)
    _append(clients, bucket, key, envelope.to_json())
    uri = f"s3://{bucket}/{key}"
    call(
        clients.client("ec2"),
        "CreateTags",
        Resources=[ami_id],
        Tags=tag_list({T.PROVENANCE_URI: uri, T.PROVENANCE_DIGEST: envelope.digest}),
    )
    return Attestation(ami_id, _stage(statement), uri, envelope.digest, signer.keyid, statement)


def _image(clients: AwsClients, ami_id: str) -> dict[str, Any]:
    image = describe_image(clients, ami_id)
    if image is None:
        raise ConfigError(f"image {ami_id} not found in {clients.region}")
    return image


def parent_ref(clients: AwsClients, source_ami: str) -> ParentRef:
    image = describe_image(clients, source_ami)
    if image is None:
        return ParentRef(source_ami, None, None, None)
    image_tags = tags_dict(image.get("Tags"))
    return ParentRef(
        source_ami,
        identity_of(image).digest,
        image_tags.get(T.PROVENANCE_URI),
        image_tags.get(T.PROVENANCE_DIGEST),
    )


def record_build(
    clients: AwsClients,
    signer: Signer,
    ami_id: str,
    facts: BuildFacts,
    *,
    bucket: str | None = None,
) -> Attestation:
    """After a build: sign the build's Statement, store it, tag the AMI with its location."""
    identity = identity_of(_image(clients, ami_id))
    statement = build_statement(
        identity, clients.region, clients.account_id, facts, parent_ref(clients, facts.source_ami)
    )
    return _record(clients, signer, ami_id, statement, bucket)


@dataclass(frozen=True)
class JunitSummary:
    tests: int
    failures: int
    errors: int
    skipped: int

    @property
    def passed(self) -> bool:
        return self.tests > 0 and self.failures == 0 and self.errors == 0


def junit_summary(xml: bytes) -> JunitSummary:
    """Totals of a JUnit XML report (<testsuites> or a single <testsuite>)."""
    try:
        root = ET.fromstring(xml)  # noqa: S314 - our own verify stage's report
    except ET.ParseError as exc:
        raise ConfigError(f"JUnit report is not valid XML: {exc}") from None
    suites = [root] if root.tag == "testsuite" else root.findall(".//testsuite")
    totals = [0, 0, 0, 0]
    for suite in suites:
        for i, attr in enumerate(("tests", "failures", "errors", "skipped")):
            totals[i] += int(suite.get(attr, "0") or 0)
    return JunitSummary(*totals)


def _latest_build(clients: AwsClients, ami_id: str) -> tuple[dict[str, Any], str]:
    image = _image(clients, ami_id)
    uri = tags_dict(image.get("Tags")).get(T.PROVENANCE_URI)
    if not uri:
        raise ConfigError(f"{ami_id} has no {T.PROVENANCE_URI} tag: no build attestation to extend")
    builds = [
        env.statement()
        for _line, env in read_envelopes(clients, uri)
        if env is not None and _stage(env.statement()) == Stage.BUILD
    ]
    if not builds:
        raise ConfigError(f"{uri} holds no build attestation")
    return builds[-1], uri


def record_verification(
    clients: AwsClients,
    signer: Signer,
    ami_id: str,
    verify_result_digest: str,
    junit_path: Path,
    *,
    passed: bool | None = None,
    suite_digest: str | None = None,
    summary_path: Path | None = None,
    bucket: str | None = None,
) -> Attestation:
    """After verify: store the JUnit report (and the result summary) beside the attestation
    and append a Statement with them as byproducts.

    `passed` is verify's verdict (default: the JUnit totals); the result counts as passed
    only if both agree. `summary_path` is the file `verify_result_digest` is the sha256 of.
    """
    build, uri = _latest_build(clients, ami_id)
    bucket = bucket or parse_s3_uri(uri)[0]
    junit = junit_path.read_bytes()
    summary = junit_summary(junit)
    junit_key = object_key(clients.account_id, clients.region, ami_id, ".junit.xml")
    s3 = clients.client("s3")
    call(s3, "PutObject", Bucket=bucket, Key=junit_key, Body=junit, ContentType="application/xml")
    result: dict[str, Any] = {
        "name": "verify-result",
        "digest": {"sha256": verify_result_digest},
        "annotations": {
            "result": "passed" if summary.passed and passed is not False else "failed",
        },
    }
    if suite_digest:
        result["annotations"]["suite_digest"] = suite_digest
    if summary_path is not None:
        result_key = object_key(clients.account_id, clients.region, ami_id, ".verify-result.json")
        call(
            s3,
            "PutObject",
            Bucket=bucket,
            Key=result_key,
            Body=summary_path.read_bytes(),
            ContentType="application/json",
        )
        result["uri"] = f"s3://{bucket}/{result_key}"
    identity = identity_of(_image(clients, ami_id))
    byproducts = [
        result,
        {
            "name": "junit.xml",
            "uri": f"s3://{bucket}/{junit_key}",
            "digest": {"sha256": hashlib.sha256(junit).hexdigest()},
            "annotations": {
                "tests": summary.tests,
                "failures": summary.failures,
                "errors": summary.errors,
                "skipped": summary.skipped,
            },
        },
    ]
    statement = _derived(
        build,
        identity=identity,
        region=clients.region,
        account=clients.account_id,
        stage=Stage.VERIFICATION,
        byproducts=byproducts,
        at=datetime.now(UTC),
    )
    return _record(clients, signer, ami_id, statement, bucket)


def record_promotion(
    clients: AwsClients,
    signer: Signer,
    ami_id: str,
    *,
    copies: Sequence[tuple[str, str, str]],
    bucket: str | None = None,
) -> Attestation:
    """After a promotion: append a Statement naming every copy it produced or reused.

    `copies` are (account, region, AMI id) of each copy, one byproduct each.
    """
    if not copies:
        raise ConfigError(f"a promotion of {ami_id} names no copy; nothing to attest")
    build, uri = _latest_build(clients, ami_id)
    identity = identity_of(_image(clients, ami_id))
    byproducts = [
        {
            "name": "promoted-copy",
            "uri": f"arn:aws:ec2:{region}:{account}:image/{copy_ami}",
            "annotations": {"account": account, "region": region, "ami_id": copy_ami},
        }
        for account, region, copy_ami in copies
    ]
    statement = _derived(
        build,
        identity=identity,
        region=clients.region,
        account=clients.account_id,
        stage=Stage.PROMOTION,
        byproducts=byproducts,
        at=datetime.now(UTC),
    )
    return _record(clients, signer, ami_id, statement, bucket or parse_s3_uri(uri)[0])


# ---- show -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepView:
    """One attested step, readably."""

    index: int
    stage: str
    at: str | None
    keyid: str
    subject: Mapping[str, Any]
    builder: Mapping[str, Any]
    external_parameters: Mapping[str, Any]
    dependencies: tuple[Mapping[str, Any], ...]
    byproducts: tuple[Mapping[str, Any], ...]
    digest: str


@dataclass(frozen=True)
class ProvenanceView:
    ami_id: str
    region: str
    uri: str
    steps: tuple[StepView, ...]
    ancestors: tuple[str, ...]  # parent first, as attested


def show_provenance(clients: AwsClients, ami_id: str) -> ProvenanceView:
    image = _image(clients, ami_id)
    image_tags = tags_dict(image.get("Tags"))
    uri = image_tags.get(T.PROVENANCE_URI) or (
        f"s3://{default_bucket(clients)}/{object_key(clients.account_id, clients.region, ami_id)}"
    )
    steps: list[StepView] = []
    for i, (line, env) in enumerate(read_envelopes(clients, uri)):
        if env is None:
            steps.append(StepView(i, "unreadable", None, "", {}, {}, {}, (), (), _sha(line)))
            continue
        st = env.statement()
        pred = st.get("predicate", {})
        run = pred.get("runDetails", {})
        steps.append(
            StepView(
                index=i,
                stage=_stage(st),
                at=run.get("metadata", {}).get("finishedOn"),
                keyid=env.signatures[0][0] if env.signatures else "",
                subject=(st.get("subject") or [{}])[0],
                builder=run.get("builder", {}),
                external_parameters=pred.get("buildDefinition", {}).get("externalParameters", {}),
                dependencies=tuple(pred.get("buildDefinition", {}).get("resolvedDependencies", [])),
                byproducts=tuple(run.get("byproducts", [])),
                digest=_sha(line),
            )
        )
    ancestors: list[str] = []
    current = image_tags.get(T.SOURCE_AMI)
    while current and current not in ancestors and len(ancestors) < MAX_CHAIN:
        ancestors.append(current)
        parent = describe_image(clients, current)
        current = tags_dict(parent.get("Tags")).get(T.SOURCE_AMI) if parent else None
    return ProvenanceView(ami_id, clients.region, uri, tuple(steps), tuple(ancestors))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---- verify -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One verification check: what was compared and, if it failed, exactly what differs."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class ProvenanceReport:
    ami_id: str
    region: str
    uri: str | None
    ok: bool
    checks: tuple[Check, ...]
    warnings: tuple[str, ...]
    chain: tuple[str, ...]  # image, parent, ..., root base image

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)


@dataclass
class _Collector:
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def ok(self, name: str, detail: str = "") -> None:
        self.checks.append(Check(name, True, detail))

    def fail(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, False, detail))


class TrustedKeys:
    """Public keys a signature may verify with: the one given, else KMS's or the key file's."""

    def __init__(
        self,
        clients: AwsClients,
        public_key: ec.EllipticCurvePublicKey | None,
        key_file: Path | None = None,
    ) -> None:
        self.clients = clients
        self.pinned = public_key
        self.key_file = key_file
        self._cache: dict[str, ec.EllipticCurvePublicKey | None] = {}

    def for_keyids(self, keyids: Sequence[str]) -> dict[str, ec.EllipticCurvePublicKey]:
        if self.pinned is not None:
            return {"(given public key)": self.pinned}
        out = {}
        for keyid in keyids:
            if keyid not in self._cache:
                self._cache[keyid] = self._lookup(keyid)
            key = self._cache[keyid]
            if key is not None:
                out[keyid] = key
        return out

    def _lookup(self, keyid: str) -> ec.EllipticCurvePublicKey | None:
        if keyid.startswith("arn:aws:kms:"):
            region = keyid.split(":")[3]
            regional = (
                self.clients if region == self.clients.region else self.clients.for_region(region)
            )
            try:
                der = call(regional.client("kms"), "GetPublicKey", KeyId=keyid)["PublicKey"]
            except FactoryError:
                return None
            key = serialization.load_der_public_key(bytes(der))
            return key if isinstance(key, ec.EllipticCurvePublicKey) else None
        if self.key_file is not None and self.key_file.is_file():
            key = load_public_key(self.key_file.read_bytes(), str(self.key_file))
            return key if keyid_for(key) == keyid else None
        return None


def _dep_digest(dep: Mapping[str, Any]) -> str | None:
    value = dep.get("digest", {}).get("sha256")
    return str(value) if value else None


def _identity_diff(attested: Mapping[str, Any], now: ImageIdentity) -> list[str]:
    current = now.as_dict()
    diffs = []
    for key in ("ami_id", "name", "architecture", "snapshot_ids"):
        if attested.get(key) != current[key]:
            diffs.append(f"{key} attested {attested.get(key)!r}, now {current[key]!r}")
    return diffs


def _tag_expectations(
    build: Mapping[str, Any], verification: Mapping[str, Any] | None
) -> dict[str, str]:
    pred = build["predicate"]
    params = pred["buildDefinition"]["externalParameters"]
    run = pred["runDetails"]
    expected = {
        T.FAMILY: params.get("family"),
        T.VERSION: params.get("version"),
        T.SOURCE_AMI: params.get("source_ami"),
        T.TEMPLATE_DIGEST: params.get("template_digest"),
        T.BUILD_ID: run.get("metadata", {}).get("invocationId"),
        T.PACKER_VERSION: run.get("builder", {}).get("version", {}).get("packer"),
        T.FACTORY_VERSION: run.get("builder", {}).get("version", {}).get("ami-factory"),
    }
    for dep in pred["buildDefinition"].get("resolvedDependencies", []):
        if dep.get("name") == "git":
            expected[T.GIT_COMMIT] = dep.get("digest", {}).get("gitCommit")
            expected[T.GIT_DIRTY] = "true" if dep.get("annotations", {}).get("dirty") else "false"
    if verification is not None:
        for product in verification["predicate"]["runDetails"].get("byproducts", []):
            if product.get("name") == "verify-result":
                expected[T.RESULT_DIGEST] = _dep_digest(product)
                expected[T.SUITE_DIGEST] = product.get("annotations", {}).get("suite_digest")
    return {k: str(v) for k, v in expected.items() if v is not None}


def _check_steps(  # noqa: PLR0912 - one branch per way a line can be wrong
    ami_id: str,
    lines: list[tuple[str, Envelope | None]],
    *,
    keys: TrustedKeys,
    identity: ImageIdentity | None,
    out: _Collector,
    prefix: str,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Signatures and subjects of every line; returns (latest build, latest verification)."""
    build: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    for i, (_line, env) in enumerate(lines):
        name = f"{prefix}line {i + 1}"
        if env is None:
            out.fail(f"{name}: envelope", "not a valid DSSE envelope (edited?)")
            continue
        if env.payload_type != PAYLOAD_TYPE:
            out.fail(f"{name}: envelope", f"payloadType {env.payload_type!r}, not {PAYLOAD_TYPE}")
        problem = verify_envelope(env, keys.for_keyids([k for k, _ in env.signatures]))
        try:
            statement = env.statement()
        except ValueError:
            out.fail(f"{name}: payload", "payload is not JSON")
            continue
        stage = _stage(statement) or "?"
        if problem:
            out.fail(f"{name} ({stage}): signature", problem)
        else:
            out.ok(f"{name} ({stage}): signature", f"signed by {env.signatures[0][0]}")
        subject = (statement.get("subject") or [{}])[0]
        if identity is not None:
            attested = subject.get("digest", {}).get("sha256")
            if attested != identity.digest:
                diffs = _identity_diff(subject.get("annotations", {}), identity)
                out.fail(
                    f"{name} ({stage}): subject",
                    f"attested image identity differs from {ami_id} as it is now: "
                    + ("; ".join(diffs) or f"digest {attested} != {identity.digest}"),
                )
            else:
                out.ok(f"{name} ({stage}): subject", f"sha256:{identity.digest[:16]}…")
        if (statement.get("_type"), statement.get("predicateType")) != (
            STATEMENT_TYPE,
            PREDICATE_TYPE,
        ):
            out.fail(f"{name}: statement", "not an in-toto v1 Statement with a SLSA v1 predicate")
            continue
        if not problem:
            if stage == Stage.BUILD:
                build = statement
            elif stage == Stage.VERIFICATION:
                verification = statement
    return build, verification


def _check_tests(
    clients: AwsClients,
    verification: Mapping[str, Any] | None,
    image_tags: Mapping[str, str],
    out: _Collector,
) -> None:
    if verification is None:
        out.fail("tests", "no signed verification attestation: the image has not passed its tests")
        return
    products = {p.get("name"): p for p in verification["predicate"]["runDetails"]["byproducts"]}
    result = products.get("verify-result", {}).get("annotations", {}).get("result")
    junit = products.get("junit.xml")
    if result != "passed":
        out.fail("tests", f"the signed verification result is {result!r}, not 'passed'")
        return
    if junit is None or not junit.get("uri"):
        out.fail("tests", "the verification attestation names no JUnit report")
        return
    stored_result = products.get("verify-result", {}).get("uri")
    if stored_result:
        found_result = _get_object(clients, *parse_s3_uri(str(stored_result)))
        wanted = _dep_digest(products["verify-result"])
        if found_result is None or hashlib.sha256(found_result[0]).hexdigest() != wanted:
            out.fail("tests: result", f"verify result {stored_result} is missing or changed")
            return
    bucket, key = parse_s3_uri(str(junit["uri"]))
    found = _get_object(clients, bucket, key)
    if found is None:
        out.fail("tests: junit", f"JUnit report {junit['uri']} is missing")
        return
    digest = hashlib.sha256(found[0]).hexdigest()
    if digest != _dep_digest(junit):
        out.fail(
            "tests: junit",
            f"JUnit report {junit['uri']} changed: sha256 {digest}, attested {_dep_digest(junit)}",
        )
        return
    try:
        summary = junit_summary(found[0])
    except ConfigError as exc:
        out.fail("tests: junit", exc.message)
        return
    if not summary.passed:
        out.fail(
            "tests: junit",
            f"JUnit report shows {summary.tests} tests, {summary.failures} failures, "
            f"{summary.errors} errors",
        )
        return
    status = image_tags.get(T.STATUS)
    if is_revoked(image_tags):
        out.fail("tests: status", f"the image is revoked: {image_tags.get(T.REVOKED_REASON, '')}")
    elif status != T.Status.VERIFIED.value:
        out.fail("tests: status", f"tag {T.STATUS} is {status!r}, not 'verified'")
    else:
        out.ok("tests", f"{summary.tests} tests passed ({summary.skipped} skipped), JUnit matches")


def _check_files(build: Mapping[str, Any], repo: Path, out: _Collector) -> None:
    deps = build["predicate"]["buildDefinition"].get("resolvedDependencies", [])
    checked = 0
    for dep in deps:
        role = dep.get("annotations", {}).get("role")
        if role not in {"template", "provisioner", "test-suite"}:
            continue
        rel = str(dep.get("name"))
        path = repo / rel
        if not path.is_file():
            out.fail(f"dependency {rel}", f"{role} file {rel} is missing from {repo}")
            continue
        actual = sha256_file(path)
        if actual != _dep_digest(dep):
            out.fail(
                f"dependency {rel}",
                f"{role} file {rel} differs: sha256 {actual} in {repo}, "
                f"attested {_dep_digest(dep)}",
            )
        else:
            checked += 1
    out.ok("dependencies", f"{checked} template/provisioner/test files match their digests")


def _git_head(repo: Path) -> str | None:
    try:
        result = run(["git", "-C", str(repo), "rev-parse", "HEAD"], env=child_env(), timeout=10)
    except FactoryError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _bare_digest(value: str | None) -> str | None:
    """Digests are tagged `sha256:<hex>` but attested as bare hex: compare the hex."""
    return value.removeprefix("sha256:") if value is not None else None


def _check_tags(
    expected: Mapping[str, str], image_tags: Mapping[str, str], out: _Collector
) -> None:
    bad = 0
    for key, value in sorted(expected.items()):
        actual = image_tags.get(key)
        if _bare_digest(actual) != _bare_digest(value):
            bad += 1
            out.fail(f"tag {key}", f"tag {key} is {actual!r} but the attestation says {value!r}")
    if not bad:
        out.ok("tags", f"{len(expected)} factory tags match the attestation")


def _check_chain(
    clients: AwsClients,
    build: Mapping[str, Any],
    keys: TrustedKeys,
    out: _Collector,
    chain: list[str],
) -> None:
    """Follow the source-ami dependency up to the root base image (one without attestation)."""
    current = build
    for depth in range(MAX_CHAIN):
        deps = current["predicate"]["buildDefinition"].get("resolvedDependencies", [])
        source = next(
            (d for d in deps if d.get("annotations", {}).get("role") == "source-ami"), None
        )
        if source is None:
            out.fail("chain", f"{chain[-1]}: the attestation names no source image")
            return
        parent_id = str(source.get("name"))
        chain.append(parent_id)
        label = f"chain: {parent_id}"
        image = describe_image(clients, parent_id)
        attested = _dep_digest(source)
        identity = identity_of(image) if image is not None else None
        if identity is None:
            out.warnings.append(
                f"source image {parent_id} no longer exists; checked its attestation only"
            )
        elif attested != identity.digest:
            out.fail(
                label,
                f"source image {parent_id} is not the attested one (identity digest "
                f"{identity.digest}, attested {attested})",
            )
        annotations = source.get("annotations", {})
        uri = annotations.get("attestation_uri")
        if not uri:
            out.ok("chain", f"root base image {parent_id} reached after {depth + 1} step(s)")
            return
        try:
            lines = read_envelopes(clients, str(uri))
        except FactoryError as exc:
            out.fail(label, f"parent attestation unreadable: {exc.message}")
            return
        wanted = annotations.get("attestation_digest")
        digests = [_sha(line) for line, _ in lines]
        if wanted not in digests:
            out.fail(
                label,
                f"parent attestation {uri} no longer contains the attested line "
                f"(sha256 {wanted}): it was changed",
            )
            return
        upto = lines[: digests.index(wanted) + 1]
        sub = _Collector()
        parent_build, parent_verification = _check_steps(
            parent_id, upto, keys=keys, identity=identity, out=sub, prefix=f"{parent_id} "
        )
        failures = [c for c in sub.checks if not c.ok]
        for failure in failures:
            out.fail(label, failure.detail)
        if parent_verification is None:
            out.fail(label, f"parent {parent_id} had no passing verification before it was used")
        elif not failures:
            out.ok(label, "parent attestation signed, matches the image, tests passed")
        if parent_build is None:
            return
        current = parent_build
    out.fail("chain", f"lineage deeper than {MAX_CHAIN} images; stopped")


def verify_provenance(
    clients: AwsClients,
    ami_id: str,
    *,
    repo: Path,
    public_key: ec.EllipticCurvePublicKey | None = None,
    key_file: Path | None = None,
) -> ProvenanceReport:
    """Check the AMI's attestations: signatures, subject, tags, files, chain, tests."""
    out = _Collector()
    image = describe_image(clients, ami_id)
    if image is None:
        raise ConfigError(f"image {ami_id} not found in {clients.region}; check the id and region")
    image_tags = tags_dict(image.get("Tags"))
    identity = identity_of(image)
    expected_uri = (
        f"s3://{default_bucket(clients)}/{object_key(clients.account_id, clients.region, ami_id)}"
    )
    uri = image_tags.get(T.PROVENANCE_URI)
    if not uri:
        out.fail(f"tag {T.PROVENANCE_URI}", f"missing; looking at the default {expected_uri}")
        uri = expected_uri
    elif not uri.endswith(f"/{ami_id}.intoto.jsonl"):
        out.fail(f"tag {T.PROVENANCE_URI}", f"{uri} is not this image's attestation file")
    try:
        lines = read_envelopes(clients, uri)
    except FactoryError as exc:
        out.fail("attestation", exc.message)
        return _report(ami_id, clients, uri, out, [ami_id])
    if not lines:
        out.fail("attestation", f"{uri} is empty")
        return _report(ami_id, clients, uri, out, [ami_id])
    keys = TrustedKeys(clients, public_key, key_file)
    build, verification = _check_steps(
        ami_id, lines, keys=keys, identity=identity, out=out, prefix=""
    )
    latest = _sha(lines[-1][0])
    if image_tags.get(T.PROVENANCE_DIGEST) != latest:
        out.fail(
            f"tag {T.PROVENANCE_DIGEST}",
            f"tag is {image_tags.get(T.PROVENANCE_DIGEST)!r} but the newest attestation line "
            f"is sha256 {latest}",
        )
    else:
        out.ok(f"tag {T.PROVENANCE_DIGEST}", "matches the newest attestation line")
    chain = [ami_id]
    if build is None:
        out.fail("build", "no validly signed build attestation")
        return _report(ami_id, clients, uri, out, chain)
    _check_tags(_tag_expectations(build, verification), image_tags, out)
    _check_files(build, repo, out)
    attested_commit = _tag_expectations(build, None).get(T.GIT_COMMIT)
    head = _git_head(repo)
    if attested_commit and head and head != attested_commit:
        out.warnings.append(
            f"{repo} is at commit {head[:12]}, the image was built from {attested_commit[:12]}"
        )
    _check_chain(clients, build, keys, out, chain)
    _check_tests(clients, verification, image_tags, out)
    return _report(ami_id, clients, uri, out, chain)


def _report(
    ami_id: str, clients: AwsClients, uri: str | None, out: _Collector, chain: list[str]
) -> ProvenanceReport:
    ok = all(c.ok for c in out.checks)
    return ProvenanceReport(
        ami_id, clients.region, uri, ok, tuple(out.checks), tuple(out.warnings), tuple(chain)
    )


def trusted_public_key(path: Path | None) -> ec.EllipticCurvePublicKey | None:
    if path is None:
        return None
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror}") from None
    return load_public_key(pem, str(path))


# ---- what happens to an image after each step: every build and verification is attested ------


@dataclass(frozen=True)
class ProvenanceRecord:
    ami_id: str
    step: str  # build | verification
    uri: str
    envelope_digest: str


def attest_build(
    config: FactoryConfig,
    clients: AwsClients,
    ami_ids: Sequence[str],
    facts: BuildFacts,
    progress: Progress,
) -> tuple[ProvenanceRecord, ...]:
    """Sign and store the build attestation of every AMI a build made."""
    signer = signer_from_config(config, clients)
    records = []
    for ami_id in ami_ids:
        attestation = record_build(clients, signer, ami_id, facts, bucket=config.provenance.bucket)
        progress.info(f"{ami_id}: build provenance signed and stored at {attestation.uri}")
        records.append(ProvenanceRecord(ami_id, "build", attestation.uri, attestation.digest))
    return tuple(records)


def attest_verifications(
    config: FactoryConfig,
    clients: AwsClients,
    results: Sequence[VerifyResult],
    progress: Progress,
) -> tuple[ProvenanceRecord, ...]:
    """Append a verification attestation for each image whose suite ran (passed or failed)."""
    records = []
    signer = None
    for r in results:
        if r.tagged_status is None or r.junit_path is None or r.result_sha256 is None:
            continue  # the suite never ran (launch or SSH error) or the image is not ours
        signer = signer or signer_from_config(config, clients)
        try:
            attestation = record_verification(
                clients,
                signer,
                r.ami_id,
                r.result_sha256,
                r.junit_path,
                passed=r.ok,
                suite_digest=r.suite_digest,
                summary_path=r.summary_path,
                bucket=config.provenance.bucket,
            )
        except ConfigError as exc:  # an image built without provenance: nothing to extend
            progress.warn(f"{r.ami_id}: verification not attested: {exc}")
            continue
        progress.info(f"{r.ami_id}: verification provenance appended to {attestation.uri}")
        records.append(
            ProvenanceRecord(r.ami_id, "verification", attestation.uri, attestation.digest)
        )
    return tuple(records)
