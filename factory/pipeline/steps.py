"""The stages a nightly run drives for one family: the build chain as the family's plan says,
and publishing to a channel. `AwsSteps` runs the real ones; tests substitute fakes for Packer
and the test instance (`build`, `verify_images`) and keep the rest real.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from factory.aws import AwsClients
from factory.build import (
    AwsWorkers,
    BuildPlan,
    BuildResult,
    VerifiedBuild,
    VerifyWhen,
    build_and_verify,
    gather_build,
    plan_build,
)
from factory.channels import ChannelChange, set_channel
from factory.config import FactoryConfig
from factory.output import Progress
from factory.pipeline.plan import FamilyPlan

if TYPE_CHECKING:
    from factory.verify import VerifyResult


@dataclass(frozen=True)
class ChannelMove:
    channel: str
    ami_id: str
    previous_ami: str | None
    changed: bool
    version: int | None


class Steps(Protocol):
    """What a run does for one family."""

    def build_and_verify(self, family: FamilyPlan) -> VerifiedBuild: ...

    def publish(self, family: str, channel: str, ami_id: str, reason: str) -> ChannelMove: ...


@dataclass
class AwsSteps:
    """The stages as `factory build --verify` and `factory channel set` run them."""

    config: FactoryConfig
    clients: AwsClients
    progress: Progress
    provenance: bool = True

    def plan_build(self, family: FamilyPlan) -> BuildPlan:
        """The family's build plan from the inputs the nightly plan holds, or, for a family
        that builds on a parent built tonight, from its inputs gathered now."""
        inputs = family.inputs or gather_build(self.config, self.clients, family.family, {})
        return plan_build(inputs, now=datetime.now(UTC), rebuild=family.action == "rebuild")

    def build(self, plan: BuildPlan) -> BuildResult:
        return AwsWorkers(self.config, self.clients, self.progress).build(plan)

    def verify_images(self, ami_ids: Sequence[str]) -> Sequence[VerifyResult]:
        return AwsWorkers(self.config, self.clients, self.progress).verify_images(ami_ids)

    def build_and_verify(self, family: FamilyPlan) -> VerifiedBuild:
        """Build (or reuse) as planned, attest, verify unless already verified, attest."""
        return build_and_verify(
            self.config,
            self.clients,
            self.plan_build(family),
            self.progress,
            verify=VerifyWhen.UNVERIFIED,
            provenance=self.provenance,
            workers=self,
        )

    def publish(self, family: str, channel: str, ami_id: str, reason: str) -> ChannelMove:
        change = set_channel(
            self.clients, self.config.channels, family, channel, ami_id, reason=reason
        )
        if not isinstance(change, ChannelChange):  # only a dry run returns the plan
            raise TypeError("set_channel returned a plan")
        return ChannelMove(
            channel, change.ami_id, change.previous_ami, change.changed, change.version
        )
