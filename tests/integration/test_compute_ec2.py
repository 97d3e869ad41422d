"""skynet_compute on EC2 (a real moto_server) and a real Consul, through Ansible.

The instances run in a subnet on loopback where nothing answers, so their checks (which Skynet runs: they are
probed on loopback only) never pass: the tests run with `wait: false` and a TCP check, and assert what is
registered rather than that it passes (test_ec2_catalog has instances that answer).
"""

from __future__ import annotations

import pytest

from harness.ansible import run_module
from harness.proc import free_port

MODULE = "cyberdyne.skynet.skynet_compute"
# moto accepts any credentials; a distinctive secret shows whether it leaks anywhere.
SECRET = "Sk7nEt-s3cret-8c1f0e"
LIVE = ("pending", "running", "stopping", "stopped")


def instances_of(ec2, service, states=LIVE):
    filters = [
        {"Name": "tag:io.skynet.service", "Values": [service]},
        {"Name": "instance-state-name", "Values": list(states)},
    ]
    pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
    return {i["InstanceId"]: i for page in pages for r in page["Reservations"] for i in r["Instances"]}


def registrations(consul, service):
    return {e["ServiceMeta"]["skynet_instance"]: e for e in consul.api("GET", f"catalog/service/{service}")}


@pytest.fixture(scope="module")
def ec2(moto):
    return moto.boto3()


@pytest.fixture(scope="module")
def amis(ec2):
    images = ec2.describe_images(Owners=["amazon"])["Images"]
    return sorted(i["ImageId"] for i in images if i["State"] == "available")[:2]


@pytest.fixture(scope="module")
def subnet(ec2):
    """A subnet on loopback, so that the instances' checks probe nothing outside this machine."""
    vpc = ec2.create_vpc(CidrBlock="127.0.56.0/24")["Vpc"]["VpcId"]
    return ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.56.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]


@pytest.fixture
def compute(moto, consul, ec2, subnet, unique):
    """Arguments shared by every call for one service, and a cleanup that removes what is left."""
    service = unique("api")
    base = {
        "service": service,
        "compute": "ec2",
        "subnet_id": subnet,
        "region": "us-east-1",
        "endpoint_url": moto.url,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": SECRET,
        "consul_url": consul.url,
        "port": 9090,
        "tags": ["api", "ec2"],
        "health": {"type": "tcp", "interval": "30s", "deregister_after": "30m"},
        "wait": False,
        "drain_period": 0,
    }
    yield base
    left = list(instances_of(ec2, service))
    if left:
        ec2.terminate_instances(InstanceIds=left)
    for e in consul.api("GET", f"catalog/service/{service}"):
        consul.api("PUT", "catalog/deregister", json={"Node": e["Node"]})


def assert_registered(consul, ec2, service, ami):
    """Every running instance is registered at its private IP and the service port, on a node of its own, and
    nothing else is."""
    running = instances_of(ec2, service, ("pending", "running"))
    registered = registrations(consul, service)
    assert set(registered) == set(running)
    checks = {c["ServiceID"]: c for c in consul.api("GET", f"health/checks/{service}")}
    for iid, inst in running.items():
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["io.skynet.managed"] == "true"
        assert tags["io.skynet.service"] == service and tags["io.skynet.color"] == "blue"
        assert tags["io.skynet.image"] == ami == inst["ImageId"]
        assert float(tags["io.skynet.created"]) > 0
        assert tags["Name"].startswith(f"skynet-{service}-blue-")
        entry = registered[iid]
        assert entry["ServiceAddress"] == inst["PrivateIpAddress"]
        assert entry["ServicePort"] == 9090
        assert entry["ServiceTags"] == ["api", "blue", "ec2"]
        # The subnet it runs in is its host, as a pool's instances name theirs (placement spreads over subnets).
        where = {"skynet_host": inst["SubnetId"], "skynet_zone": inst["Placement"]["AvailabilityZone"]}
        assert entry["ServiceMeta"] == {"skynet_instance": iid, "skynet_color": "blue", "skynet_image": ami, **where}
        assert entry["Node"] == iid and entry["Address"] == inst["PrivateIpAddress"]
        # Skynet runs its check (ec2_health skynet): not the meta consul-esm adopts.
        assert entry["NodeMeta"] == {"skynet-external": "true"}
        assert checks[entry["ServiceID"]]["Definition"]["TCP"] == f"{inst['PrivateIpAddress']}:9090"
    external = consul.api("GET", "catalog/nodes", params={"node-meta": "skynet-external:true"})
    assert {n["Node"] for n in external} >= set(running)
    return running


def test_lifecycle(consul, ec2, amis, compute):
    service = compute["service"]
    v1 = {**compute, "image": amis[0]}

    first = run_module(MODULE, {**v1, "count": 3})
    assert first["changed"], first
    assert len(first["created"]) == 3
    running = assert_registered(consul, ec2, service, amis[0])
    assert set(first["created"]) == set(running)
    assert {(i["address"], i["port"]) for i in first["instances"]} == {
        (i["PrivateIpAddress"], 9090) for i in running.values()
    }

    again = run_module(MODULE, {**v1, "count": 3})
    assert not again["changed"], again

    predicted = run_module(MODULE, {**v1, "count": 5}, check=True, diff=True)
    assert predicted["changed"]
    assert predicted["created"] == ["(new 1)", "(new 2)"] and predicted["removed"] == []
    assert predicted["diff"]["before"]["count"] == 3 and predicted["diff"]["after"]["count"] == 5
    assert len(instances_of(ec2, service)) == 3

    five = run_module(MODULE, {**v1, "count": 5}, diff=True)
    assert len(five["created"]) == 2 and five["diff"]["after"]["count"] == 5
    assert len(assert_registered(consul, ec2, service, amis[0])) == 5

    one = run_module(MODULE, {**v1, "count": 1})
    assert len(one["removed"]) == 4
    oldest = sorted(five["instances"], key=lambda i: i["created"])[0]["id"]
    assert [i["id"] for i in one["instances"]] == [oldest], "scale-in must remove the newest first"
    assert list(instances_of(ec2, service)) == [oldest]
    assert set(instances_of(ec2, service, ("shutting-down", "terminated"))) == set(one["removed"])
    assert_registered(consul, ec2, service, amis[0])

    rolled = run_module(MODULE, {**compute, "image": amis[1], "count": 2})
    assert rolled["replaced"] == [oldest]
    assert {i["image"] for i in rolled["instances"]} == {amis[1]}
    assert len(assert_registered(consul, ec2, service, amis[1])) == 2

    gone = run_module(MODULE, {**compute, "state": "absent"})
    assert sorted(gone["removed"]) == sorted(i["id"] for i in rolled["instances"])
    assert gone["instances"] == []
    assert instances_of(ec2, service) == {}
    assert registrations(consul, service) == {}
    removed = set(one["removed"]) | set(rolled["replaced"]) | set(gone["removed"])
    assert [iid for iid in removed if consul.api("GET", f"catalog/node/{iid}")] == [], "a node left behind"
    assert not run_module(MODULE, {**compute, "state": "absent"})["changed"]


def test_a_stopped_instance_is_terminated_and_replaced(consul, ec2, amis, compute):
    args = {**compute, "image": amis[0], "count": 2}
    first = run_module(MODULE, args)
    stopped = first["created"][0]
    ec2.stop_instances(InstanceIds=[stopped])

    result = run_module(MODULE, args)
    assert result["changed"]
    assert result["removed"] == [stopped]
    assert len(result["created"]) == 1
    assert stopped in instances_of(ec2, compute["service"], ("shutting-down", "terminated"))
    assert len(assert_registered(consul, ec2, compute["service"], amis[0])) == 2


def test_an_unknown_ami_fails_before_anything_changes(moto, consul, ec2, compute):
    result = run_module(MODULE, {**compute, "image": "ami-00000000", "count": 2})
    assert result.get("failed")
    assert f"AMI 'ami-00000000' does not exist in EC2 at {moto.url} (region us-east-1)" in result["msg"]
    assert instances_of(ec2, compute["service"], ("pending", "running", "shutting-down", "terminated")) == {}
    assert registrations(consul, compute["service"]) == {}


def test_an_unreachable_endpoint_is_named(ec2, amis, compute):
    url = f"http://127.0.0.1:{free_port()}"
    result = run_module(MODULE, {**compute, "image": amis[0], "count": 1, "endpoint_url": url})
    assert result.get("failed")
    assert f"EC2 at {url} (region us-east-1) is unreachable while trying to describe AMI {amis[0]}" in result["msg"]
    assert SECRET not in repr(result)


def test_credentials_and_endpoint_from_the_environment_are_never_printed(monkeypatch, moto, ec2, amis, compute):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET + "-token")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    args = {k: v for k, v in compute.items() if k not in ("region", "endpoint_url", "aws_secret_access_key")}
    del args["aws_access_key_id"]
    result = run_module(MODULE, {**args, "image": amis[0], "count": 1})
    assert result["changed"], result
    assert len(instances_of(ec2, compute["service"])) == 1
    assert SECRET not in repr(result)
    assert result["invocation"]["module_args"]["aws_secret_access_key"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"

    failed = run_module(MODULE, {**compute, "image": "ami-00000000", "count": 1})
    assert failed.get("failed")
    assert SECRET not in repr(failed)
