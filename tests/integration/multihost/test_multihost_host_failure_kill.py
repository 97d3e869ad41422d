"""Scale cycles SIGKILLed at each point of a host loss, on the three-host stack: the next cycles converge.

docs/compute.md "Host failure": a Docker host that stops answering is recorded in Consul KV (the first failure
time, check-and-set), after host_grace its instances count as lost and are replaced on the other hosts, and when
it returns the surplus goes. One host is cut off and cycles (skynet_scale through Ansible, as the timer runs it)
are killed, the module's process first, then the rest of the run's tree: right after the failure record is
written (inside the grace period); once the host is lost, right after the decision was recorded under the lock,
before anything was started (service `a`); once the replacement was started, before it passed and before the
outcome was written (service `b`, killed in a run of its own at the same time, so that the two dead locks are
waited for together). After each, the next cycles end with exactly the decided count of containers on the
survivors' engines (the one the killed run started is kept, none is started twice), each registered and passing,
no container without a registration nor a registration without a container, and the dead runs' locks gone (a
session's TTL and lock-delay outlive its run: these cycles wait for them with lock_wait). When the host is back,
the count converges back to one instance a host.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import docker
import pytest
import requests

from harness.ansible import run_module, start_module
from harness.images import build_sample_image
from harness.proc import HarnessError, descendant, kill_tree, wait_for

SCALE = "cyberdyne.skynet.skynet_scale"
COUNT = 3
HOST_GRACE = 8
LOCK_WAIT = 90  # a killed run's lock: its session's TTL (15 s, up to twice that) then the lock-delay (15 s)


@pytest.fixture(scope="module")
def services(multihost, tmp_path_factory):
    """Services a and b, each held at 3 instances (a fixed value check) on the three-host pool."""
    tag = uuid.uuid4().hex[:4]
    images = {h.name: build_sample_image(h.client(), "1") for h in multihost.hosts}
    definitions = [
        {
            "name": f"{which}{tag}",
            "image": images[multihost.host(1).name],
            "port": 8080,
            "health": {"path": "/health", "interval": "1s", "deregister_after": "10m"},
            "scaling": {
                "min": 1,
                "max": 6,
                # Replacing what a lost host ran is no scale-out: no cooldown holds it back.
                "cooldown_up": 600,
                "cooldown_down": 0,
                "stabilization_window": 0,
                "checks": [{"name": "fixed", "value": COUNT, "aggregate": "total", "target": 1}],
            },
        }
        for which in ("a", "b")
    ]
    args = {
        "computes": multihost.computes(),
        "consul_url": multihost.lb.consul_url,
        "prometheus_url": "http://127.0.0.1:9",  # a value check queries nothing
        "services": definitions,
        "host_grace": HOST_GRACE,
        "drain_period": 0,
        "wait_timeout": 60,
        "lock_wait": LOCK_WAIT,
    }
    return {"a": f"a{tag}", "b": f"b{tag}", "args": args, "logs": tmp_path_factory.mktemp("killed-cycles")}


def cycle(args):
    """{service: decision} of one cycle."""
    result = run_module(SCALE, args, timeout=LOCK_WAIT + 120)
    assert not result.get("failed"), result.get("msg")
    return {d["service"]: d for d in result["decisions"]}


def engines(mh, name):
    """{host: {container id: status}} of the service on every host that answers, read from each engine."""
    out = {}
    for host in mh.hosts:
        if host.cut_off:
            continue
        # The API version said: an SDK client asks Podman's /version (half a second) otherwise.
        client = docker.DockerClient(base_url=host.docker_host, version="1.41", timeout=10)
        try:
            listed = client.containers.list(all=True, sparse=True, filters={"label": [f"io.skynet.service={name}"]})
            out[host.name] = {c.id[:12]: c.attrs["State"] for c in listed}
        finally:
            client.close()
    return out


def counts(mh, name):
    return {h: len(c) for h, c in engines(mh, name).items()}


def registered(mh, name):
    """{instance id: node} of the catalog's entries of the service."""
    entries = mh.lb.agent.api("GET", f"catalog/service/{name}")
    return {e["ServiceMeta"]["skynet_instance"]: e["Node"] for e in entries}


def passing(mh, name):
    entries = mh.lb.agent.api("GET", f"health/service/{name}", params={"passing": "1"})
    return Counter(e["Service"]["Meta"].get("skynet_host") for e in entries)


def kv(mh, key):
    r = requests.get(f"{mh.lb.agent.url}/v1/kv/{key}", timeout=5)
    return r.json()[0] if r.status_code == 200 else None


class Watch:
    """Blocking reads of one KV key: each call returns its entry (None while absent) once it changed, or after 1 s."""

    def __init__(self, mh, key):
        self.url, self.index = f"{mh.lb.agent.url}/v1/kv/{key}", 0

    def __call__(self):
        r = requests.get(self.url, params={"index": self.index, "wait": "1s"}, timeout=10)
        index = int(r.headers.get("X-Consul-Index", 0))
        self.index = index if index > self.index else 0  # an index that went back starts over
        return r.json()[0] if r.status_code == 200 else None


def killed_when(run, until, interval=0.0):
    """SIGKILLs the module's process as soon as until() holds once it runs, then the rest of the run's tree;
    fails if the run ends first."""
    module = None

    def reached():
        nonlocal module
        if run.poll() is not None:
            raise HarnessError(f"the run ended (rc {run.returncode}) before the point it was to be killed at")
        module = module or descendant(run.pid, "AnsiballZ_skynet_scale.py")
        return module and until()

    try:
        wait_for(reached, LOCK_WAIT + 60, "the point to kill the cycle at", interval=interval)
        try:
            os.kill(module, signal.SIGKILL)
        except ProcessLookupError:
            raise HarnessError("the module ended before the point it was to be killed at was seen") from None
    finally:
        kill_tree(run.pid)
        run.wait(10)


def converged(mh, services, hosts):
    """Cycles until one holds every service with 3 containers spread over the answering hosts (as even as can
    be); the decisions. Every container is running, registered on its own host's agent and passing; every
    registration on an answering host is a container's; no lock is held and no session of a run is left."""
    names = [services["a"], services["b"]]
    spread = sorted(COUNT // hosts + (i < COUNT % hosts) for i in range(hosts))
    decisions = []
    for _cycle in range(4):
        decisions.append(cycle(services["args"]))
        at = {n: sorted(counts(mh, n).values()) for n in names}
        if all(c == spread for c in at.values()) and all(d["action"] == "hold" for d in decisions[-1].values()):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"not at {spread}: {at}; {[{n: d['reason'] for n, d in c.items()} for c in decisions]}")
    for name in names:
        on = engines(mh, name)
        assert all(state == "running" for c in on.values() for state in c.values()), on
        containers = {i: h for h, c in on.items() for i in c}
        answering = {i: node for i, node in registered(mh, name).items() if node in on}
        assert answering == containers, f"{name}: registrations {answering} against containers {containers}"
        per_host = Counter({h: len(c) for h, c in on.items()})
        wait_for(lambda name=name, per_host=per_host: passing(mh, name) == per_host, 20, f"{name} {per_host} passing")
        lock = kv(mh, f"skynet/lock/{name}")
        assert lock is None or not lock.get("Session"), lock
    sessions = [s["Name"] for s in mh.lb.agent.api("GET", "session/list")]
    assert not [s for s in sessions if s.endswith(tuple(names))], sessions
    return decisions


def test_cycles_killed_at_each_point_of_a_host_loss_converge_with_nothing_done_twice(multihost, services):
    mh, a, b, logs = multihost, services["a"], services["b"], services["logs"]
    lost = mh.host(3)
    survivors = sorted(h.name for h in mh.hosts if h is not lost)
    record_key = f"skynet/compute/default/hosts/{lost.name}"
    converged(mh, services, 3)
    mh.cut(3)

    # 1. Killed right after it recorded the host's first failure: the grace period counts from that record.
    before = kv(mh, f"skynet/scale/{a}/state")["ModifyIndex"]
    run = start_module(SCALE, services["args"], logs / "1.log")
    killed_when(run, Watch(mh, record_key))
    first = kv(mh, record_key)
    assert kv(mh, f"skynet/scale/{a}/state")["ModifyIndex"] == before, "killed too late: the run wrote its decision"
    d = cycle(services["args"])
    for name in (a, b):
        assert d[name]["action"] == "hold" and d[name]["unavailable_hosts"][lost.name]["lost"] is False, d
        assert counts(mh, name) == dict.fromkeys(survivors, 1)
        assert not (kv(mh, f"skynet/lock/{name}") or {}).get("Session"), "a lock held in the grace period"
    assert kv(mh, record_key)["ModifyIndex"] == first["ModifyIndex"], "the first failure's record was rewritten"

    # 2. The host lost: a's cycle killed once it recorded its decision under the lock, before it started
    # anything; b's, in a run of its own at the same time, once it started the replacement, before it passed.
    since = d[a]["unavailable_hosts"][lost.name]["failing_since"]
    time.sleep(max(0.0, since + HOST_GRACE - time.time()))
    state, before = Watch(mh, f"skynet/scale/{a}/state"), kv(mh, f"skynet/scale/{a}/state")["ModifyIndex"]
    last = kv(mh, f"skynet/scale/{b}/last")["ModifyIndex"]
    seen = []

    def decided():
        return state()["ModifyIndex"] > before and kv(mh, f"skynet/lock/{a}").get("Session")

    def replacement_started():
        on = engines(mh, b)
        if sum(len(c) for c in on.values()) < COUNT:
            return False
        seen.append((on, sum(passing(mh, b)[h] for h in survivors)))
        return True

    runs = {n: start_module(SCALE, {**services["args"], "limit": [n]}, logs / f"2-{n}.log") for n in (a, b)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        kills = [pool.submit(killed_when, runs[a], decided), pool.submit(killed_when, runs[b], replacement_started)]
        for kill in kills:
            kill.result()
    assert counts(mh, a) == dict.fromkeys(survivors, 1), "a's replacement was started before the kill"
    (started, passed) = seen[0]
    assert passed == COUNT - 1, f"{passed} instance(s) of {b} passing when its replacement was seen started"
    assert kv(mh, f"skynet/scale/{b}/last")["ModifyIndex"] == last, "killed too late: b's outcome was written"

    decisions = converged(mh, services, 2)
    applied = [(n, d["action"]) for c in decisions for n, d in c.items() if d.get("applied")]
    assert applied == [(a, "hold")], f"not one replacement of {a} and none of {b}: {decisions}"
    assert engines(mh, b) == {h: dict.fromkeys(c, "running") for h, c in started.items()}, "b's replacement replaced"
    assert all(d["unavailable_hosts"][lost.name]["lost"] for d in decisions[-1].values())

    # Back: the surplus goes, from where each service has most, and the failure record with it.
    mh.restore(3)
    converged(mh, services, 3)
    assert kv(mh, record_key) is None
