"""Reaction to a load step, event path against timer path, in one run.

    .venv/bin/python bench/reaction.py [TRIALS] [--watcher resident|playbook] [--rate-window 10s]
                                       [--resolve-interval 1s]

The path the roles deploy (tests/harness/product.py start_event_path with demand alerts): HAProxy on the
rendered config, Prometheus with the prometheus role's rules (1 s scrapes and evaluations, the role's
prometheus_rate_window), Alertmanager on the role's configuration, the watcher running the cycle of one
service (resident, as the autoscaler role runs it by default, or the autoscale playbook); HAProxy resolves
Consul DNS every --resolve-interval (the haproxy role's haproxy_resolve_interval).
A service at 1 instance (target 5 requests/s per instance) gets a step to 20 requests/s at t = 0.

- event: no timer; SkynetServiceDemand fires, Alertmanager posts it to the watcher, which runs the cycle;
- timer: no demand alerts; playbooks/autoscale.yml run back to back (the timer at its shortest period).

Prints, per path, the median and each trial of: metric visible (the check's query above the target plus
tolerance), alert firing and event delivered (event path), decision taken, second container started,
registered in Consul, passing in Consul, up in HAProxy, first request answered by it.
"""

from __future__ import annotations

import argparse
import datetime
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
from harness.services import remove_service, service_containers
from harness.stack import Stack

TARGET, RATE = 5, 20
EVENT_ONLY = ("alert firing", "event delivered")
PARTS = (
    "metric visible",
    "alert firing",
    "event delivered",
    "decision taken",
    "container started",
    "registered",
    "instance passing",
    "up in HAProxy",
    "first answer",
)


def _passing(consul, name):
    return consul.api("GET", f"health/service/{name}", params={"passing": "1"}) or []


def _watcher_alerts(webhook):
    text = requests.get(f"http://{webhook}/metrics", timeout=5).text
    line = next(x for x in text.splitlines() if x.startswith('skynet_watcher_triggers_total{source="alert"}'))
    return float(line.rsplit(" ", 1)[1])


def _haproxy_up(haproxy, name):
    """Servers UP in the service's blue backend, from HAProxy's own stats (no scrape in between)."""
    rows = requests.get(f"{haproxy.stats_url}/stats;csv", timeout=5).text.splitlines()
    return sum(1 for r in rows if r.startswith(f"{name}_blue,") and r.split(",")[17] == "UP" and "BACKEND" not in r)


def _started_at(text):
    """Epoch seconds of a Docker API timestamp (up to nanoseconds; Z or an offset)."""
    stamp, zone = text[:19], text[19:]
    digits = zone[1:].split("Z")[0].split("+")[0].split("-")[0] if zone.startswith(".") else ""
    zone = zone[1 + len(digits) :] if digits or zone.startswith(".") else zone
    offset = "+00:00" if zone in ("Z", "") else zone
    return datetime.datetime.fromisoformat(f"{stamp}.{(digits + '000000')[:6]}{offset}").timestamp()


def trial(stack, consul, engine, started, web, path):
    """One load step on one instance; seconds from the step to each part."""
    name, prometheus, haproxy = web["name"], started["prometheus"], started["haproxy"]
    query = web["scaling"]["checks"][0]["query"]
    url = f"http://127.0.0.1:{web['lb_port']}/"
    # The one instance's answer names it (the sample image's "NAME instance=ID ...").
    first = next(w for w in requests.get(url, timeout=5).text.split() if w.startswith("instance="))
    before = {c.id for c in service_containers(engine.client(), name)}
    alerts_before = _watcher_alerts(started["webhook"])
    seen, stop = {}, threading.Event()

    def timer():
        while not stop.is_set():
            autoscale_cycle(started, stack)

    wanted = [p for p in PARTS if p != "container started" and (path == "event" or p not in EVENT_ONLY)]

    def watch(t0, load):
        alert = f'ALERTS{{alertname="SkynetServiceDemand", service="{name}", alertstate="firing"}}'
        checks = {
            "metric visible": lambda: prometheus.query(f"{query} > {TARGET * 1.1}"),
            "alert firing": lambda: path == "event" and prometheus.query(alert),
            "event delivered": lambda: path == "event" and _watcher_alerts(started["webhook"]) > alerts_before,
            "registered": lambda: len(consul.api("GET", f"catalog/service/{name}") or []) > 1,
            "instance passing": lambda: len(_passing(consul, name)) > 1,
            "up in HAProxy": lambda: _haproxy_up(haproxy, name) > 1,
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
            if all(part in seen for part in wanted):
                return
            time.sleep(0.05)

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
    client = engine.client()
    added = [client.containers.get(c.id).attrs["State"] for c in service_containers(client, name) if c.id not in before]
    starts = [_started_at(state["StartedAt"]) for state in added if state.get("StartedAt")]
    if starts:
        seen["container started"] = min(starts) - t0
    # Back to one instance: the rate falls to 0, then a cycle scales in (no cooldowns in the policy).
    prometheus.wait_query(f"{query} == 0", 60)
    while len(_passing(consul, name)) > 1:
        autoscale_cycle(started, stack)
        time.sleep(1)
    return seen, failed


def run(path, trials, watcher, rate_window, resolve_interval):
    stack = Stack()
    try:
        consul, engine = stack.consul(), stack.podman()
        image = build_sample_image(engine.client(), "1")
        web = zero_definition("web", image)
        web["scaling"]["min"] = 1
        web["scaling"]["checks"][0]["target"] = TARGET
        started = start_event_path(
            stack,
            consul,
            engine,
            [web],
            demand=path == "event",
            watcher_mode=watcher,
            haproxy_options={"resolve_interval": resolve_interval},
            rate_window=rate_window,
        )
        autoscale_cycle(started, stack)
        started["prometheus"].wait_query(f'haproxy_backend_active_servers{{proxy="{web["name"]}_blue"}} == 1', 60)
        results = [trial(stack, consul, engine, started, web, path) for _n in range(trials)]
        remove_service({"docker_host": engine.docker_host, "consul_url": consul.url}, consul, web["name"])
        return results
    finally:
        stack.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trials", nargs="?", type=int, default=3, help="trials per path (3)")
    parser.add_argument("--watcher", choices=("resident", "playbook"), default="resident")
    parser.add_argument("--rate-window", default="10s", help="the prometheus role's prometheus_rate_window")
    parser.add_argument("--resolve-interval", default="1s", help="the haproxy role's haproxy_resolve_interval")
    args = parser.parse_args()
    print(
        f"load step 1 instance, 0 -> {RATE} requests/s at t = 0, target {TARGET}/instance; watcher {args.watcher},"
        f" rate window {args.rate_window}, HAProxy resolves every {args.resolve_interval}; seconds after the step"
    )
    for path in ("event", "timer"):
        results = run(path, args.trials, args.watcher, args.rate_window, args.resolve_interval)
        print(f"\n{path} path ({args.trials} trials; failed requests: {[f for _s, f in results]})")
        for part in PARTS:
            values = [s[part] for s, _f in results if part in s]
            if values:
                each = " ".join(f"{v:5.1f}" for v in values)
                print(f"  {part:17} median {statistics.median(values):5.1f}   each {each}", flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # so the stack is stopped
    main()
