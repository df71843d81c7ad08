"""`provenance show`: an image's attested steps and lineage, as values (the CLI renders them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from factory import tags as T
from factory.aws import AwsClients, images
from factory.errors import ConfigError
from factory.provenance.signing import Envelope
from factory.provenance.statements import MAX_CHAIN, sha256_text, stage_of
from factory.provenance.store import default_uri, read_envelopes


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


def step_view(index: int, line: str, envelope: Envelope | None) -> StepView:
    """One line of the attestation file as a step ("unreadable" when it is no envelope)."""
    if envelope is None:
        return StepView(index, "unreadable", None, "", {}, {}, {}, (), (), sha256_text(line))
    statement = envelope.statement()
    predicate = statement.get("predicate", {})
    definition = predicate.get("buildDefinition", {})
    run = predicate.get("runDetails", {})
    return StepView(
        index=index,
        stage=stage_of(statement),
        at=run.get("metadata", {}).get("finishedOn"),
        keyid=envelope.signatures[0][0] if envelope.signatures else "",
        subject=(statement.get("subject") or [{}])[0],
        builder=run.get("builder", {}),
        external_parameters=definition.get("externalParameters", {}),
        dependencies=tuple(definition.get("resolvedDependencies", [])),
        byproducts=tuple(run.get("byproducts", [])),
        digest=sha256_text(line),
    )


def show_provenance(clients: AwsClients, ami_id: str) -> ProvenanceView:
    """The steps in the image's attestation file and its ancestors by their tags."""
    image = images.get(clients, ami_id)
    if image is None:
        raise ConfigError(f"image {ami_id} not found in {clients.region}")
    uri = image.tags.get(T.PROVENANCE_URI) or default_uri(clients, ami_id)
    steps = tuple(
        step_view(i, line, envelope)
        for i, (line, envelope) in enumerate(read_envelopes(clients, uri))
    )
    ancestors: list[str] = []
    current = image.parent
    while current and current not in ancestors and len(ancestors) < MAX_CHAIN:
        ancestors.append(current)
        parent = images.get(clients, current)
        current = parent.parent if parent is not None else None
    return ProvenanceView(ami_id, clients.region, uri, steps, tuple(ancestors))
