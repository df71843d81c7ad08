"""CLI commands: `factory provenance show|verify|keygen|public-key`."""

from __future__ import annotations

from pathlib import Path

import click

from factory.cli.context import CliContext, output_option, pass_cli
from factory.errors import VerificationError
from factory.provenance import (
    ProvenanceReport,
    ProvenanceView,
    configured_key_file,
    create_key_file,
    export_public_key,
    show_provenance,
    trusted_public_key,
    verify_provenance,
)


@click.group("provenance")
def provenance_group() -> None:
    """Signed provenance (in-toto / SLSA v1, DSSE): show it, verify it, manage keys."""


def _dep_line(dep: dict[str, object]) -> str:
    annotations = dep.get("annotations") or {}
    role = annotations.get("role", "") if isinstance(annotations, dict) else ""
    digest = dep.get("digest") or {}
    value = next(iter(digest.values()), "") if isinstance(digest, dict) else ""
    return f"      {role:<12} {dep.get('name')}  {str(value)[:16]}"


def render_view(view: ProvenanceView) -> str:
    lines = [f"{view.ami_id} ({view.region})", f"  attestations: {view.uri}"]
    if view.ancestors:
        lines.append("  lineage: " + " <- ".join((view.ami_id, *view.ancestors)))
    for step in view.steps:
        lines.append(f"  [{step.index + 1}] {step.stage}  {step.at or '?'}  signed by {step.keyid}")
        lines.append(f"      envelope sha256 {step.digest}")
        if step.stage == "build":
            params = step.external_parameters
            lines.append(
                f"      family {params.get('family')} version {params.get('version')} "
                f"from {params.get('source_ami')}"
            )
            version = step.builder.get("version", {})
            lines.append(f"      builder {version}")
            lines += [_dep_line(dict(d)) for d in step.dependencies]
        for product in step.byproducts:
            notes = product.get("annotations") or {}
            lines.append(f"      byproduct {product.get('name')}  {notes}")
    return "\n".join(lines)


@provenance_group.command("show")
@click.argument("ami_id")
@output_option
@pass_cli
def provenance_show(ctx: CliContext, ami_id: str) -> None:
    """AMI_ID's attested steps (build, verification, promotion) and lineage."""
    view = show_provenance(ctx.clients(), ami_id)
    ctx.emit(view, render_view(view))


def render_report(report: ProvenanceReport) -> str:
    lines = [f"{report.ami_id} ({report.region}): {'VERIFIED' if report.ok else 'FAILED'}"]
    lines.append(f"  chain: {' <- '.join(report.chain)}")
    for check in report.checks:
        mark = "ok  " if check.ok else "FAIL"
        lines.append(
            f"  {mark} {check.name}: {check.detail}" if check.detail else f"  {mark} {check.name}"
        )
    lines += [f"  note {w}" for w in report.warnings]
    return "\n".join(lines)


@provenance_group.command("verify")
@click.argument("ami_id")
@click.option(
    "--public-key",
    "public_key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trust only this PEM public key (offline: no KMS call).",
)
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Repository to recompute file digests from (default: the config's root).",
)
@output_option
@pass_cli
def provenance_verify(
    ctx: CliContext, ami_id: str, public_key: Path | None, repo: Path | None
) -> None:
    """Check AMI_ID's signatures, subject, tags, files, lineage and tests; exit 1 on mismatch."""
    cfg = ctx.config
    key_file = configured_key_file(cfg)
    report = verify_provenance(
        ctx.clients(),
        ami_id,
        repo=(repo or cfg.root).resolve(),
        public_key=trusted_public_key(public_key),
        key_file=key_file,
    )
    ctx.emit(report, render_report(report))
    if not report.ok:
        raise VerificationError(
            f"provenance of {ami_id} does not verify: "
            + "; ".join(c.detail for c in report.failures[:3])
            + (f" (and {len(report.failures) - 3} more)" if len(report.failures) > 3 else "")
        )


@provenance_group.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@output_option
@pass_cli
def provenance_keygen(ctx: CliContext, path: Path) -> None:
    """Create an ECDSA P-256 signing key file at PATH (set [provenance] key_file to use it)."""
    key = create_key_file(path)
    ctx.emit(key, f"wrote {key.path} ({key.keyid})\n{key.public_key_pem}")


@provenance_group.command("public-key")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the PEM here (default: stdout).",
)
@output_option
@pass_cli
def provenance_public_key(ctx: CliContext, out: Path | None) -> None:
    """The configured signer's public key (KMS or key file), for offline `verify --public-key`."""
    key = export_public_key(ctx.config, ctx.clients(), out)
    ctx.emit(key, f"wrote {key.path} ({key.keyid})" if out else key.public_key_pem.rstrip())


COMMANDS: list[click.Command] = [provenance_group]
