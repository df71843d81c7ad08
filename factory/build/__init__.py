"""`factory build`: render a family, run the real Packer, tag what it made.

`gather_build` reads the facts (render, resolve the parent image, look for a reusable AMI with
the same dedupe key: `gather`), `plan_build` turns them into a `BuildPlan` (pure: `plan`), and
`apply_build` writes the build dir, runs Packer, reads the AMI ids from the manifest and tags
AMIs and snapshots `candidate` (`apply`); a failed or interrupted Packer run is followed by a
sweep of whatever still carries the build's tag (`sweep`). `build_and_verify` is the chain
`factory build --verify` and the nightly pipeline share (`chain`); `validate_family` is
`factory validate` (`validate`).
"""

from __future__ import annotations

from factory.build.apply import (
    LOG_FILE,
    MANIFEST_FILE,
    RESULT_FILE,
    TEMPLATE_FILE,
    VAR_FILE,
    BuildResult,
    BuiltImage,
    apply_build,
    require_built,
    tag_candidates,
    write_build_dir,
)
from factory.build.chain import (
    AwsWorkers,
    VerifiedBuild,
    VerifyWhen,
    Workers,
    attest,
    build_and_verify,
    build_facts,
)
from factory.build.gather import (
    BuildInputs,
    NoVerifiedParent,
    ParentImage,
    ProvisionerFile,
    dedupe_key,
    find_reusable,
    gather_build,
    provisioner_files,
    resolve_parent,
)
from factory.build.plan import BuildPlan, new_build_id, plan_build, var_file_text
from factory.build.sweep import SweepReport, sweep_build
from factory.build.validate import ValidateResult, validate_family

__all__ = [
    "LOG_FILE",
    "MANIFEST_FILE",
    "RESULT_FILE",
    "TEMPLATE_FILE",
    "VAR_FILE",
    "AwsWorkers",
    "BuildInputs",
    "BuildPlan",
    "BuildResult",
    "BuiltImage",
    "NoVerifiedParent",
    "ParentImage",
    "ProvisionerFile",
    "SweepReport",
    "ValidateResult",
    "VerifiedBuild",
    "VerifyWhen",
    "Workers",
    "apply_build",
    "attest",
    "build_and_verify",
    "build_facts",
    "dedupe_key",
    "find_reusable",
    "gather_build",
    "new_build_id",
    "plan_build",
    "provisioner_files",
    "require_built",
    "resolve_parent",
    "sweep_build",
    "tag_candidates",
    "validate_family",
    "var_file_text",
    "write_build_dir",
]
