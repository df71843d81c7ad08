"""EC2 instances and what a test instance needs around it: key pairs, security groups, the
default VPC, console output, and EC2 Instance Connect.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from factory.aws.api import call, module_permissions, paginate, requires, tag_filters, tag_list
from factory.aws.model import Instance, tags_of
from factory.aws.session import AwsClients

INSTANCE_NOT_FOUND = ("InvalidInstanceID.*",)
KEY_PAIR_NOT_FOUND = ("InvalidKeyPair.NotFound",)
GROUP_NOT_FOUND = ("InvalidGroup.NotFound",)
LIVE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped")


def tag_specification(resource_type: str, tags: Mapping[str, str]) -> list[dict[str, Any]]:
    """TagSpecifications for a create call: the resource is tagged as it is made."""
    return [{"ResourceType": resource_type, "Tags": tag_list(tags)}] if tags else []


def _instances(reservations: Iterator[Any], region: str) -> list[Instance]:
    return [Instance.from_api(i, region) for r in reservations for i in r.get("Instances", [])]


@requires("ec2:DescribeInstances")
def get(clients: AwsClients, instance_id: str) -> Instance | None:
    """One instance, or None if EC2 does not know it (any more)."""
    found = get_many(clients, [instance_id])
    return found[0] if found else None


@requires("ec2:DescribeInstances")
def get_many(clients: AwsClients, instance_ids: Sequence[str]) -> list[Instance]:
    if not instance_ids:
        return []
    reservations = paginate(
        clients.client("ec2"),
        "DescribeInstances",
        "Reservations",
        ok=INSTANCE_NOT_FOUND,
        InstanceIds=list(instance_ids),
    )
    return _instances(reservations, clients.region)


@requires("ec2:DescribeInstances")
def find(
    clients: AwsClients,
    *,
    tags: Mapping[str, str | None] | None = None,
    image_ids: Sequence[str] | None = None,
    states: Sequence[str] | None = LIVE_STATES,
) -> list[Instance]:
    """Instances by tags, image and state (default: everything not terminated)."""
    filters = tag_filters(tags or {})
    if image_ids is not None:
        filters.append({"Name": "image-id", "Values": list(image_ids)})
    if states is not None:
        filters.append({"Name": "instance-state-name", "Values": list(states)})
    reservations = paginate(
        clients.client("ec2"), "DescribeInstances", "Reservations", Filters=filters
    )
    return _instances(reservations, clients.region)


@requires("ec2:RunInstances", "ec2:CreateTags")
def run(
    clients: AwsClients,
    *,
    ami_id: str,
    instance_type: str,
    key_name: str | None = None,
    security_group_ids: Sequence[str] = (),
    subnet_id: str | None = None,
    user_data: str | None = None,
    tags: Mapping[str, str] | None = None,
    client_token: str | None = None,
    terminate_on_shutdown: bool = False,
) -> Instance:
    """Launch one instance, tagged as it starts (CreateTags authorises the tagging)."""
    kwargs: dict[str, Any] = {
        "ImageId": ami_id,
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "TagSpecifications": tag_specification("instance", tags or {}),
    }
    if key_name:
        kwargs["KeyName"] = key_name
    if security_group_ids:
        kwargs["SecurityGroupIds"] = list(security_group_ids)
    if subnet_id:
        kwargs["SubnetId"] = subnet_id
    if user_data:
        kwargs["UserData"] = user_data  # boto3 base64-encodes it
    if client_token:
        kwargs["ClientToken"] = client_token[-64:]
    if terminate_on_shutdown:
        kwargs["InstanceInitiatedShutdownBehavior"] = "terminate"
    reservation = call(clients.client("ec2"), "RunInstances", about=ami_id, **kwargs)
    return Instance.from_api(reservation["Instances"][0], clients.region)


@requires("ec2:TerminateInstances")
def terminate(clients: AwsClients, instance_ids: Sequence[str]) -> None:
    if instance_ids:
        call(
            clients.client("ec2"),
            "TerminateInstances",
            ok=INSTANCE_NOT_FOUND,
            InstanceIds=list(instance_ids),
        )


@requires("ec2:GetConsoleOutput")
def console_output(clients: AwsClients, instance_id: str) -> str:
    """What the instance printed on its console so far ("" before anything)."""
    found = call(
        clients.client("ec2"), "GetConsoleOutput", about=instance_id, InstanceId=instance_id
    )
    return str(found.get("Output") or "")


# ---- key pairs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    name: str
    key_pair_id: str = ""
    public_key: str = ""  # only when asked for
    tags: Mapping[str, str] = field(default_factory=dict)


@requires("ec2:ImportKeyPair", "ec2:CreateTags")
def import_key_pair(
    clients: AwsClients, name: str, public_key: str, *, tags: Mapping[str, str] | None = None
) -> None:
    call(
        clients.client("ec2"),
        "ImportKeyPair",
        about=name,
        KeyName=name,
        PublicKeyMaterial=public_key.encode(),
        TagSpecifications=tag_specification("key-pair", tags or {}),
    )


@requires("ec2:DescribeKeyPairs")
def key_pairs(
    clients: AwsClients,
    *,
    names: Sequence[str] | None = None,
    tags: Mapping[str, str | None] | None = None,
    with_public_key: bool = False,
) -> list[KeyPair]:
    """Key pairs by name or tag; a name EC2 does not know is simply absent from the answer."""
    kwargs: dict[str, Any] = {}
    if names is not None:
        kwargs["Filters"] = [{"Name": "key-name", "Values": list(names)}]
    if tags:
        kwargs["Filters"] = [*kwargs.get("Filters", []), *tag_filters(tags)]
    if with_public_key:
        kwargs["IncludePublicKey"] = True
    found = call(clients.client("ec2"), "DescribeKeyPairs", ok=KEY_PAIR_NOT_FOUND, **kwargs)
    return [
        KeyPair(
            name=str(k["KeyName"]),
            key_pair_id=str(k.get("KeyPairId", "")),
            public_key=str(k.get("PublicKey") or "").strip(),
            tags=tags_of(k),
        )
        for k in (found or {}).get("KeyPairs", [])
    ]


@requires("ec2:DeleteKeyPair")
def delete_key_pair(clients: AwsClients, name: str) -> None:
    call(clients.client("ec2"), "DeleteKeyPair", ok=KEY_PAIR_NOT_FOUND, about=name, KeyName=name)


# ---- security groups and the network -------------------------------------------------------------


@dataclass(frozen=True)
class SecurityGroup:
    group_id: str
    name: str
    vpc_id: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


@requires("ec2:CreateSecurityGroup", "ec2:CreateTags")
def create_security_group(
    clients: AwsClients,
    name: str,
    description: str,
    vpc_id: str,
    *,
    tags: Mapping[str, str] | None = None,
) -> str:
    created = call(
        clients.client("ec2"),
        "CreateSecurityGroup",
        about=name,
        GroupName=name,
        Description=description,
        VpcId=vpc_id,
        TagSpecifications=tag_specification("security-group", tags or {}),
    )
    return str(created["GroupId"])


@requires("ec2:AuthorizeSecurityGroupIngress")
def allow_tcp(clients: AwsClients, group_id: str, port: int, cidr: str, description: str) -> None:
    """Let `cidr` (IPv4 or IPv6) reach `port` over TCP."""
    ranges: dict[str, Any] = (
        {"Ipv6Ranges": [{"CidrIpv6": cidr, "Description": description}], "IpRanges": []}
        if ":" in cidr
        else {"IpRanges": [{"CidrIp": cidr, "Description": description}], "Ipv6Ranges": []}
    )
    call(
        clients.client("ec2"),
        "AuthorizeSecurityGroupIngress",
        about=group_id,
        GroupId=group_id,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **ranges}],
    )


@requires("ec2:DescribeSecurityGroups")
def security_groups(
    clients: AwsClients,
    *,
    names: Sequence[str] | None = None,
    tags: Mapping[str, str | None] | None = None,
) -> list[SecurityGroup]:
    filters = tag_filters(tags or {})
    if names is not None:
        filters.append({"Name": "group-name", "Values": list(names)})
    return [
        SecurityGroup(
            str(g["GroupId"]), str(g.get("GroupName", "")), str(g.get("VpcId", "")), tags_of(g)
        )
        for g in paginate(
            clients.client("ec2"), "DescribeSecurityGroups", "SecurityGroups", Filters=filters
        )
    ]


@requires("ec2:DeleteSecurityGroup")
def delete_security_group(clients: AwsClients, group_id: str) -> None:
    """Delete; already gone is fine. While an instance still holds it, AWS answers
    DependencyViolation (the error's code): wait for the instance to terminate and retry."""
    call(
        clients.client("ec2"),
        "DeleteSecurityGroup",
        ok=GROUP_NOT_FOUND,
        about=group_id,
        GroupId=group_id,
    )


@requires("ec2:DescribeVpcs")
def default_vpc(clients: AwsClients) -> str | None:
    vpcs = call(
        clients.client("ec2"), "DescribeVpcs", Filters=[{"Name": "is-default", "Values": ["true"]}]
    )
    return str(vpcs["Vpcs"][0]["VpcId"]) if vpcs.get("Vpcs") else None


@requires("ec2:DescribeSubnets")
def subnet_vpc(clients: AwsClients, subnet_id: str) -> str:
    subnets = call(clients.client("ec2"), "DescribeSubnets", about=subnet_id, SubnetIds=[subnet_id])
    return str(subnets["Subnets"][0]["VpcId"])


# ---- EC2 Instance Connect ----------------------------------------------------------------------


@requires("ec2-instance-connect:SendSSHPublicKey")
def send_ssh_public_key(
    clients: AwsClients, instance: Instance, user: str, public_key: str
) -> None:
    """Offer `public_key` to `user` on the instance for 60 seconds."""
    zone = {"AvailabilityZone": instance.zone} if instance.zone else {}
    call(
        clients.client("ec2-instance-connect"),
        "SendSSHPublicKey",
        about=instance.instance_id,
        InstanceId=instance.instance_id,
        InstanceOSUser=user,
        SSHPublicKey=public_key,
        **zone,
    )


# ---- added for retire ----


@requires("ec2:DescribeInstances")
def find_all(clients: AwsClients, *, states: Sequence[str] = LIVE_STATES) -> list[Instance]:
    """Every instance in `states`, 1,000 per call (the in-use scan: calls grow with pages)."""
    reservations = paginate(
        clients.client("ec2"),
        "DescribeInstances",
        "Reservations",
        Filters=[{"Name": "instance-state-name", "Values": list(states)}],
        PaginationConfig={"PageSize": 1000},
    )
    return _instances(reservations, clients.region)


PERMISSIONS = module_permissions(__name__)
