"""make demo: elastic scaling of a web service under load, on this machine's loopback.

Brings up Consul, a Podman Docker API, HAProxy on the config the collection renders, Prometheus with
the prometheus role's recording rules, and Alertmanager (the components the tests use), deploys the
sample service with skynet_compute, drives load through HAProxy and runs
playbooks/autoscale.yml every few seconds, printing the request rate, the instance count and each
scaling decision as it happens. Then the load stops and the scale-down shows. A plot of load,
instances and latency goes to demo-out/autoscale.png. Everything started is stopped at the end,
unless --keep (then `make demo-down` stops it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / ".build" / "collections"))  # the collection, as make collection-link links it

from harness.ansible import run_module  # noqa: E402
from harness.images import build_sample_image  # noqa: E402
from harness.load import LoadLoop  # noqa: E402
from harness.proc import free_port, wait_for  # noqa: E402
from harness.product import start_prometheus  # noqa: E402
from harness.stack import Stack  # noqa: E402

OUT = ROOT / "demo-out"
PIDFILE = OUT / "demo.pid"
SERVICE = "web"
BOLD, DIM, GREEN, YELLOW, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[33m", "\033[0m"


def say(text):
    print(f"{BOLD}[demo]{RESET} {text}", flush=True)


class Demo:
    def __init__(self, args):
        self.args = args
        self.stack = Stack()
        self.samples = []  # (t, offered rps, measured rps, instances, p50 ms)
        self.decisions = []  # (t, text)
        self.offered = 0
        self.loads: list[LoadLoop] = []
        self.t0 = time.monotonic()
        self.stop_cycles = threading.Event()

    # -- setup -------------------------------------------------------------------------------

    def up(self):
        say("starting Consul, a Podman Docker API, HAProxy, Prometheus and Alertmanager on 127.0.0.1")
        self.consul = self.stack.consul()
        self.engine = self.stack.podman()
        self.client = self.engine.client()
        self.image = build_sample_image(self.client, "1")
        self.rate_query = f'service:skynet_http_requests:rate{{service="{SERVICE}"}}'
        self.definition = {
            "name": SERVICE,
            "image": self.image,
            "port": 8080,
            "lb_port": free_port(),
            "health": {"path": "/health", "interval": "1s"},
            "scaling": {
                "min": 1,
                "max": 6,
                "cooldown_up": 5,
                "cooldown_down": 5,
                "stabilization_window": 15,
                "checks": [{"name": "requests", "query": self.rate_query, "aggregate": "total", "target": 50}],
            },
        }
        # The collection's own path: HAProxy on the config the haproxy role renders (backends
        # web_blue and web_green, the live one picked by a map), Prometheus with the rules the
        # prometheus role renders, and a policy on the recorded signal.
        self.haproxy = self.stack.rendered_haproxy([self.definition], self.consul)
        self.alertmanager = self.stack.alertmanager()
        consul_job = {
            "job_name": "consul",
            "metrics_path": "/v1/agent/metrics",
            "params": {"format": ["prometheus"]},
            "static_configs": [{"targets": [f"127.0.0.1:{self.consul.http_port}"]}],
        }
        self.prometheus = start_prometheus(
            self.stack,
            [self.definition],
            {"haproxy": [f"127.0.0.1:{self.haproxy.stats_port}"]},
            alertmanager_url=self.alertmanager.url,
            extra_scrape_configs=[consul_job],
        )
        self.url = f"http://127.0.0.1:{self.definition['lb_port']}/"
        self.vars_file = OUT / "autoscale-vars.json"
        self.vars_file.write_text(
            json.dumps(
                {
                    "skynet_services": [self.definition],
                    "skynet_consul_url": self.consul.url,
                    "skynet_prometheus_url": self.prometheus.url,
                    "skynet_docker_host": self.engine.docker_host,
                    "skynet_autoscale_drain_period": 2,
                    "skynet_autoscale_metrics_file": str(OUT / "autoscaler.prom"),
                }
            )
        )
        say(f"deploying {SERVICE} (1 instance of {self.image}) with cyberdyne.skynet.skynet_compute")
        result = run_module(
            "cyberdyne.skynet.skynet_compute",
            {
                "service": SERVICE,
                "image": self.image,
                "count": 1,
                "health": self.definition["health"],
                "docker_host": self.engine.docker_host,
                "consul_url": self.consul.url,
            },
        )
        if result.get("failed"):
            raise SystemExit(f"deploy failed: {result['msg']}")
        wait_for(lambda: requests.get(self.url, timeout=1).ok, 30, "the service behind HAProxy")
        say("look here while it runs:")
        print(f"    Consul UI      {self.consul.url}/ui/")
        print(f"    HAProxy stats  {self.haproxy.stats_url}/stats")
        print(f"    Prometheus     {self.prometheus.url}/graph?g0.expr={requests.utils.quote(self.rate_query)}")
        print(f"    Alertmanager   {self.alertmanager.url}")
        print(f"    the service    {self.url}")

    # -- running -----------------------------------------------------------------------------

    def set_load(self, rps):
        for load in self.loads:
            load.__exit__(None, None, None)
        threads = max(1, -(-rps // 50))  # one Python loop keeps up with about 50 requests/s
        self.loads = [LoadLoop(self.url, rate=rps / threads) for _thread in range(threads)] if rps else []
        for load in self.loads:
            load.__enter__()
        self.offered = rps
        self.all_loads.extend(self.loads)

    def cycles(self):
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build" / "collections"), "ANSIBLE_NOCOLOR": "1"}
        seen = None
        while not self.stop_cycles.is_set():
            subprocess.run(
                [
                    "ansible-playbook",
                    str(ROOT / "playbooks" / "autoscale.yml"),
                    "-e",
                    f"@{self.vars_file}",
                    "-e",
                    f"ansible_python_interpreter={sys.executable}",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            try:
                last = self.consul.api("GET", f"kv/skynet/scale/{SERVICE}/last", params={"raw": "1"})
            except requests.RequestException:
                last = None
            if last and last.get("time") != seen:
                seen = last["time"]
                if last["action"] != "hold":
                    text = f"{last['action']} {last['current']} -> {last['desired']}: {last['reason']}"
                    self.decisions.append((self.elapsed(), text))
                    print(f"{YELLOW}  decision{RESET} {text}", flush=True)
            self.stop_cycles.wait(self.args.interval)

    def elapsed(self):
        return time.monotonic() - self.t0

    def sample(self):
        try:
            result = self.prometheus.query(self.rate_query)
            measured = float(result[0]["value"][1]) if result else 0.0
        except (requests.RequestException, KeyError, IndexError, ValueError):
            measured = 0.0
        instances = len(self.client.containers.list(filters={"label": [f"io.skynet.service={SERVICE}"]}))
        now = time.monotonic()
        recent = sorted(lat for load in self.loads for (t, lat) in load.latencies[-200:] if t > now - 2)
        p50 = recent[len(recent) // 2] * 1000 if recent else 0.0
        self.samples.append((self.elapsed(), self.offered, measured, instances, p50))
        print(
            f"  t={self.elapsed():5.0f}s  load {self.offered:3d} req/s offered, {measured:6.1f} req/s measured"
            f"  instances {GREEN}{'#' * instances:<6}{RESET} {instances}  p50 {p50:5.1f} ms",
            flush=True,
        )

    def run(self):
        self.all_loads = []
        started = self.elapsed()
        cycler = threading.Thread(target=self.cycles, daemon=True)
        cycler.start()
        say(f"phase 1: light load, 20 req/s for {self.args.warmup}s")
        self.set_load(20)
        self.watch(self.args.warmup)
        say(f"phase 2: {self.args.rps} req/s through HAProxy for {self.args.load}s (target: 50 req/s per instance)")
        self.set_load(self.args.rps)
        self.watch(self.args.load)
        say(f"phase 3: load stops (a 5 req/s probe keeps counting failures) for up to {self.args.cooldown}s")
        self.set_load(5)
        self.watch(self.args.cooldown, until=lambda: self.samples[-1][3] == 1 and self.elapsed() > 10)
        self.stop_cycles.set()
        cycler.join(180)  # the cycle in flight reports its decision before the summary
        self.set_load(0)
        failed = sum(len(load.failures) for load in self.all_loads)
        ok = sum(load.ok for load in self.all_loads)
        say(f"{ok} requests served, {failed} failed; peak {max(s[3] for s in self.samples)} instances")
        steps, last = [], None
        for when, _offered, _measured, instances, _p50 in self.samples:
            if instances != last:
                steps.append(f"{instances} at {when:.0f}s")
                last = instances
        say(f"instances over time: {' -> '.join(steps)}")
        phases, total = self.elapsed() - started, self.elapsed()
        say(
            f"{len(self.decisions)} scaling decisions; the load phases took {phases:.0f}s, the demo so far {total:.0f}s"
        )
        self.plot()

    def watch(self, seconds, until=None):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(2)
            self.sample()
            if until and until():
                return

    def plot(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = [s[0] for s in self.samples]
        fig, (ax1, ax2, ax3) = plt.subplots(3, 1, sharex=True, figsize=(10, 8))
        ax1.plot(t, [s[1] for s in self.samples], label="offered", linestyle="--")
        ax1.plot(t, [s[2] for s in self.samples], label="measured (Prometheus)")
        ax1.set_ylabel("requests/s")
        ax1.legend()
        ax2.step(t, [s[3] for s in self.samples], where="post", color="tab:green")
        ax2.set_ylabel("instances")
        for when, _text in self.decisions:
            ax2.axvline(when, color="tab:orange", alpha=0.4)
        ax3.plot(t, [s[4] for s in self.samples], color="tab:red")
        ax3.set_ylabel("p50 latency (ms)")
        ax3.set_xlabel("seconds")
        fig.suptitle("cyberdyne.skynet: elastic scaling of 'web' on requests/s (target 50 per instance)")
        fig.tight_layout()
        path = OUT / "autoscale.png"
        fig.savefig(path, dpi=100)
        say(f"plot written to {path}")

    def down(self):
        self.stop_cycles.set()
        for load in self.loads:
            load.__exit__(None, None, None)
        say("stopping everything the demo started")
        self.stack.close()
        PIDFILE.unlink(missing_ok=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rps", type=int, default=180, help="load of phase 2, requests/s (4 instances at 50 each)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--load", type=int, default=50)
    parser.add_argument("--cooldown", type=int, default=90)
    parser.add_argument("--interval", type=float, default=3, help="seconds between autoscale cycles")
    parser.add_argument("--keep", action="store_true", help="keep the stack running until `make demo-down`")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    PIDFILE.write_text(str(os.getpid()))
    stopped = threading.Event()

    def on_sigterm(signum, frame):
        if not args.keep:
            raise SystemExit(143)
        stopped.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    demo = Demo(args)
    try:
        demo.up()
        demo.run()
        if args.keep:
            say("--keep: the stack keeps running; `make demo-down` stops it")
            stopped.wait()
    finally:
        demo.down()


if __name__ == "__main__":
    main()
