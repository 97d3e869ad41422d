"""Metrics that are not numbers, absurd numbers and a Prometheus that goes away, against real Consul,
Prometheus and Podman: skynet_scale holds what needs the metric, still does what needs none, and never
crashes or runs away."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from harness.ansible import run_module
from harness.proc import wait_for
from harness.services import remove_service, service_containers

COMPUTE = "cyberdyne.skynet.skynet_compute"
SCALE = "cyberdyne.skynet.skynet_scale"
HEALTH = {"path": "/health", "interval": "1s"}


@pytest.fixture
def prometheus(stack):
    """A Prometheus of the test's own: the queries below are constant expressions, nothing is scraped."""
    return stack.prometheus({"global": {"scrape_interval": "5s", "evaluation_interval": "5s"}})


@pytest.fixture
def services(consul, engine, sample_image, unique):
    """Makes service definitions; every instance and record of them is removed at the end, also on failure."""
    made = []
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}

    def make(prefix, checks, **scaling):
        name = unique(prefix)
        made.append(name)
        policy = {"min": 1, "max": 4, "cooldown_up": 0, "cooldown_down": 0, "stabilization_window": 0}
        return {
            "name": name,
            "image": sample_image["1"],
            "port": 8080,
            "health": HEALTH,
            "scaling": {**policy, **scaling, "checks": checks},
        }

    yield make, common
    for name in made:
        remove_service(common, consul, name)


def scale(common, prometheus_url, definitions, **extra):
    result = run_module(
        SCALE, {**common, "services": definitions, "prometheus_url": prometheus_url, "drain_period": 0, **extra}
    )
    # A crash is a MODULE FAILURE with the traceback in module_stderr; a handled failure says what is wrong.
    assert "module_stderr" not in result and "MODULE FAILURE" not in result.get("msg", ""), result
    assert "Traceback" not in json.dumps(result.get("msg")), result
    return result


NOT_NUMBERS = {
    "inf": ("vector(1) / vector(0)", "+Inf"),
    "neg": ("vector(-1) / vector(0)", "-Inf"),
    "nan": ("vector(0) / vector(0)", "NaN"),
    "empty": ('up{job="nothing-scrapes-this"}', None),
}


def test_non_finite_and_empty_metrics_hold_and_are_reported(prometheus, services, docker_client):
    make, common = services
    definitions = {
        key: make(f"nf-{key}", [{"name": "rps", "query": query, "aggregate": "total", "target": 5}])
        for key, (query, _shown) in NOT_NUMBERS.items()
    }
    # At 0 instances the min floor still starts one: it needs no metric.
    first = scale(common, prometheus.url, list(definitions.values()))
    assert not first.get("failed"), first
    assert [(d["action"], d["desired"], d["applied"]) for d in first["decisions"]] == [("scale_out", 1, True)] * 4

    second = scale(common, prometheus.url, list(definitions.values()))
    assert not second.get("failed"), second
    for key, decision in zip(definitions, second["decisions"], strict=True):
        shown = NOT_NUMBERS[key][1]
        assert (decision["action"], decision["current"], decision["desired"]) == ("hold", 1, 1), decision
        assert decision["missing"] == ["rps"] and decision["outage"] is None, decision
        assert decision["metrics"] == {"rps": None}
        said = f"metric missing (value {shown} is not finite)" if shown else "metric missing: holding capacity"
        assert said in decision["reason"], decision
    for definition in definitions.values():
        assert len(service_containers(docker_client, definition["name"])) == 1


def test_a_huge_metric_against_a_huge_max_starts_a_bounded_number_of_instances(prometheus, services, docker_client):
    make, common = services
    web = make("huge", [{"name": "rps", "query": "vector(1e9)", "aggregate": "total", "target": 1}], max=10**6)
    started = time.monotonic()
    result = scale(common, prometheus.url, [web])
    elapsed = time.monotonic() - started
    assert not result.get("failed"), result
    decision = result["decisions"][0]
    # HPA's default: the larger of 100 % of 0 and 4 instances.
    assert (decision["action"], decision["current"], decision["desired"]) == ("scale_out", 0, 4), decision
    assert "1000000000 wanted" not in decision["reason"]
    assert "1000000 wanted, step limited to 4" in decision["reason"], decision
    assert len(service_containers(docker_client, web["name"])) == 4
    print(f"\n1e9 against max 10^6: {decision['desired']} instances started in {elapsed:.1f} s")


def test_absurd_policy_numbers_and_rejected_queries_change_nothing(prometheus, services, docker_client):
    make, common = services
    cases = [
        ({"max": float("inf")}, [], "max must be a finite number, got inf"),
        ({"max": 10**6 + 1}, [], "max must be 1000000 or less"),
        ({}, [{"name": "rps", "query": "vector(1)", "target": float("nan")}], "check rps: target must be a finite"),
        ({}, [{"name": "rps", "query": "sum(rate(", "target": 5}], "check rps: Prometheus at"),
        ({}, [{"name": "rps", "query": "vector(1)[5m:1m]", "target": 5}], "returned a range of samples"),
    ]
    for scaling, checks, message in cases:
        web = make("bad", checks or [{"name": "rps", "query": "vector(1)", "target": 5}], **scaling)
        result = scale(common, prometheus.url, [web])
        assert result.get("failed") and message in result["msg"], (message, result)
        assert "nothing was changed" in result["msg"], result
        assert service_containers(docker_client, web["name"]) == []


def critical(consul, name):
    checks = consul.api("GET", f"health/checks/{name}")
    return [c for c in checks if c["Status"] == "critical" and not c["CheckID"].startswith("_service_maintenance:")]


def test_prometheus_stopped_holds_metric_decisions_and_still_repairs_what_needs_no_metric(
    prometheus, services, consul, docker_client
):
    make, common = services
    # metered: 2 instances by its metric; floor: below its min of 2; sick: its one instance fails its health.
    metered = make("out-m", [{"name": "rps", "query": "vector(20)", "aggregate": "total", "target": 10}], min=1)
    floor = make("out-f", [{"name": "rps", "query": "vector(0)", "aggregate": "total", "target": 10}], min=2)
    sick = make("out-s", [{"name": "rps", "query": "vector(10)", "aggregate": "total", "target": 10}], min=1)
    ready = scale(common, prometheus.url, [metered])
    assert not ready.get("failed") and ready["decisions"][0]["desired"] == 2, ready
    assert len(service_containers(docker_client, metered["name"])) == 2
    started = run_module(
        COMPUTE,
        {**common, "service": sick["name"], "image": sick["image"], "count": 1, "health": HEALTH},
        timeout=120,
    )
    assert not started.get("failed"), started
    (old,) = service_containers(docker_client, sick["name"])
    old.exec_run(["rm", "-f", "/www/health"])  # /health answers 404 from now on
    wait_for(lambda: critical(consul, sick["name"]), 30, f"{sick['name']} critical in Consul")

    prometheus.process.stop()
    started = time.monotonic()
    result = scale(common, prometheus.url, [metered, floor, sick], health_grace=0, unhealthy_after=0)
    elapsed = time.monotonic() - started

    assert result.get("failed"), result
    held, restored, repaired = result["decisions"]
    unreachable = f"Prometheus at {prometheus.url} is unreachable: Connection refused"
    assert (held["action"], held["current"], held["desired"]) == ("hold", 2, 2), held
    assert held["missing"] == ["rps"] and held["outage"] == unreachable, held
    assert f"rps: metric unavailable ({unreachable}): holding capacity" in held["reason"], held
    assert (restored["action"], restored["current"], restored["desired"], restored["applied"]) == (
        "scale_out",
        0,
        2,
        True,
    ), restored
    assert restored["missing"] == ["rps"] and restored["outage"] == unreachable, restored
    assert repaired["applied"] and repaired["outage"] == unreachable, repaired
    assert [old.id[: len(i)] for i in repaired["replaced"]] == repaired["replaced"] != [], repaired
    assert len(service_containers(docker_client, metered["name"])) == 2
    assert len(service_containers(docker_client, floor["name"])) == 2
    (new,) = service_containers(docker_client, sick["name"])
    assert new.id != old.id

    msg = result["msg"]
    assert msg.startswith(f"metrics unavailable, the decisions that need them held: {unreachable}, for "), msg
    assert all(f"{d['name']} (rps)" in msg for d in (metered, floor, sick)), msg
    assert f"Still done in this run: {floor['name']} scale_out 0 -> 2, {sick['name']} " in msg, msg
    assert msg.endswith("replacing 1"), msg
    print(f"\nPrometheus stopped: 1 service held, 1 restored to its min, 1 instance replaced in {elapsed:.1f} s")


def test_a_query_failing_at_run_time_holds_that_service_only(prometheus, services, docker_client):
    make, common = services
    # Two series where one number is needed: a fault of the data at this moment, not of the PromQL.
    two = 'vector(1) or label_replace(vector(2), "copy", "yes", "", "")'
    broken = make("rt-b", [{"name": "rps", "query": two, "target": 5}], min=0)
    fine = make("rt-f", [{"name": "rps", "query": "vector(10)", "aggregate": "total", "target": 5}], min=0)
    result = scale(common, prometheus.url, [broken, fine])
    assert result.get("failed"), result
    first, second = result["decisions"]
    assert first["action"] == "hold" and first["missing"] == ["rps"], first
    assert "returned 2 series where type=scalar needs exactly one" in first["outage"], first
    assert second["outage"] is None and (second["action"], second["desired"], second["applied"]) == (
        "scale_out",
        2,
        True,
    ), second
    assert f"Still done in this run: {fine['name']} scale_out 0 -> 2" in result["msg"], result["msg"]
    assert service_containers(docker_client, broken["name"]) == []
    assert len(service_containers(docker_client, fine["name"])) == 2


def test_a_prometheus_that_does_not_answer_is_waited_for_once_per_run(services, docker_client):
    """Every later query would wait as long: the cycle stays bounded by one timeout, not one per check."""
    make, common = services
    accepted = []
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        silent.settimeout(0.2)
        stop = threading.Event()

        def accept():
            while not stop.is_set():
                try:
                    accepted.append(silent.accept()[0])
                except TimeoutError:
                    continue

        acceptor = threading.Thread(target=accept)
        acceptor.start()
        try:
            url = f"http://127.0.0.1:{silent.getsockname()[1]}"
            checks = [{"name": n, "query": f"vector({n[-1]})", "target": 5} for n in ("q1", "q2")]
            definitions = [make(f"slow{n}", checks, min=0) for n in range(3)]
            result = scale(common, url, definitions, prometheus_timeout=1)
        finally:
            stop.set()
            acceptor.join(5)
            for conn in accepted:
                conn.close()
    assert result.get("failed"), result
    outage = f"Prometheus at {url} did not answer within 1 s (option timeout)"
    assert [(d["action"], d["missing"], d["outage"]) for d in result["decisions"]] == [
        ("hold", ["q1", "q2"], outage)
    ] * 3, result["decisions"]
    assert len(accepted) == 1, "one query waited for, not six"
    assert all(service_containers(docker_client, d["name"]) == [] for d in definitions)
