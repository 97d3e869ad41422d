"""An EC2 subnet that refuses a start, in a skynet_scale cycle: a real moto_server, a real Consul.

The subnet fails for real: it is deleted (as a network team may delete a subnet a compute still lists), so
run_instances in it answers InvalidSubnetID.NotFound. moto does not model a zone out of capacity or a subnet
out of addresses (InsufficientInstanceCapacity, InsufficientFreeAddressesInSubnet); the driver treats those
codes the same way (tests/unit: test_ec2_driver).
"""

from __future__ import annotations

import pytest

from harness.ansible import run_module
from harness.ec2 import loopback_vpc

SCALE = "cyberdyne.skynet.skynet_scale"
COMPUTE = "cyberdyne.skynet.skynet_compute"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
EVERY_STATE = ("pending", "running", "stopping", "stopped", "shutting-down", "terminated")


@pytest.fixture
def ec2(moto):
    return moto.boto3()


def instances(ec2, service, states=EVERY_STATE):
    filters = [
        {"Name": "tag:io.skynet.service", "Values": [service]},
        {"Name": "instance-state-name", "Values": list(states)},
    ]
    found = ec2.describe_instances(Filters=filters)["Reservations"]
    return {i["InstanceId"]: i for r in found for i in r["Instances"]}


def test_a_subnet_that_refuses_a_start_is_reported_and_the_instances_start_in_the_others(consul, moto, ec2, unique):
    web, batch = unique("web"), unique("batch")
    with loopback_vpc(ec2, "127.0.58.0/24", {"us-east-1a": "127.0.58.0/28", "us-east-1b": "127.0.58.16/28"}) as vpc:
        ami = sorted(i["ImageId"] for i in ec2.describe_images(Owners=["amazon"])["Images"])[0]
        aws = {"type": "ec2", "region": "us-east-1", "endpoint_url": moto.url, "subnets": vpc.subnets}
        computes = {"aws": aws}

        def service(name, n, compute="aws"):
            checks = [{"name": "load", "value": n * 10, "aggregate": "total", "target": 10}]
            return {
                "name": name,
                "compute": compute,
                "image": ami,
                "port": vpc.port,
                "health": {"path": "/health", "interval": "1s"},
                "scaling": {"min": 0, "max": 4, "cooldown_up": 0, "checks": checks},
            }

        args = {
            "computes": computes,
            "consul_url": consul.url,
            **CREDENTIALS,
            "prometheus_url": "http://127.0.0.1:9",  # unused: the checks' values are given
            "drain_period": 0,
            "wait_timeout": 60,
        }
        try:
            first = run_module(SCALE, {**args, "services": [service(web, 1)]})
            assert first["decisions"][0]["applied"], first
            ((kept, vm),) = instances(ec2, web).items()
            (failing,) = [s["id"] for s in vpc.subnets if s["id"] != vm["SubnetId"]]
            ec2.delete_subnet(SubnetId=failing)

            # Three wanted: the empty subnet comes first by placement, refuses, and is skipped for the rest.
            grown = run_module(SCALE, {**args, "services": [service(web, 3)]})
            assert not grown.get("failed"), grown.get("msg")
            (decision,) = grown["decisions"]
            assert decision["applied"] and not decision["error"], decision
            report = decision["unavailable_hosts"]
            assert list(report) == [failing] and report[failing]["lost"] is False
            assert f"InvalidSubnetID.NotFound: The subnet ID '{failing}' does not exist" in report[failing]["reason"]
            every = instances(ec2, web)
            assert {i["State"]["Name"] for i in every.values()} <= {"pending", "running"}, "a start was left behind"
            assert len(every) == 3 and {i["SubnetId"] for i in every.values()} == {vm["SubnetId"]}
            entries = consul.api("GET", f"health/service/{web}", params={"passing": "1"})
            assert sorted(e["Node"]["Node"] for e in entries) == sorted(every)
            assert kept in every

            # A steady cycle starts nothing, so it tries no subnet and reports none.
            steady = run_module(SCALE, {**args, "services": [service(web, 3)]})
            assert not steady["changed"] and "unavailable_hosts" not in steady["decisions"][0], steady

            # A compute whose every subnet refuses: that service fails, naming why; nothing of it is left; the
            # other service of the cycle is decided and applied.
            computes["gone"] = {**aws, "subnets": [{"id": failing, "zone": "us-east-1b"}]}
            both = run_module(SCALE, {**args, "services": [service(web, 4), service(batch, 1, "gone")]})
            assert both.get("failed")
            decisions = {d["service"]: d for d in both["decisions"]}
            assert decisions[web]["applied"] and len(instances(ec2, web, ("pending", "running"))) == 4
            error = decisions[batch]["error"]
            assert "no available host" in error and f"subnet {failing} refused: " in error, error
            assert "InvalidSubnetID.NotFound" in error and f"scaling failed for {batch}: " in both["msg"]
            assert instances(ec2, batch) == {} and consul.api("GET", f"catalog/service/{batch}") == []
        finally:
            for name, compute in ((web, "aws"), (batch, "gone")):
                cleanup = {**{k: args[k] for k in ("consul_url", "aws_access_key_id", "aws_secret_access_key")}}
                cleanup.update(computes=computes, service=name, compute=compute, state="absent")
                gone = run_module(COMPUTE, cleanup)
                assert not gone.get("failed"), gone.get("msg")
