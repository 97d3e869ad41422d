from __future__ import annotations

import datetime

import boto3
import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import Instance, Spec
from ansible_collections.cyberdyne.skynet.plugins.module_utils._ec2_driver import (
    Ec2Driver,
    describe_error,
    ec2_argument_spec,
    instance_state,
    instance_tags,
    tag_filters,
    to_instance,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import HostUnavailable, SkynetError
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber

SPEC = Spec(service="web", color="green", image="ami-0abc", port=8080, labels={"team": "ops", "io.skynet.color": "x"})
LAUNCHED = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def described(state="running", ip="10.0.1.7", tags=None, instance_id="i-0123456789abcdef0"):
    entry = {
        "InstanceId": instance_id,
        "ImageId": "ami-0abc",
        "State": {"Name": state, "Code": 16},
        "LaunchTime": LAUNCHED,
        "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()],
    }
    if ip:
        entry["PrivateIpAddress"] = ip
    return entry


MANAGED_TAGS = {
    "io.skynet.managed": "true",
    "io.skynet.service": "web",
    "io.skynet.color": "green",
    "io.skynet.created": "1764090000.250000",
    "io.skynet.image": "ami-0abc",
    "io.skynet.port": "8080",
    "Name": "skynet-web-green-1a2b3c4d",
}


@pytest.mark.parametrize(
    ("ec2_state", "state"),
    [
        ("pending", "running"),
        ("running", "running"),
        ("stopping", "stopping"),
        ("stopped", "stopped"),
        ("shutting-down", "terminating"),
        ("terminated", "terminated"),
    ],
)
def test_instance_state(ec2_state, state):
    assert instance_state(ec2_state) == state


def test_instance_tags_mark_the_instance_and_cannot_be_overridden_by_labels():
    tags = instance_tags(SPEC, "skynet-web-green-1a2b3c4d", 1764090000.25)
    assert all(set(t) == {"Key", "Value"} for t in tags)
    assert {t["Key"]: t["Value"] for t in tags} == {"team": "ops", **MANAGED_TAGS}
    assert len(tags) == len(MANAGED_TAGS) + 1


@pytest.mark.parametrize(
    ("color", "extra"),
    [(None, []), ("blue", [{"Name": "tag:io.skynet.color", "Values": ["blue"]}])],
)
def test_tag_filters(color, extra):
    assert tag_filters("web", color) == [
        {"Name": "tag:io.skynet.managed", "Values": ["true"]},
        {"Name": "tag:io.skynet.service", "Values": ["web"]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        *extra,
    ]


def test_to_instance_reads_the_tags_and_the_private_ip():
    assert to_instance(described("pending", tags=MANAGED_TAGS)) == Instance(
        id="i-0123456789abcdef0",
        service="web",
        color="green",
        image="ami-0abc",
        address="10.0.1.7",
        port=8080,
        created=1764090000.25,
        state="running",
        checked_by="skynet",
    )
    assert to_instance(described(tags=MANAGED_TAGS), checked_by="esm").checked_by == "esm"


def test_to_instance_without_skynet_tags_falls_back_to_what_ec2_says():
    inst = to_instance(described("stopped", ip=None))
    assert (inst.service, inst.image, inst.address, inst.port) == ("", "ami-0abc", "", 0)
    assert inst.created == LAUNCHED.timestamp()
    assert inst.state == "stopped"


def client_error(code, message, operation="DescribeImages"):
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


def test_describe_error_gives_the_aws_code_and_message():
    assert describe_error(client_error("AuthFailure", "bad key")) == "AuthFailure: bad key"
    assert describe_error(ValueError("plain")) == "plain"


def test_argument_spec_hides_the_secrets_and_reads_the_environment():
    spec = ec2_argument_spec()
    for name, env in [
        ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
        ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ("aws_session_token", "AWS_SESSION_TOKEN"),
    ]:
        assert spec[name]["no_log"] is True
        assert spec[name]["fallback"][1] == [env]
    assert spec["endpoint_url"]["fallback"][1] == ["AWS_ENDPOINT_URL"]
    assert spec["profile"]["fallback"][1] == ["AWS_PROFILE"]
    assert spec["key_name"]["no_log"] is False


@pytest.fixture
def stubbed():
    client = boto3.client("ec2", region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s")
    with Stubber(client) as stubber:
        yield Ec2Driver(client=client, wait_timeout=2, delay=1), stubber
        stubber.assert_no_pending_responses()


def test_check_names_a_missing_ami(stubbed):
    driver, stubber = stubbed
    stubber.add_client_error("describe_images", "InvalidAMIID.NotFound", "The image id does not exist")
    with pytest.raises(SkynetError, match=r"AMI 'ami-0abc' does not exist in EC2 in region eu-west-1"):
        driver.check(SPEC)


def test_check_names_ec2_the_region_and_the_aws_error(stubbed):
    driver, stubber = stubbed
    stubber.add_client_error("describe_regions", "AuthFailure", "AWS was not able to validate the credentials")
    with pytest.raises(SkynetError) as raised:
        driver.check()
    assert str(raised.value) == (
        "EC2 in region eu-west-1 failed to describe its region: "
        "AuthFailure: AWS was not able to validate the credentials"
    )


def test_create_waits_for_running_and_returns_the_instance(stubbed):
    driver, stubber = stubbed
    stubber.add_response("run_instances", {"Instances": [described("pending", tags=MANAGED_TAGS)]})
    stubber.add_response("describe_instances", {"Reservations": [{"Instances": [described("running")]}]})
    stubber.add_response("describe_instances", {"Reservations": [{"Instances": [described(tags=MANAGED_TAGS)]}]})
    inst = driver.create(SPEC)
    assert (inst.id, inst.address, inst.port, inst.state) == ("i-0123456789abcdef0", "10.0.1.7", 8080, "running")


def test_create_terminates_an_instance_that_never_runs(stubbed):
    driver, stubber = stubbed
    stubber.add_response("run_instances", {"Instances": [described("pending")]})
    dead = {**described("terminated"), "StateReason": {"Code": "Server.InsufficientInstanceCapacity", "Message": "no"}}
    stubber.add_response("describe_instances", {"Reservations": [{"Instances": [dead]}]})
    stubber.add_response(
        "terminate_instances", {"TerminatingInstances": []}, expected_params={"InstanceIds": ["i-0123456789abcdef0"]}
    )
    with pytest.raises(SkynetError, match=r"did not reach running within 2s \(last state: terminated \(no\)\)"):
        driver.create(SPEC)


@pytest.mark.parametrize(
    ("code", "subnet_failure"),
    [
        ("InsufficientInstanceCapacity", True),
        ("InsufficientFreeAddressesInSubnet", True),
        ("InvalidSubnetID.NotFound", True),
        ("Unsupported", True),
        ("InvalidAMIID.NotFound", False),
        ("UnauthorizedOperation", False),
        ("InstanceLimitExceeded", False),  # the account's limit: no other subnet does better
    ],
)
def test_a_start_that_a_subnet_refuses_is_a_failure_of_that_subnet(code, subnet_failure):
    error = Ec2Driver(client=boto3.client("ec2", region_name="eu-west-1"))._fail(
        "run an instance", client_error(code, "no", "RunInstances")
    )
    assert isinstance(error, HostUnavailable) is subnet_failure
    assert str(error) == f"EC2 in region eu-west-1 failed to run an instance: {code}: no"


def test_a_subnet_that_refuses_a_start_is_skipped_and_the_next_one_takes_it():
    client = boto3.client("ec2", region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s")
    driver = Ec2Driver(client=client, wait_timeout=2, delay=1, subnets=[("subnet-a", "a"), ("subnet-b", "b")])
    run = dict.fromkeys(("ImageId", "InstanceType", "MinCount", "MaxCount", "ClientToken", "TagSpecifications"), ANY)
    with Stubber(client) as stubber:
        stubber.add_response("describe_instances", {"Reservations": []})
        stubber.add_client_error(
            "run_instances",
            "InvalidSubnetID.NotFound",
            "The subnet ID 'subnet-a' does not exist",
            expected_params={**run, "SubnetId": "subnet-a"},
        )
        stubber.add_response("describe_instances", {"Reservations": []})
        stubber.add_response(
            "run_instances",
            {"Instances": [described("pending", tags=MANAGED_TAGS)]},
            expected_params={**run, "SubnetId": "subnet-b"},
        )
        stubber.add_response("describe_instances", {"Reservations": [{"Instances": [described("running")]}]})
        stubber.add_response("describe_instances", {"Reservations": [{"Instances": [described(tags=MANAGED_TAGS)]}]})
        inst = driver.create(SPEC)
        stubber.assert_no_pending_responses()
    assert inst.id == "i-0123456789abcdef0"
    assert driver.unavailable() == {
        "subnet-a": "EC2 in region eu-west-1 failed to run an instance of web from ami-0abc: "
        "InvalidSubnetID.NotFound: The subnet ID 'subnet-a' does not exist"
    }


def test_removing_an_instance_already_gone_is_not_an_error(stubbed):
    driver, stubber = stubbed
    stubber.add_client_error("terminate_instances", "InvalidInstanceID.NotFound", "gone")
    driver.remove(to_instance(described(tags=MANAGED_TAGS)))


def test_missing_credentials_name_ec2_and_the_region(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    driver = Ec2Driver(region="us-west-2", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(SkynetError, match=r"EC2 at http://127.0.0.1:9 \(region us-west-2\) has no AWS credentials"):
        driver.check()


def test_a_region_is_required(monkeypatch, tmp_path):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    with pytest.raises(SkynetError, match="EC2 needs a region"):
        Ec2Driver(aws_access_key_id="k", aws_secret_access_key="s")


def test_from_params_takes_the_module_options():
    driver = Ec2Driver.from_params(
        {"region": "eu-west-1", "aws_access_key_id": "k", "aws_secret_access_key": "s", "wait_timeout": 30.0}
    )
    assert (driver.region, driver.instance_type, driver.security_groups, driver.wait_timeout) == (
        "eu-west-1",
        "t3.micro",
        [],
        30.0,
    )
