"""One skynet_scale cycle over two computes: a Docker pool (the real engine) and EC2 (a real moto_server).

moto hands out private IPs from the subnet's CIDR. The VPC here is on loopback (127.0.55.0/24), and the
test listens on every address its subnets can hand out (harness.ec2), so the checks of the EC2 instances
pass as they would in a VPC and the cycle waits for them as it does for containers.
"""

from __future__ import annotations

import pytest

from harness.ansible import run_module
from harness.ec2 import loopback_vpc

SCALE = "cyberdyne.skynet.skynet_scale"
COMPUTE = "cyberdyne.skynet.skynet_compute"
SUBNETS = {"us-east-1a": "127.0.55.0/28", "us-east-1b": "127.0.55.16/28"}


@pytest.fixture(scope="module")
def aws(moto):
    """Two subnets in two zones of a VPC on loopback, every address they hand out answering."""
    ec2 = moto.boto3()
    with loopback_vpc(ec2, "127.0.55.0/24", SUBNETS) as vpc:
        ami = sorted(i["ImageId"] for i in ec2.describe_images(Owners=["amazon"])["Images"])[0]
        yield {"ec2": ec2, "subnets": vpc.subnets, "port": vpc.port, "ami": ami, "url": moto.url}


def test_one_cycle_scales_a_docker_service_and_an_ec2_service_spread_over_subnets(
    aws, consul, engine, docker_client, sample_image, unique
):
    web, api = unique("web"), unique("api")
    computes = {
        "default": {"type": "docker", "hosts": [{"name": "engine", "url": engine.docker_host, "address": "127.0.0.1"}]},
        "aws": {"type": "ec2", "region": "us-east-1", "endpoint_url": aws["url"], "subnets": aws["subnets"]},
    }

    def policy(n):
        return {"min": 0, "max": 4, "checks": [{"name": "load", "value": n * 10, "aggregate": "total", "target": 10}]}

    def services(n):
        return [
            {
                "name": web,
                "image": sample_image["1"],
                "port": 8080,
                "health": {"path": "/health"},
                "scaling": policy(n),
            },
            {
                "name": api,
                "compute": "aws",
                "image": aws["ami"],
                "port": aws["port"],
                "health": {"type": "tcp", "interval": "1s"},
                "scaling": policy(n),
            },
        ]

    args = {
        "computes": computes,
        "consul_url": consul.url,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "prometheus_url": "http://127.0.0.1:9",  # unused: the checks' values are given
        "drain_period": 0,
        "wait_timeout": 60,
    }
    try:
        result = run_module(SCALE, {**args, "services": services(2)})
        assert not result.get("failed"), result.get("msg")
        decisions = {d["service"]: d for d in result["decisions"]}
        assert decisions[web]["applied"] and decisions[api]["applied"], decisions
        assert (decisions[web]["compute"], decisions[api]["compute"]) == ("default", "aws")
        running = aws["ec2"].describe_instances(
            Filters=[
                {"Name": "tag:io.skynet.service", "Values": [api]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )
        vms = [i for r in running["Reservations"] for i in r["Instances"]]
        assert sorted(i["SubnetId"] for i in vms) == sorted(s["id"] for s in aws["subnets"])  # one in each zone
        passing = consul.api("GET", f"health/service/{api}", params={"passing": "1"})
        assert sorted(e["Service"]["Meta"]["skynet_zone"] for e in passing) == ["us-east-1a", "us-east-1b"]
        assert len(consul.api("GET", f"health/service/{web}", params={"passing": "1"})) == 2

        again = run_module(SCALE, {**args, "services": services(2)})
        assert not again.get("failed") and not again["changed"], again

        unknown = services(2)
        unknown[1]["compute"] = "gpu"
        refused = run_module(SCALE, {**args, "services": unknown})
        assert refused.get("failed")
        assert "compute 'gpu' is not a defined compute (defined: aws, default)" in refused["msg"]
        assert "nothing was changed" in refused["msg"]
    finally:
        for name, compute in ((web, "default"), (api, "aws")):
            cleanup = {k: v for k, v in args.items() if k not in ("prometheus_url", "wait_timeout")}
            run_module(COMPUTE, {**cleanup, "service": name, "compute": compute, "state": "absent"})
