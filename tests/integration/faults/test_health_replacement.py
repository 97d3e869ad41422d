"""A running instance whose health check fails is replaced by the scaling cycle, even when it holds."""

from __future__ import annotations

import time

from harness.ansible import run_module
from harness.load import LoadLoop
from harness.proc import free_port, wait_for
from harness.services import remove_service
from harness.stack import consul_backend

COMPUTE = "cyberdyne.skynet.skynet_compute"
SCALE = "cyberdyne.skynet.skynet_scale"


def passing(consul, name):
    return sorted(
        e["Service"]["Meta"]["skynet_instance"] for e in consul.api("GET", f"health/service/{name}?passing=1")
    )


def test_a_failing_instance_is_replaced_on_a_hold_decision_with_no_failed_request(
    stack, consul, engine, docker_client, sample_image, unique
):
    name = unique("hr")
    frontend = free_port()
    stack.haproxy(consul_backend(name, frontend, consul.dns_port))
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}
    health = {"path": "/health", "interval": "1s", "deregister_after": "10m"}
    definition = {
        "name": name,
        "image": sample_image["1"],
        "port": 8080,
        "health": health,
        # 100 for 2 instances on a target of 50 each: the decision holds at 2 all along.
        "scaling": {
            "min": 1,
            "max": 4,
            "checks": [{"name": "load", "value": 100, "aggregate": "total", "target": 50}],
        },
    }
    compute = {**common, "service": name, "image": sample_image["1"], "health": health, "drain_period": 0}
    try:
        assert not run_module(COMPUTE, {**compute, "count": 1}).get("failed")
        # The second instance serves, then its /health answers 404 from 10 s after its start on.
        second = run_module(COMPUTE, {**compute, "count": 2, "env": {"HEALTHY_FOR": "10"}})
        assert not second.get("failed"), second
        failing = second["created"]
        assert len(failing) == 1, second
        args = {
            **common,
            "services": [definition],
            "health_grace": 5,
            "unhealthy_after": 6,
            "drain_period": 1,
        }
        with LoadLoop(f"http://127.0.0.1:{frontend}/", rate=20) as load:
            wait_for(lambda: failing[0] not in passing(consul, name), 30, "the instance to fail its health check")
            failed_at = time.monotonic()
            decisions, cycles = [], []  # cycles: (started, ended) of each run, on this clock
            while time.monotonic() - failed_at < 90:
                started = time.monotonic()
                result = run_module(SCALE, args)
                cycles.append((started, time.monotonic()))
                assert not result.get("failed"), result
                decisions.append(result["decisions"][0])
                if decisions[-1]["replaced"]:
                    break
                time.sleep(1)
            replaced_after = time.monotonic() - failed_at
            time.sleep(2)
        assert all(d["action"] == "hold" for d in decisions), decisions
        first = decisions[0]
        assert first["unhealthy"] == failing and first["current"] == 2 and first["passing"] == 1, first
        assert first["applied"], first  # a replacement started in the first cycle after the failure
        assert "not counted" in first["reason"], first
        assert decisions[-1]["replaced"] == failing, decisions
        assert decisions[-1]["replacements_total"] == 1
        # The first cycle records when it saw the failure; unhealthy_after (6 s) is counted from there, so the
        # replacing cycle is the first one started 6 s after the first ended, or one that ended 6 s after it began.
        # Counted in cycles, not seconds: a loaded machine makes each cycle slower, not the rule different.
        first_ended = cycles[0][1]
        assert all(started < first_ended + 6 for started, _ended in cycles[:-1]), (cycles, decisions)
        assert cycles[-1][1] - cycles[0][0] >= 6, cycles  # never before unhealthy_after
        now_passing = passing(consul, name)
        assert len(now_passing) == 2 and failing[0] not in now_passing, now_passing
        assert len(docker_client.containers.list(all=True, filters={"label": [f"io.skynet.service={name}"]})) == 2
        assert load.ok > 100 and not load.failures, (load.ok, load.failures[:5])
        print(f"failing instance replaced {replaced_after:.1f} s after it failed; {load.ok} requests, 0 failed")

        # A later cycle holds and replaces nothing.
        again = run_module(SCALE, args)["decisions"][0]
        assert again["action"] == "hold" and not again["replaced"] and not again["applied"], again
    finally:
        remove_service(common, consul, name)
