"""The multi-host stack the end-to-end tests run on: a Consul cluster, Docker hosts and a load
balancer, each in a network namespace of its own on a private bridge, reached from the root one."""

from __future__ import annotations

import contextlib
import time
import uuid

import requests
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import COLOR_LABEL, SERVICE_LABEL
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registrator import container_labels

from harness.images import build_sample_image
from harness.proc import wait_for
from harness.stack import remove_containers

UP = 2  # srv_op_state in `show servers state`
LB_PORT = 18080
OUT_OF_DNS_LIMIT = 12


def test_cluster_has_a_leader_and_every_agent_is_a_member(multihost):
    leader = multihost.wait_leader(5)
    for node in multihost.servers:
        assert node.agent.leader() == f"{leader.address}:8300", node.name
    names = {n.name for n in [*multihost.servers, *multihost.hosts, multihost.lb]}
    assert multihost.members() == dict.fromkeys(names, 1)
    # Every host's agent answers from the root namespace, on the host's own address.
    for host in multihost.hosts:
        assert host.consul_url == f"http://{host.address}:8500"
        assert requests.get(f"{host.consul_url}/v1/agent/self", timeout=5).json()["Member"]["Addr"] == host.address
    assert len({h.address for h in multihost.hosts}) == len(multihost.hosts)
    pool = multihost.computes()["default"]
    assert pool["type"] == "docker"
    assert [(h["name"], h["address"]) for h in pool["hosts"]] == [(h.name, h.address) for h in multihost.hosts]
    print("\nmultihost: started in", ", ".join(f"{k} {v:.1f}s" for k, v in multihost.timings.items()))


def _registered(host, service):
    return [s for s in host.agent.api("GET", "agent/services").values() if s["Service"] == service]


def _up(lb, backend, address):
    return any(a == address and state == UP for a, state in lb.server_states(backend).values())


def test_container_is_registered_resolved_served_and_cut_off_with_its_host(multihost):
    service = f"web{uuid.uuid4().hex[:4]}"
    lb, host = multihost.lb, multihost.host(2)
    lb.start_haproxy([{"name": service, "port": 8080, "lb_port": LB_PORT, "health": {"path": "/health"}}])
    client = host.client()
    image = build_sample_image(client, "1")
    labels = {SERVICE_LABEL: service, COLOR_LABEL: "blue", **container_labels({"path": "/health"})}
    started = time.monotonic()
    container = client.containers.run(
        image, detach=True, labels=labels, ports={"8080/tcp": (host.address, None)}, name=f"{service}-1"
    )
    try:
        # The registrator registers it on its own host's agent, at the host's address.
        (reg,) = wait_for(lambda: _registered(host, service), 15, f"{service} on {host.name}'s agent")
        assert reg["Address"] == host.address
        assert reg["Meta"]["skynet_registrator"] == host.name
        for other in multihost.hosts:
            if other is not host:
                assert _registered(other, service) == []
        # The LB's agent resolves it and HAProxy (in the LB namespace) serves it to the root one.
        wait_for(lambda: lb.agent.dig(f"blue.{service}.service.consul", "A") == [host.address], 15, "DNS")
        wait_for(lambda: _up(lb, f"{service}_blue", host.address), 20, "HAProxy to have the instance UP")
        to_up = time.monotonic() - started
        answer = requests.get(lb.url(LB_PORT), timeout=5)
        assert answer.status_code == 200 and "version=1" in answer.text, answer.text

        cut = time.monotonic()
        multihost.cut(2)
        wait_for(lambda: lb.agent.dig(f"blue.{service}.service.consul", "A") == [], OUT_OF_DNS_LIMIT, "out of DNS")
        out_of_dns = time.monotonic() - cut
        # Serf marks the member failed; each agent's view of it follows within a probe or two.
        wait_for(lambda: multihost.members()[host.name] != 1, 10, f"{host.name} not alive in the members")
        wait_for(lambda: not _up(lb, f"{service}_blue", host.address), 10, "HAProxy to stop using it")
        out_of_haproxy = time.monotonic() - cut

        restore = time.monotonic()
        multihost.restore(2)
        restored = time.monotonic() - restore
        wait_for(lambda: _up(lb, f"{service}_blue", host.address), 30, "HAProxy to have it UP again")
        back = time.monotonic() - restore
        assert "version=1" in requests.get(lb.url(LB_PORT), timeout=5).text
        assert [r["Address"] for r in _registered(host, service)] == [host.address]
        assert multihost.members()[host.name] == 1
        print(
            f"\nmultihost: container start -> HAProxy UP {to_up:.1f}s; cut -> out of DNS {out_of_dns:.1f}s, "
            f"out of HAProxy {out_of_haproxy:.1f}s; restore {restored:.1f}s, -> UP again {back:.1f}s"
        )
    finally:
        with contextlib.suppress(Exception):
            remove_containers([container])
        client.close()


def test_a_killed_leader_is_replaced_and_the_catalog_still_takes_registrations(multihost):
    # Last in the module: a leader's crash leaves broken RPC connections behind, and an agent
    # whose catalog sync fails on one waits 15 s before it tries again.
    names = {n.name for n in [*multihost.servers, *multihost.hosts, multihost.lb]}
    killed_at = time.monotonic()
    killed = multihost.kill_leader()
    successor = multihost.wait_leader(30)
    reelected = time.monotonic() - killed_at
    assert successor is not killed
    multihost.start_server(killed)
    assert multihost.members() == dict.fromkeys(names, 1)
    assert killed.agent.leader() == f"{successor.address}:8300"
    multihost.settle()
    service = f"after{uuid.uuid4().hex[:4]}"
    registered = time.monotonic()
    for host in multihost.hosts:
        body = {"ID": f"{service}-{host.name}", "Name": service, "Address": host.address, "Port": 1}
        host.agent.api("PUT", "agent/service/register", json=body)
    expected = sorted(h.address for h in multihost.hosts)
    wait_for(lambda: sorted(multihost.lb.agent.dig(f"{service}.service.consul", "A")) == expected, 20, "DNS")
    in_dns = time.monotonic() - registered
    print(f"\nmultihost: leader killed -> new leader in {reelected:.1f}s; registrations then in DNS in {in_dns:.1f}s")
