"""`provenance verify`: recompute everything an attestation claims and name each difference.

Checked: every line's signature and subject (the image as it is now), the `factory:` tags
against the build and verification lines, the template/provisioner/test files against the
repository, the parent chain up to the root base image, and the stored test results. Each
check is a value (`Check`); the report is the list of them, rendered by the CLI.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from factory import tags as T
from factory.aws import AwsClients, images
from factory.aws.model import Image, ImageIdentity
from factory.errors import ConfigError, FactoryError
from factory.process import child_env, run
from factory.provenance.signing import PAYLOAD_TYPE, Envelope, TrustedKeys, verify_envelope
from factory.provenance.statements import (
    FILE_ROLES,
    MAX_CHAIN,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    Stage,
    byproducts_of,
    dependency_digest,
    sha256_file,
    sha256_text,
    stage_of,
)
from factory.provenance.store import default_uri, junit_summary, read_envelopes, read_object

Lines = list[tuple[str, Envelope | None]]


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
class _Findings:
    """The checks and notes gathered so far (mutable while checking, frozen in the report)."""

    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def ok(self, name: str, detail: str = "") -> None:
        self.checks.append(Check(name, True, detail))

    def fail(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, False, detail))

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


@dataclass(frozen=True)
class _Steps:
    """The newest validly signed build and verification lines of an attestation file."""

    build: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None


# ---- what a line says -------------------------------------------------------------------------


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
    """The `factory:` tags the build (and verification) lines say the image carries."""
    pred = build["predicate"]
    params = pred["buildDefinition"]["externalParameters"]
    run_details = pred["runDetails"]
    versions = run_details.get("builder", {}).get("version", {})
    expected = {
        T.FAMILY: params.get("family"),
        T.VERSION: params.get("version"),
        T.SOURCE_AMI: params.get("source_ami"),
        T.TEMPLATE_DIGEST: params.get("template_digest"),
        T.BUILD_ID: run_details.get("metadata", {}).get("invocationId"),
        T.PACKER_VERSION: versions.get("packer"),
        T.FACTORY_VERSION: versions.get("ami-factory"),
    }
    for dep in pred["buildDefinition"].get("resolvedDependencies", []):
        if dep.get("name") == "git":
            expected[T.GIT_COMMIT] = dep.get("digest", {}).get("gitCommit")
            expected[T.GIT_DIRTY] = "true" if dep.get("annotations", {}).get("dirty") else "false"
    if verification is not None:
        for product in byproducts_of(verification):
            if product.get("name") == "verify-result":
                expected[T.RESULT_DIGEST] = dependency_digest(product)
                expected[T.SUITE_DIGEST] = product.get("annotations", {}).get("suite_digest")
    return {k: str(v) for k, v in expected.items() if v is not None}


# ---- signatures and subjects ------------------------------------------------------------------


def _check_subject(
    label: str,
    statement: Mapping[str, Any],
    ami_id: str,
    identity: ImageIdentity,
    out: _Findings,
) -> None:
    subject = (statement.get("subject") or [{}])[0]
    attested = subject.get("digest", {}).get("sha256")
    if attested == identity.digest:
        out.ok(f"{label}: subject", f"sha256:{identity.digest[:16]}…")
        return
    diffs = _identity_diff(subject.get("annotations", {}), identity)
    out.fail(
        f"{label}: subject",
        f"attested image identity differs from {ami_id} as it is now: "
        + ("; ".join(diffs) or f"digest {attested} != {identity.digest}"),
    )


def _check_line(
    name: str,
    envelope: Envelope | None,
    ami_id: str,
    keys: TrustedKeys,
    identity: ImageIdentity | None,
    out: _Findings,
) -> dict[str, Any] | None:
    """One line's envelope, signature, subject and type; its Statement if validly signed."""
    if envelope is None:
        out.fail(f"{name}: envelope", "not a valid DSSE envelope (edited?)")
        return None
    if envelope.payload_type != PAYLOAD_TYPE:
        out.fail(f"{name}: envelope", f"payloadType {envelope.payload_type!r}, not {PAYLOAD_TYPE}")
    problem = verify_envelope(envelope, keys.for_keyids([k for k, _ in envelope.signatures]))
    try:
        statement = envelope.statement()
    except ValueError:
        out.fail(f"{name}: payload", "payload is not JSON")
        return None
    label = f"{name} ({stage_of(statement) or '?'})"
    if problem:
        out.fail(f"{label}: signature", problem)
    else:
        out.ok(f"{label}: signature", f"signed by {envelope.signatures[0][0]}")
    if identity is not None:
        _check_subject(label, statement, ami_id, identity, out)
    if (statement.get("_type"), statement.get("predicateType")) != (
        STATEMENT_TYPE,
        PREDICATE_TYPE,
    ):
        out.fail(f"{name}: statement", "not an in-toto v1 Statement with a SLSA v1 predicate")
        return None
    return None if problem else statement


def _check_steps(
    ami_id: str,
    lines: Lines,
    *,
    keys: TrustedKeys,
    identity: ImageIdentity | None,
    out: _Findings,
    prefix: str,
) -> _Steps:
    """Signatures and subjects of every line; the newest signed build and verification."""
    build: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    for i, (_line, envelope) in enumerate(lines):
        statement = _check_line(f"{prefix}line {i + 1}", envelope, ami_id, keys, identity, out)
        if statement is None:
            continue
        stage = stage_of(statement)
        if stage == Stage.BUILD:
            build = statement
        elif stage == Stage.VERIFICATION:
            verification = statement
    return _Steps(build, verification)


# ---- tests, tags, files -----------------------------------------------------------------------


def _stored_reports_match(
    clients: AwsClients, products: Mapping[Any, Mapping[str, Any]], out: _Findings
) -> bytes | None:
    """The stored JUnit report if it (and verify's stored result) are what was attested."""
    junit = products["junit.xml"]
    stored_result = products.get("verify-result", {}).get("uri")
    if stored_result:
        body = read_object(clients, str(stored_result))
        wanted = dependency_digest(products["verify-result"])
        if body is None or hashlib.sha256(body).hexdigest() != wanted:
            out.fail("tests: result", f"verify result {stored_result} is missing or changed")
            return None
    report = read_object(clients, str(junit["uri"]))
    if report is None:
        out.fail("tests: junit", f"JUnit report {junit['uri']} is missing")
        return None
    digest = hashlib.sha256(report).hexdigest()
    if digest != dependency_digest(junit):
        out.fail(
            "tests: junit",
            f"JUnit report {junit['uri']} changed: sha256 {digest}, "
            f"attested {dependency_digest(junit)}",
        )
        return None
    return report


def _check_tests(
    clients: AwsClients,
    verification: Mapping[str, Any] | None,
    image: Image,
    out: _Findings,
) -> None:
    """A signed passing verification whose stored JUnit report matches, on a verified image."""
    if verification is None:
        out.fail("tests", "no signed verification attestation: the image has not passed its tests")
        return
    products = {p.get("name"): p for p in byproducts_of(verification)}
    result = products.get("verify-result", {}).get("annotations", {}).get("result")
    if result != "passed":
        out.fail("tests", f"the signed verification result is {result!r}, not 'passed'")
        return
    if not products.get("junit.xml", {}).get("uri"):
        out.fail("tests", "the verification attestation names no JUnit report")
        return
    report = _stored_reports_match(clients, products, out)
    if report is None:
        return
    try:
        summary = junit_summary(report)
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
    status = image.tags.get(T.STATUS)
    if image.revoked:
        out.fail("tests: status", f"the image is revoked: {image.tags.get(T.REVOKED_REASON, '')}")
    elif status != T.Status.VERIFIED.value:
        out.fail("tests: status", f"tag {T.STATUS} is {status!r}, not 'verified'")
    else:
        out.ok("tests", f"{summary.tests} tests passed ({summary.skipped} skipped), JUnit matches")


def _check_files(build: Mapping[str, Any], repo: Path, out: _Findings) -> None:
    """Every template, provisioner and test file the build read, against the repository."""
    deps = build["predicate"]["buildDefinition"].get("resolvedDependencies", [])
    checked = 0
    for dep in deps:
        role = dep.get("annotations", {}).get("role")
        if role not in FILE_ROLES:
            continue
        rel = str(dep.get("name"))
        path = repo / rel
        if not path.is_file():
            out.fail(f"dependency {rel}", f"{role} file {rel} is missing from {repo}")
            continue
        actual = sha256_file(path)
        if actual != dependency_digest(dep):
            out.fail(
                f"dependency {rel}",
                f"{role} file {rel} differs: sha256 {actual} in {repo}, "
                f"attested {dependency_digest(dep)}",
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


def _check_tags(expected: Mapping[str, str], image_tags: Mapping[str, str], out: _Findings) -> None:
    """Each `factory:` tag the attestation names, as the image carries it now."""
    bad = 0
    for key, value in sorted(expected.items()):
        actual = image_tags.get(key)
        if _bare_digest(actual) != _bare_digest(value):
            bad += 1
            out.fail(f"tag {key}", f"tag {key} is {actual!r} but the attestation says {value!r}")
    if not bad:
        out.ok("tags", f"{len(expected)} factory tags match the attestation")


# ---- the parent chain -------------------------------------------------------------------------


def _source_image(statement: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deps = statement["predicate"]["buildDefinition"].get("resolvedDependencies", [])
    return next((d for d in deps if d.get("annotations", {}).get("role") == "source-ami"), None)


def _parent_lines(
    clients: AwsClients, parent_id: str, source: Mapping[str, Any], out: _Findings
) -> Lines | None:
    """The parent's attestation file up to the line the child attested; None if unusable."""
    label = f"chain: {parent_id}"
    annotations = source.get("annotations", {})
    uri = str(annotations.get("attestation_uri"))
    try:
        lines = read_envelopes(clients, uri)
    except FactoryError as exc:  # missing, not an s3:// URI, not readable: a failed check
        out.fail(label, f"parent attestation unreadable: {exc.message}")
        return None
    wanted = annotations.get("attestation_digest")
    digests = [sha256_text(line) for line, _ in lines]
    if wanted not in digests:
        out.fail(
            label,
            f"parent attestation {uri} no longer contains the attested line "
            f"(sha256 {wanted}): it was changed",
        )
        return None
    return lines[: digests.index(wanted) + 1]


def _check_parent(
    clients: AwsClients,
    parent_id: str,
    source: Mapping[str, Any],
    keys: TrustedKeys,
    out: _Findings,
) -> tuple[bool, dict[str, Any] | None]:
    """One link: the parent image and its attestation; (root reached, parent's build line)."""
    label = f"chain: {parent_id}"
    image = images.get(clients, parent_id)
    attested = dependency_digest(source)
    identity = image.identity if image is not None else None
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
    if not source.get("annotations", {}).get("attestation_uri"):
        return True, None
    lines = _parent_lines(clients, parent_id, source, out)
    if lines is None:
        return False, None
    sub = _Findings()
    steps = _check_steps(
        parent_id, lines, keys=keys, identity=identity, out=sub, prefix=f"{parent_id} "
    )
    for failure in sub.failures:
        out.fail(label, failure.detail)
    if steps.verification is None:
        out.fail(label, f"parent {parent_id} had no passing verification before it was used")
    elif not sub.failures:
        out.ok(label, "parent attestation signed, matches the image, tests passed")
    return False, steps.build


def _check_chain(
    clients: AwsClients,
    build: Mapping[str, Any],
    keys: TrustedKeys,
    out: _Findings,
    chain: list[str],
) -> None:
    """Follow the source-ami dependency up to the root base image (one without attestation)."""
    current = build
    for depth in range(MAX_CHAIN):
        source = _source_image(current)
        if source is None:
            out.fail("chain", f"{chain[-1]}: the attestation names no source image")
            return
        parent_id = str(source.get("name"))
        chain.append(parent_id)
        root, parent_build = _check_parent(clients, parent_id, source, keys, out)
        if root:
            out.ok("chain", f"root base image {parent_id} reached after {depth + 1} step(s)")
            return
        if parent_build is None:
            return
        current = parent_build
    out.fail("chain", f"lineage deeper than {MAX_CHAIN} images; stopped")


# ---- the whole check --------------------------------------------------------------------------


def _attestation_uri(image: Image, clients: AwsClients, out: _Findings) -> str:
    """The file the image's tag names (a failed check, and the default place, if it names none)."""
    uri = image.tags.get(T.PROVENANCE_URI)
    if not uri:
        expected = default_uri(clients, image.ami_id)
        out.fail(f"tag {T.PROVENANCE_URI}", f"missing; looking at the default {expected}")
        return expected
    if not uri.endswith(f"/{image.ami_id}.intoto.jsonl"):
        out.fail(f"tag {T.PROVENANCE_URI}", f"{uri} is not this image's attestation file")
    return uri


def _check_newest_line(image: Image, lines: Lines, out: _Findings) -> None:
    latest = sha256_text(lines[-1][0])
    tagged = image.tags.get(T.PROVENANCE_DIGEST)
    if tagged != latest:
        out.fail(
            f"tag {T.PROVENANCE_DIGEST}",
            f"tag is {tagged!r} but the newest attestation line is sha256 {latest}",
        )
    else:
        out.ok(f"tag {T.PROVENANCE_DIGEST}", "matches the newest attestation line")


def _check_build(
    clients: AwsClients,
    image: Image,
    build: Mapping[str, Any],
    verification: Mapping[str, Any] | None,
    keys: TrustedKeys,
    repo: Path,
    out: _Findings,
    chain: list[str],
) -> None:
    """With a signed build line: tags, files, the commit, the parent chain, the tests."""
    _check_tags(_tag_expectations(build, verification), image.tags, out)
    _check_files(build, repo, out)
    attested_commit = _tag_expectations(build, None).get(T.GIT_COMMIT)
    head = _git_head(repo)
    if attested_commit and head and head != attested_commit:
        out.warnings.append(
            f"{repo} is at commit {head[:12]}, the image was built from {attested_commit[:12]}"
        )
    _check_chain(clients, build, keys, out, chain)
    _check_tests(clients, verification, image, out)


def verify_provenance(
    clients: AwsClients,
    ami_id: str,
    *,
    repo: Path,
    public_key: ec.EllipticCurvePublicKey | None = None,
    key_file: Path | None = None,
) -> ProvenanceReport:
    """Check the AMI's attestations: signatures, subject, tags, files, chain, tests."""
    out = _Findings()
    chain = [ami_id]
    image = images.get(clients, ami_id)
    if image is None:
        raise ConfigError(f"image {ami_id} not found in {clients.region}; check the id and region")
    uri = _attestation_uri(image, clients, out)
    try:
        lines = read_envelopes(clients, uri)
    except FactoryError as exc:  # missing, not an s3:// URI, not readable: a failed check
        out.fail("attestation", exc.message)
        return _report(ami_id, clients, uri, out, chain)
    if not lines:
        out.fail("attestation", f"{uri} is empty")
        return _report(ami_id, clients, uri, out, chain)
    keys = TrustedKeys(clients, public_key, key_file)
    steps = _check_steps(ami_id, lines, keys=keys, identity=image.identity, out=out, prefix="")
    _check_newest_line(image, lines, out)
    if steps.build is None:
        out.fail("build", "no validly signed build attestation")
    else:
        _check_build(clients, image, steps.build, steps.verification, keys, repo, out, chain)
    return _report(ami_id, clients, uri, out, chain)


def _report(
    ami_id: str, clients: AwsClients, uri: str | None, out: _Findings, chain: list[str]
) -> ProvenanceReport:
    ok = all(c.ok for c in out.checks)
    return ProvenanceReport(
        ami_id, clients.region, uri, ok, tuple(out.checks), tuple(out.warnings), tuple(chain)
    )
