"""In-use detection against moto in-process: every kind of use is found, calls grow with pages."""

from __future__ import annotations

from typing import Any

from factory import tags
from factory.aws import AwsClients, AwsTarget
from factory.retire.inuse import (
    ScanTarget,
    UsageKind,
    gather_image_references,
    gather_in_use,
    gather_launch_permissions,
)

OTHER = "210987654321"
ROLE = f"arn:aws:iam::{OTHER}:role/x"


def _image(ec2: Any, name: str, family: str = "web") -> str:
    ami = str(ec2.register_image(Name=name)["ImageId"])
    ec2.create_tags(Resources=[ami], Tags=[{"Key": tags.FAMILY, "Value": family}])
    return ami


def _seed(own: AwsClients, other: AwsClients) -> dict[str, str]:
    ec2 = own.client("ec2")
    amis = {
        k: _image(ec2, f"img-{k}")
        for k in (
            "lt_old",
            "lt_default",
            "lt_latest",
            "stopped",
            "running",
            "terminated",
            "ssm",
            "channel",
            "lc",
            "copy",
            "shared",
            "mixed",
            "unused",
        )
    }
    # launch template: version 1 (old, neither default nor latest), 2 (default), 3 (latest)
    lt = ec2.create_launch_template(
        LaunchTemplateName="web-lt", LaunchTemplateData={"ImageId": amis["lt_old"]}
    )
    lt_id = lt["LaunchTemplate"]["LaunchTemplateId"]
    ec2.create_launch_template_version(
        LaunchTemplateId=lt_id, LaunchTemplateData={"ImageId": amis["lt_default"]}
    )
    ec2.create_launch_template_version(
        LaunchTemplateId=lt_id, LaunchTemplateData={"ImageId": amis["lt_latest"]}
    )
    ec2.modify_launch_template(LaunchTemplateId=lt_id, DefaultVersion="2")
    # a second template used only through an ASG's mixed instances override (version 2 only)
    lt2 = ec2.create_launch_template(
        LaunchTemplateName="mixed-lt", LaunchTemplateData={"ImageId": amis["running"]}
    )
    lt2_id = lt2["LaunchTemplate"]["LaunchTemplateId"]
    ec2.create_launch_template_version(
        LaunchTemplateId=lt2_id, LaunchTemplateData={"ImageId": amis["mixed"]}
    )
    # instances: stopped, running, terminated
    for key, final in (("stopped", "stop"), ("running", None), ("terminated", "terminate")):
        iid = ec2.run_instances(ImageId=amis[key], MinCount=1, MaxCount=1)["Instances"][0][
            "InstanceId"
        ]
        if final == "stop":
            ec2.stop_instances(InstanceIds=[iid])
        elif final == "terminate":
            ec2.terminate_instances(InstanceIds=[iid])
    ssm = own.client("ssm")
    ssm.put_parameter(Name="/app/base-ami", Value=amis["ssm"], Type="String")
    ssm.put_parameter(
        Name="/factory/web/prod", Value=amis["channel"], Type="String", DataType="aws:ec2:image"
    )
    ssm.put_parameter(Name="unrelated", Value="hello", Type="String")
    autoscaling = own.client("autoscaling")
    autoscaling.create_launch_configuration(
        LaunchConfigurationName="old-lc", ImageId=amis["lc"], InstanceType="t3.micro"
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="web-asg",
        MinSize=0,
        MaxSize=1,
        AvailabilityZones=["us-east-1a"],
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateId": lt_id, "Version": "$Default"},
                "Overrides": [
                    {
                        "InstanceType": "t3.small",
                        "LaunchTemplateSpecification": {"LaunchTemplateId": lt2_id, "Version": "2"},
                    }
                ],
            }
        },
    )
    ec2.modify_image_attribute(
        ImageId=amis["shared"], LaunchPermission={"Add": [{"UserId": "111122223333"}]}
    )
    # the copy lives in the other account, tagged by promotion
    other_ec2 = other.client("ec2")
    copy = other_ec2.register_image(Name="web-copy")["ImageId"]
    other_ec2.create_tags(
        Resources=[copy],
        Tags=[{"Key": tags.PROMOTED_FROM, "Value": f"{own.account_id}:us-east-1:{amis['copy']}"}],
    )
    return amis


def test_every_kind_of_use_is_found(aws: AwsClients) -> None:
    own = AwsClients(AwsTarget("us-east-1"))
    other = AwsClients(AwsTarget("us-east-1", role_arn=ROLE))
    assert other.account_id == OTHER
    amis = _seed(own, other)
    report = gather_in_use(
        [ScanTarget(own), ScanTarget(other, "prod")], owner_account=own.account_id
    )
    found = report.by_ami()
    kinds = {key: {u.kind for u in found.get(ami, ())} for key, ami in amis.items()}
    assert kinds["lt_old"] == {UsageKind.LAUNCH_TEMPLATE}
    assert UsageKind.AUTO_SCALING_GROUP in kinds["lt_default"]  # via the ASG's $Default
    assert kinds["lt_latest"] == {UsageKind.LAUNCH_TEMPLATE}
    assert kinds["stopped"] == {UsageKind.INSTANCE}
    assert "stopped" in found[amis["stopped"]][0].resource
    assert UsageKind.INSTANCE in kinds["running"]
    assert kinds["terminated"] == set()
    assert kinds["ssm"] == {UsageKind.SSM_PARAMETER}
    assert kinds["channel"] == {UsageKind.CHANNEL}
    assert "web/prod" in found[amis["channel"]][0].resource
    assert kinds["lc"] == {UsageKind.LAUNCH_CONFIGURATION}
    assert kinds["copy"] == {UsageKind.COPY}
    assert found[amis["copy"]][0].account == OTHER
    assert kinds["mixed"] == {UsageKind.LAUNCH_TEMPLATE, UsageKind.AUTO_SCALING_GROUP}
    assert any("override t3.small" in u.resource for u in found[amis["mixed"]])
    assert any(
        u.resource.startswith("web-asg via mixed instances policy ")
        for u in found[amis["lt_default"]]
    )
    assert kinds["unused"] == set()
    assert kinds["shared"] == set()  # only the per-image check sees launch permissions
    shared = gather_launch_permissions(own, [amis["shared"], amis["unused"]])
    assert [(u.ami_id, u.kind) for u in shared] == [(amis["shared"], UsageKind.SHARED)]
    assert "111122223333" in shared[0].resource
    assert report.scopes == ("123456789012/us-east-1", f"{OTHER}/us-east-1")
    assert report.api_calls == sum(report.calls_by_operation.values()) > 0


def test_image_references_unsupported_is_a_note(aws: AwsClients) -> None:
    own = AwsClients(AwsTarget("us-east-1"))
    ami = _image(own.client("ec2"), "img-refs")
    usages, note = gather_image_references(own, [ami])
    assert usages == ()
    assert note is not None and "DescribeImageReferences" in note


def test_calls_grow_with_pages_not_images(aws: AwsClients) -> None:
    own = AwsClients(AwsTarget("us-east-1"))
    ec2 = own.client("ec2")
    ami = _image(ec2, "img-first")
    ec2.create_launch_template(LaunchTemplateName="lt", LaunchTemplateData={"ImageId": ami})
    few = gather_in_use([ScanTarget(own)], owner_account=own.account_id)
    for i in range(150):
        image = _image(ec2, f"img-{i:03d}")
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
    many = gather_in_use([ScanTarget(own)], owner_account=own.account_id)
    assert len(many.usages) == len(few.usages) + 150
    assert many.calls_by_operation == few.calls_by_operation
