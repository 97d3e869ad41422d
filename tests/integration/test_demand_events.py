"""Demand alerts: the prometheus role's SkynetServiceDemand rules, evaluated by the real Prometheus on
HAProxy's metrics, delivered by the real Alertmanager on the role's configuration to the watcher, which
runs the autoscale cycle for that service alone (resident, or the playbook): a load step adds instances with
no timer cycle.
Real Consul, HAProxy, Prometheus, Alertmanager and Podman."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests

from harness.load import LoadLoop
from harness.proc import wait_for
from harness.product import autoscale_cycle, start_event_path, zero_definition
from harness.prometheus_role import render_rules
from harness.services import remove_service

TARGET = 5  # requests/s per instance
RATE = 20  # requests/s of the load step: 4 instances' worth, max is 3


@pytest.fixture(params=["resident", "playbook"])
def demand(request, stack, consul, engine, sample_image, unique):
    """A web service at min 1 scaled on its request rate, with the role's demand alerts routed to the
    watcher (its cycle resident, or the autoscale playbook); one instance running, started by a cycle."""
    web = zero_definition(unique("web"), sample_image["1"])
    web["scaling"]["min"] = 1
    web["scaling"]["checks"][0]["target"] = TARGET
    started = start_event_path(stack, consul, engine, [web], demand=True, watcher_mode=request.param)
    assert autoscale_cycle(started, stack)[web["name"]]["desired"] == 1
    yield {**started, "web": web}
    remove_service({"docker_host": engine.docker_host, "consul_url": consul.url}, consul, web["name"])


def _passing(consul, name):
    return len(consul.api("GET", f"health/service/{name}", params={"passing": "1"}))


def _watcher_metric(webhook, line_start):
    text = requests.get(f"http://{webhook}/metrics", timeout=5).text
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)), 0.0)


def test_a_load_step_fires_the_demand_alert_and_the_watcher_scales_the_service_out(demand, consul):
    web, prometheus = demand["web"], demand["prometheus"]
    name = web["name"]
    alert = f'ALERTS{{alertname="SkynetServiceDemand", service="{name}", check="demand", alertstate="firing"}}'
    wait_for(lambda: _passing(consul, name) == 1, 30, "the first instance passing")
    prometheus.wait_query(f'haproxy_backend_active_servers{{proxy="{name}_blue"}} == 1', 30)
    # One instance and no load: nothing to ask for.
    assert prometheus.query(alert) == []
    assert _watcher_metric(demand["webhook"], 'skynet_watcher_triggers_total{source="alert"}') == 0

    url = f"http://127.0.0.1:{web['lb_port']}/"
    step = time.monotonic()
    with LoadLoop(url, rate=RATE) as load:
        prometheus.wait_query(alert, 30)
        fired = time.monotonic() - step
        wait_for(lambda: _passing(consul, name) >= 2, 60, "a second instance passing", interval=0.5)
        added = time.monotonic() - step
    print(f"load step to demand alert firing {fired:.1f}s, to a second instance passing {added:.1f}s")
    assert load.failures == [], load.failures[:5]

    # The watcher was told by Alertmanager (no timer runs here) and its cycle scaled out.
    assert _watcher_metric(demand["webhook"], 'skynet_watcher_triggers_total{source="alert"}') >= 1
    ok = 'skynet_watcher_runs_total{result="ok"}'
    wait_for(lambda: _watcher_metric(demand["webhook"], ok) >= 1, 60, "the watcher's cycle to end")
    history = consul.api("GET", f"kv/skynet/scale/{name}/last", params={"raw": "1"})
    assert history["action"] == "scale_out" and history["desired"] >= 2, history


def _check(name, **check):
    return {"name": name, "query": f'{name}_signal{{service="{name}"}}', **check}


def test_the_rendered_demand_alerts_fire_exactly_when_a_check_wants_more_instances(tmp_path):
    """promtool (Prometheus' rule engine) evaluates the rules the role renders on series of a test."""
    services = [
        # 2 instances up (each load balancer sees the same 2): fires above 2 x 5 x 1.1 = 11 requests/s.
        {"name": "web", "scaling": {"max": 4, "checks": [_check("web", aggregate="total", target=5)]}},
        # Per instance: fires above 0.5 x 1.1.
        {"name": "api", "scaling": {"max": 4, "checks": [_check("api", target=0.5)]}},
        # Steps: fires from 100, where a step adds an instance.
        {
            "name": "db",
            "scaling": {
                "max": 4,
                "checks": [_check("db", steps=[{"upper": 100, "adjust": 0}, {"lower": 100, "adjust": 1}])],
            },
        },
        # Nothing to alert on: a schedule, a value given by the playbook.
        {"name": "cron", "scaling": {"max": 2, "checks": [{"name": "hours", "windows": [{"min": 1}]}]}},
        {"name": "batch", "scaling": {"max": 2, "checks": [{"name": "given", "value": 3, "target": 1}]}},
    ]
    rules = render_rules(
        tmp_path, services, prometheus_alertmanager_watcher_urls=["http://127.0.0.1:9107/alertmanager"]
    )
    # In the signals' group, after them: an alert reads the signals of the same evaluation.
    (signals,) = [g["rules"] for g in rules["groups"] if g["name"] == "skynet-service-signals"]
    first_alert = next(i for i, r in enumerate(signals) if "alert" in r)
    assert all("record" in r for r in signals[:first_alert]) and all("alert" in r for r in signals[first_alert:])
    demand = [{"name": "skynet-service-demand", "rules": signals[first_alert:]}]
    assert [g for g in rules["groups"] for r in g["rules"] if r.get("alert") == "SkynetServiceDemand"] == [
        g for g in rules["groups"] if g["name"] == "skynet-service-signals"
    ] * 3
    assert [(r["labels"]["service"], r["labels"]["check"]) for r in demand[0]["rules"]] == [
        ("web", "web"),
        ("api", "api"),
        ("db", "db"),
    ]
    for r in demand[0]["rules"]:  # the descriptions show $value: the summaries alone are compared
        del r["annotations"]["description"]
    (tmp_path / "rules.yml").write_text(json.dumps({"groups": demand}))
    servers = 'haproxy_backend_active_servers{{proxy="web_{}", instance="{}"}}'

    def firing(*names):
        return [
            {
                "exp_labels": {"service": n, "check": n, "severity": "info"},
                "exp_annotations": next(r["annotations"] for r in demand[0]["rules"] if r["labels"]["service"] == n),
            }
            for n in names
        ]

    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # At 2m web reaches its max of 4 instances: demand or not, nothing to add.
                    {"series": 'web_signal{service="web"}', "values": "10 12 30"},
                    {"series": servers.format("blue", "lb1"), "values": "2 2 4"},
                    {"series": servers.format("blue", "lb2"), "values": "2 2 4"},
                    {"series": servers.format("green", "lb1"), "values": "0 0 0"},
                    {"series": 'api_signal{service="api"}', "values": "0.5 0.6 0.6"},
                    {"series": 'db_signal{service="db"}', "values": "50 150 150"},
                ],
                "alert_rule_test": [
                    {"eval_time": "0m", "alertname": "SkynetServiceDemand", "exp_alerts": []},
                    {"eval_time": "1m", "alertname": "SkynetServiceDemand", "exp_alerts": firing("web", "api", "db")},
                    {"eval_time": "2m", "alertname": "SkynetServiceDemand", "exp_alerts": firing("api", "db")},
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(json.dumps(tests))
    out = subprocess.run(
        ["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
