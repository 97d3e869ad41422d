# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compute driver for AWS EC2 (boto3): one instance per Instance, registered at its private IP."""

from __future__ import annotations

import math
import time
import uuid

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _placement
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import (
    COLOR_LABEL,
    MARKER_LABEL,
    SERVICE_LABEL,
    ComputeDriver,
    Instance,
    Spec,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import HostUnavailable, SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._external import PROBERS, SKYNET

try:
    import boto3
    import botocore.config
    import botocore.exceptions

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - reported by the module with missing_required_lib
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = e

CREATED_TAG = "io.skynet.created"
IMAGE_TAG = "io.skynet.image"
PORT_TAG = "io.skynet.port"
# Stopped instances are listed so the converger terminates them; shutting-down and terminated ones are gone already.
LISTED_STATES = ("pending", "running", "stopping", "stopped")
STATES = {"pending": "running", "running": "running", "shutting-down": "terminating"}


def ec2_argument_spec():
    """Options of the ec2 compute, paired with the cyberdyne.skynet.ec2 doc fragment."""
    return dict(
        region=dict(type="str", fallback=(_env, ["AWS_REGION", "AWS_DEFAULT_REGION"])),
        endpoint_url=dict(type="str", fallback=(_env, ["AWS_ENDPOINT_URL"])),
        profile=dict(type="str", fallback=(_env, ["AWS_PROFILE"])),
        aws_access_key_id=dict(type="str", no_log=True, fallback=(_env, ["AWS_ACCESS_KEY_ID"])),
        aws_secret_access_key=dict(type="str", no_log=True, fallback=(_env, ["AWS_SECRET_ACCESS_KEY"])),
        aws_session_token=dict(type="str", no_log=True, fallback=(_env, ["AWS_SESSION_TOKEN"])),
        instance_type=dict(type="str", default="t3.micro"),
        subnet_id=dict(type="str"),
        security_groups=dict(type="list", elements="str", default=[]),
        key_name=dict(type="str", no_log=False),
        user_data=dict(type="str"),
        ec2_health=dict(type="str", choices=list(PROBERS), default=SKYNET),
    )


def _env(*names):
    from ansible.module_utils.basic import env_fallback

    return env_fallback(*names)


def instance_state(ec2_state):
    """The Instance state of an EC2 state name: pending counts as running, so the plan never starts twice."""
    return STATES.get(ec2_state, ec2_state)


def instance_tags(spec, name, created):
    """The EC2 tags of a new instance of spec, as the Key/Value list run_instances takes."""
    tags = {
        **spec.labels,
        MARKER_LABEL: "true",
        SERVICE_LABEL: spec.service,
        COLOR_LABEL: spec.color,
        CREATED_TAG: f"{created:.6f}",
        IMAGE_TAG: spec.image,
        PORT_TAG: str(spec.port),
        "Name": name,
    }
    return [{"Key": k, "Value": str(v)} for k, v in tags.items()]


def tag_filters(service, color=None):
    filters = [
        {"Name": f"tag:{MARKER_LABEL}", "Values": ["true"]},
        *([{"Name": f"tag:{SERVICE_LABEL}", "Values": [service]}] if service else []),
        {"Name": "instance-state-name", "Values": list(LISTED_STATES)},
    ]
    if color:
        filters.append({"Name": f"tag:{COLOR_LABEL}", "Values": [color]})
    return filters


def to_instance(described, checked_by=SKYNET):
    """An Instance from one entry of describe_instances' Reservations[].Instances[]; checked_by: who runs its
    Consul check (ec2_health)."""
    tags = {t["Key"]: t["Value"] for t in described.get("Tags") or ()}
    created = tags.get(CREATED_TAG)
    if created is None:
        launched = described.get("LaunchTime")
        created = launched.timestamp() if hasattr(launched, "timestamp") else 0
    return Instance(
        id=described["InstanceId"],
        service=tags.get(SERVICE_LABEL, ""),
        color=tags.get(COLOR_LABEL, ""),
        image=tags.get(IMAGE_TAG) or described.get("ImageId", ""),
        address=described.get("PrivateIpAddress") or "",
        port=int(tags.get(PORT_TAG) or 0),
        created=float(created),
        state=instance_state((described.get("State") or {}).get("Name", "")),
        host=described.get("SubnetId") or "",
        zone=(described.get("Placement") or {}).get("AvailabilityZone") or "",
        checked_by=checked_by,
    )


# AWS error codes of a run_instances that the subnet (or its zone) refuses, where another subnet may succeed.
SUBNET_FAILURES = frozenset(
    {"InsufficientInstanceCapacity", "InsufficientFreeAddressesInSubnet", "Unsupported", "InvalidSubnetID.NotFound"}
)


def error_code(error):
    """The AWS error code of a botocore exception, else None."""
    response = getattr(error, "response", None)
    return (response.get("Error") or {}).get("Code") if isinstance(response, dict) else None


def describe_error(error):
    """The AWS error code and message of a botocore exception, or its text."""
    response = getattr(error, "response", None)
    if isinstance(response, dict) and response.get("Error"):
        err = response["Error"]
        return f"{err.get('Code', 'Unknown')}: {err.get('Message', '')}".rstrip(": ")
    return str(error)


class Ec2Driver(ComputeDriver):
    name = "ec2"

    def __init__(
        self,
        region=None,
        endpoint_url=None,
        profile=None,
        aws_access_key_id=None,
        aws_secret_access_key=None,
        aws_session_token=None,
        instance_type="t3.micro",
        subnet_id=None,
        security_groups=(),
        key_name=None,
        user_data=None,
        wait_timeout=120,
        delay=5,
        client=None,
        subnets=(),
        ec2_health=SKYNET,
    ):
        self.endpoint_url = endpoint_url
        self.region = region
        self.instance_type = instance_type or "t3.micro"
        self.subnet_id = subnet_id
        # (subnet id, zone) pairs a new instance is spread over: the placement rules, subnets as hosts.
        self.subnets = tuple(subnets) or (((subnet_id, ""),) if subnet_id else ())
        self.down = {}
        self.security_groups = list(security_groups or ())
        self.key_name = key_name
        self.user_data = user_data
        self.wait_timeout = wait_timeout
        self.delay = delay
        ec2_health = ec2_health or SKYNET
        if ec2_health not in PROBERS:
            raise SkynetError(f"ec2_health {ec2_health!r} is not one of {', '.join(PROBERS)}")
        self.ec2_health = ec2_health
        if client is not None:
            self.client = client
            self.region = region or client.meta.region_name
            return
        try:
            session = boto3.session.Session(
                aws_access_key_id=aws_access_key_id,
                aws_secret_access_key=aws_secret_access_key,
                aws_session_token=aws_session_token,
                profile_name=profile,
                region_name=region,
            )
            config = botocore.config.Config(
                retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60
            )
            self.client = session.client("ec2", endpoint_url=endpoint_url, config=config)
        except botocore.exceptions.NoRegionError as e:
            raise SkynetError("EC2 needs a region: set region, or AWS_REGION, or a region in the AWS profile") from e
        except botocore.exceptions.ProfileNotFound as e:
            raise SkynetError(f"EC2: the AWS profile {profile!r} is not in the AWS config files") from e
        except (botocore.exceptions.BotoCoreError, ValueError) as e:
            raise SkynetError(f"EC2 client for {self._where()} cannot be made: {e}") from e
        self.region = self.client.meta.region_name

    @classmethod
    def from_params(cls, params, subnets=()):
        """The driver from a module's ec2_argument_spec() options (and its wait_timeout)."""
        return cls(
            **{k: params.get(k) for k in ec2_argument_spec()},
            wait_timeout=params.get("wait_timeout") or 120,
            subnets=subnets,
        )

    def unavailable(self):
        return dict(self.down)

    def _subnet_for(self, spec):
        """The subnet with the fewest instances of the service (then overall, then by zone), not failing."""
        if not self.subnets:
            return None
        hosts = [_placement.Host(s, z, available=s not in self.down) for s, z in self.subnets]
        placed = [_placement.Placed(i.host, i.id, i.service, i.created) for i in self.list(spec.service)]
        chosen = _placement.place(hosts, placed, spec.service, 1)
        if not chosen.hosts:
            refused = "".join(f"; subnet {s} refused: {why}" for s, why in sorted(self.down.items()))
            raise SkynetError(f"{self._where()}: {chosen.reason}{refused}")
        return chosen.hosts[0]

    def choose_removals(self, candidates, n, scale_in="newest_first"):
        if not self.subnets or n <= 0 or not candidates:
            return super().choose_removals(candidates, n, scale_in)
        hosts = [_placement.Host(s, z) for s, z in self.subnets]
        known = {s for s, _z in self.subnets}
        by_id = {i.id: i for i in candidates}
        # Instances in a subnet no longer listed go first: they are not where the service should run.
        strays = [i for i in candidates if i.host not in known][:n]
        placed = [_placement.Placed(i.host, i.id, i.service, i.created) for i in candidates if i.host in known]
        chosen = _placement.choose_removals(hosts, placed, candidates[0].service, n - len(strays), scale_in)
        return strays + [by_id[p.id] for p in chosen]

    def _where(self):
        if self.endpoint_url:
            return f"EC2 at {self.endpoint_url} (region {self.region})"
        return f"EC2 in region {self.region}"

    def _fail(self, what, error):
        if isinstance(error, botocore.exceptions.NoCredentialsError):
            return SkynetError(
                f"{self._where()} has no AWS credentials to {what}: set aws_access_key_id and "
                "aws_secret_access_key, a profile, or the AWS_* environment variables"
            )
        if isinstance(error, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)):
            return HostUnavailable(f"{self._where()} is unreachable while trying to {what}: {error}")
        kind = HostUnavailable if error_code(error) in SUBNET_FAILURES else SkynetError
        return kind(f"{self._where()} failed to {what}: {describe_error(error)}")

    def _call(self, what, method, **kwargs):
        try:
            return getattr(self.client, method)(**kwargs)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise self._fail(what, e) from e

    def check(self, spec=None):
        if spec is None:
            self._call("describe its region", "describe_regions", RegionNames=[self.region])
            return
        try:
            images = self.client.describe_images(ImageIds=[spec.image])["Images"]
        except botocore.exceptions.ClientError as e:
            if describe_error(e).startswith("InvalidAMIID"):
                images = []
            else:
                raise self._fail(f"describe AMI {spec.image}", e) from e
        except botocore.exceptions.BotoCoreError as e:
            raise self._fail(f"describe AMI {spec.image}", e) from e
        if not images:
            raise SkynetError(
                f"AMI {spec.image!r} does not exist in {self._where()}, or these credentials cannot see it"
            )
        state = images[0].get("State", "available")
        if state != "available":
            raise SkynetError(f"AMI {spec.image!r} in {self._where()} is {state}, not available")

    def list(self, service, color=None):
        instances = []
        try:
            pages = self.client.get_paginator("describe_instances").paginate(Filters=tag_filters(service, color))
            for page in pages:
                for reservation in page["Reservations"]:
                    instances.extend(to_instance(i, self.ec2_health) for i in reservation["Instances"])
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise self._fail(f"list the instances of {service or 'every service'}", e) from e
        return sorted(instances, key=lambda i: (i.created, i.id))

    def create(self, spec: Spec) -> Instance:
        while True:
            subnet = self._subnet_for(spec)
            try:
                return self._create(spec, subnet)
            except HostUnavailable as e:
                if subnet is None:
                    raise
                # The subnet cannot take an instance now (no capacity, no address left): the others can.
                self.down.setdefault(subnet, str(e))

    def _create(self, spec, subnet):
        name = f"skynet-{spec.service}-{spec.color}-{uuid.uuid4().hex[:8]}"
        kwargs = dict(
            ImageId=spec.image,
            InstanceType=self.instance_type,
            MinCount=1,
            MaxCount=1,
            ClientToken=name,
            TagSpecifications=[{"ResourceType": "instance", "Tags": instance_tags(spec, name, time.time())}],
        )
        if subnet:
            kwargs["SubnetId"] = subnet
        if self.security_groups:
            kwargs["SecurityGroupIds"] = self.security_groups
        if self.key_name:
            kwargs["KeyName"] = self.key_name
        if self.user_data:
            kwargs["UserData"] = self.user_data
        what = f"run an instance of {spec.service} from {spec.image}"
        instance_id = self._call(what, "run_instances", **kwargs)["Instances"][0]["InstanceId"]
        try:
            self._wait_running(instance_id)
            described = self.client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
            instance = to_instance(described, self.ec2_health)
            if not instance.address:
                raise SkynetError(f"{self._where()}: instance {instance_id} has no private IP to register")
            return instance
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError, SkynetError) as e:
            error = e if isinstance(e, SkynetError) else self._fail(f"start instance {instance_id}", e)
            try:
                self.client.terminate_instances(InstanceIds=[instance_id])
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as cleanup:
                raise SkynetError(f"{error}; terminating {instance_id} failed too: {describe_error(cleanup)}") from e
            raise SkynetError(f"{error}; instance {instance_id} was terminated") from e

    def _wait_running(self, instance_id):
        attempts = max(1, math.ceil(self.wait_timeout / self.delay))
        try:
            self.client.get_waiter("instance_running").wait(
                InstanceIds=[instance_id], WaiterConfig={"Delay": self.delay, "MaxAttempts": attempts}
            )
        except botocore.exceptions.WaiterError as e:
            last = "unknown"
            response = e.last_response or {}
            if response.get("Error"):
                last = f"error {response['Error'].get('Code')}: {response['Error'].get('Message')}"
            for reservation in response.get("Reservations", ()):
                for described in reservation.get("Instances", ()):
                    reason = (described.get("StateReason") or {}).get("Message")
                    last = described.get("State", {}).get("Name", last) + (f" ({reason})" if reason else "")
            raise SkynetError(
                f"{self._where()}: instance {instance_id} did not reach running within "
                f"{self.wait_timeout:g}s (last state: {last})"
            ) from e

    def remove(self, instance, stop_timeout=10):
        try:
            self.client.terminate_instances(InstanceIds=[instance.id])
        except botocore.exceptions.ClientError as e:
            if describe_error(e).startswith("InvalidInstanceID.NotFound"):
                return
            raise self._fail(f"terminate instance {instance.id}", e) from e
        except botocore.exceptions.BotoCoreError as e:
            raise self._fail(f"terminate instance {instance.id}", e) from e
