"""Blue/green release times: the switch alone, and whole releases of 1, 4 and 16 instances under load.

    .venv/bin/python bench/bluegreen.py [N ...]     (default: 1 4 16)

Real Consul, two HAProxy 2.6 nodes on the collection's rendered config, a real Podman Docker API
and the sample image, all on loopback (the test harness). The switch is the map change on both
nodes through the runtime API (`set map` on each admin socket, no reload), timed from Python
and inside each release. A release 1 -> 2 runs skynet_bluegreen through Ansible, as users do, so
its wall time includes Ansible's start-up; 4 x 50 requests/s go through HAProxy meanwhile and
every failed request is counted.
"""

from __future__ import annotations

import signal
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".build" / "collections"))

from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_config import render, render_map
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_runtime import HAProxyRuntime

from harness.ansible import run_module
from harness.images import build_sample_image
from harness.load import LoadLoop
from harness.proc import free_port, wait_for
from harness.stack import Stack

BLUEGREEN = "cyberdyne.skynet.skynet_bluegreen"
COMPUTE = "cyberdyne.skynet.skynet_compute"
SLOTS = 20


def start_node(stack, consul, services, name):
    """One HAProxy node: (runtime client, map dir, {service: frontend URL})."""
    ports = {s["name"]: free_port() for s in services}
    definitions = [{**s, "lb_port": ports[s["name"]]} for s in services]
    map_dir = stack.path(name, "maps", "live.map").parent
    (map_dir / "live.map").write_text(render_map(definitions))
    (map_dir / "preview.map").write_text(render_map(definitions, preview=True))
    socket, stats = stack.path(name, "admin.sock"), free_port()
    cfg = stack.path(name, "haproxy.cfg")
    cfg.write_text(
        render(
            definitions,
            consul_dns=f"127.0.0.1:{consul.dns_port}",
            map_dir=str(map_dir),
            stats_socket=str(socket),
            stats_bind=f"127.0.0.1:{stats}",
        )
    )
    proc = stack.start(name, ["haproxy", "-W", "-db", "-f", cfg])
    proc.wait_ready(lambda: requests.get(f"http://127.0.0.1:{stats}/metrics", timeout=2).ok)
    urls = {n: f"http://127.0.0.1:{p}/" for n, p in ports.items()}
    return HAProxyRuntime(str(socket), name=name), str(map_dir), urls


def switch_times(nodes, service, rounds=50):
    """Seconds to point service at green, then back at blue, on every node (each a `set map` per node)."""
    times = []
    for n in range(rounds):
        color = "green" if n % 2 == 0 else "blue"
        start = time.perf_counter()
        for runtime, map_dir, _urls in nodes:
            runtime.set_map(f"{map_dir}/live.map", service, f"{service}_{color}")
        times.append(time.perf_counter() - start)
    return times


def main(sizes):
    stack = Stack()
    try:
        consul, engine = stack.consul(), stack.podman()
        client = engine.client()
        images = {v: build_sample_image(client, v) for v in ("1", "2")}
        health = {"path": "/health", "interval": "1s"}
        services = [
            {"name": f"bg{n}", "port": 8080, "health": health, "scaling": {"max": SLOTS}} for n in [*sizes, "switch"]
        ]
        nodes = [start_node(stack, consul, services, name) for name in ("lb1", "lb2")]
        common = {"docker_host": engine.docker_host, "consul_url": consul.url}

        times = switch_times(nodes, "bgswitch")
        print(
            f"switch of one service on {len(nodes)} HAProxy nodes through the runtime API ({len(times)} switches): "
            f"median {statistics.median(times) * 1000:.2f} ms, "
            f"max {max(times) * 1000:.2f} ms"
        )
        print(
            f"{'N':>3} {'release':>9} {'deploy':>7} {'verify':>7} {'switch':>9} {'retire':>7}"
            f" {'Ansible+checks':>15} {'requests':>9} {'failed':>7}"
        )
        for n in sizes:
            service = f"bg{n}"
            first = run_module(
                COMPUTE,
                {**common, "service": service, "image": images["1"], "count": n, "health": health, "wait_timeout": 600},
            )
            assert not first.get("failed"), first.get("msg")
            url = nodes[0][2][service]
            wait_for(lambda url=url: "version=1" in requests.get(url, timeout=2).text, 60, f"{service} behind HAProxy")
            args = {
                **common,
                "service": service,
                "image": images["2"],
                "health": health,
                "haproxy": [{"name": rt.name, "admin_socket": rt.address, "map_dir": d} for rt, d, _u in nodes],
                "health_timeout": 300,
                "scale_down_delay": 0,
                "drain_period": 1,
                "stop_timeout": 2,
            }
            loads = [LoadLoop(url, rate=50) for _loop in range(4)]
            for load in loads:
                load.__enter__()
            start = time.monotonic()
            try:
                result = run_module(BLUEGREEN, args, timeout=900)
                took = time.monotonic() - start
                time.sleep(1)
            finally:
                for load in loads:
                    load.__exit__(None, None, None)
            assert not result.get("failed"), result.get("msg")
            t = result["timings"]
            switch_ms = result["release"].get("switch_seconds", 0) * 1000
            answered = sum(load.ok for load in loads)
            failed = sum(len(load.failures) for load in loads)
            print(
                f"{n:>3} {took:>7.1f} s {t['deploy']:>5.1f} s {t['verify']:>5.1f} s {switch_ms:>6.1f} ms"
                f" {t['retire']:>5.1f} s {took - t['total']:>13.1f} s {answered + failed:>9} {failed:>7}",
                flush=True,
            )
            run_module(COMPUTE, {**common, "service": service, "color": "green", "state": "absent", "drain_period": 0})
    finally:
        stack.close()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # so the stack is stopped
    main([int(a) for a in sys.argv[1:]] or [1, 4, 16])
