"""Elastic scaling end to end: real Consul, HAProxy, Prometheus and Podman, load through HAProxy."""

from __future__ import annotations

import base64
import json
import math
import threading
import time

import pytest
import requests

from harness.ansible import run_module
from harness.load import LoadLoop, LoadLoops
from harness.proc import free_port, wait_for
from harness.product import start_prometheus

COMPUTE = "cyberdyne.skynet.skynet_compute"
SCALE = "cyberdyne.skynet.skynet_scale"


@pytest.fixture
def web(stack, consul, engine, docker_client, sample_image, unique):
    """The sample service behind HAProxy on the config the collection renders, scraped by Prometheus
    with the prometheus role's recording rules; everything removed at the end."""
    name = unique("web")
    definition = {
        "name": name,
        "image": sample_image["1"],
        "port": 8080,
        "lb_port": free_port(),
        "health": {"path": "/health", "interval": "1s"},
        "scaling": {
            "min": 1,
            "max": 6,
            "cooldown_up": 4,
            "cooldown_down": 4,
            "stabilization_window": 10,
            "checks": [
                {
                    "name": "requests",
                    "query": f'service:skynet_http_requests:rate{{service="{name}"}}',
                    "aggregate": "total",
                    "target": 50,
                }
            ],
        },
    }
    haproxy = stack.rendered_haproxy([definition], consul)
    prometheus = start_prometheus(stack, [definition], {"haproxy": [f"127.0.0.1:{haproxy.stats_port}"]})
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}
    yield {
        "definition": definition,
        "url": f"http://127.0.0.1:{definition['lb_port']}/",
        "prometheus": prometheus,
        "common": common,
        "scale_args": {**common, "services": [definition], "prometheus_url": prometheus.url, "drain_period": 2},
    }
    run_module(COMPUTE, {**common, "service": name, "state": "absent", "drain_period": 0})
    consul.api("DELETE", f"kv/skynet/scale/{name}", params={"recurse": "1"})


def running(docker_client, name):
    return docker_client.containers.list(filters={"label": [f"io.skynet.service={name}"]})


def test_scales_out_under_load_and_back_in_when_it_stops(web, docker_client, consul):
    name = web["definition"]["name"]
    first = run_module(
        COMPUTE,
        {
            **web["common"],
            "service": name,
            "image": web["definition"]["image"],
            "count": 1,
            "health": web["definition"]["health"],
        },
    )
    assert first["changed"]
    wait_for(lambda: requests.get(web["url"], timeout=1).ok, 20, "the service behind HAProxy")

    with LoadLoops(web["url"], n=4, rate=50) as loads:  # ~200 requests/s
        web["prometheus"].wait_query(f'service:skynet_http_requests:rate{{service="{name}"}} > 150', timeout=40)

        # Two runs started at the same moment: one acts, the other never adds on top of it.
        results = [None, None]

        def cycle(n):
            results[n] = run_module(SCALE, web["scale_args"])

        threads = [threading.Thread(target=cycle, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        decisions = [r["decisions"][0] for r in results]
        applied = [d for d in decisions if d["applied"]]
        assert len(applied) == 1, decisions
        assert len(running(docker_client, name)) == applied[0]["desired"]
        # About 200 requests/s for a target of 50 each: out, up to the number the policy derives from what the
        # cycle measured (what the load loops achieve depends on how busy the machine is).
        measured = applied[0]["metrics"]["requests"]
        assert measured > 60 and 2 <= applied[0]["desired"] <= min(6, math.ceil(measured / 50)), applied[0]

        deadline = time.monotonic() + 60
        history = []
        while time.monotonic() < deadline:
            time.sleep(2)
            decision = run_module(SCALE, web["scale_args"])["decisions"][0]
            history.append((decision["current"], decision["desired"], decision["action"]))
            if decision["action"] == "hold" and decision["current"] >= 2:
                break
        count = len(running(docker_client, name))
        assert decision["action"] == "hold" and count == decision["current"] >= 2, history
        ids = {c.id[:12] for c in running(docker_client, name)}
        served_before = {body.split()[1].split("=")[1] for _sent, body in loads.answers}
        time.sleep(3)
        served = {body.split()[1].split("=")[1] for _sent, body in loads.answers}
        assert ids <= served, f"instances not serving traffic: {ids - served} (seen before: {served_before})"
    assert loads.failures == [], loads.failures[:5]

    with LoadLoop(web["url"], rate=10) as probe:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(running(docker_client, name)) > 1:
            time.sleep(2)
            run_module(SCALE, web["scale_args"])
    assert len(running(docker_client, name)) == 1
    assert probe.failures == [], probe.failures[:5]
    assert probe.ok > 0

    history = json.loads(base64.b64decode(consul.api("GET", f"kv/skynet/scale/{name}/history")[0]["Value"]))
    assert [d["action"] for d in history][-1] == "scale_in", "decisions are recorded in Consul KV"
    assert {"time", "metrics", "current", "desired", "reason"} <= set(history[-1])


def test_invalid_policies_change_nothing(web, docker_client):
    bad = {**web["definition"], "scaling": {**web["definition"]["scaling"], "min": 7}}
    result = run_module(SCALE, {**web["scale_args"], "services": [bad]})
    assert result.get("failed")
    assert "min (7) is above max (6)" in result["msg"] and "nothing was changed" in result["msg"]

    checks = [{"name": "requests", "query": "sum(rate(", "target": 50}]
    bad = {**web["definition"], "scaling": {**web["definition"]["scaling"], "checks": checks}}
    result = run_module(SCALE, {**web["scale_args"], "services": [bad]})
    assert result.get("failed")
    assert "rejected the query" in result["msg"]

    result = run_module(SCALE, {**web["scale_args"], "limit": ["nope"]})
    assert result.get("failed") and "unknown service(s) in limit: nope" in result["msg"]
    assert running(docker_client, web["definition"]["name"]) == []


def test_check_mode_reports_without_acting(web, docker_client):
    result = run_module(SCALE, web["scale_args"], check=True)
    decision = result["decisions"][0]
    assert decision["current"] == 0 and decision["desired"] == 1 and decision["action"] == "scale_out"
    assert "metric missing" in decision["reason"] or "requests" in decision["reason"]
    assert running(docker_client, web["definition"]["name"]) == []
