"""Blue/green releases that meet a scale cycle, lose their lock or meet an HAProxy node that does not do what it
answers: real Consul, HAProxy on the rendered config, Podman; the modules run through Ansible."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import socketserver
import threading
import time

import pytest
import requests

from harness.ansible import run_module
from harness.load import LoadLoops
from harness.proc import free_port, wait_for
from harness.stack import remove_containers

BLUEGREEN = "cyberdyne.skynet.skynet_bluegreen"
COMPUTE = "cyberdyne.skynet.skynet_compute"
SCALE = "cyberdyne.skynet.skynet_scale"


class Node:
    """One HAProxy node on the renderer's config for one service, with its map files and admin socket."""

    def __init__(self, stack, consul, service, name):
        self.name, self.lb_port, self.preview_port = name, free_port(), free_port()
        definition = {**service, "lb_port": self.lb_port, "preview_port": self.preview_port}
        self.haproxy = stack.rendered_haproxy([definition], consul, name)
        self.service, self.map_dir, self.socket = service["name"], self.haproxy.map_dir, self.haproxy.socket

    url = property(lambda self: f"http://127.0.0.1:{self.lb_port}/")
    preview_url = property(lambda self: f"http://127.0.0.1:{self.preview_port}/")

    def route(self):
        words = self.haproxy.command(f"show map {self.map_dir}/live.map").split()
        return words[2] if len(words) >= 3 else None

    def map_file(self):
        return (self.map_dir / "live.map").read_text().split()

    def as_arg(self, socket=None, **extra):
        return {"name": self.name, "admin_socket": str(socket or self.socket), "map_dir": str(self.map_dir), **extra}


class Relay:
    """A unix socket in front of a node's admin socket that forwards every command but `set map`, which it
    either answers as HAProxy does on success without passing it on (`ignore`) or passes on and then
    answers nothing until the client gave up (`hang`)."""

    def __init__(self, path, target, mode):
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                data = b""
                while not data.endswith(b"\n"):
                    chunk = self.request.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                command = data.decode().strip()
                if command.startswith("set map") and relay.mode == "ignore":
                    relay.ignored.append(command)
                    self.request.sendall(b"\n")
                    return
                reply = relay.forward(data)
                if command.startswith("set map") and relay.mode == "hang":
                    relay.hung.append(command)
                    time.sleep(3)  # longer than the node's timeout of 1 s
                with contextlib.suppress(OSError):  # a client that gave up has gone
                    self.request.sendall(reply)

        self.target, self.mode, self.ignored, self.hung = str(target), mode, [], []
        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, data):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.target)
            s.sendall(data)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def kv(consul, key):
    r = requests.get(f"{consul.url}/v1/kv/{key}", timeout=5)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return json.loads(base64.b64decode(r.json()[0]["Value"]))


def versions(url, n=10):
    return {requests.get(url, timeout=2).text.strip().rsplit("version=", 1)[-1] for _request in range(n)}


def containers(docker_client, name, color=None):
    labels = [f"io.skynet.service={name}"] + ([f"io.skynet.color={color}"] if color else [])
    return docker_client.containers.list(all=True, filters={"label": labels})


def registered(consul, name):
    """{instance id: (color, passing, in maintenance)} of every registration of name in Consul."""
    out = {}
    for entry in consul.api("GET", f"health/service/{name}"):
        checks = entry["Checks"]
        meta = entry["Service"]["Meta"]
        out[meta["skynet_instance"]] = (
            meta["skynet_color"],
            all(c["Status"] == "passing" for c in checks),
            any(c["CheckID"].startswith("_service_maintenance:") for c in checks),
        )
    return out


def lock_session(consul, name):
    entry = consul.api("GET", f"kv/skynet/lock/{name}")
    return entry[0].get("Session") if entry else None


@pytest.fixture
def release(stack, consul, engine, docker_client, sample_image, unique, request):
    """Version 1 of a service on blue (2 instances) behind HAProxy nodes; everything removed at the end."""
    name = unique("rf")
    health = {"path": "/health", "interval": "1s", "deregister_after": "10m"}
    service = {"name": name, "port": 8080, "health": health, "scaling": {"max": 6}}
    nodes = [Node(stack, consul, service, f"lb{n + 1}") for n in range(getattr(request, "param", 1))]
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}
    try:
        first = run_module(
            COMPUTE,
            {**common, "service": name, "image": sample_image["1"], "count": 2, "health": health, "wait_timeout": 90},
        )
        assert not first.get("failed"), first.get("msg")
        for node in nodes:
            wait_for(lambda node=node: versions(node.url, 6) == {"1"}, 30, f"version 1 behind {node.name}")
        args = {
            **common,
            "service": name,
            "image": sample_image["2"],
            "health": health,
            "haproxy": [node.as_arg() for node in nodes],
            "health_timeout": 30,
            "scale_down_delay": 1,
            "drain_period": 1,
            "stop_timeout": 2,
        }
        yield {"name": name, "nodes": nodes, "args": args, "common": common, "health": health}
    finally:
        remove_containers(containers(docker_client, name))
        for e in consul.api("GET", f"catalog/service/{name}"):
            consul.api("PUT", f"agent/service/deregister/{e['ServiceID']}")
        for prefix in ("bluegreen", "scale"):
            consul.api("DELETE", f"kv/skynet/{prefix}/{name}", params={"recurse": "1"})
        consul.api("DELETE", f"kv/skynet/lock/{name}")


@pytest.mark.parametrize("head_start", [0, 4], ids=["together", "release-4s-ahead"])
def test_a_scale_run_and_a_release_started_together_exclude_each_other_through_the_lock(
    consul, docker_client, sample_image, release, head_start
):
    """At the same moment either may take the lock first; a release 4 s ahead holds it when the scale run looks."""
    name, args, common = release["name"], release["args"], release["common"]
    definition = {
        "name": name,
        "image": sample_image["1"],
        "port": 8080,
        "health": release["health"],
        "scaling": {
            "min": 1,
            "max": 6,
            "cooldown_up": 600,
            "checks": [{"name": "load", "value": 150, "aggregate": "total", "target": 50}],
        },
    }
    scale = {**common, "services": [definition], "wait_timeout": 90, "drain_period": 0}
    results, start = {}, threading.Barrier(2)

    def run(key, module, module_args):
        start.wait()
        if key == "scale":
            time.sleep(head_start)
        results[key] = run_module(module, module_args)

    threads = [
        threading.Thread(target=run, args=("scale", SCALE, scale)),
        # With a head start, the release must still hold the lock when the scale run (Ansible's start-up
        # included) looks: its scale_down_delay keeps it well past the head start on a loaded machine.
        threading.Thread(
            target=run, args=("release", BLUEGREEN, {**args, "lock_wait": 120, "scale_down_delay": 1 + 2 * head_start})
        ),
    ]
    with LoadLoops(release["nodes"][0].url, n=2) as load:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    decision = results["scale"]["decisions"][0]
    released = results["release"]
    assert not released.get("failed"), released["msg"]
    if decision["action"] == "skipped":
        # The release took the lock first: the scale cycle, which does not wait (lock_wait 0), skipped.
        assert "a release on" in decision["reason"] and f"holds the lock of {name}" in decision["reason"], decision
        expected, order = 2, "release first, the scale cycle skipped"
    else:
        # The scale cycle took it first: blue went to 3, then the release waited and released 3 instances.
        assert decision["action"] == "scale_out" and decision["applied"] and decision["color"] == "blue", decision
        expected, order = 3, "scale first (blue 2 -> 3), the release waited for the lock"
    assert released["plan"]["count"] == expected, released["plan"]
    print(f"\nscale and release of one service at the same moment: {order}; {load.ok} requests answered")

    assert load.failures == [], load.failures[:5]
    assert containers(docker_client, name, "blue") == [], "no orphan of the retired color"
    green = containers(docker_client, name, "green")
    assert len(green) == expected
    regs = registered(consul, name)
    assert sorted(regs) == sorted(c.id[:12] for c in green), (
        "every container registered, nothing registered without one"
    )
    assert all(color == "green" and passing and not drained for color, passing, drained in regs.values()), regs
    assert kv(consul, f"skynet/bluegreen/{name}/live") == "green"
    assert lock_session(consul, name) is None, "both runs gave the lock back"


@pytest.mark.parametrize("then", ["released", "rolled_back"])
def test_a_release_that_loses_its_lock_while_verifying_stops_before_the_switch(
    consul, docker_client, sample_image, release, then
):
    name, (lb1,), args = release["name"], release["nodes"], release["args"]
    # Preview traffic keeps the release in verify long enough to destroy its session there.
    args = {**args, "preview": {"url": lb1.preview_url, "rate": 5, "duration": 20}}
    results = []
    run = threading.Thread(target=lambda: results.append(run_module(BLUEGREEN, args)))
    with LoadLoops(lb1.url, n=2) as load:
        run.start()
        wait_for(
            lambda: (kv(consul, f"skynet/bluegreen/{name}/release") or {}).get("phase") == "verify"
            and lock_session(consul, name),
            90,
            "the release in verify",
        )
        time.sleep(2)
        lost_at = time.monotonic()
        consul.api("PUT", f"session/destroy/{lock_session(consul, name)}")
        run.join(120)
        stopped_after = time.monotonic() - lost_at
    (result,) = results
    assert result.get("failed")
    assert f"the lock of {name} was lost" in result["msg"], result["msg"]
    assert "stopped in phase verify" in result["msg"] and "records it" in result["msg"], result["msg"]
    assert stopped_after < 10, f"it went on for {stopped_after:.1f}s after losing the lock"
    print(f"\nrelease stopped {stopped_after:.1f}s after its session was destroyed")
    assert "switch" not in [p["phase"] for p in result["phases"]]
    assert load.failures == [], load.failures[:5]
    assert {body.rsplit("version=", 1)[-1] for _sent, body in load.answers} == {"1"}, "HAProxy served blue only"
    assert lb1.route() == f"{name}_blue" and lb1.map_file() == [name, f"{name}_blue"]
    record = kv(consul, f"skynet/bluegreen/{name}/release")
    assert record["phase"] == "verify" and record["stopped"]["phase"] == "verify" and not record["switched"]
    assert record["phases"][-1]["outcome"] == "stopped"
    assert len(containers(docker_client, name, "green")) == 2, "nothing undone without the lock"

    # The destroyed session's lock-delay (15 s) holds the key: the rerun waits for it, then ends the release.
    again = run_module(BLUEGREEN, {**release["args"], "state": then, "lock_wait": 60})
    assert not again.get("failed"), again["msg"]
    record = kv(consul, f"skynet/bluegreen/{name}/release")
    if then == "released":
        assert again["plan"]["action"] == "resume" and record["phase"] == "done", again["plan"]
        assert lb1.route() == f"{name}_green" and versions(lb1.url) == {"2"}
        assert containers(docker_client, name, "blue") == [] and len(containers(docker_client, name, "green")) == 2
    else:
        assert record["phase"] == "rolled_back", record
        assert lb1.route() == f"{name}_blue" and versions(lb1.url) == {"1"}
        assert containers(docker_client, name, "green") == [] and len(containers(docker_client, name, "blue")) == 2
    assert all(passing and not drained for _c, passing, drained in registered(consul, name).values())


@pytest.mark.parametrize("release", [2], indirect=True)
@pytest.mark.parametrize("mode", ["ignore", "hang"])
def test_a_switch_is_judged_by_what_each_node_serves_when_read_back(stack, consul, docker_client, release, mode):
    name, (lb1, lb2), args = release["name"], release["nodes"], release["args"]
    relay = Relay(stack.path("lb2-relay", "admin.sock"), lb2.socket, mode)
    try:
        args = {**args, "haproxy": [lb1.as_arg(), lb2.as_arg(socket=relay.server.server_address, timeout=1)]}
        with LoadLoops(lb1.url, n=2) as load:
            result = run_module(BLUEGREEN, args)
            time.sleep(0.5)
    finally:
        relay.close()
    assert load.failures == [], load.failures[:5]
    first, second = result["nodes"]
    if mode == "ignore":
        # lb2 answered `set map` as if it had switched; read back, it still sends the service to blue.
        assert relay.ignored, "the switch reached lb2"
        assert result.get("failed")
        assert f"HAProxy node lb2 answered `set map` but still sends {name} to blue" in result["msg"], result["msg"]
        assert "lb1 put back to blue" in result["msg"] and "green was removed" in result["msg"]
        assert first == {"name": "lb1", "switched": False, "serves": "blue", "error": None, "put_back": True}
        assert second["serves"] == "blue" and not second["switched"] and "still sends" in second["error"]
        assert lb1.route() == lb2.route() == f"{name}_blue" and lb2.map_file() == [name, f"{name}_blue"]
        assert containers(docker_client, name, "green") == [] and len(containers(docker_client, name, "blue")) == 2
        assert kv(consul, f"skynet/bluegreen/{name}/release")["phase"] == "failed"
        assert kv(consul, f"skynet/bluegreen/{name}/live") is None
    else:
        # lb2 switched but its answer never came: read back, it serves green, so the release goes on.
        assert relay.hung, "the switch reached lb2"
        assert not result.get("failed"), result["msg"]
        assert second["switched"] and second["serves"] == "green" and second["error"] is None
        assert "did not answer" in second["note"] and "read back, it sends" in second["note"], second
        assert first["serves"] == "green"
        assert lb1.route() == lb2.route() == f"{name}_green" and lb2.map_file() == [name, f"{name}_green"]
        assert containers(docker_client, name, "blue") == []
        assert kv(consul, f"skynet/bluegreen/{name}/release")["phase"] == "done"
    assert os.path.exists(lb2.socket)
