"""Scaling ahead against a real Prometheus: a check with `ahead` acts on the signal's linear forecast `lead`
seconds on (predict_linear over a subquery of the check's own query) when it is rising, and on its value now when
it is falling. The signals are functions of time(), so the forecast is known exactly: a ramp of 1 per second."""

from __future__ import annotations

import time

import pytest

from harness.ansible import run_module

SCALE = "cyberdyne.skynet.skynet_scale"


@pytest.fixture(scope="module")
def prometheus(session_stack):
    return session_stack.prometheus({"global": {"evaluation_interval": "5s"}}, name="ahead-prometheus")


def decide(prometheus, consul, engine, name, query, ahead=None):
    check = {"name": "load", "query": query, "aggregate": "total", "target": 10}
    if ahead:
        check["ahead"] = ahead
    service = {"name": name, "image": "unused:1", "scaling": {"min": 0, "max": 20, "min_step": 20, "checks": [check]}}
    result = run_module(
        SCALE,
        {
            "services": [service],
            "prometheus_url": prometheus.url,
            "consul_url": consul.url,
            "docker_host": engine.docker_host,
            "dry_run": True,
        },
    )
    assert not result.get("failed"), result.get("msg")
    (decision,) = result["decisions"]
    return decision


def test_a_rising_signal_is_met_where_it_will_be_and_a_falling_one_where_it_is(prometheus, consul, engine, unique):
    start = time.time() - 25  # the ramp is at 25 now, 85 a minute from now
    rising = f"vector(time() - {start:.3f})"
    now = decide(prometheus, consul, engine, unique("now"), rising)
    ahead = decide(prometheus, consul, engine, unique("ahead"), rising, {"lead": "1m", "over": "2m", "step": "5s"})
    assert 24 < now["metrics"]["load"] < 40 and now["desired"] in (3, 4)
    assert ahead["metrics"]["load"] == pytest.approx(now["metrics"]["load"] + 60, abs=8)
    assert ahead["desired"] >= now["desired"] + 5 and ahead["action"] == "scale_out"

    end = time.time() + 40  # falling: 40 now, below 0 a minute from now
    falling = f"vector({end:.3f} - time())"
    held = decide(prometheus, consul, engine, unique("fall"), falling, {"lead": "1m", "over": "2m", "step": "5s"})
    assert 30 < held["metrics"]["load"] <= 40 and held["desired"] == 4


def test_a_query_prometheus_refuses_with_ahead_is_named(prometheus, consul, engine, unique):
    service = {
        "name": unique("bad"),
        "image": "unused:1",
        "scaling": {"min": 0, "max": 2, "checks": [{"query": "rate(", "target": 1, "ahead": {"lead": "1m"}}]},
    }
    common = {"prometheus_url": prometheus.url, "consul_url": consul.url, "docker_host": engine.docker_host}
    result = run_module(SCALE, {"services": [service], **common, "dry_run": True})
    assert result.get("failed") and "predict_linear((rate()" in result["msg"]
