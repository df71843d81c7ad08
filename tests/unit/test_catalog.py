"""Catalog: listing, filters, lineage, revocation (moto in-process)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from imagekit import register, register_base, register_factory_image, tags_of

from factory import tags as T
from factory.aws import AwsClients
from factory.aws.model import Image
from factory.catalog import (
    apply_revoke,
    descendants_of,
    find_image,
    is_revoked,
    lineage,
    list_images,
    plan_revoke,
    refuse_revoked_parent,
)
from factory.channels import set_channel
from factory.errors import ConfigError, RefusedError

CHANNELS = ("dev", "staging", "prod")


@pytest.mark.parametrize(
    ("tags", "revoked"),
    [
        ({}, False),
        ({T.STATUS: "verified"}, False),
        ({T.STATUS: "revoked"}, True),
        ({T.STATUS: "verified", T.REVOKED_AT: "2026-01-01T00:00:00Z"}, True),
    ],
)
def test_is_revoked(tags: dict[str, str], revoked: bool) -> None:
    assert is_revoked(tags) is revoked


def test_identity_digest_covers_each_field() -> None:
    image = {
        "ImageId": "ami-1",
        "Name": "web",
        "Architecture": "x86_64",
        "BlockDeviceMappings": [
            {"Ebs": {"SnapshotId": "snap-2"}},
            {"Ebs": {"SnapshotId": "snap-1"}},
        ],
    }
    base = Image.from_api(image, "us-east-1").identity
    assert base.snapshot_ids == ("snap-1", "snap-2")
    for key, value in [
        ("ImageId", "ami-2"),
        ("Name", "web2"),
        ("Architecture", "arm64"),
        ("BlockDeviceMappings", [{"Ebs": {"SnapshotId": "snap-3"}}]),
    ]:
        assert Image.from_api({**image, key: value}, "us-east-1").identity.digest != base.digest


def test_list_newest_first_with_filters_and_channels(aws: AwsClients) -> None:
    base = register_base(aws)
    old = register_factory_image(aws, "web", "1.0", base, age_days=10)
    new = register_factory_image(aws, "web", "1.1", base, age_days=1)
    cand = register_factory_image(aws, "web", "1.2", base, status=T.Status.CANDIDATE)
    db = register_factory_image(aws, "db", "3.0", base, age_days=5)
    set_channel(aws, CHANNELS, "web", "prod", old)
    set_channel(aws, CHANNELS, "web", "dev", new)

    images = list_images(aws)
    assert [i.ami_id for i in images] == [cand, new, db, old]  # base has no factory tags
    by_id = {i.ami_id: i for i in images}
    assert by_id[old].channels == ("web/prod",)
    assert by_id[new].channels == ("web/dev",)
    assert by_id[old].parent == base and by_id[old].version == "1.0"
    assert 9.9 < (by_id[old].age_days or 0) < 10.1
    assert by_id[old].in_use is None

    assert [i.ami_id for i in list_images(aws, family="db")] == [db]
    assert [i.ami_id for i in list_images(aws, status="candidate")] == [cand]
    assert [i.ami_id for i in list_images(aws, channel="prod")] == [old]
    with pytest.raises(ConfigError, match="unknown status"):
        list_images(aws, status="shiny")


def test_list_spans_regions(aws: AwsClients) -> None:
    west = aws.for_region("us-west-2")
    a = register_factory_image(aws, "web", "1.0", register_base(aws))
    b = register_factory_image(west, "web", "1.0", register_base(west), age_days=1)
    images = list_images(aws, regions=("us-east-1", "us-west-2"))
    assert [(i.ami_id, i.region) for i in images] == [(a, "us-east-1"), (b, "us-west-2")]


def _family_tree(aws: AwsClients) -> dict[str, str]:
    base = register_base(aws)
    web = register_factory_image(aws, "web", "1.0", base)
    app = register_factory_image(aws, "app", "1.0", web)
    api = register_factory_image(aws, "api", "1.0", web)
    worker = register_factory_image(aws, "worker", "1.0", app)
    other = register_factory_image(aws, "db", "1.0", base)
    return {"base": base, "web": web, "app": app, "api": api, "worker": worker, "db": other}


def test_lineage_tree(aws: AwsClients) -> None:
    ids = _family_tree(aws)
    tree = lineage(aws, ids["app"])
    assert [a.ami_id for a in tree.ancestors] == [ids["web"], ids["base"]]
    assert tree.ancestors[-1].family is None and tree.ancestors[-1].status == "external"
    assert [d.node.ami_id for d in tree.descendants] == [ids["worker"]]
    top = lineage(aws, ids["web"])
    assert sorted(d.node.ami_id for d in top.descendants) == sorted([ids["app"], ids["api"]])
    app_node = next(d for d in top.descendants if d.node.ami_id == ids["app"])
    assert [c.node.ami_id for c in app_node.children] == [ids["worker"]]
    with pytest.raises(ConfigError, match="not found"):
        lineage(aws, "ami-00000000")


def test_lineage_shows_a_deregistered_parent(aws: AwsClients) -> None:
    ids = _family_tree(aws)
    aws.client("ec2").deregister_image(ImageId=ids["web"])
    tree = lineage(aws, ids["app"])
    assert tree.ancestors[0].ami_id == ids["web"] and not tree.ancestors[0].exists


def test_revoke_cascade(aws: AwsClients) -> None:
    ids = _family_tree(aws)
    set_channel(aws, CHANNELS, "app", "prod", ids["app"])
    catalog = list_images(aws)
    assert {r.ami_id for r in descendants_of(ids["web"], catalog)} == {
        ids["app"],
        ids["api"],
        ids["worker"],
    }
    at = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)
    single = plan_revoke(find_image(aws, ids["web"]), catalog, reason="CVE", cascade=False, at=at)
    assert [t.ami_id for t in single.targets] == [ids["web"]]
    plan = plan_revoke(
        find_image(aws, ids["web"]), catalog, reason="CVE-2026-1", cascade=True, at=at
    )
    assert {t.ami_id for t in plan.targets} == {ids["web"], ids["app"], ids["api"], ids["worker"]}
    result = apply_revoke(plan, aws)
    for key in ("web", "app", "api", "worker"):
        tags = tags_of(aws, ids[key])
        assert tags[T.STATUS] == "revoked"
        assert tags[T.REVOKED_REASON] == "CVE-2026-1"
        assert tags[T.REVOKED_AT] == "2026-05-01T12:00:30Z"
    assert tags_of(aws, ids["db"])[T.STATUS] == "verified"
    # moto in-process has no EnableImageDeprecation: tolerated, and said
    assert all(i.deprecation == "unsupported by this endpoint" for i in result.images)
    assert any("app/prod" in w and "rollback" in w for w in result.warnings)
    assert {r.status for r in list_images(aws, status="revoked")} == {"revoked"}
    with pytest.raises(RefusedError, match="revoked"):
        refuse_revoked_parent(aws, ids["app"])
    refuse_revoked_parent(aws, ids["db"])  # not revoked: no error


def test_revoke_needs_a_reason(aws: AwsClients) -> None:
    ami = register(aws, "x", {T.FAMILY: "web"})
    with pytest.raises(ConfigError, match="reason"):
        plan_revoke(find_image(aws, ami), [], reason=" ", cascade=False, at=datetime.now(UTC))
