"""The rendered HAProxy configuration on the real HAProxy 2.6, fed by a real Consul, with instances
started by skynet_compute on a real Docker API engine; load through HAProxy counts every failure."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter

import pytest
import requests
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_config import render, render_map

from harness.ansible import run_module
from harness.load import LoadLoop
from harness.proc import free_port, wait_for
from harness.stack import remove_containers

COMPUTE = "cyberdyne.skynet.skynet_compute"


class LB:
    """HAProxy running the renderer's whole file, its map files and admin socket in the stack's work dir."""

    def __init__(self, stack, consul, services):
        self.services = services
        self.state = stack.path("lb", "server-state")
        self.state.write_text("1\n")  # an empty state (format version 1): HAProxy warns when there is none
        self.haproxy = stack.rendered_haproxy(services, consul, "lb", server_state_file=str(self.state))
        assert "[WARNING]" not in self.haproxy.checked, self.haproxy.checked
        self.map_dir, self.socket, self.process, self.cfg = (
            self.haproxy.map_dir,
            self.haproxy.socket,
            self.haproxy.process,
            self.haproxy.cfg,
        )

    def url(self, name, preview=False):
        service = next(s for s in self.services if s["name"] == name)
        return f"http://127.0.0.1:{service['preview_port' if preview else 'lb_port']}/"

    def command(self, cmd):
        return self.haproxy.command(cmd)

    def write_maps(self, live):
        (self.map_dir / "live.map").write_text(render_map(self.services, live))
        (self.map_dir / "preview.map").write_text(render_map(self.services, live, preview=True))

    def switch(self, name, color):
        """What a release does: switch both maps at runtime, then keep the files in step for the next reload."""
        other = "blue" if color == "green" else "green"
        for map_name, value in (("live", color), ("preview", other)):
            out = self.command(f"set map {self.map_dir}/{map_name}.map {name} {name}_{value}")
            assert out.strip() == "", f"set map {map_name}: {out}"
        self.write_maps({name: color})

    def worker(self):
        return next((line for line in self.command("show info").splitlines() if line.startswith("Pid:")), None)

    def reload(self):
        """What `systemctl reload haproxy` does with the role's unit: save the servers' state, SIGUSR2 the master."""
        before = self.worker()
        self.state.write_text(self.command("show servers state"))
        os.kill(self.process.pid, signal.SIGUSR2)
        wait_for(lambda: self.worker() not in (None, before), 10, "the new HAProxy worker")

    def up_servers(self, backend):
        lines = self.command(f"show servers state {backend}").splitlines()[2:]
        return [f[3] for f in (line.split() for line in lines) if len(f) > 5 and f[5] == "2"]


def check(cfg):
    out = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout + out.stderr, out.stdout + out.stderr


def pages(url, n=12):
    return Counter(requests.get(url, timeout=2).text.strip() for _request in range(n))


@pytest.fixture
def services(unique):
    return [
        {
            "name": unique("web"),
            "port": 8080,
            "lb_port": free_port(),
            "preview_port": free_port(),
            "health": {"path": "/health", "interval": "1s"},
            "scaling": {"max": 4},
        },
        {
            "name": unique("db"),
            "port": 8080,
            "mode": "tcp",
            "lb_port": free_port(),
            "health": {"type": "tcp", "interval": "1s"},
            "scaling": {"max": 3},
        },
    ]


@pytest.fixture
def compute(engine, consul, docker_client, services):
    """Runs skynet_compute for a service and color; removes every instance of the services at the end."""

    def run(service, color, count, version="1"):
        result = run_module(
            COMPUTE,
            {
                "service": service["name"],
                "image": f"localhost/skynet-sample:{version}",
                "color": color,
                "count": count,
                "health": service["health"],
                "docker_host": engine.docker_host,
                "consul_url": consul.url,
                "drain_period": 2,
                "stop_timeout": 2,
                "wait_timeout": 30,
            },
        )
        assert not result.get("failed"), result
        return result

    yield run
    for service in services:
        for e in consul.api("GET", f"catalog/service/{service['name']}"):
            consul.api("PUT", f"agent/service/deregister/{e['ServiceID']}")
        remove_containers(
            docker_client.containers.list(all=True, filters={"label": [f"io.skynet.service={service['name']}"]})
        )


def test_traffic_reaches_the_instances_and_leaves_with_them(stack, consul, sample_image, services, compute):
    web, db = services
    lb = LB(stack, consul, services)
    two = compute(web, "blue", 2)
    compute(db, "blue", 1)
    ids = {i["id"] for i in two["instances"]}

    def both():
        seen = pages(lb.url(web["name"]))
        return set(seen) if len(seen) == 2 else None

    seen = wait_for(both, 20, "HAProxy to use both instances")
    assert {page.split()[1].removeprefix("instance=")[:12] for page in seen} == {i[:12] for i in ids}
    # The TCP frontend carries the bytes as they are: the instance's page comes back whole.
    db_page = wait_for(lambda: requests.get(lb.url(db["name"]), timeout=2).text, 20, "the tcp frontend")
    assert "version=1" in db_page
    assert lb.up_servers(f"{web['name']}_green") == []

    with LoadLoop(lb.url(web["name"]), rate=50) as load:
        time.sleep(1)
        one = compute(web, "blue", 1)
        time.sleep(1)
    print(f"\nscale-in under load: {load.ok} requests answered, {len(load.failures)} failed")
    assert load.failures == [], load.failures[:5]
    assert load.ok > 50
    (left,) = [i["id"][:12] for i in one["instances"]]
    assert {page.split()[1] for page in pages(lb.url(web["name"]), 20)} == {f"instance={left}"}


def test_set_map_switches_the_live_color_and_a_reload_drops_nothing(stack, consul, sample_image, services, compute):
    web = services[0]
    name = web["name"]
    lb = LB(stack, consul, services)
    compute(web, "blue", 1, version="1")
    compute(web, "green", 2, version="2")
    wait_for(lambda: len(lb.up_servers(f"{name}_green")) == 2, 20, "both green servers UP")
    wait_for(lambda: len(lb.up_servers(f"{name}_blue")) == 1, 20, "the blue server UP")
    assert {p.split()[-1] for p in pages(lb.url(name))} == {"version=1"}
    assert {p.split()[-1] for p in pages(lb.url(name, preview=True))} == {"version=2"}

    with LoadLoop(lb.url(name), rate=100) as load:
        time.sleep(1.5)
        lb.switch(name, "green")
        time.sleep(1.5)
    versions = Counter(body.split()[-1] for body in load.bodies.elements())
    print(f"\nset map under load: {load.ok} answered ({dict(versions)}), {len(load.failures)} failed")
    assert load.failures == [], load.failures[:5]
    assert versions["version=1"] > 50 and versions["version=2"] > 50
    assert {p.split()[-1] for p in pages(lb.url(name))} == {"version=2"}
    assert {p.split()[-1] for p in pages(lb.url(name, preview=True))} == {"version=1"}
    assert f" {name} {name}_green\n" in lb.command(f"show map {lb.map_dir}/live.map")

    reloads = []
    with LoadLoop(lb.url(name), rate=100) as load:
        for _reload in range(3):
            time.sleep(0.7)
            reloads.append(time.monotonic())
            lb.reload()
        time.sleep(1)
    print(f"3 reloads under load: {load.ok} answered, {len(load.failures)} failed")
    assert load.failures == [], load.failures[:5]
    # Requests were in flight across each reload (sent in the second after it), however slow the machine.
    started = [at for at, _seconds in load.latencies]
    assert all(any(r <= at < r + 1 for at in started) for r in reloads), (reloads, started[:3], started[-3:])
    # The new workers read the map files, which the switch kept in step: green stays live.
    assert {body.split()[-1] for body in load.bodies} == {"version=2"}


def test_haproxy_accepts_every_mode_and_option(tmp_path):
    services = [
        {"name": "web", "port": 8080, "lb_port": 8000, "preview_port": 8001, "health": {"path": "/health"}},
        {"name": "api", "port": 9000, "lb_port": 8002, "color": "green", "timeouts": {"server": 90, "connect": "9ms"}},
        {"name": "pg", "port": 5432, "lb_port": 5432, "mode": "tcp", "health": {"type": "tcp"}, "scaling": {"max": 3}},
        {"name": "redis", "port": 6379, "lb_port": 6379, "preview_port": 6380, "mode": "tcp", "lb_address": "0.0.0.0"},
    ]
    (tmp_path / "live.map").write_text(render_map(services))
    (tmp_path / "preview.map").write_text(render_map(services, preview=True))
    (tmp_path / "state").write_text("1\n")
    for kw in (
        {},
        {"server_state_file": str(tmp_path / "state"), "live": {"pg": "green"}},
        {"global_extra": ["log stderr format raw local0", "maxconn 4096"], "defaults_extra": ["option abortonclose"]},
    ):
        cfg = tmp_path / "haproxy.cfg"
        # `haproxy -c` never creates the socket, but refuses a path over 97 characters, which
        # tmp_path can exceed in a deep checkout: a short path that nothing binds.
        cfg.write_text(render(services, map_dir=str(tmp_path), stats_socket="/run/skynet-check/admin.sock", **kw))
        check(cfg)
