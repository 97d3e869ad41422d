"""The cost of one skynet_scale cycle for N services on a three-host Docker pool, and of a host loss.

    .venv/bin/python bench/pool_cycle.py cycle [N ...]     # 10 100 1000 by default
    .venv/bin/python bench/pool_cycle.py hostloss          # time to get capacity back after a host loss
    .venv/bin/python bench/pool_cycle.py create [N ...]    # one cycle starting an instance of each of N services

Runs on the harness's multi-host stack (three Consul servers; three Docker hosts each with its agent,
a Podman engine and the registrator; a load balancer), as root. Every service has one PromQL check
answered by a real Prometheus (`vector(0)`: it wants nothing) and `min: 0`, so the machine holds
1,000 of them: "hold" is a cycle that changes nothing; "change" one where every tenth service goes
0 -> 1 (an instance started, registered on its host's agent and passing) and the others hold.
Both are measured through `ansible-playbook playbooks/autoscale.yml` (as the autoscaler's timer runs
it, the services in a vars file) and, for hold, in-process (Autoscaler.run, no Ansible start-up).

create: one in-process cycle (Autoscaler.run) in which each of N services goes 0 -> 1, with the Docker API
requests it makes counted by kind (the SDK's requests, from this process) and its time; then one that takes
them back to 0.

hostloss: six instances spread 2/2/2 behind HAProxy under load; one host is cut off (link down, its
agent, engine and registrator killed), cycles run every 2 s with a host_grace of 10 s; prints when the
loss was detected (first cycle naming the host), decided (the cycle after the grace), when the
replacements passed and when each served its first request.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".build" / "collections"))

import docker.api.client
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _drivers
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul import connect
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import PrometheusClient
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry
from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale import Autoscaler

from harness.ansible import run_module, run_playbook
from harness.images import build_sample_image
from harness.load import LoadLoops
from harness.multihost import MultiHost
from harness.proc import wait_for
from harness.product import start_prometheus

ROOT = Path(__file__).resolve().parents[1]
SCALE = "cyberdyne.skynet.skynet_scale"
HEALTH = {"path": "/health", "interval": "1s"}


def definitions(n, image, changing=()):
    out = []
    for i in range(n):
        wanted = 1 if i in changing else 0
        out.append(
            {
                "name": f"s{i}-{n}",
                "image": image,
                "port": 8080,
                "health": HEALTH,
                "scaling": {
                    "min": 0,
                    "max": 2,
                    "cooldown_up": 0,
                    "cooldown_down": 0,
                    "stabilization_window": 0,
                    "checks": [{"name": "c", "query": f"vector({wanted})", "aggregate": "total", "target": 1}],
                },
            }
        )
    return out


def autoscale(workdir, variables):
    """playbooks/autoscale.yml as the autoscaler's timer runs it: (seconds, the skynet_scale task's result)."""
    start = time.monotonic()
    out = run_playbook("autoscale", variables, workdir, json_output=True)
    seconds = time.monotonic() - start
    tasks = json.loads(out.stdout)["plays"][0]["tasks"]
    (task,) = [t for t in tasks if t["task"]["name"] == "Decide and apply every scaling policy"]
    result = task["hosts"]["localhost"]
    assert not result.get("failed"), result.get("msg")
    return seconds, result


def pool_computes(base):
    params = {**base, "compute": None}
    return _drivers.make_computes(params, _drivers.parse(params))


def cycle(mh, sizes):
    image = [build_sample_image(h.client(), "1") for h in mh.hosts].pop()
    prom = mh.stack.prometheus({"global": {"scrape_interval": "15s"}, "scrape_configs": []})
    base = {"computes": mh.computes(), "consul_url": mh.lb.consul_url}
    computes = pool_computes(base)
    consul = connect(base)
    scaler = Autoscaler(consul, Registry(consul, computes.agents), computes, PrometheusClient(prom.url))
    print(f"{'services':>8} {'hold (ansible)':>15} {'hold (in-process)':>18} {'change (ansible)':>17} {'changed':>8}")
    playbook = {
        "skynet_computes": mh.computes(),
        "skynet_consul_url": mh.lb.consul_url,
        "skynet_prometheus_url": prom.url,
        "skynet_autoscale_drain_period": 0,
    }
    for n in sizes:
        defs = definitions(n, image)
        scaler.run(defs)  # the state keys exist: later cycles read and write what a running site does
        hold_ansible, out = autoscale(mh.stack.workdir, {**playbook, "skynet_services": defs})
        assert all(d["action"] == "hold" for d in out["decisions"])
        start = time.monotonic()
        scaler.run(defs)
        hold = time.monotonic() - start
        changing = set(range(0, n, 10))
        change, out = autoscale(mh.stack.workdir, {**playbook, "skynet_services": definitions(n, image, changing)})
        applied = sum(1 for d in out["decisions"] if d.get("applied"))
        print(f"{n:>8} {hold_ansible:>13.2f} s {hold:>16.2f} s {change:>15.2f} s {applied:>8}", flush=True)
        scaler.run(defs, converge_options={"drain_period": 0})


class DockerCalls:
    """Counts the Docker API requests this process makes while it is entered, by method and path (ids as {id})."""

    def __init__(self):
        self.calls = Counter()

    def __enter__(self):
        self._send = docker.api.client.APIClient.send
        calls, send = self.calls, self._send

        def counted(client, request, **kw):
            path = re.sub(r"^/v[0-9.]+", "", request.path_url.split("?")[0])
            calls[f"{request.method} {re.sub(r'/[0-9a-f]{12,64}(?=/|$)', '/{id}', path)}"] += 1
            return send(client, request, **kw)

        docker.api.client.APIClient.send = counted
        return self

    def __exit__(self, *exc):
        docker.api.client.APIClient.send = self._send


def create(mh, sizes):
    image = [build_sample_image(h.client(), "1") for h in mh.hosts].pop()
    prom = mh.stack.prometheus({"global": {"scrape_interval": "15s"}, "scrape_configs": []})
    base = {"computes": mh.computes(), "consul_url": mh.lb.consul_url}
    consul = connect(base)
    for n in sizes:
        defs = definitions(n, image, changing=range(n))
        computes = pool_computes(base)
        scaler = Autoscaler(consul, Registry(consul, computes.agents), computes, PrometheusClient(prom.url))
        with DockerCalls() as counted:
            start = time.monotonic()
            out = scaler.run(defs, converge_options={"drain_period": 0})
            seconds = time.monotonic() - start
        started = sum(1 for d in out if d.get("applied") and d["action"] == "scale_out")
        failed = [d["error"] for d in out if d.get("error")]
        total = sum(counted.calls.values())
        print(f"{n} services, one instance each: {started} started in {seconds:.1f} s, {total} Docker API requests")
        for kind, count in counted.calls.most_common():
            print(f"  {count:>7}  {kind}")
        if failed:
            print(f"  errors: {failed[:3]}")
        computes = pool_computes(base)
        back = Autoscaler(consul, Registry(consul, computes.agents), computes, PrometheusClient(prom.url))
        back.run(definitions(n, image), converge_options={"drain_period": 0})


def hostloss(mh):
    image = [build_sample_image(h.client(), "1") for h in mh.hosts].pop()
    name = "web"
    definition = {
        "name": name,
        "image": image,
        "port": 8080,
        "lb_port": 18099,
        "health": HEALTH,
        "scaling": {"min": 6, "max": 6, "checks": [{"name": "c", "value": 6, "aggregate": "total", "target": 1}]},
    }
    mh.lb.start_haproxy([definition])
    start_prometheus(mh.stack, [definition], {})
    args = {
        "computes": mh.computes(),
        "consul_url": mh.lb.consul_url,
        "prometheus_url": "http://127.0.0.1:9",
        "services": [definition],
        "host_grace": 10,
        "drain_period": 1,
    }
    out = run_module(SCALE, args)
    assert not out.get("failed"), out.get("msg")
    url = mh.lb.url(18099)
    with LoadLoops(url, n=2, rate=50) as loads:
        wait_for(lambda: loads.ok > 50, 20, "traffic")
        before = {b.split("instance=")[1].split()[0] for _t, b in loads.answers}
        t0, t0_wall = time.monotonic(), time.time()
        mh.cut(3)
        detected = decided = None
        while True:
            time.sleep(2)
            d = run_module(SCALE, args)["decisions"][0]
            now = time.monotonic() - t0
            lost = (d.get("unavailable_hosts") or {}).get(mh.host(3).name)
            if lost and detected is None:
                detected = now
            if lost and lost["lost"] and d.get("applied"):
                decided = d["time"] - t0_wall  # when the cycle decided; it returns once the replacements pass
                break
        passing_at = now
        new = set()

        def served():
            seen = {b.split("instance=")[1].split()[0] for _t, b in loads.answers}
            new.update(seen - before)
            return len(new) >= 2

        wait_for(served, 30, "both replacements serving", interval=0.1)
        first_served = time.monotonic() - t0
    print("host cut off at t=0 (host_grace 10 s, a cycle every 2 s)")
    print(f"  loss reported by a cycle           {detected:6.1f} s")
    print(f"  replacements decided               {decided:6.1f} s")
    print(f"  replacements passing in Consul     {passing_at:6.1f} s")
    print(f"  both replacements serving          {first_served:6.1f} s")
    print(f"  requests {loads.ok + len(loads.failures)}, failed {len(loads.failures)}")


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "cycle"
    with MultiHost(hosts=3) as mh:
        if what == "hostloss":
            hostloss(mh)
        elif what == "create":
            create(mh, [int(a) for a in sys.argv[2:]] or [30, 100])
        else:
            cycle(mh, [int(a) for a in sys.argv[2:]] or [10, 100, 1000])


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # so the stack is stopped
    main()
