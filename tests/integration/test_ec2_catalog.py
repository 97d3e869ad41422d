"""EC2 instances as nodes of their own in the Consul catalog: real Consul agents, moto, instances that answer.

The VPC is on loopback and every address it hands out answers HTTP (harness.ec2), so the checks Skynet runs
itself (ec2_health: skynet) pass as in a real VPC, and stop passing when one address stops answering.
"""

from __future__ import annotations

import re
import signal
import threading

import pytest
import requests

from harness.ansible import run_module
from harness.ec2 import loopback_vpc
from harness.proc import wait_for

COMPUTE = "cyberdyne.skynet.skynet_compute"
SCALE = "cyberdyne.skynet.skynet_scale"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
NODE_META = {"skynet-external": "true"}  # ec2_health skynet: not the meta consul-esm adopts
HEALTH = {"path": "/health", "interval": "1s", "timeout": "1s"}
FSM = ("consul_fsm_register_count", "consul_fsm_deregister_count", "consul_fsm_txn_count")


@pytest.fixture(scope="module")
def ec2(moto):
    return moto.boto3()


@pytest.fixture(scope="module")
def vpc(ec2):
    with loopback_vpc(ec2, "127.0.57.0/24", {"us-east-1a": "127.0.57.0/28", "us-east-1b": "127.0.57.16/28"}) as v:
        yield v


@pytest.fixture(scope="module")
def ami(ec2):
    return sorted(i["ImageId"] for i in ec2.describe_images(Owners=["amazon"])["Images"])[0]


def running(ec2, service, states=("pending", "running")):
    filters = [
        {"Name": "tag:io.skynet.service", "Values": [service]},
        {"Name": "instance-state-name", "Values": list(states)},
    ]
    found = ec2.describe_instances(Filters=filters)["Reservations"]
    return {i["InstanceId"]: i for r in found for i in r["Instances"]}


def external_nodes(consul, service):
    """The external nodes of the catalog that hold an instance of service."""
    external = {n["Node"] for n in consul.api("GET", "catalog/nodes", params={"node-meta": "skynet-external:true"})}
    return {e["Node"] for e in consul.api("GET", f"catalog/service/{service}")} & external


def left_nodes(consul, ec2, service):
    """Instances of service, in any state, that have a node in the catalog although they are not running."""
    every = running(ec2, service, ("pending", "running", "stopping", "stopped", "shutting-down", "terminated"))
    gone = set(every) - set(running(ec2, service))
    return [i for i in sorted(gone) if consul.api("GET", f"catalog/node/{i}") is not None]


def node_checks(consul, node):
    return {c["CheckID"]: c for c in consul.api("GET", f"health/node/{node}")}


def indexes(consul, node):
    """ModifyIndex of the node, of its services and of its checks."""
    entry = consul.api("GET", f"catalog/node/{node}")
    return (
        entry["Node"]["ModifyIndex"],
        {sid: s["ModifyIndex"] for sid, s in entry["Services"].items()},
        {cid: c["ModifyIndex"] for cid, c in node_checks(consul, node).items()},
    )


def fsm_writes(consul):
    """How many catalog registrations, deregistrations and transactions the server has applied. A registration
    identical to what the catalog holds leaves every ModifyIndex as it is but is still a Raft write: these
    counters see it."""
    text = requests.get(f"{consul.url}/v1/agent/metrics", params={"format": "prometheus"}, timeout=10).text
    found = dict(re.findall(r"^(consul_fsm_\w+_count) (\S+)$", text, re.M))
    return {name: float(found.get(name, 0)) for name in FSM}


def test_an_instance_on_its_own_node_outlives_the_agent_the_module_talked_to(stack, moto, ec2, vpc, ami, unique):
    server = stack.consul("consul-server")
    agent = stack.consul("consul-agent", join=server)
    service, contrast = unique("api"), unique("on-agent")
    args = {
        "service": service,
        "compute": "ec2",
        "region": "us-east-1",
        "endpoint_url": moto.url,
        **CREDENTIALS,
        "subnet_id": vpc.subnets[0]["id"],
        "image": ami,
        "count": 1,
        "port": vpc.port,
        "health": HEALTH,
        "consul_url": agent.url,
        "wait_timeout": 60,
        "drain_period": 0,
    }
    try:
        first = run_module(COMPUTE, args)
        assert first["changed"], first
        ((iid, inst),) = running(ec2, service).items()
        ip = inst["PrivateIpAddress"]
        node = server.api("GET", f"catalog/node/{iid}")
        assert node["Node"]["Address"] == ip and node["Node"]["Meta"] == NODE_META
        assert list(node["Services"]) == [f"skynet-{service}-{iid}"]
        check = node_checks(server, iid)[f"service:skynet-{service}-{iid}"]
        assert check["Status"] == "passing"
        assert check["Output"] == f"skynet probe: HTTP GET http://{ip}:{vpc.port}/health: 200 OK"
        assert check["Definition"]["HTTP"] == f"http://{ip}:{vpc.port}/health"
        wait_for(lambda: server.dig(f"{service}.service.consul", "A") == [ip], 10, "the instance in DNS")

        # The contrast: a service registered on the agent, as EC2 instances were before.
        agent.api("PUT", "agent/service/register", json={"Name": contrast, "Port": 1})
        wait_for(lambda: server.dig(f"{contrast}.service.consul", "A") == ["127.0.0.1"], 10, "the agent's service")

        before = indexes(server, iid), fsm_writes(server)
        again = run_module(COMPUTE, args)
        assert not again["changed"], again
        assert (indexes(server, iid), fsm_writes(server)) == before, "a steady run wrote to the catalog"

        agent.process.signal(signal.SIGKILL)
        agent.process.stop()
        failed = 4  # a member's serf status: failed, as a crashed agent is

        def status():
            return {m["Name"]: m["Status"] for m in server.api("GET", "agent/members")}.get("consul-agent")

        wait_for(lambda: status() == failed, 30, "the agent to be seen failed")
        server.api("PUT", "agent/force-leave/consul-agent")
        wait_for(lambda: server.api("GET", "catalog/node/consul-agent") is None, 30, "the agent's node to be reaped")

        assert server.api("GET", f"catalog/service/{contrast}") == [], "the agent's own service outlived its node"
        assert server.api("GET", f"catalog/node/{iid}")["Node"]["Meta"] == NODE_META
        assert node_checks(server, iid)[f"service:skynet-{service}-{iid}"]["Status"] == "passing"
        assert server.dig(f"{service}.service.consul", "A") == [ip]
        # The next run, through an agent that is there, finds nothing to do.
        assert not run_module(COMPUTE, {**args, "consul_url": server.url})["changed"]
    finally:
        gone = run_module(COMPUTE, {**args, "consul_url": server.url, "state": "absent"})
        assert not gone.get("failed"), gone.get("msg")
    assert server.api("GET", f"catalog/node/{iid}") is None


def test_a_failing_instance_turns_critical_at_the_next_cycle_and_is_replaced_then_drained_and_removed(
    consul, moto, ec2, vpc, ami, unique
):
    service = unique("api")
    computes = {"aws": {"type": "ec2", "region": "us-east-1", "endpoint_url": moto.url, "subnets": vpc.subnets}}
    scaling = {"min": 0, "max": 4, "cooldown_up": 0, "cooldown_down": 0, "stabilization_window": 0}
    definition = {"name": service, "compute": "aws", "image": ami, "port": vpc.port, "health": HEALTH}
    definition["scaling"] = {**scaling, "checks": [{"name": "load", "value": 20, "aggregate": "total", "target": 10}]}
    cycle = {
        "services": [definition],
        "computes": computes,
        "consul_url": consul.url,
        **CREDENTIALS,
        "prometheus_url": "http://127.0.0.1:9",  # unused: the check's value is given
        "drain_period": 0,
        "wait_timeout": 60,
        "health_grace": 0,
    }
    compute = {k: cycle[k] for k in ("computes", "consul_url", "aws_access_key_id", "aws_secret_access_key")}
    compute.update(service=service, compute="aws", image=ami, port=vpc.port, health=HEALTH, wait_timeout=60)
    stopped = None
    try:
        first = run_module(SCALE, cycle)
        assert first["decisions"][0]["applied"], first
        vms = running(ec2, service)
        assert len(vms) == 2 and external_nodes(consul, service) == set(vms)

        failing = sorted(vms)[0]
        stopped = vms[failing]["PrivateIpAddress"]
        vpc.stop(stopped)
        second = run_module(SCALE, {**cycle, "unhealthy_after": 60})
        (decision,) = second["decisions"]
        assert decision["unhealthy"] == [failing], decision
        check = node_checks(consul, failing)[f"service:skynet-{service}-{failing}"]
        assert check["Status"] == "critical"
        assert check["Output"].startswith(f"skynet probe: HTTP GET http://{stopped}:{vpc.port}/health: ")
        assert "refused" in check["Output"]
        assert stopped not in consul.dig(f"{service}.service.consul", "A")
        # Not counted: its replacement started at once, and passes.
        assert len(running(ec2, service)) == 3
        assert len(consul.api("GET", f"health/service/{service}", params={"passing": "1"})) == 2

        third = run_module(SCALE, {**cycle, "unhealthy_after": 0})
        (decision,) = third["decisions"]
        assert decision["replaced"] == [failing], decision
        vms = running(ec2, service)
        assert failing not in vms and len(vms) == 2
        assert consul.api("GET", f"catalog/node/{failing}") is None, "the replaced instance's node was left"
        assert external_nodes(consul, service) == set(vms) and left_nodes(consul, ec2, service) == []
        assert len(consul.api("GET", f"health/service/{service}", params={"passing": "1"})) == 2
        vpc.serve(stopped)
        stopped = None

        # Scale-in to one: the one removed is drained first (out of DNS while it is stopped), then its node goes.
        results = []
        scale_in = threading.Thread(
            target=lambda: results.append(run_module(COMPUTE, {**compute, "count": 1, "drain_period": 4}))
        )
        scale_in.start()
        try:

            def drained():
                for node in vms:
                    checks = node_checks(consul, node)
                    if f"_service_maintenance:skynet-{service}-{node}" in checks:
                        return node, checks
                return None

            node, checks = wait_for(drained, 60, "an instance drained")
            maintenance = checks[f"_service_maintenance:skynet-{service}-{node}"]
            assert maintenance["Status"] == "critical" and maintenance["Notes"] == "draining before scale-in"
            address = vms[node]["PrivateIpAddress"]
            assert address not in consul.dig(f"{service}.service.consul", "A")
            assert consul.api("GET", f"catalog/node/{node}") is not None  # drained, not yet removed
        finally:
            scale_in.join(120)
        (result,) = results
        assert result["removed"] == [node], result
        assert consul.api("GET", f"catalog/node/{node}") is None
        left = running(ec2, service)
        assert list(left) == [i for i in vms if i != node] and external_nodes(consul, service) == set(left)
    finally:
        if stopped:
            vpc.serve(stopped)
        gone = run_module(COMPUTE, {**compute, "state": "absent"})
        assert not gone.get("failed"), gone.get("msg")
    assert external_nodes(consul, service) == set() and left_nodes(consul, ec2, service) == []


def test_an_instance_stopped_outside_skynet_leaves_dns_and_is_replaced_at_the_next_cycle_despite_the_cooldown(
    consul, moto, ec2, vpc, ami, unique
):
    """A spot reclaim, an operator: EC2 stops an instance. Its node is no agent's, so nothing but the cycle takes
    it out: the next one removes it (its node goes) and starts its replacement, which no cooldown holds back."""
    service = unique("api")
    computes = {"aws": {"type": "ec2", "region": "us-east-1", "endpoint_url": moto.url, "subnets": vpc.subnets}}
    scaling = {"min": 0, "max": 4, "cooldown_up": 600, "cooldown_down": 600, "stabilization_window": 0}
    definition = {"name": service, "compute": "aws", "image": ami, "port": vpc.port, "health": HEALTH}
    definition["scaling"] = {**scaling, "checks": [{"name": "load", "value": 20, "aggregate": "total", "target": 10}]}
    cycle = {
        "services": [definition],
        "computes": computes,
        "consul_url": consul.url,
        **CREDENTIALS,
        "prometheus_url": "http://127.0.0.1:9",  # unused: the check's value is given
        "drain_period": 0,
        "wait_timeout": 60,
    }
    try:
        first = run_module(SCALE, cycle)
        assert first["decisions"][0]["applied"], first
        vms = running(ec2, service)
        assert len(vms) == 2 and external_nodes(consul, service) == set(vms)

        gone = sorted(vms)[0]
        ec2.stop_instances(InstanceIds=[gone])
        wait_for(lambda: gone not in running(ec2, service), 30, "the instance stopped")
        second = run_module(SCALE, cycle)
        (decision,) = second["decisions"]
        assert decision["applied"] and "that stopped running: " + gone in decision["reason"], decision
        assert consul.api("GET", f"catalog/node/{gone}") is None, "the stopped instance's node was left"
        vms = running(ec2, service)
        assert gone not in vms and len(vms) == 2 and external_nodes(consul, service) == set(vms)
        assert len(consul.api("GET", f"health/service/{service}", params={"passing": "1"})) == 2
        assert left_nodes(consul, ec2, service) == []
    finally:
        compute = {k: cycle[k] for k in ("computes", "consul_url", "aws_access_key_id", "aws_secret_access_key")}
        compute.update(service=service, compute="aws", image=ami, port=vpc.port, health=HEALTH, state="absent")
        removed = run_module(COMPUTE, compute)
        assert not removed.get("failed"), removed.get("msg")
