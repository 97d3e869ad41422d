"""skynet_scale on a pool of three Docker hosts: placement, a host cut off under load, a killed leader.

Everything is real: three Consul servers, an agent, a Podman engine and the registrator on each Docker
host, HAProxy on the collection's config in the load balancer's namespace, Prometheus with the
prometheus role's rules scraping it. The cycles are the module run through Ansible, as the timer runs it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

import pytest
import requests

from harness.ansible import run_module, run_playbook
from harness.images import build_sample_image
from harness.load import LoadLoop, LoadLoops
from harness.proc import wait_for
from harness.product import start_prometheus

SCALE = "cyberdyne.skynet.skynet_scale"
COMPUTE = "cyberdyne.skynet.skynet_compute"
LB_PORT = 18090
HOST_GRACE = 10
CYCLE_EVERY = 6


@pytest.fixture(scope="module")
def web(multihost):
    """The sample service behind the load balancer's HAProxy, scraped by Prometheus, on the three-host pool."""
    name = f"web{uuid.uuid4().hex[:4]}"
    images = {h.name: build_sample_image(h.client(), "1") for h in multihost.hosts}
    definition = {
        "name": name,
        "image": images[multihost.host(1).name],
        "port": 8080,
        "lb_port": LB_PORT,
        "health": {"path": "/health", "interval": "1s", "deregister_after": "10m"},
        "scaling": {
            "min": 1,
            "max": 6,
            "cooldown_up": 2,
            "cooldown_down": 5,
            "stabilization_window": 5,
            "checks": [
                {
                    "name": "requests",
                    "query": f'service:skynet_http_requests:rate{{service="{name}"}}',
                    "aggregate": "total",
                    "target": 15,
                }
            ],
        },
    }
    lb = multihost.lb
    lb.start_haproxy([definition])
    prometheus = start_prometheus(multihost.stack, [definition], {"haproxy": [lb.stats_url.split("//", 1)[1]]})
    # The controller's agent is the load balancer's: a client agent, so that killing the leader leaves it.
    common = {"computes": multihost.computes(), "consul_url": lb.consul_url}
    return {
        "name": name,
        "definition": definition,
        "url": lb.url(LB_PORT),
        "prometheus": prometheus,
        "common": common,
        "scale": {
            **common,
            "services": [definition],
            "prometheus_url": prometheus.url,
            "drain_period": 1,
            "host_grace": HOST_GRACE,
            "wait_timeout": 60,
        },
    }


def spread(multihost, name):
    """{host name: running containers of name} on every host that answers."""
    out = {}
    for host in multihost.hosts:
        if host.cut_off:
            continue
        client = host.client(timeout=10)
        try:
            out[host.name] = len(client.containers.list(filters={"label": [f"io.skynet.service={name}"]}))
        finally:
            client.close()
    return out


def passing(multihost, name):
    entries = multihost.lb.agent.api("GET", f"health/service/{name}", params={"passing": "1"})
    return Counter(e["Service"]["Meta"].get("skynet_host") for e in entries)


def catalog(multihost, name):
    return multihost.lb.agent.api("GET", f"catalog/service/{name}")


def cycle(web):
    result = run_module(SCALE, web["scale"])
    assert not result.get("failed"), result.get("msg")
    return result["decisions"][0]


def scale_to_six(multihost, web, loads):
    """Cycles (at most 8) until 6 instances pass; the decisions of each."""
    history = []
    for _cycle in range(8):
        d = cycle(web)
        history.append((d["current"], d["desired"], d["action"]))
        if sum(passing(multihost, web["name"]).values()) == 6 and d["action"] == "hold":
            return history
        time.sleep(2)
    raise AssertionError(f"not at 6 passing instances after 8 cycles: {history}")


def test_load_takes_the_service_from_1_to_6_spread_2_2_2_each_serving(multihost, web):
    first = run_module(
        COMPUTE,
        {
            **web["common"],
            "service": web["name"],
            "image": web["definition"]["image"],
            "count": 1,
            "health": web["definition"]["health"],
        },
    )
    assert first["changed"] and first["unavailable"] == {}
    (instance,) = first["instances"]
    assert instance["host"] in {h.name for h in multihost.hosts}
    wait_for(lambda: requests.get(web["url"], timeout=2).ok, 30, "the service behind HAProxy")

    with LoadLoops(web["url"], n=4, rate=40) as loads:  # ~160 requests/s: 6 instances at a target of 15
        web["prometheus"].wait_query(f'service:skynet_http_requests:rate{{service="{web["name"]}"}} > 100', 40)
        history = scale_to_six(multihost, web, loads)
        assert spread(multihost, web["name"]) == {h.name: 2 for h in multihost.hosts}, history
        assert passing(multihost, web["name"]) == {h.name: 2 for h in multihost.hosts}
        # One catalog entry per instance, on its own host's agent, however many registered it.
        entries = catalog(multihost, web["name"])
        assert len(entries) == 6
        for e in entries:
            assert e["Node"] == e["ServiceMeta"]["skynet_host"], e
        ids = {e["ServiceMeta"]["skynet_instance"] for e in entries}
        time.sleep(3)
        served = {body.split("instance=")[1].split()[0][:12] for _sent, body in loads.answers[-300:]}
        assert ids <= served, f"instances not serving through HAProxy: {ids - served}"
    assert loads.failures == [], loads.failures[:5]
    print(f"\nmultihost scaling: 1 -> 6 in {len(history)} cycle(s): {history}")


def test_a_host_cut_off_under_load_is_replaced_on_the_survivors_and_the_spread_comes_back(multihost, web):
    name = web["name"]
    lost = multihost.host(3)
    survivors = {h.name for h in multihost.hosts if h is not lost}
    try:
        _cut_and_restore(multihost, web, name, lost, survivors)
    finally:
        if lost.cut_off:
            multihost.restore(3)  # the stack is the module's: the next test gets three hosts


def _cut_and_restore(multihost, web, name, lost, survivors):
    with LoadLoops(web["url"], n=4, rate=40) as loads:
        scale_to_six(multihost, web, loads)
        before = len(loads.failures)
        cut_at = time.monotonic()
        multihost.cut(3)
        cycles, decisions = 0, []
        while True:
            time.sleep(CYCLE_EVERY)
            cycles += 1
            d = cycle(web)  # no cycle fails as a whole: cycle() asserts it
            decisions.append(d)
            assert d["unavailable_hosts"][lost.name]["reason"], d
            counted = passing(multihost, name)
            if sum(counted[h] for h in survivors) == 6:
                break
            assert cycles < 3 + HOST_GRACE // CYCLE_EVERY, decisions
        replaced_in = time.monotonic() - cut_at
        assert decisions[0]["unavailable_hosts"][lost.name]["lost"] is False  # its grace period first
        assert decisions[-1]["unavailable_hosts"][lost.name]["lost"] is True
        assert sorted(spread(multihost, name).values()) == [3, 3]
        failed_in_window = len(loads.failures) - before
    with LoadLoop(web["url"], rate=20) as probe:
        time.sleep(3)
    assert probe.failures == [], probe.failures[:5]

    restore_at = time.monotonic()
    multihost.restore(3)
    with LoadLoops(web["url"], n=4, rate=40) as loads:
        history = []
        for _cycle in range(8):
            time.sleep(CYCLE_EVERY)
            d = cycle(web)
            history.append((d["current"], d["desired"], d["action"], d.get("unavailable_hosts")))
            if spread(multihost, name) == {h.name: 2 for h in multihost.hosts} and d["action"] == "hold":
                break
        else:
            raise AssertionError(f"the spread did not come back: {spread(multihost, name)}; {history}")
        converged_in = time.monotonic() - restore_at
    assert loads.failures == [], loads.failures[:5]
    assert passing(multihost, name) == {h.name: 2 for h in multihost.hosts}
    print(
        f"\nmultihost host loss: 6 passing on the survivors {replaced_in:.1f}s after the cut ({cycles} cycle(s), "
        f"grace {HOST_GRACE}s), {failed_in_window} failed request(s) in the detection window; "
        f"back to 2/2/2 {converged_in:.1f}s after the restore ({len(history)} cycle(s))"
    )


def test_after_the_leader_is_killed_the_next_cycles_scale_with_no_double_action(multihost, web):
    name = web["name"]
    lower = {**web["definition"], "scaling": {**web["definition"]["scaling"], "max": 4}}
    rounds = []
    with LoadLoops(web["url"], n=4, rate=40):
        scale_to_six(multihost, web, None)
        killed = multihost.kill_leader()
        started = time.monotonic()
        multihost.wait_leader(30)
        # Two runs at the same moment, until one acts (the first after an election may find no leader yet).
        for _round in range(4):
            results = [None, None]

            def one(n, out):
                out[n] = run_module(SCALE, {**web["scale"], "services": [lower]})

            threads = [threading.Thread(target=one, args=(n, results)) for n in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rounds.append(results)
            if any(r["decisions"][0].get("applied") for r in results if r.get("decisions")):
                break
            time.sleep(3)
        scaled_in = time.monotonic() - started
    decided = [r["decisions"][0] for rs in rounds for r in rs if r.get("decisions")]
    applied = [d for d in decided if d.get("applied")]
    assert len(applied) == 1 and applied[0]["action"] == "scale_in", rounds
    assert sum(spread(multihost, name).values()) == 4
    assert sum(passing(multihost, name).values()) == 4
    multihost.start_server(killed)
    print(f"\nmultihost leader kill: scaled in {scaled_in:.1f}s after the kill, in {len(rounds)} round(s) of two runs")


def test_the_autoscale_playbook_builds_its_pool_from_the_inventorys_docker_hosts(multihost, web, tmp_path):
    """No skynet_computes: the default pool is the docker_hosts group, each host with its own API and agent."""
    name = f"pb{uuid.uuid4().hex[:4]}"
    hosts = {
        h.name: {
            "skynet_docker_url": h.docker_host,  # the harness's engines are unix sockets; tcp://ADDRESS:2376 else
            "skynet_advertise_address": h.address,
        }
        for h in multihost.hosts
    }
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"children": {"docker_hosts": {"hosts": hosts}}}}))
    definition = {
        **web["definition"],
        "name": name,
        "lb_port": None,
        "scaling": {"min": 3, "max": 3, "checks": [{"name": "fixed", "value": 3, "aggregate": "total", "target": 1}]},
    }
    variables = {
        "skynet_services": [definition],
        "skynet_consul_url": multihost.lb.consul_url,
        "skynet_prometheus_url": "http://127.0.0.1:9",
        "skynet_autoscale_drain_period": 0,
    }
    try:
        out = run_playbook("autoscale", variables, tmp_path, inventory=str(inventory))
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        assert spread(multihost, name) == {h.name: 1 for h in multihost.hosts}
        for e in catalog(multihost, name):
            assert e["Node"] == e["ServiceMeta"]["skynet_host"]  # registered on its own host's agent
    finally:
        run_module(COMPUTE, {**web["common"], "service": name, "state": "absent", "drain_period": 0})
