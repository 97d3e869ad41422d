from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._demand import ALERT, demand_rules, instances
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

QUERY = 'service:skynet_http_requests:rate{service="web"}'


def _web(*checks, maximum=4):
    return {"name": "web", "scaling": {"max": maximum, "checks": list(checks)}}


def test_a_total_target_compares_the_load_with_the_instances_the_load_balancers_have_up():
    (rule,) = demand_rules([_web({"name": "requests", "query": QUERY, "aggregate": "total", "target": 50})])
    assert rule["alert"] == ALERT and rule["for"] == "0s"
    assert rule["labels"] == {"service": "web", "check": "requests", "severity": "info"}
    assert rule["expr"] == f"(max({QUERY}) / 55 > {instances('web')}) and on() ({instances('web')} < 4)"
    assert 'proxy=~"web_blue|web_green"' in instances("web") and instances("web").endswith("or vector(0))")


def test_an_average_target_fires_above_its_tolerance_and_a_step_from_the_first_step_that_adds():
    average = {"name": "cpu", "query": "cpu", "target": 0.5, "tolerance": 0.2}
    steps = {"name": "conns", "query": "conns", "steps": [{"upper": 10, "adjust": -1}, {"lower": 10, "adjust": 2}]}
    cpu, conns = demand_rules([_web(average, steps)], for_="10s")
    assert cpu["expr"].startswith("(max(cpu) > 0.6) and on() (")
    assert conns["expr"].startswith("(max(conns) >= 10) and on() (")
    assert {cpu["for"], conns["for"]} == {"10s"}


def test_an_ahead_check_alerts_on_its_forecast_too():
    (rule,) = demand_rules([_web({"name": "r", "query": QUERY, "target": 5, "ahead": {"lead": "1m"}})])
    assert "predict_linear" in rule["expr"]


@pytest.mark.parametrize(
    "check",
    [
        {"name": "hours", "windows": [{"min": 2}]},
        {"name": "given", "value": 3, "target": 1},
        # No step adds instances, or the one that does has no lower bound (always adding: nothing to tell).
        {"name": "down", "query": "q", "steps": [{"upper": 10, "adjust": -1}, {"lower": 10, "adjust": 0}]},
        {"name": "always", "query": "q", "steps": [{"adjust": 1}]},
    ],
)
def test_checks_with_nothing_to_alert_on_have_no_rule(check):
    assert demand_rules([_web(check)]) == []


def test_definitions_without_scaling_have_none_and_an_invalid_policy_is_named():
    assert demand_rules([{"name": "db"}, {"name": "cache", "scaling": None}]) == []
    with pytest.raises(SkynetError, match="service web: min \\(5\\) is above max \\(4\\)"):
        demand_rules([{"name": "web", "scaling": {"min": 5, "max": 4, "checks": [{"query": "q", "target": 1}]}}])
