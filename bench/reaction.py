"""Reaction to a load step, event path against timer path, in one run.

    .venv/bin/python bench/reaction.py [TRIALS]     # default 3 per path

The path the roles deploy (tests/harness/product.py start_event_path with demand alerts): HAProxy on the
rendered config, Prometheus with the prometheus role's rules (1 s scrapes and evaluations, rate over 10 s),
Alertmanager on the role's configuration, the watcher running playbooks/autoscale.yml for one service.
A service at 1 instance (target 5 requests/s per instance) gets a step to 20 requests/s at t = 0.

- event: no timer; SkynetServiceDemand fires, Alertmanager posts it to the watcher, which runs the cycle;
- timer: no demand alerts; playbooks/autoscale.yml run back to back (the timer at its shortest period).

Prints, per path, the median and each trial of: metric visible (the check's query above the target plus
tolerance), alert firing and event delivered (event path), decision taken, second instance passing in
Consul, first request answered by it.
"""

from __future__ import annotations

import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".build" / "collections"))

import requests

from harness.images import build_sample_image
from harness.load import LoadLoop
from harness.product import autoscale_cycle, start_event_path, zero_definition
from harness.services import remove_service
from harness.stack import Stack

TARGET, RATE = 5, 20
PARTS = ("metric visible", "alert firing", "event delivered", "decision taken", "instance passing", "first answer")


def _passing(consul, name):
    return consul.api("GET", f"health/service/{name}", params={"passing": "1"}) or []


def _watcher_alerts(webhook):
    text = requests.get(f"http://{webhook}/metrics", timeout=5).text
    line = next(x for x in text.splitlines() if x.startswith('skynet_watcher_triggers_total{source="alert"}'))
    return float(line.rsplit(" ", 1)[1])


def trial(stack, consul, started, web, path):
    """One load step on one instance; seconds from the step to each part."""
    name, prometheus = web["name"], started["prometheus"]
    query = web["scaling"]["checks"][0]["query"]
    url = f"http://127.0.0.1:{web['lb_port']}/"
    # The one instance's answer names it (the sample image's "NAME instance=ID ...").
    first = next(w for w in requests.get(url, timeout=5).text.split() if w.startswith("instance="))
    alerts_before = _watcher_alerts(started["webhook"])
    seen, stop = {}, threading.Event()

    def timer():
        while not stop.is_set():
            autoscale_cycle(started, stack)

    def watch(t0, load):
        alert = f'ALERTS{{alertname="SkynetServiceDemand", service="{name}", alertstate="firing"}}'
        checks = {
            "metric visible": lambda: prometheus.query(f"{query} > {TARGET * 1.1}"),
            "alert firing": lambda: path == "event" and prometheus.query(alert),
            "event delivered": lambda: path == "event" and _watcher_alerts(started["webhook"]) > alerts_before,
            "instance passing": lambda: len(_passing(consul, name)) > 1,
        }
        while not stop.is_set() and time.time() < t0 + 90:
            for part, check in checks.items():
                if part not in seen and check():
                    seen[part] = time.time() - t0
            last = consul.api("GET", f"kv/skynet/scale/{name}/last", params={"raw": "1"})
            if "decision taken" not in seen and last and last["action"] == "scale_out" and last["time"] > t0:
                seen["decision taken"] = last["time"] - t0
            answered = [sent for sent, body in list(load.answers) if first not in body.split()]
            if answered and "first answer" not in seen:
                seen["first answer"] = answered[0] - t0
            if "first answer" in seen and "decision taken" in seen:
                return
            time.sleep(0.1)

    t0 = time.time()
    with LoadLoop(url, rate=RATE) as load:
        threads = [threading.Thread(target=watch, args=(t0, load), daemon=True)]
        if path == "timer":
            threads.append(threading.Thread(target=timer, daemon=True))
        for t in threads:
            t.start()
        threads[0].join(100)
        stop.set()
        for t in threads[1:]:
            t.join(120)
    failed = len(load.failures)
    # Back to one instance: the rate falls to 0, then a cycle scales in (no cooldowns in the policy).
    prometheus.wait_query(f"{query} == 0", 60)
    while len(_passing(consul, name)) > 1:
        autoscale_cycle(started, stack)
        time.sleep(1)
    return seen, failed


def run(path, trials):
    stack = Stack()
    try:
        consul, engine = stack.consul(), stack.podman()
        image = build_sample_image(engine.client(), "1")
        web = zero_definition("web", image)
        web["scaling"]["min"] = 1
        web["scaling"]["checks"][0]["target"] = TARGET
        started = start_event_path(stack, consul, engine, [web], demand=path == "event")
        autoscale_cycle(started, stack)
        started["prometheus"].wait_query(f'haproxy_backend_active_servers{{proxy="{web["name"]}_blue"}} == 1', 60)
        results = [trial(stack, consul, started, web, path) for _n in range(trials)]
        remove_service({"docker_host": engine.docker_host, "consul_url": consul.url}, consul, web["name"])
        return results
    finally:
        stack.close()


def main():
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"load step 1 instance, 0 -> {RATE} requests/s at t = 0, target {TARGET}/instance; seconds after the step")
    for path in ("event", "timer"):
        results = run(path, trials)
        print(f"\n{path} path ({trials} trials; failed requests: {[f for _s, f in results]})")
        for part in PARTS:
            values = [s[part] for s, _f in results if part in s]
            if values:
                each = " ".join(f"{v:5.1f}" for v in values)
                print(f"  {part:17} median {statistics.median(values):5.1f}   each {each}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # so the stack is stopped
    main()
