"""Local cloud extension: EC2 image lifecycle APIs moto 5.2.5 lacks, with AWS's semantics.

- EnableImageDeprecation / DisableImageDeprecation: DescribeImages then shows (or drops)
  `DeprecationTime`, rounded to the minute; a DeprecateAt in the past is refused.
- EnableImageDeregistrationProtection / DisableImageDeregistrationProtection: DescribeImages
  shows `DeregistrationProtection`; DeregisterImage of a protected image fails with
  `OperationNotPermitted`. Disabling protection that was enabled with a cooldown leaves the
  image protected for 24 hours (`disabled-until <time>`).
- DeregisterImage `DeleteAssociatedSnapshots`: deletes the image's snapshots unless another
  image still uses them.
- DeleteSnapshot of a snapshot any registered image uses fails with `InvalidSnapshot.InUse`
  (moto only checks the image the snapshot was created for).
- RegisterImage honours `BlockDeviceMappings[].Ebs.SnapshotId` (so two images can share a
  snapshot, as on AWS) and image `TagSpecifications`.

The new actions are handlers on the local cloud's WSGI app; the changed behaviour of existing
actions is patched into moto's models in this process (idempotently), where the handlers reach
the same backends (`ec2_backends[account][region]`).
"""

from __future__ import annotations

import base64
import functools
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.session
from botocore import xform_name
from moto.core.responses import ActionResult
from moto.core.serialize import XFormedAttributePicker
from moto.ec2.exceptions import EC2ClientError, InvalidSnapshotInUse
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import Ami, AmiBackend
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, format_timestamp, get_prefix

from factory.localcloud.app import ActionRequest, ActionResponse, ExtensionError, xml_escape

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
COOLDOWN = timedelta(hours=24)
MAX_DEPRECATION = timedelta(days=3650)
PROTECTED_ERROR = "OperationNotPermitted"

_patched = False
_patch_lock = threading.Lock()


def install(cloud: Any) -> None:
    """Patch moto's image model once and register the image lifecycle actions."""
    patch_moto()
    app = cloud.app
    app.register("ec2", "DescribeImages", describe_images)
    app.register("ec2", "DescribeImageReferences", describe_image_references)
    app.register("ec2", "EnableImageDeprecation", enable_image_deprecation)
    app.register("ec2", "DisableImageDeprecation", disable_image_deprecation)
    app.register("ec2", "EnableImageDeregistrationProtection", enable_deregistration_protection)
    app.register("ec2", "DisableImageDeregistrationProtection", disable_deregistration_protection)


# --- time helpers -------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _parse_time(value: str) -> datetime:
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ExtensionError(
            "InvalidParameterValue", f"Value ({value}) for parameter deprecateAt is invalid."
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _round_to_minute(moment: datetime) -> datetime:
    """AWS rounds DeprecateAt's seconds to the nearest minute."""
    base = moment.replace(second=0, microsecond=0)
    return base + timedelta(minutes=1) if moment.second >= 30 else base


# --- moto patches -------------------------------------------------------------------------


def _protection_active(ami: Any, now: datetime | None = None) -> bool:
    state = str(getattr(ami, "deregistration_protection", "disabled") or "disabled")
    if state.startswith("enabled"):
        return True
    until = getattr(ami, "_protected_until", None)
    return until is not None and (now or _now()) < until


def _images_using(backend: Any, snapshot_id: str, *, exclude: str | None = None) -> list[str]:
    return sorted(
        ami_id
        for ami_id, ami in backend.amis.items()
        if ami_id != exclude and getattr(ami.ebs_snapshot, "id", None) == snapshot_id
    )


def patch_moto() -> None:
    """Teach moto's Ami model and responses the semantics above (safe to call repeatedly)."""
    global _patched  # noqa: PLW0603 - one process-wide patch of a third-party module
    with _patch_lock:
        if _patched:
            return
        _patch_models()
        _patch_responses()
        _patch_attribute_picker()
        _patched = True


def _patch_models() -> None:
    _patch_tag_lookup()
    # Serialised by moto's attribute picker as DeprecationTime / DeregistrationProtection.
    Ami.deprecation_time = None  # type: ignore[attr-defined]
    Ami._protection_state = "disabled"  # type: ignore[attr-defined]
    Ami._protected_until = None  # type: ignore[attr-defined]
    Ami._protection_cooldown = False  # type: ignore[attr-defined]

    def _get_protection(self: Any) -> str:
        until = self._protected_until
        if until is not None and _now() >= until:
            return "disabled"  # the 24-hour cooldown is over
        return str(self._protection_state)

    def _set_protection(self: Any, value: str) -> None:
        self._protection_state = value

    Ami.deregistration_protection = property(_get_protection, _set_protection)  # type: ignore[attr-defined]

    original_deregister = AmiBackend.deregister_image

    def deregister_image(self: Any, ami_id: str) -> None:
        ami = self.amis.get(ami_id)
        if ami is not None and _protection_active(ami):
            raise EC2ClientError(
                PROTECTED_ERROR,
                f"The image {ami_id} has deregistration protection enabled; disable it with "
                "DisableImageDeregistrationProtection before deregistering the image.",
            )
        original_deregister(self, ami_id)

    AmiBackend.deregister_image = deregister_image  # type: ignore[method-assign]

    original_delete_snapshot = EBSBackend.delete_snapshot

    def delete_snapshot(self: Any, snapshot_id: str) -> Any:
        users = _images_using(self, snapshot_id) if hasattr(self, "amis") else []
        if users:
            raise InvalidSnapshotInUse(snapshot_id, users[0])
        return original_delete_snapshot(self, snapshot_id)

    EBSBackend.delete_snapshot = delete_snapshot  # type: ignore[method-assign]


def _patch_tag_lookup() -> None:
    """Look a resource's tags up by id: moto scans every tag of the backend per resource,
    which makes DescribeImages quadratic (5,000 tagged images took minutes)."""
    original = TaggedEC2Resource.get_tags

    def get_tags(self: Any) -> list[dict[str, str]]:
        resource_id = getattr(self, "id", None)
        table = getattr(getattr(self, "ec2_backend", None), "tags", None)
        if not resource_id or not isinstance(table, dict):
            return original(self)
        found = table.get(resource_id)  # .get: the table is a defaultdict
        if not found:
            return []
        kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
        return [
            {"resource_id": resource_id, "key": k, "value": v, "resource_type": kind}
            for k, v in found.items()
        ]

    TaggedEC2Resource.get_tags = get_tags  # type: ignore[method-assign]


def _patch_attribute_picker() -> None:
    """Memoise moto's response attribute picker: which attribute names it tries depends only
    on the object's class, the key and the shapes, yet it recomputes them for every field of
    every object (half the time of a DescribeLaunchTemplateVersions). Same names, same order."""
    original = XFormedAttributePicker.get_possible_keys
    cache: dict[tuple[Any, ...], tuple[Any, Any, tuple[str, ...]]] = {}

    def get_possible_keys(self: Any, context: Any) -> Any:
        shape = context.shape
        parent = getattr(shape, "parent", None)
        key = (
            type(self),
            tuple(self.alias_providers),
            type(context.obj),
            context.key,
            id(shape),
            id(parent),
        )
        hit = cache.get(key)
        if hit is not None and hit[0] is shape and hit[1] is parent:
            return hit[2]
        keys = tuple(original(self, context))
        cache[key] = (shape, parent, keys)
        return keys

    XFormedAttributePicker.get_possible_keys = get_possible_keys  # type: ignore[method-assign]


def _patch_responses() -> None:
    original_register = AmisResponse.register_image

    def register_image(self: Any) -> Any:
        result = original_register(self)
        payload = result.result if isinstance(result, ActionResult) else None
        ami_id = payload.get("ImageId") if isinstance(payload, dict) else None
        if ami_id:
            ami = self.ec2_backend.amis[ami_id]
            _adopt_snapshot(self.ec2_backend, ami, self._get_param("BlockDeviceMappings", []))
            for spec in self._get_param("TagSpecifications", []):
                if spec.get("ResourceType") == "image":
                    for tag in spec.get("Tags", []):
                        ami.add_tag(tag["Key"], tag["Value"])
            root = self._get_param("RootDeviceName")
            if root:
                ami.root_device_name = root
            for attr, param in (
                ("architecture", "Architecture"),
                ("virtualization_type", "VirtualizationType"),
            ):
                value = self._get_param(param)
                if value:
                    setattr(ami, attr, value)
        return result

    AmisResponse.register_image = register_image  # type: ignore[method-assign]

    original_deregister = AmisResponse.deregister_image

    def deregister_image(self: Any) -> Any:
        ami_id = self._get_param("ImageId")
        delete = str(self._get_param("DeleteAssociatedSnapshots", "false")).lower() == "true"
        ami = self.ec2_backend.amis.get(ami_id)
        snapshot_id = getattr(getattr(ami, "ebs_snapshot", None), "id", None)
        result = original_deregister(self)
        if not delete or snapshot_id is None:
            return result
        outcome: dict[str, str] = {"SnapshotId": snapshot_id}
        if _images_using(self.ec2_backend, snapshot_id):
            outcome["ReturnCode"] = "warn-skipped-snapshot-in-use"
        else:
            try:
                self.ec2_backend.delete_snapshot(snapshot_id)
                outcome["ReturnCode"] = "success"
            except Exception:  # noqa: BLE001 - reported per snapshot, as AWS does
                outcome["ReturnCode"] = "error-generic"
        return ActionResult({"Return": True, "DeleteSnapshotResults": [outcome]})

    AmisResponse.deregister_image = deregister_image  # type: ignore[method-assign]


def _adopt_snapshot(backend: Any, ami: Any, mappings: list[dict[str, Any]]) -> None:
    """Point the image at an existing snapshot named in its block device mappings."""
    for mapping in mappings:
        snapshot_id = (mapping.get("Ebs") or {}).get("SnapshotId")
        if not snapshot_id or snapshot_id not in backend.snapshots:
            continue
        auto = ami.ebs_snapshot
        ami.ebs_snapshot = backend.snapshots[snapshot_id]
        if mapping.get("DeviceName"):
            ami.root_device_name = mapping["DeviceName"]
        if auto is not None and auto.id != snapshot_id and auto.id in backend.snapshots:
            backend.snapshots.pop(auto.id)
        return


# --- handlers -----------------------------------------------------------------------------


def _backend(request: ActionRequest) -> Any:
    return ec2_backends[request.account_id][request.region]


def _image(request: ActionRequest) -> Any:
    ami_id = str(request.params.get("ImageId") or "")
    if not ami_id:
        raise ExtensionError("MissingParameter", "The request must contain the parameter ImageId")
    if not ami_id.startswith("ami-"):
        raise ExtensionError(
            "InvalidAMIID.Malformed", f'Invalid id: "{ami_id}" (expecting "ami-...")'
        )
    backend = _backend(request)
    ami = backend.amis.get(ami_id)
    if ami is None:
        if ami_id in backend.deleted_amis:
            raise ExtensionError(
                "InvalidAMIID.Unavailable", f"The image id '[{ami_id}]' is no longer available"
            )
        raise ExtensionError("InvalidAMIID.NotFound", f"The image id '[{ami_id}]' does not exist")
    if ami.owner_id != request.account_id:
        raise ExtensionError("AuthFailure", f"Not authorized for image:{ami_id}")
    return ami


def _dry_run(request: ActionRequest) -> None:
    if str(request.params.get("DryRun", "false")).lower() == "true":
        raise ExtensionError(
            "DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412
        )


def ec2_response(action: str, return_value: str) -> ActionResponse:
    """An EC2 query-protocol body: <ActionResponse><requestId/><return/></ActionResponse>."""
    return ActionResponse(
        f'<{action}Response xmlns="{EC2_NS}"><requestId>localcloud</requestId>'
        f"<return>{xml_escape(return_value)}</return></{action}Response>"
    )


def describe_image_references(request: ActionRequest) -> ActionResponse:
    """Not emulated: answer as an endpoint without the API does (fast, not a 500)."""
    raise ExtensionError(
        "InvalidAction",
        f"The action {request.action} is not valid for this web service.",
    )


def enable_image_deprecation(request: ActionRequest) -> ActionResponse:
    ami = _image(request)
    raw = request.params.get("DeprecateAt")
    if not raw:
        raise ExtensionError(
            "MissingParameter", "The request must contain the parameter DeprecateAt"
        )
    moment = _round_to_minute(_parse_time(str(raw)))
    now = _now()
    if moment < now.replace(second=0, microsecond=0):
        raise ExtensionError(
            "InvalidParameterValue",
            f"The specified deprecation time {_iso(moment)} is in the past. "
            "Specify a date and time in the future.",
        )
    if moment > now + MAX_DEPRECATION:
        raise ExtensionError(
            "InvalidParameterValue",
            "The deprecation time can't be more than 10 years in the future.",
        )
    _dry_run(request)
    ami.deprecation_time = _iso(moment)
    return ec2_response(request.action, "true")


def disable_image_deprecation(request: ActionRequest) -> ActionResponse:
    ami = _image(request)
    _dry_run(request)
    ami.deprecation_time = None
    return ec2_response(request.action, "true")


def enable_deregistration_protection(request: ActionRequest) -> ActionResponse:
    ami = _image(request)
    _dry_run(request)
    cooldown = str(request.params.get("WithCooldown", "false")).lower() == "true"
    state = "enabled-with-cooldown" if cooldown else "enabled-without-cooldown"
    ami.deregistration_protection = state
    ami._protection_cooldown = cooldown
    ami._protected_until = None
    return ec2_response(request.action, state)


def disable_deregistration_protection(request: ActionRequest) -> ActionResponse:
    ami = _image(request)
    _dry_run(request)
    was_enabled = str(ami.deregistration_protection).startswith("enabled")
    if was_enabled and ami._protection_cooldown:
        until = _now() + COOLDOWN
        ami._protected_until = until
        ami.deregistration_protection = f"disabled-until {_iso(until)}"
    elif was_enabled:
        ami._protected_until = None
        ami.deregistration_protection = "disabled"
    ami._protection_cooldown = False
    return ec2_response(request.action, str(ami.deregistration_protection))


# --- DescribeImages, fast ------------------------------------------------------------------
#
# moto's generic serializer spends ~1 ms per image (attribute picking through alias providers):
# 5,000 images took seconds per call. This handler filters with moto's own backend method and
# writes the same XML directly from the botocore shape, with AWS's MaxResults/NextToken paging.

MAX_RESULTS_LIMIT = 1000
_IMAGE_SHAPE: Any = None
_MISSING = object()


def _image_shape() -> Any:
    global _IMAGE_SHAPE  # noqa: PLW0603 - loaded once from botocore's model
    if _IMAGE_SHAPE is None:
        model = botocore.session.get_session().get_service_model("ec2")
        _IMAGE_SHAPE = model.shape_for("Image")
    return _IMAGE_SHAPE


@functools.cache
def _candidate_keys(cls: Any, parent: Any, name: str) -> tuple[str, ...]:
    """The attribute names moto's picker tries, in its order (moto.core.serialize)."""
    member = parent.members[name]
    aliases: list[str] = []
    meta = getattr(cls, "Meta", None)
    explicit = getattr(meta, "serialization_aliases", None) or {}
    if name in explicit:
        aliases.append(explicit[name])
    if (
        member.type_name in ("list", "structure")
        and member.name not in parent.members
        and name != member.name
    ):
        aliases.append(member.name)
    aliases.append(name)
    if name.lower().startswith(parent.name.lower()):
        short = name[len(parent.name) :]
        if short not in parent.members:
            aliases.append(short)
    if cls is not dict and name.lower().startswith(cls.__name__.lower()):
        aliases.append(name[len(cls.__name__) :])
    serialized = member.serialization.get("name", name)
    if serialized != name:
        aliases.append(serialized)
    keys: list[str] = []
    for alias in aliases:
        keys += [alias, xform_name(alias)]
    return tuple(dict.fromkeys(keys))


@functools.cache
def _class_attributes(cls: Any) -> frozenset[str] | None:
    """Names an instance of `cls` has through its class; None if it computes attributes."""
    if any("__getattr__" in vars(c) for c in cls.__mro__ if c is not object):
        return None
    return frozenset(dir(cls))


def _pick(obj: Any, parent: Any, name: str) -> Any:
    if isinstance(obj, dict):
        for key in _candidate_keys(dict, parent, name):
            if key in obj:
                return obj[key]
        return None
    cls: Any = type(obj)
    known = _class_attributes(cls)
    own = getattr(obj, "__dict__", None)
    for key in _candidate_keys(cls, parent, name):
        if known is not None and own is not None:
            if key in own:
                return own[key]
            if key not in known:
                continue
        value = getattr(obj, key, _MISSING)
        if value is not _MISSING:
            return value
    return None


def _xml_value(value: Any, shape: Any, out: list[str]) -> None:
    kind = shape.type_name
    if kind == "structure":
        _xml_members(value, shape, out)
    elif kind == "list":
        for item in value:
            if shape.member.type_name == "structure" and isinstance(item, str):
                continue  # moto cannot serialise these either (product codes kept as strings)
            out.append("<item>")
            _xml_value(item, shape.member, out)
            out.append("</item>")
    elif kind == "boolean":
        out.append("true" if value in (True, "True", "true") else "false")
    elif kind == "timestamp" or isinstance(value, datetime):
        text = format_timestamp(value) if isinstance(value, datetime) else str(value)
        out.append(xml_escape(text))
    else:
        if hasattr(value, "value") and not isinstance(value, str | int | float):
            value = value.value  # an Enum
        out.append(xml_escape(str(value)))


def _xml_members(value: Any, shape: Any, out: list[str]) -> None:
    for name, member in shape.members.items():
        found = _pick(value, shape, name)
        if found is None:
            continue
        tag = member.serialization.get("name", name)
        if member.type_name == "list" and not found:
            out.append(f"<{tag}/>")
        elif member.type_name == "string" and found in ({}, []):
            continue
        else:
            out.append(f"<{tag}>")
            _xml_value(found, member, out)
            out.append(f"</{tag}>")


def image_xml(ami: Any) -> str:
    """One <item> of DescribeImages' imagesSet, as moto would write it."""
    out = ["<item>"]
    _xml_members(ami, _image_shape(), out)
    out.append("</item>")
    return "".join(out)


def _members(params: dict[str, Any], prefix: str) -> list[str]:
    values = []
    i = 1
    while f"{prefix}.{i}" in params:
        values.append(str(params[f"{prefix}.{i}"]))
        i += 1
    return values


def _filters(params: dict[str, Any]) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    i = 1
    while f"Filter.{i}.Name" in params:
        filters.setdefault(str(params[f"Filter.{i}.Name"]), []).extend(
            _members(params, f"Filter.{i}.Value")
        )
        i += 1
    return filters


_PAGES: dict[str, list[Any]] = {}  # a paged query's result, by token id, until its last page
_PAGES_LOCK = threading.Lock()
_PAGES_KEPT = 64


def describe_images(request: ActionRequest) -> ActionResponse:
    params = request.params
    _dry_run(request)
    ami_ids = _members(params, "ImageId")
    max_results = params.get("MaxResults")
    if max_results is not None and ami_ids:
        raise ExtensionError(
            "InvalidParameterCombination",
            "The parameter imageIdsSet cannot be used with the parameter maxResults",
        )
    token = str(params.get("NextToken") or "")
    query, start = _offset(token) if token else ("", 0)
    with _PAGES_LOCK:
        images = _PAGES.get(query) if query else None
    if images is None:
        try:
            images = ec2_backends[request.account_id][request.region].describe_images(
                ami_ids=ami_ids,
                filters=_filters(params) or None,
                exec_users=_members(params, "ExecutableBy"),
                owners=_members(params, "Owner"),
            )
        except EC2ClientError as exc:
            raise ExtensionError(str(exc.code), str(exc.message)) from None
        query = ""
    next_token = ""
    if max_results is not None:
        limit = int(max_results)
        if not 1 <= limit <= MAX_RESULTS_LIMIT:
            raise ExtensionError(
                "InvalidParameterValue",
                f"Value ({limit}) for parameter maxResults is invalid. "
                f"Expecting a value between 1 and {MAX_RESULTS_LIMIT}.",
            )
        if start + limit < len(images):
            # the later pages come from the same result (AWS pages a consistent snapshot)
            query = query or _remember(images)
            next_token = base64.urlsafe_b64encode(f"{query}:{start + limit}".encode()).decode()
        elif query:
            with _PAGES_LOCK:
                _PAGES.pop(query, None)
        images = images[start : start + limit]
    body = [f'<DescribeImagesResponse xmlns="{EC2_NS}"><requestId>localcloud</requestId>']
    body.append("<imagesSet>" + "".join(image_xml(ami) for ami in images) + "</imagesSet>")
    if next_token:
        body.append(f"<nextToken>{next_token}</nextToken>")
    body.append("</DescribeImagesResponse>")
    return ActionResponse("".join(body))


def _remember(images: list[Any]) -> str:
    query = uuid.uuid4().hex
    with _PAGES_LOCK:
        while len(_PAGES) >= _PAGES_KEPT:
            _PAGES.pop(next(iter(_PAGES)))
        _PAGES[query] = images
    return query


def _offset(token: str) -> tuple[str, int]:
    try:
        query, _, offset = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        with _PAGES_LOCK:
            known = query in _PAGES
        if known:
            return query, int(offset)
    except (ValueError, UnicodeDecodeError):
        pass
    raise ExtensionError("InvalidParameterValue", f"Invalid NextToken: {token}")
