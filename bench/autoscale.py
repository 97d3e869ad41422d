"""Elastic scaling benchmarks.

    .venv/bin/python bench/autoscale.py reaction        # load step -> first added instance serving
    .venv/bin/python bench/autoscale.py cycle [N ...]   # cost of one cycle for N services (1 10 100)
    .venv/bin/python bench/autoscale.py ramp            # a load ramp, the check as is and with `ahead`

reaction: the sample service at 1 instance behind HAProxy, Prometheus scraping HAProxy every
second, skynet_scale run back to back; a 200 requests/s step at t=0. Prints when the metric
showed the step, when the decision was taken, when the new instances passed in Consul and when
the first request was served by one of them.

ramp: the same service behind HAProxy, the load rising by 25 requests/s every 6 s up to 200 (a ramp of about
4 requests/s per second), skynet_scale run back to back; once with the request-rate check as is and once with
`ahead` (lead 20 s over 30 s). Prints, for each count of instances the ramp comes to need (the rate passing
50, 100, 150 requests/s: target 50 per instance), when the load needed it and when the decision for it was
taken: a negative lag is capacity decided before the load needed it.

cycle: N services with a policy each, their query answered by a real Prometheus. "hold" is a
cycle with nothing to change; "change" a cycle where every service scales 1 -> 2 (N instances
started, registered and passing). Measured in-process (Autoscaler.run) and, for hold, through
Ansible as well.
"""

from __future__ import annotations

import functools
import json
import operator
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".build" / "collections"))

from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul import connect
from ansible_collections.cyberdyne.skynet.plugins.module_utils._docker_driver import DockerDriver
from ansible_collections.cyberdyne.skynet.plugins.module_utils._drivers import Computes
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import PrometheusClient
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry
from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale import Autoscaler

from harness.ansible import run_module
from harness.images import build_sample_image
from harness.load import LoadLoop
from harness.proc import free_port, wait_for
from harness.stack import Stack, consul_backend

HEALTH = {"path": "/health", "interval": "1s"}


QUERY = 'sum(rate(haproxy_backend_http_requests_total{proxy="web"}[10s]))'


def web_behind_haproxy(stack):
    """Consul, an engine with the sample image, HAProxy's backend `web` from Consul DNS, Prometheus scraping
    HAProxy every second: (consul, engine, docker client, image, frontend URL, prometheus)."""
    consul, engine = stack.consul(), stack.podman()
    client = engine.client()
    image = build_sample_image(client, "1")
    frontend = free_port()
    haproxy = stack.haproxy(consul_backend("web", frontend, consul.dns_port))
    prom = stack.prometheus(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "haproxy", "static_configs": [{"targets": [f"127.0.0.1:{haproxy.stats_port}"]}]}
            ],
        }
    )
    return consul, engine, client, image, f"http://127.0.0.1:{frontend}/", prom


def reaction(stack):
    consul, engine, client, image, url, prom = web_behind_haproxy(stack)
    definition = {
        "name": "web",
        "image": image,
        "port": 8080,
        "health": HEALTH,
        "scaling": {
            "min": 1,
            "max": 6,
            "cooldown_up": 0,
            "stabilization_window": 60,
            "checks": [{"name": "rps", "query": QUERY, "aggregate": "total", "target": 50}],
        },
    }
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}
    run_module(
        "cyberdyne.skynet.skynet_compute", {**common, "service": "web", "image": image, "count": 1, "health": HEALTH}
    )
    wait_for(lambda: requests_ok(url), 20, "the service")
    first_id = client.containers.list(filters={"label": ["io.skynet.service=web"]})[0].id[:12]
    args = {**common, "services": [definition], "prometheus_url": prom.url, "drain_period": 0}
    stop = threading.Event()
    decided = {}

    def cycles():
        while not stop.is_set():
            out = run_module("cyberdyne.skynet.skynet_scale", args)
            for d in out.get("decisions", []):
                if d["action"] == "scale_out" and "decision" not in decided:
                    decided["decision"] = d

    t0, t0_wall = time.monotonic(), time.time()
    loads = [LoadLoop(url, rate=50) for _thread in range(4)]
    for load in loads:
        load.__enter__()
    cycler = threading.Thread(target=cycles, daemon=True)
    cycler.start()
    try:
        wait_for(lambda: prom.query(f"{QUERY} > 75"), 60, "the metric to show the step", interval=0.2)
        t_metric = time.monotonic()
        wait_for(
            lambda: len(consul.api("GET", "health/service/web", params={"passing": "1"})) > 1,
            120,
            "a new instance passing",
            interval=0.2,
        )
        t_passing = time.monotonic()

        def new_instance_served():
            return any(f"instance={first_id}" not in body for load in loads for body in load.bodies)

        wait_for(new_instance_served, 60, "a request served by a new instance", interval=0.1)
        t_served = time.monotonic()
    finally:
        stop.set()
        for load in loads:
            load.__exit__(None, None, None)
        cycler.join(60)
    failures = sum(len(load.failures) for load in loads)
    d = decided.get("decision", {})
    print(f"load step 0 -> 200 requests/s at t=0 (scrape 1s, rate over 10s, target 50/instance); {failures} failed")
    print(f"  metric visible (rate > 75)      {t_metric - t0:6.1f} s")
    print(
        f"  decision taken ({d.get('current')} -> {d.get('desired')})        {d.get('time', t0_wall) - t0_wall:6.1f} s"
    )
    print(f"  new instance passing in Consul  {t_passing - t0:6.1f} s")
    print(f"  first request served by it      {t_served - t0:6.1f} s")
    run_module("cyberdyne.skynet.skynet_compute", {**common, "service": "web", "state": "absent", "drain_period": 0})


def _cycles(args, stop, decided):
    """skynet_scale back to back until stop; decided[n]: when a decision first asked for n instances."""
    while not stop.is_set():
        for d in run_module("cyberdyne.skynet.skynet_scale", args).get("decisions", []):
            for n in range(2, (d.get("desired") or 0) + 1):
                decided.setdefault(n, d["time"])


def ramp(stack):
    consul, engine, _client, image, url, prom = web_behind_haproxy(stack)
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}
    print("load ramp 0 -> 200 requests/s, +25 every 6 s; target 50/instance; decisions by instance count")
    print(f"{'check':>22} {'needs 2':>9} {'decided':>8} {'needs 3':>9} {'decided':>8} {'needs 4':>9} {'decided':>8}")
    for label, ahead in (("as is", None), ("ahead 20s over 30s", {"lead": "20s", "over": "30s", "step": "1s"})):
        check = {"name": "rps", "query": QUERY, "aggregate": "total", "target": 50}
        if ahead:
            check["ahead"] = ahead
        definition = {
            "name": "web",
            "image": image,
            "port": 8080,
            "health": HEALTH,
            "scaling": {"min": 1, "max": 6, "cooldown_up": 0, "stabilization_window": 60, "checks": [check]},
        }
        run_module(
            "cyberdyne.skynet.skynet_compute",
            {**common, "service": "web", "image": image, "count": 1, "health": HEALTH},
        )
        wait_for(lambda: requests_ok(url), 20, "the service")
        args = {**common, "services": [definition], "prometheus_url": prom.url, "drain_period": 0}
        stop, decided, needed = threading.Event(), {}, {}

        loads = []
        cycler = threading.Thread(target=_cycles, args=(args, stop, decided), daemon=True)
        t0 = time.time()
        cycler.start()
        try:
            for _step in range(8):
                loads.append(LoadLoop(url, rate=25).__enter__())
                end = time.monotonic() + 6
                while time.monotonic() < end:
                    rate = prom.query(QUERY)
                    value = float(rate[0]["value"][1]) if rate else 0.0
                    for n in (2, 3, 4):
                        if value > 50 * (n - 1):
                            needed.setdefault(n, time.time())
                    time.sleep(0.5)
            wait_for(functools.partial(operator.contains, decided, 4), 60, "the decision for 4", interval=0.5)
        finally:
            stop.set()
            for load in loads:
                load.__exit__(None, None, None)
            cycler.join(120)
        cells = []
        for n in (2, 3, 4):
            need, got = needed.get(n), decided.get(n)
            cells.append(f"{need - t0:8.1f}s" if need else "       -")
            cells.append(f"{got - need:+7.1f}s" if need and got else "      -")
        print(f"{label:>22} " + " ".join(cells), flush=True)
        remove = {**common, "service": "web", "state": "absent", "drain_period": 0}
        run_module("cyberdyne.skynet.skynet_compute", remove)
        consul.api("DELETE", "kv/skynet/scale/web", params={"recurse": "1"})
        time.sleep(12)  # the rate window empties before the next pass


def requests_ok(url):
    import requests

    return requests.get(url, timeout=1).ok


def cycle(stack, sizes):
    consul, engine = stack.consul(), stack.podman()
    image = build_sample_image(engine.client(), "1")
    prom = stack.prometheus({"global": {"scrape_interval": "15s"}, "scrape_configs": []})
    driver = DockerDriver(engine.docker_host)
    consul_client = connect({"consul_url": consul.url})
    scaler = Autoscaler(consul_client, Registry(consul_client), Computes.of(driver), PrometheusClient(prom.url))
    options = {"drain_period": 0, "wait_timeout": 600}
    print(f"{'services':>8} {'hold (in-process)':>18} {'hold (ansible)':>15} {'change 1->2':>12} {'per service':>12}")
    for n in sizes:

        def defs(wanted, n=n):
            return [
                {
                    "name": f"s{i}-{n}",
                    "image": image,
                    "port": 8080,
                    "health": HEALTH,
                    "scaling": {
                        "min": 1,
                        "max": 4,
                        "cooldown_up": 0,
                        "cooldown_down": 0,
                        "stabilization_window": 0,
                        "checks": [
                            {
                                "name": "c",
                                "query": f"vector({wanted})",
                                "aggregate": "total",
                                "target": 1,
                                "tolerance": 0,
                            }
                        ],
                    },
                }
                for i in range(n)
            ]

        scaler.run(defs(1), converge_options=options)  # every service at 1
        start = time.monotonic()
        decisions = scaler.run(defs(1), converge_options=options)
        hold = time.monotonic() - start
        assert all(d["action"] == "hold" for d in decisions), decisions[:2]
        args = {
            "services": defs(1),
            "docker_host": engine.docker_host,
            "consul_url": consul.url,
            "prometheus_url": prom.url,
        }
        start = time.monotonic()
        out = run_module("cyberdyne.skynet.skynet_scale", args)
        hold_ansible = time.monotonic() - start
        assert not out.get("failed"), out.get("msg")
        start = time.monotonic()
        decisions = scaler.run(defs(2), converge_options=options)
        change = time.monotonic() - start
        assert all(d["applied"] for d in decisions), json.dumps(decisions[:2])
        print(f"{n:>8} {hold:>16.2f} s {hold_ansible:>13.2f} s {change:>10.2f} s {change / n:>10.2f} s", flush=True)
        for d in defs(0):
            run_module(
                "cyberdyne.skynet.skynet_compute",
                {
                    "service": d["name"],
                    "state": "absent",
                    "drain_period": 0,
                    "docker_host": engine.docker_host,
                    "consul_url": consul.url,
                },
            )


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "reaction"
    stack = Stack()
    try:
        if what == "reaction":
            reaction(stack)
        elif what == "ramp":
            ramp(stack)
        else:
            cycle(stack, [int(a) for a in sys.argv[2:]] or [1, 10, 100])
    finally:
        stack.close()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # so the stack is stopped
    main()
