"""Blue/green releases end to end: real Consul, HAProxy (two nodes, the renderer's config), Prometheus
and Podman; skynet_bluegreen through Ansible while load runs through HAProxy and every failure counts."""

from __future__ import annotations

import base64
import json
import os
import threading
import time

import pytest
import requests

from harness.ansible import run_module
from harness.ansible import run_playbook as playbook_run
from harness.load import LoadLoops
from harness.proc import free_port, wait_for
from harness.stack import remove_containers

BLUEGREEN = "cyberdyne.skynet.skynet_bluegreen"
COMPUTE = "cyberdyne.skynet.skynet_compute"
SCALE = "cyberdyne.skynet.skynet_scale"


def seen(load):
    """(wall time sent, version) of each answered request of a LoadLoops."""
    return [(sent, body.rsplit("version=", 1)[-1]) for sent, body in load.answers]


class Node:
    """One HAProxy node on the renderer's whole config, with its own map files and admin socket."""

    def __init__(self, stack, consul, service, name):
        self.name, self.service = name, service
        self.lb_port, self.preview_port = free_port(), free_port()
        definition = {**service, "lb_port": self.lb_port, "preview_port": self.preview_port}
        self.haproxy = stack.rendered_haproxy([definition], consul, name)
        self.map_dir, self.socket, self.process = self.haproxy.map_dir, self.haproxy.socket, self.haproxy.process

    @property
    def url(self):
        return f"http://127.0.0.1:{self.lb_port}/"

    @property
    def preview_url(self):
        return f"http://127.0.0.1:{self.preview_port}/"

    def command(self, cmd):
        return self.haproxy.command(cmd)

    def route(self, preview=False):
        lines = self.command(f"show map {self.map_dir}/{'preview' if preview else 'live'}.map").split()
        return lines[2] if len(lines) >= 3 else None

    def map_file(self):
        return (self.map_dir / "live.map").read_text().split()

    def requests_to(self, proxy):
        lines = self.command("show stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            return 0
        header = lines[0][2:].split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == proxy and row.get("svname") == "FRONTEND":
                return int(row.get("req_tot") or 0)
        return 0

    def as_arg(self, socket=None):
        return {"name": self.name, "admin_socket": str(socket or self.socket), "map_dir": str(self.map_dir)}


def versions(url, n=20):
    return {requests.get(url, timeout=2).text.strip().rsplit("version=", 1)[-1] for _request in range(n)}


def kv(consul, key):
    r = requests.get(f"{consul.url}/v1/kv/{key}", timeout=5)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return json.loads(base64.b64decode(r.json()[0]["Value"]))


@pytest.fixture
def release(stack, consul, engine, docker_client, sample_image, unique):
    """Version 1 of a service on blue (2 instances) behind two HAProxy nodes; everything removed at the end."""
    name = unique("bg")
    service = {"name": name, "port": 8080, "health": {"path": "/health", "interval": "1s"}, "scaling": {"max": 6}}
    nodes = [Node(stack, consul, service, "lb1"), Node(stack, consul, service, "lb2")]
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}
    first = run_module(
        COMPUTE,
        {
            **common,
            "service": name,
            "image": sample_image["1"],
            "color": "blue",
            "count": 2,
            "health": service["health"],
            "wait_timeout": 90,
        },
    )
    assert not first.get("failed"), first.get("msg")
    for node in nodes:
        wait_for(lambda node=node: versions(node.url, 6) == {"1"}, 30, f"version 1 behind {node.name}")
    args = {
        **common,
        "service": name,
        "image": sample_image["2"],
        "health": service["health"],
        "haproxy": [node.as_arg() for node in nodes],
        "health_timeout": 30,
        "scale_down_delay": 1,
        "drain_period": 1,
        "stop_timeout": 2,
    }
    yield {"name": name, "nodes": nodes, "args": args, "common": common, "service": service}
    remove_containers(containers(docker_client, name))
    for e in consul.api("GET", f"catalog/service/{name}"):
        consul.api("PUT", f"agent/service/deregister/{e['ServiceID']}")
    consul.api("DELETE", f"kv/skynet/bluegreen/{name}", params={"recurse": "1"})
    consul.api("DELETE", f"kv/skynet/scale/{name}", params={"recurse": "1"})


def containers(docker_client, name, color=None):
    labels = [f"io.skynet.service={name}"] + ([f"io.skynet.color={color}"] if color else [])
    return docker_client.containers.list(all=True, filters={"label": labels})


def registered_colors(consul, name):
    return sorted({e["ServiceMeta"]["skynet_color"] for e in consul.api("GET", f"catalog/service/{name}")})


def prometheus_for(stack, nodes):
    targets = [f"127.0.0.1:{node.haproxy.stats_port}" for node in nodes]
    return stack.prometheus(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "haproxy", "static_configs": [{"targets": targets}]}],
        }
    )


def run_playbook(extra_vars, tmp_path, inventory="localhost,"):
    out = playbook_run("bluegreen", extra_vars, tmp_path, timeout=300, inventory=inventory)
    return out.returncode, out.stdout + out.stderr


def test_release_under_load_switches_both_nodes_without_a_failed_request(
    stack, consul, docker_client, sample_image, release, tmp_path
):
    name, (lb1, lb2), args = release["name"], release["nodes"], release["args"]
    prometheus = prometheus_for(stack, [lb1, lb2])
    error_rate = 'sum(rate(haproxy_backend_http_responses_total{proxy="${backend}",code="5xx"}[10s])) or vector(0)'
    args = {
        **args,
        "preview": {"enabled": True, "url": lb1.preview_url, "rate": 10, "duration": 1},
        "post_analysis": {
            "duration": 2,
            "interval": 1,
            "checks": [{"name": "5xx rate", "query": error_rate, "max": 0}],
        },
        "prometheus_url": prometheus.url,
    }

    planned = run_module(BLUEGREEN, args, check=True, diff=True)
    assert planned["changed"] and not planned.get("failed"), planned
    assert planned["plan"]["action"] == "release" and planned["plan"]["target"] == "green"
    assert planned["plan"]["count"] == 2 and planned["plan"]["steps"] == [
        "deploy",
        "verify",
        "switch",
        "watch",
        "retire",
    ]
    assert planned["diff"] == {"before": {"live": "blue"}, "after": {"live": "green"}}
    assert containers(docker_client, name, "green") == []

    with LoadLoops(lb1.url) as load:
        time.sleep(1)
        result = run_module(BLUEGREEN, args)
        time.sleep(1)
    assert not result.get("failed"), result["msg"]
    rate = (load.ok + len(load.failures)) / load.seconds
    print(
        f"\nrelease 1 -> 2 under {rate:.0f} requests/s: {load.ok} answered, {len(load.failures)} failed; "
        f"{result['timings']}"
    )
    assert load.failures == [], f"{len(load.failures)} failed requests: {load.failures[:5]}"
    # 4 x 50 requests/s are sent; a machine busy with other test runs may starve the load threads a little.
    assert rate >= 100, f"the load ran at {rate:.0f} requests/s only"

    assert result["changed"] and result["live"] == "green" and result["previous"] == "blue"
    assert [p["phase"] for p in result["phases"]] == ["deploy", "verify", "switch", "watch", "retire"]
    assert all(p["outcome"] == "ok" for p in result["phases"]), result["phases"]
    assert set(result["timings"]) == {"deploy", "verify", "switch", "watch", "retire", "total"}
    assert result["preview"]["ok"] > 0 and result["preview"]["failed"] == 0, result["preview"]
    assert [a["passed"] for a in result["analysis"]] == [True]
    assert [(n["switched"], n["serves"]) for n in result["nodes"]] == [(True, "green"), (True, "green")]

    switch = next(p for p in result["phases"] if p["phase"] == "switch")
    before = {v for sent, v in seen(load) if sent < switch["started"]}
    after = {v for sent, v in seen(load) if sent > switch["ended"]}
    assert before == {"1"} and after == {"2"}, (before, after)
    assert len([s for s in seen(load) if s[0] > switch["ended"]]) > 100
    for node in (lb1, lb2):
        assert node.route() == f"{name}_green" and node.map_file() == [name, f"{name}_green"]
        assert node.route(preview=True) == f"{name}_blue", "the preview frontend shows the idle color"
        assert versions(node.url) == {"2"}
    assert containers(docker_client, name, "blue") == []
    assert registered_colors(consul, name) == ["green"]
    assert kv(consul, f"skynet/bluegreen/{name}/live") == "green"
    assert kv(consul, f"skynet/bluegreen/{name}/release")["phase"] == "done"
    assert [h["phase"] for h in kv(consul, f"skynet/bluegreen/{name}/history")] == ["done"]

    # The same release again, from the playbook as AWX runs it: the survey's answers as extra vars, the
    # definitions and connection settings from the inventory (which the playbook's defaults must not outrank),
    # the image from the definition.
    definition = {**release["service"], "images": {"2": sample_image["2"]}, "bluegreen": {"scale_down_delay": 1}}
    settings = {
        "skynet_services": [definition],
        "skynet_consul_url": consul.url,
        "skynet_docker_host": args["docker_host"],
        "skynet_haproxy_nodes": args["haproxy"],
    }
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": settings}}}))
    rc, out = run_playbook({"service": name, "version": "2"}, tmp_path, inventory=str(inventory))
    assert rc == 0, out
    assert "changed=0" in out and "failed=0" in out, out
    assert f"already runs {sample_image['2']} on its live color green" in out

    # Roll back on request after the release: blue is started again from version 1, then switched to.
    with LoadLoops(lb1.url, n=1) as probe:
        back = run_module(BLUEGREEN, {**args, "state": "rolled_back"})
    assert not back.get("failed"), back["msg"]
    assert back["live"] == "blue" and [p["phase"] for p in back["phases"]] == ["rollback"]
    assert [n["serves"] for n in back["nodes"]] == ["blue", "blue"], back["nodes"]
    assert "2 started again from" in back["phases"][0]["detail"]
    assert probe.failures == [], probe.failures[:5]
    rollback = back["phases"][0]
    assert {v for sent, v in seen(probe) if sent > rollback["ended"]} <= {"1"}
    assert versions(lb2.url) == {"1"} and containers(docker_client, name, "green") == []
    assert lb1.route(preview=True) == lb2.route(preview=True) == f"{name}_green"
    assert kv(consul, f"skynet/bluegreen/{name}/release")["phase"] == "rolled_back"
    again = run_module(BLUEGREEN, {**args, "state": "rolled_back"})
    assert not again["changed"] and "already ended rolled_back" in again["msg"]


def test_a_version_failing_its_health_check_is_never_switched_to(consul, docker_client, release):
    name, (lb1, lb2), args = release["name"], release["nodes"], release["args"]
    with LoadLoops(lb1.url) as load:
        result = run_module(BLUEGREEN, {**args, "env": {"HEALTHY": "false"}, "health_timeout": 4})
        time.sleep(0.5)
    assert result.get("failed")
    assert "did not pass their health check within health_timeout (4s)" in result["msg"], result["msg"]
    assert "green was removed; blue was not touched and stays live" in result["msg"]
    assert [p["phase"] for p in result["phases"]] == ["deploy", "verify", "rollback"]
    assert load.failures == [], load.failures[:5]
    assert {v for _sent, v in seen(load)} == {"1"}
    assert containers(docker_client, name, "green") == [] and len(containers(docker_client, name, "blue")) == 2
    assert registered_colors(consul, name) == ["blue"]
    assert lb1.route() == lb2.route() == f"{name}_blue"
    assert kv(consul, f"skynet/bluegreen/{name}/release")["phase"] == "failed"


def test_failed_post_promotion_analysis_rolls_back_automatically(stack, consul, docker_client, release):
    name, (lb1, lb2), args = release["name"], release["nodes"], release["args"]
    prometheus = prometheus_for(stack, [lb1, lb2])
    # A real metric with a threshold the new color breaks as soon as Prometheus has seen it: 2 servers > max 1.
    active = 'max(haproxy_backend_active_servers{proxy="${backend}"})'
    post = {"duration": 20, "interval": 1, "checks": [{"name": "active servers", "query": active, "max": 1}]}
    with LoadLoops(lb1.url) as load:
        result = run_module(BLUEGREEN, {**args, "post_analysis": post, "prometheus_url": prometheus.url})
        time.sleep(0.5)
    assert result.get("failed")
    assert "failed in phase watch: post-promotion analysis failed: check active servers" in result["msg"], result["msg"]
    # Either Prometheus has scraped the green backend (2 servers > max 1) or not yet (no data, a failure).
    assert "2 is above max 1" in result["msg"] or "counted as a failure" in result["msg"], result["msg"]
    assert "rolled back automatically: blue is live again and green was removed" in result["msg"]
    assert [p["phase"] for p in result["phases"]] == ["deploy", "verify", "switch", "watch", "rollback"]
    assert load.failures == [], load.failures[:5]
    switch = next(p for p in result["phases"] if p["phase"] == "switch")
    assert {v for sent, v in seen(load) if sent > result["phases"][-1]["ended"]} <= {"1"}
    # The watch can fail within a scrape: look from the switch to the end of the rollback.
    served = {v for sent, v in seen(load) if switch["started"] < sent < result["phases"][-1]["ended"]}
    assert "2" in served, "green served between the switch and the rollback"
    assert lb1.route() == lb2.route() == f"{name}_blue" and lb1.map_file() == [name, f"{name}_blue"]
    assert containers(docker_client, name, "green") == [] and len(containers(docker_client, name, "blue")) == 2
    assert kv(consul, f"skynet/bluegreen/{name}/live") == "blue"
    assert kv(consul, f"skynet/bluegreen/{name}/release")["phase"] == "rolled_back"

    # A query Prometheus cannot evaluate is a failure, said as such, before any switch.
    bad = {"checks": [{"name": "broken", "query": "sum(rate(", "max": 1}]}
    with LoadLoops(lb1.url, n=1) as probe:
        result = run_module(BLUEGREEN, {**args, "pre_analysis": bad, "prometheus_url": prometheus.url})
    assert result.get("failed")
    assert "pre-promotion analysis: check broken: the query 'sum(rate(' cannot be evaluated" in result["msg"]
    assert "which counts as a failure" in result["msg"] and "failed in phase verify" in result["msg"]
    assert probe.failures == [] and {v for _sent, v in seen(probe)} == {"1"}
    assert containers(docker_client, name, "green") == []


def test_a_node_lost_during_the_switch_is_reported_and_the_other_put_back(stack, consul, docker_client, release):
    name, (lb1, lb2), args = release["name"], release["nodes"], release["args"]
    link = stack.path("lb2-link", "admin.sock")
    os.symlink(lb2.socket, link)
    args = {
        **args,
        "haproxy": [lb1.as_arg(), lb2.as_arg(socket=link)],
        "preview": {"url": lb1.preview_url, "rate": 10, "duration": 8},
    }
    results = []
    run = threading.Thread(target=lambda: results.append(run_module(BLUEGREEN, args)))
    with LoadLoops(lb1.url) as load:
        run.start()
        # Preview traffic starts once verify has seen green UP on both nodes: then lb2's socket goes away.
        wait_for(lambda: lb1.requests_to(f"{name}_preview") > 0, 90, "preview traffic")
        os.unlink(link)
        run.join(120)
        time.sleep(0.5)
    (result,) = results
    assert result.get("failed")
    assert "switch failed: HAProxy node lb2" in result["msg"] and "is unreachable on its admin socket" in result["msg"]
    assert "lb1 put back to blue" in result["msg"], result["msg"]
    assert result["nodes"][0] == {"name": "lb1", "switched": False, "serves": "blue", "error": None, "put_back": True}
    assert result["nodes"][1]["name"] == "lb2" and "unreachable" in result["nodes"][1]["error"]
    assert result["nodes"][1]["serves"] == "blue", "the command never reached it: it serves what it served"
    assert load.failures == [], load.failures[:5]
    switch = next(p for p in result["phases"] if p["phase"] == "switch")
    assert switch["outcome"] == "failed"
    assert {v for sent, v in seen(load) if sent > switch["ended"]} == {"1"}
    assert lb1.route() == lb2.route() == f"{name}_blue" and lb1.map_file() == [name, f"{name}_blue"]
    assert containers(docker_client, name, "green") == []
    assert kv(consul, f"skynet/bluegreen/{name}/release")["phase"] == "failed"


def test_the_autoscaler_holds_while_a_release_is_in_progress(consul, engine, unique):
    name = unique("bg")
    definition = {
        "name": name,
        "image": "localhost/skynet-sample:1",
        "scaling": {"min": 1, "max": 6, "checks": [{"name": "rps", "value": 200, "target": 50, "aggregate": "total"}]},
    }
    scale = {"docker_host": engine.docker_host, "consul_url": consul.url, "services": [definition], "dry_run": True}
    key = f"kv/skynet/bluegreen/{name}/release"
    try:
        consul.api("PUT", key, data=json.dumps({"phase": "verify", "image": "localhost/skynet-sample:2"}))
        held = run_module(SCALE, scale)["decisions"][0]
        assert held["action"] == "hold" and held["current"] == held["desired"] == 0, held
        assert "a blue/green release is in progress (phase verify): holding; wanted 4" in held["reason"]

        consul.api("PUT", key, data=json.dumps({"phase": "done"}))
        free = run_module(SCALE, scale)["decisions"][0]
        assert free["action"] == "scale_out" and free["desired"] == 4, free
    finally:
        consul.api("DELETE", f"kv/skynet/bluegreen/{name}", params={"recurse": "1"})
        consul.api("DELETE", f"kv/skynet/scale/{name}", params={"recurse": "1"})
