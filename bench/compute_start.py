"""Time to start N instances with skynet_compute until every one passes its check in Consul.

    .venv/bin/python bench/compute_start.py [N ...]     (default: 1 10 50)

Real Consul and a real Podman Docker API on loopback (the test harness), the sample image,
HTTP checks every second. Runs the module through Ansible, as users do, so the figures include
Ansible's own start-up (measured alone on the first line).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.ansible import run_module
from harness.images import build_sample_image
from harness.stack import Stack

MODULE = "cyberdyne.skynet.skynet_compute"


def main(sizes):
    stack = Stack()
    try:
        consul, engine = stack.consul(), stack.podman()
        image = build_sample_image(engine.client(), "1")
        base = {
            "service": "bench",
            "image": image,
            "docker_host": engine.docker_host,
            "consul_url": consul.url,
            "health": {"path": "/health", "interval": "1s"},
            "wait_timeout": 600,
            "drain_period": 0,
            "stop_timeout": 1,
        }
        start = time.monotonic()
        run_module(MODULE, {**base, "count": 0})
        overhead = time.monotonic() - start
        print(f"Ansible + module start-up with nothing to do: {overhead:.2f} s")
        print(f"{'N':>4} {'start until passing':>20} {'per instance':>13} {'no-op rerun':>12} {'remove all':>11}")
        for n in sizes:
            start = time.monotonic()
            result = run_module(MODULE, {**base, "count": n})
            up = time.monotonic() - start
            assert not result.get("failed"), result.get("msg")
            passing = len(consul.api("GET", "health/service/bench", params={"passing": "1"}))
            assert passing == n, f"{passing} passing of {n}"
            start = time.monotonic()
            again = run_module(MODULE, {**base, "count": n})
            noop = time.monotonic() - start
            assert not again["changed"]
            start = time.monotonic()
            run_module(MODULE, {**base, "count": 0})
            down = time.monotonic() - start
            print(f"{n:>4} {up:>18.2f} s {(up - overhead) / n:>11.3f} s {noop:>10.2f} s {down:>9.2f} s", flush=True)
    finally:
        stack.close()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # so the stack is stopped
    main([int(a) for a in sys.argv[1:]] or [1, 10, 50])
