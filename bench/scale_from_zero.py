"""Cold start from zero through the activator, HTTP and TCP.

    .venv/bin/python bench/scale_from_zero.py [REQUESTS] [SECONDS]     # default 1000 over 10 s

The path the roles deploy (tests/harness/product.py start_event_path): HAProxy on the rendered config
with the activator as the backup server, the activator, Prometheus, and the watcher running the cycle of
the woken service (resident, as the autoscaler role runs it by default). For each mode, a service at zero
gets REQUESTS requests (HTTP) or connections (TCP, each sending a line the echo server sends back), spread
evenly over SECONDS, the first at t = 0. Prints each part of the cold start (wake recorded, decision taken,
container started, instance passing in Consul, first answer), the latency of the answers and how many failed.
"""

from __future__ import annotations

import signal
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".build" / "collections"))

import requests

from harness.images import build_sample_image
from harness.product import start_event_path, zero_definition
from harness.services import remove_service, service_containers
from harness.stack import Stack


def _http(url):
    r = requests.get(url, timeout=60, headers={"Connection": "close"})
    return r.status_code == 200


def _tcp(port, n):
    line = f"hello {n}\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(line)
        got = b""
        while len(got) < len(line):
            chunk = conn.recv(1024)
            if not chunk:
                break
            got += chunk
    return got == line


def _iso(text):
    return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()


def cold_start(consul, client, definition, count, seconds):
    name = definition["name"]
    if definition["mode"] == "http":
        url = f"http://127.0.0.1:{definition['lb_port']}/"

        def send(n):
            return _http(url)
    else:

        def send(n):
            return _tcp(definition["lb_port"], n)

    passing_at = {}

    def watch_passing():
        while "t" not in passing_at and time.time() < t0 + 60:
            if consul.api("GET", f"health/service/{name}", params={"passing": "1"}):
                passing_at["t"] = time.time()
            time.sleep(0.05)

    results = [None] * count

    def one(n):
        at = t0 + n * seconds / count
        time.sleep(max(0.0, at - time.time()))
        sent = time.time()
        try:
            ok = send(n)
        except (OSError, requests.RequestException):
            ok = False
        results[n] = (sent - t0, time.time() - sent, ok)

    t0 = time.time()
    watcher = threading.Thread(target=watch_passing, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(max_workers=min(count, 800)) as pool:
        list(pool.map(one, range(count)))
    watcher.join(5)
    wake = consul.api("GET", f"kv/skynet/wake/{name}", params={"raw": "1"}) or {}
    history = consul.api("GET", f"kv/skynet/scale/{name}/history", params={"raw": "1"}) or []
    decided = next((h["time"] for h in history if h["action"] == "scale_out"), None)
    container = service_containers(client, name)[0]
    container.reload()
    started = _iso(container.attrs["State"]["StartedAt"])
    latencies = sorted(took for _at, took, _ok in results)
    failed = sum(1 for _at, _took, ok in results if not ok)
    first = results[0][1]
    print(f"{definition['mode'].upper()}: {count} over {seconds:g}s to a service at zero; {failed} failed")
    print(f"  first request held since        {wake.get('since', t0) - t0:6.2f} s")
    print(f"  decision taken (0 -> 1)         {(decided or t0) - t0:6.2f} s")
    print(f"  container started               {started - t0:6.2f} s")
    print(f"  instance passing in Consul      {passing_at.get('t', t0) - t0:6.2f} s")
    print(f"  first request answered          {first:6.2f} s")
    print(
        f"  latency p50 {statistics.median(latencies):.2f} s, p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f} s, "
        f"max {latencies[-1]:.2f} s; instances started: {len(service_containers(client, name))}"
    )


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10
    stack = Stack()
    try:
        consul, engine = stack.consul(), stack.podman()
        client = engine.client()
        image = build_sample_image(client, "1")
        services = [zero_definition("web", image), zero_definition("echo", image, mode="tcp")]
        start_event_path(stack, consul, engine, services, hold=30)
        common = {"docker_host": engine.docker_host, "consul_url": consul.url}
        for definition in services:
            cold_start(consul, client, definition, count, seconds)
            remove_service(common, consul, definition["name"])
    finally:
        stack.close()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # so the stack is stopped
    main()
