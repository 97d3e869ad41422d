"""Event-Driven Ansible: ansible-rulebook runs the collection's rulebook (extensions/eda/rulebooks/
autoscale.yml) with the collection's event sources against the real stack. An Alertmanager notification
and a wake record each lead to the autoscale cycle of the service they name, its decision recorded in
Consul KV. Real Consul, Prometheus and Podman; ansible-rulebook with Java 17 from Debian."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
import requests
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _wake

from harness.proc import free_port, wait_for
from harness.product import COLLECTIONS, start_prometheus, zero_definition
from harness.prometheus_role import notification
from harness.services import remove_service, service_containers

RULEBOOK = Path(sys.executable).parent / "ansible-rulebook"


def _listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def rulebook(stack, consul, engine, sample_image, unique):
    """ansible-rulebook on the rulebook, its inventory carrying the autoscale playbook's variables for a web
    service at min 1 with no instance yet and an api service at min 0."""
    web = zero_definition(unique("web"), sample_image["1"])
    web["scaling"]["min"] = 1
    api = zero_definition(unique("api"), sample_image["1"])
    services = [web, api]
    prometheus = start_prometheus(stack, services, {})
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "skynet_services": services,
        "skynet_consul_url": consul.url,
        "skynet_prometheus_url": prometheus.url,
        "skynet_docker_host": engine.docker_host,
        "skynet_autoscale_drain_period": 1,
    }
    inventory = stack.path("eda", "inventory.json")
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": host}}}))
    port = free_port()
    variables = stack.path("eda", "vars.json")
    variables.write_text(json.dumps({"skynet_consul_url": consul.url, "skynet_eda_listen_port": port}))
    home = stack.path("eda", "ansible-home", ".keep").parent
    env = {
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    argv = [str(RULEBOOK), "-i", str(inventory), "--rulebook", "cyberdyne.skynet.autoscale"]
    proc = stack.start("ansible-rulebook", [*argv, "--vars", str(variables), "-v"], env=env)
    proc.wait_ready(lambda: _listening(port), timeout=90)
    yield {"web": web, "api": api, "url": f"http://127.0.0.1:{port}/alertmanager"}
    for s in services:
        remove_service({"docker_host": engine.docker_host, "consul_url": consul.url}, consul, s["name"])
        consul.api("DELETE", f"kv/skynet/wake/{s['name']}")


def _decision(consul, name, timeout=90):
    return wait_for(
        lambda: consul.api("GET", f"kv/skynet/scale/{name}/last", params={"raw": "1"}),
        timeout,
        f"a decision for {name} in Consul KV",
        interval=0.5,
    )


def test_an_alertmanager_notification_runs_the_cycle_of_its_service(rulebook, consul, docker_client):
    web, api = rulebook["web"], rulebook["api"]
    r = requests.post(rulebook["url"], json=notification([web["name"]], [api["name"]]), timeout=5)
    assert r.status_code == 200 and r.json() == {"services": [web["name"]]}
    decision = _decision(consul, web["name"])
    assert (decision["action"], decision["desired"]) == ("scale_out", 1), decision
    assert len(service_containers(docker_client, web["name"])) == 1
    # The resolved alert ran nothing.
    time.sleep(2)
    keys = consul.api("GET", "kv/skynet/scale/", params={"keys": ""})
    assert not [k for k in keys if k.startswith(f"skynet/scale/{api['name']}/")], keys
    assert requests.post(rulebook["url"], data=b"{", timeout=5).status_code == 400


def test_a_wake_record_wakes_its_service_at_zero(rulebook, consul, docker_client):
    api = rulebook["api"]
    assert service_containers(docker_client, api["name"]) == []
    consul.api("PUT", f"kv/{_wake.key(api['name'])}", data=json.dumps(_wake.record("lb-test", time.time(), "blue")))
    decision = _decision(consul, api["name"])
    assert (decision["action"], decision["desired"]) == ("scale_out", 1), decision
    assert "woken" in decision["reason"], decision
    assert len(service_containers(docker_client, api["name"])) == 1
