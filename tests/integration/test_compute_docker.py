"""skynet_compute on a real Docker API engine (Podman) and a real Consul, through Ansible."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from harness.ansible import run_module
from harness.load import LoadLoop
from harness.proc import free_port, wait_for
from harness.stack import consul_backend

MODULE = "cyberdyne.skynet.skynet_compute"
# What every module that changes a service needs besides the service itself: its lock.
LOCK_RULES = 'session_prefix "" { policy = "write" }\nkey_prefix "skynet/lock/" { policy = "write" }'


def haproxy_for(stack, consul, service):
    frontend = free_port()
    stack.haproxy(consul_backend(service, frontend, consul.dns_port))
    return f"http://127.0.0.1:{frontend}/"


def passing_ids(consul, service):
    entries = consul.api("GET", f"health/service/{service}", params={"passing": "1"})
    return sorted(e["Service"]["Meta"]["skynet_instance"] for e in entries)


def registered_ids(consul, service):
    return sorted(e["ServiceMeta"]["skynet_instance"] for e in consul.api("GET", f"catalog/service/{service}"))


def containers_of(docker_client, service):
    return docker_client.containers.list(all=True, filters={"label": [f"io.skynet.service={service}"]})


@pytest.fixture
def compute(engine, consul, docker_client, unique):
    """Arguments shared by every call for one service, and a cleanup that removes what is left."""
    service = unique("web")
    base = {
        "service": service,
        "docker_host": engine.docker_host,
        "consul_url": consul.url,
        "health": {"path": "/health", "interval": "1s"},
        "drain_period": 2,
        "stop_timeout": 2,
        "wait_timeout": 30,
    }
    yield base
    for c in containers_of(docker_client, service):
        c.remove(force=True)
    for e in consul.api("GET", f"catalog/service/{service}"):
        consul.api("PUT", f"agent/service/deregister/{e['ServiceID']}")


def test_lifecycle(stack, consul, docker_client, sample_image, compute):
    service = compute["service"]
    v1 = {**compute, "image": sample_image["1"]}

    first = run_module(MODULE, {**v1, "count": 3})
    assert first["changed"], first
    assert len(first["created"]) == 3
    assert len(passing_ids(consul, service)) == 3
    assert {i["port"] for i in first["instances"]} == {
        int(c.ports["8080/tcp"][0]["HostPort"]) for c in containers_of(docker_client, service)
    }

    again = run_module(MODULE, {**v1, "count": 3})
    assert not again["changed"], again

    predicted = run_module(MODULE, {**v1, "count": 5}, check=True, diff=True)
    assert predicted["changed"]
    assert predicted["created"] == ["(new 1)", "(new 2)"]
    assert predicted["diff"]["before"]["count"] == 3 and predicted["diff"]["after"]["count"] == 5
    assert len(containers_of(docker_client, service)) == 3

    five = run_module(MODULE, {**v1, "count": 5}, diff=True)
    assert len(five["created"]) == 2 and five["diff"]["after"]["count"] == 5
    assert len(passing_ids(consul, service)) == 5

    url = haproxy_for(stack, consul, service)
    wait_for(
        lambda: len({requests.get(url, timeout=2).text for _request in range(10)}) == 5, 20, "HAProxy to use all 5"
    )
    with LoadLoop(url, rate=50) as load:
        time.sleep(1)
        one = run_module(MODULE, {**v1, "count": 1})
        time.sleep(1)
    assert len(one["removed"]) == 4
    assert load.failures == [], f"{len(load.failures)} failed requests during scale-in: {load.failures[:5]}"
    assert load.ok > 50
    assert len(containers_of(docker_client, service)) == 1
    newest_first = sorted(five["instances"], key=lambda i: i["created"])[0]["id"]
    assert [i["id"] for i in one["instances"]] == [newest_first], "scale-in must remove the newest first"

    run_module(MODULE, {**v1, "count": 2})
    lowest = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            lowest.append(len(passing_ids(consul, service)))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with LoadLoop(url, rate=50) as load:
        rolled = run_module(MODULE, {**compute, "image": sample_image["2"], "count": 2})
        time.sleep(1)
    stop.set()
    watcher.join()
    assert len(rolled["replaced"]) == 2
    assert min(lowest) >= 2, "the rolling update dropped below the healthy count"
    assert load.failures == [], load.failures[:5]
    assert {i["image"] for i in rolled["instances"]} == {sample_image["2"]}
    assert wait_for(lambda: "version=2" in requests.get(url, timeout=2).text, 10, "version 2 behind HAProxy")

    gone = run_module(MODULE, {**compute, "state": "absent"})
    assert len(gone["removed"]) == 2
    assert containers_of(docker_client, service) == []
    assert registered_ids(consul, service) == []


def test_missing_image_fails_before_anything_changes(consul, docker_client, compute):
    result = run_module(MODULE, {**compute, "image": "localhost/no-such-image:9", "count": 2})
    assert result.get("failed")
    assert "image 'localhost/no-such-image:9' is not on the Docker API engine" in result["msg"]
    assert containers_of(docker_client, compute["service"]) == []


def test_unreachable_consul_fails_before_anything_changes(docker_client, sample_image, compute):
    url = f"http://127.0.0.1:{free_port()}"
    result = run_module(MODULE, {**compute, "image": sample_image["1"], "count": 1, "consul_url": url})
    assert result.get("failed")
    assert f"Consul at {url} is unreachable" in result["msg"]
    assert containers_of(docker_client, compute["service"]) == []


def test_unreachable_engine_is_named(sample_image, compute, tmp_path):
    host = f"unix://{tmp_path}/nothing.sock"
    result = run_module(MODULE, {**compute, "image": sample_image["1"], "count": 1, "docker_host": host})
    assert result.get("failed")
    assert f"Docker API at {host} is unreachable" in result["msg"]


def test_port_clash_leaves_no_container(consul, docker_client, sample_image, compute):
    port = free_port()
    first = run_module(MODULE, {**compute, "image": sample_image["1"], "count": 1, "host_port": port})
    assert first["changed"]
    clash = run_module(MODULE, {**compute, "image": sample_image["1"], "count": 2, "host_port": port})
    assert clash.get("failed")
    assert f"port clash: host port {port}" in clash["msg"]
    assert len(containers_of(docker_client, compute["service"])) == 1
    assert len(registered_ids(consul, compute["service"])) == 1


def test_an_instance_that_never_passes_is_removed(consul, docker_client, sample_image, compute):
    result = run_module(
        MODULE, {**compute, "image": sample_image["1"], "count": 1, "env": {"HEALTHY": "false"}, "wait_timeout": 4}
    )
    assert result.get("failed")
    assert "did not pass their health check within 4s; they were removed" in result["msg"]
    assert containers_of(docker_client, compute["service"]) == []
    assert registered_ids(consul, compute["service"]) == []


def test_the_consul_token_is_never_printed(sample_image, compute):
    result = run_module(MODULE, {**compute, "image": sample_image["1"], "count": 0, "consul_token": "t0p-s3cret"})
    assert "t0p-s3cret" not in repr(result)


@pytest.fixture(scope="module")
def acl_consul(session_stack):
    return session_stack.consul("consul-acl", acl=True)


def test_a_token_that_cannot_register_leaves_nothing_and_says_so(acl_consul, docker_client, sample_image, compute):
    read_only = acl_consul.acl_token(
        'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n' + LOCK_RULES
    )
    args = {**compute, "image": sample_image["1"], "count": 1, "consul_url": acl_consul.url, "consul_token": read_only}
    result = run_module(MODULE, args)
    assert result.get("failed")
    assert f"Consul at {acl_consul.url} refused the request: the token lacks permission" in result["msg"]
    assert "register skynet-" in result["msg"]
    assert containers_of(docker_client, compute["service"]) == []
    assert "could not remove" not in result["msg"]
    assert read_only not in repr(result)


def test_a_registration_left_behind_is_named_and_the_removed_container_is_not(
    acl_consul, docker_client, sample_image, compute
):
    service = compute["service"]
    rules = f'service "{service}" {{ policy = "write" }}\nnode_prefix "" {{ policy = "read" }}\n' + LOCK_RULES
    policy = acl_consul.api("PUT", "acl/policy", json={"Name": f"policy-{service}", "Rules": rules})
    token = acl_consul.api("PUT", "acl/token", json={"Policies": [{"ID": policy["ID"]}]})
    args = {
        **compute,
        "image": sample_image["1"],
        "count": 1,
        "env": {"HEALTHY": "false"},
        "wait_timeout": 20,
        "consul_url": acl_consul.url,
        "consul_token": token["SecretID"],
    }

    def revoke_once_registered():
        # The token goes while the instance waits to pass: its deregistration is then refused.
        wait_for(lambda: acl_consul.api("GET", f"catalog/service/{service}"), 30, f"{service} registered")
        acl_consul.api("DELETE", f"acl/token/{token['AccessorID']}")

    revoker = threading.Thread(target=revoke_once_registered)
    revoker.start()
    try:
        result = run_module(MODULE, args)
        revoker.join(40)
        assert result.get("failed")
        assert "refused the request: the token lacks permission (ACL not found)" in result["msg"]
        (entry,) = acl_consul.api("GET", f"catalog/service/{service}")
        left = entry["ServiceMeta"]["skynet_instance"]
        assert f"could not remove what was started: registration {left} (Consul at {acl_consul.url}" in result["msg"]
        assert f"instance {left}" not in result["msg"]
        assert containers_of(docker_client, service) == []
    finally:
        revoker.join(40)
        for e in acl_consul.api("GET", f"catalog/service/{service}"):
            acl_consul.api("PUT", f"agent/service/deregister/{e['ServiceID']}")
