"""`factory validate`: render a family and let `packer validate` check it, with Packer's errors
pointed at the template's own lines. Nothing in AWS is read or changed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.build.apply import TEMPLATE_FILE, VAR_FILE
from factory.build.gather import provisioner_files
from factory.config import FactoryConfig
from factory.packer import (
    PACKER,
    detect_version,
    error_lines,
    map_error_lines,
    packer_env,
    run_init,
    validate_argv,
)
from factory.process import run
from factory.render import RenderSettings, hcl, load_family, render, resolve_variables


@dataclass(frozen=True)
class ValidateResult:
    family: str
    valid: bool
    template_digest: str
    packer_version: str
    errors: tuple[str, ...]


# what a real build passes as Packer variables, for a template that needs them set
VALIDATE_PLACEHOLDERS = {
    "build_id": "validate",
    "version": "0",
    "ami_name": "validate",
    "source_ami": "ami-00000000000000000",
}


def validate_family(
    config: FactoryConfig,
    family_name: str,
    given: Mapping[str, Any],
    *,
    region: str,
    endpoint: str | None,
    credentials: Mapping[str, str] | None = None,
    packer: str = PACKER,
) -> ValidateResult:
    """Render and `packer validate`, with Packer's errors pointed at the template's own lines."""
    family = load_family(config.templates_dir, family_name)
    variables = resolve_variables(family, given)
    version = detect_version(packer)
    rendered = render(
        family, variables, RenderSettings(version.plugins, endpoint is not None, region)
    )
    files = provisioner_files(config.provisioners_dir, family.provisioners)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="validate-", dir=config.state_dir) as tmp:
        work = Path(tmp)
        (work / TEMPLATE_FILE).write_text(rendered.hcl)
        values: dict[str, Any] = {**VALIDATE_PLACEHOLDERS, "image_tags": {}, "run_tags": {}}
        if endpoint:
            values["endpoint"] = endpoint
        (work / VAR_FILE).write_text("".join(f"{k} = {hcl(v)}\n" for k, v in values.items()))
        for file in files:
            target = work / "provisioners" / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(config.provisioners_dir / file.path, target)
        env = packer_env(credentials or {})
        if version.plugins:
            run_init(work / TEMPLATE_FILE, env=env, cwd=work, packer=packer)
        result = run(
            validate_argv(work / TEMPLATE_FILE, work / VAR_FILE, packer),
            env=env,
            cwd=work,
            timeout=300,
        )
        errors: list[str] = []
        if result.returncode != 0:
            raw = error_lines((), result.stderr, result.stdout)
            errors = [line.replace(str(work) + "/", "") for line in raw]
            errors = map_error_lines(errors, rendered.template_line)
    return ValidateResult(
        family.name, result.returncode == 0, rendered.digest, version.text, tuple(errors)
    )
