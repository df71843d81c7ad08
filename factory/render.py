"""Render a family's Jinja templates into Packer HCL, with every value quoted for HCL.

A family is a folder `templates/FAMILY/` holding `*.pkr.hcl.j2` and a `family.toml` that
declares its variables (name, type, default, description), its source image (an owner-pinned
filter, or a parent family) and the provisioner folders it uploads. Jinja runs with
`StrictUndefined`, and a `finalize` hook refuses any `{{ ... }}` whose value did not go
through the `hcl` filter: a variable value can never inject HCL.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from factory.errors import ConfigError

FAMILY_FILE = "family.toml"
TEMPLATE_GLOB = "*.pkr.hcl.j2"
FAMILY_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
VAR_TYPES = ("string", "number", "bool", "list(string)", "map(string)")


class HclExpr(str):
    """Text already quoted for HCL (what the `hcl` filter returns)."""

    __slots__ = ()


def hcl_string(text: str) -> str:
    """A double-quoted HCL string: escapes, and `${`/`%{` doubled so nothing is interpolated."""
    out = ['"']
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    # HCL template sequences: `$${` and `%%{` are their literal escapes
    return "".join(out).replace("${", "$${").replace("%{", "%%{")


def hcl(value: Any) -> HclExpr:
    """Any renderable value as an HCL expression (strings quoted, maps/lists recursively)."""
    if isinstance(value, HclExpr):
        return value
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # StrictUndefined: raises UndefinedError
    if value is None:
        return HclExpr("null")
    if isinstance(value, bool):
        return HclExpr("true" if value else "false")
    if isinstance(value, int):
        return HclExpr(str(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"number {value} cannot be written to HCL; use a finite number")
        return HclExpr(repr(value))
    if isinstance(value, str):
        return HclExpr(hcl_string(value))
    if isinstance(value, Mapping):
        if not value:
            return HclExpr("{}")
        items = ", ".join(f"{hcl_string(str(k))} = {hcl(v)}" for k, v in value.items())
        return HclExpr("{ " + items + " }")
    if isinstance(value, (list, tuple)):
        return HclExpr("[" + ", ".join(hcl(v) for v in value) + "]")
    raise ConfigError(f"a {type(value).__name__} cannot be written to HCL")


# ---- families and their variables ---------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    name: str
    type: str
    default: Any
    description: str
    required: bool = False


@dataclass(frozen=True)
class SourceSpec:
    """Where a family's source image comes from: an owner-pinned filter, or a parent family."""

    owners: tuple[str, ...] = ()
    name: str | None = None
    parent: str | None = None


@dataclass(frozen=True)
class Family:
    name: str
    directory: Path
    description: str
    templates: tuple[Path, ...]
    variables: tuple[Variable, ...]
    source: SourceSpec
    provisioners: tuple[str, ...]  # folders under provisioners/ the build uploads
    ssh_username: str = "admin"

    def variable(self, name: str) -> Variable | None:
        return next((v for v in self.variables if v.name == name), None)


def check_family_name(name: str) -> str:
    if not FAMILY_NAME.match(name):
        raise ConfigError(
            f"invalid family name {name!r}: use lowercase letters, digits and dashes "
            "(a folder under templates/)"
        )
    return name


def list_families(templates_dir: Path) -> list[str]:
    if not templates_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in templates_dir.iterdir()
        if p.is_dir() and FAMILY_NAME.match(p.name) and any(p.glob(TEMPLATE_GLOB))
    )


def load_family(templates_dir: Path, name: str) -> Family:
    """The family `name` under `templates_dir`, or a one-line ConfigError."""
    check_family_name(name)
    directory = templates_dir / name
    templates = tuple(sorted(directory.glob(TEMPLATE_GLOB))) if directory.is_dir() else ()
    if not templates:
        known = ", ".join(list_families(templates_dir)) or "none"
        raise ConfigError(f"unknown family {name!r} in {templates_dir} (families: {known})")
    spec_file = directory / FAMILY_FILE
    doc: Mapping[str, Any] = {}
    if spec_file.is_file():
        try:
            doc = tomllib.loads(spec_file.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{spec_file}: not valid TOML ({exc}); fix the file") from None
    variables = []
    for var_name, table in (doc.get("variables") or {}).items():
        if not VAR_NAME.match(var_name) or not isinstance(table, Mapping):
            raise ConfigError(f"{spec_file}: bad variable {var_name!r}")
        var_type = str(table.get("type", "string"))
        if var_type not in VAR_TYPES:
            raise ConfigError(
                f"{spec_file}: variable {var_name} has type {var_type!r}; "
                f"use one of {', '.join(VAR_TYPES)}"
            )
        required = "default" not in table
        default = (
            None if required else _coerce(var_type, table["default"], var_name, str(spec_file))
        )
        variables.append(
            Variable(var_name, var_type, default, str(table.get("description", "")), required)
        )
    source = doc.get("source") or {}
    owners = tuple(str(o) for o in source.get("owners", ()))
    parent = source.get("parent")
    if parent is not None:
        check_family_name(str(parent))
    elif source and not (owners and source.get("name")):
        raise ConfigError(f"{spec_file}: [source] needs owners and name (or parent)")
    return Family(
        name=name,
        directory=directory,
        description=str(doc.get("description", "")),
        templates=templates,
        variables=tuple(variables),
        source=SourceSpec(owners, source.get("name"), str(parent) if parent else None),
        provisioners=tuple(str(p) for p in doc.get("provisioners", ())),
        ssh_username=str(doc.get("ssh_username", "admin")),
    )


def _coerce(  # noqa: PLR0912 - one branch per variable type
    var_type: str, value: Any, name: str, origin: str
) -> Any:
    """A value (from --var text, a var file or defaults) as the variable's type."""
    bad = ConfigError(f"{origin}: variable {name} must be a {var_type}, got {value!r}")
    if var_type == "string":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if var_type == "number":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise bad from None
            if not math.isfinite(number):
                raise bad
            return int(number) if number.is_integer() and "." not in value else number
        raise bad
    if var_type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad
    if var_type == "list(string)":
        if isinstance(value, str):
            value = _json_or(value, [s.strip() for s in value.split(",") if s.strip()])
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise bad
    if var_type == "map(string)":
        if isinstance(value, str):
            value = _json_or(value, None)
        if isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values()):
            return {str(k): v for k, v in value.items()}
        raise bad
    raise bad


def _json_or(text: str, fallback: Any) -> Any:
    if text.lstrip().startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return fallback
    return fallback


def parse_var_args(args: Sequence[str]) -> dict[str, str]:
    """`--var k=v` flags as a dict; a malformed one is a one-line ConfigError."""
    out: dict[str, str] = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        name = name.strip()
        if not sep or not VAR_NAME.match(name):
            raise ConfigError(f"malformed --var {arg!r}: use --var NAME=VALUE")
        out[name] = value
    return out


def load_var_file(path: Path) -> dict[str, Any]:
    """A var file: TOML (`name = value`) or JSON (an object)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"var file {path}: {exc.strerror}; pass a readable file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"var file {path}: not UTF-8 text; pass a TOML or JSON file") from None
    try:
        doc: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"var file {path}: not valid {path.suffix or 'TOML'} ({exc})") from None
    if not isinstance(doc, Mapping):
        raise ConfigError(f"var file {path}: must hold name = value pairs")
    return dict(doc)


def resolve_variables(
    family: Family, given: Mapping[str, Any], origin: str = "--var"
) -> dict[str, Any]:
    """Defaults overlaid with `given`; unknown names and missing required ones are errors."""
    values: dict[str, Any] = {v.name: v.default for v in family.variables if not v.required}
    for name, value in given.items():
        var = family.variable(name)
        if var is None:
            known = ", ".join(v.name for v in family.variables) or "none"
            raise ConfigError(
                f"unknown variable {name!r} for family {family.name} (variables: {known}); "
                f"see `factory render {family.name} --list-vars`"
            )
        values[name] = _coerce(var.type, value, name, origin)
    missing = [v.name for v in family.variables if v.required and v.name not in values]
    if missing:
        raise ConfigError(f"family {family.name} needs --var {missing[0]}=VALUE")
    return values


# ---- rendering ----------------------------------------------------------------------------


def _finalize(value: Any) -> Any:
    if isinstance(value, HclExpr):
        return value
    raise ConfigError(
        f"template prints {value!r} without the hcl filter; write {{{{ ... | hcl }}}}"
    )


def _environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
        autoescape=False,  # noqa: S701 - HCL, not HTML: the hcl filter quotes every value
    )
    env.filters["hcl"] = hcl
    return env


@dataclass(frozen=True)
class TemplateSpan:
    """Which rendered lines came from which template file (for mapping Packer's errors)."""

    template: Path
    first_line: int  # 1-based line of the rendered file where this template's output starts
    line_map: tuple[int, ...]  # rendered line (relative, 0-based) -> template line (1-based)


@dataclass(frozen=True)
class Rendered:
    family: str
    hcl: str
    spans: tuple[TemplateSpan, ...] = field(default=(), repr=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.hcl.encode()).hexdigest()

    def template_line(self, rendered_line: int) -> tuple[Path, int] | None:
        """The template file and line that produced `rendered_line` (1-based)."""
        for span in self.spans:
            rel = rendered_line - span.first_line
            if 0 <= rel < len(span.line_map):
                return span.template, span.line_map[rel]
        return None


def _line_map(source: str, output: str) -> tuple[int, ...]:
    """Rendered line -> template line, by aligning the two texts (the templates hold no logic
    beyond quoting, loops and version gates, so most lines survive unchanged)."""
    src, out = source.splitlines(), output.splitlines()
    mapping = [0] * len(out)
    matcher = difflib.SequenceMatcher(a=src, b=out, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        for j in range(j1, j2):
            if tag == "equal":
                mapping[j] = i1 + (j - j1) + 1
            elif i2 > i1:
                mapping[j] = min(i1 + (j - j1), i2 - 1) + 1
            else:
                mapping[j] = max(i1, 1)
    return tuple(mapping)


def render_family(family: Family, context: Mapping[str, Any]) -> Rendered:
    """Render every template of `family` (sorted) into one HCL document."""
    env = _environment(family.directory)
    parts: list[str] = []
    spans: list[TemplateSpan] = []
    line = 1
    for template_path in family.templates:
        source = template_path.read_text()
        try:
            text = env.from_string(source).render(**context)
        except jinja2.UndefinedError as exc:
            raise ConfigError(
                f"{template_path}: {exc.message}; pass it or fix the template"
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"{template_path}:{exc.lineno}: {exc.message}") from None
        if not text.endswith("\n"):
            text += "\n"
        spans.append(TemplateSpan(template_path, line, _line_map(source, text)))
        parts.append(text)
        line += text.count("\n")
    return Rendered(family.name, "".join(parts), tuple(spans))


@dataclass(frozen=True)
class RenderSettings:
    """What the factory itself puts into a family's template (besides the family's variables)."""

    packer_plugins: bool  # Packer >= 1.7: a `packer { required_plugins }` block
    endpoint: bool  # a custom EC2 endpoint is used (the template sets custom_endpoint_ec2)
    region: str


def template_context(
    family: Family, variables: Mapping[str, Any], settings: RenderSettings
) -> dict[str, Any]:
    return {
        "var": dict(variables),
        "family": family.name,
        "packer": {"plugins": settings.packer_plugins},
        "aws": {"region": settings.region, "endpoint": settings.endpoint},
        "source": {
            "owners": list(family.source.owners),
            "name": family.source.name,
            "parent": family.source.parent,
        },
        "ssh_username": family.ssh_username,
        "provisioners": list(family.provisioners),
    }


def render(family: Family, variables: Mapping[str, Any], settings: RenderSettings) -> Rendered:
    return render_family(family, template_context(family, variables, settings))
