from __future__ import annotations

import json
import math
from datetime import datetime

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._policy import (
    MAX_NEW_PER_CYCLE,
    State,
    Unavailable,
    counted,
    decide,
    parse_check,
    parse_policy,
)

NOW = 1_000_000.0
MONDAY_10 = datetime(2026, 11, 23, 10, 0)
SUNDAY_10 = datetime(2026, 11, 22, 10, 0)


def policy(**kw):
    raw = {
        "min": 1,
        "max": 6,
        "cooldown_up": 0,
        "cooldown_down": 0,
        "stabilization_window": 0,
        "checks": [{"name": "rps", "query": "q", "target": 50}],
    }
    raw.update(kw)
    return parse_policy("web", raw)


def run_state(p, current, values, state=None, now=NOW, local=MONDAY_10):
    return decide(p, current, values, state or State(), now, local)


def run(*args, **kw):
    return run_state(*args, **kw)[0]


@pytest.mark.parametrize(
    ("current", "value", "desired", "action"),
    [
        (1, 200, 4, "scale_out"),  # ceil(1 x 200 / 50)
        (2, 100, 4, "scale_out"),
        (4, 52, 4, "hold"),  # within the 10 % tolerance
        (4, 45, 4, "hold"),
        (4, 30, 3, "scale_in"),  # ceil(4 x 30 / 50) = 3
        (4, 0, 1, "scale_in"),  # never below min
        (4, 1000, 6, "scale_out"),  # never above max
        (1, 1000, 5, "scale_out"),  # one decision adds at most max(100 % of current, 4)
        (0, 120, 3, "scale_out"),  # no instance: the value is read as a total
    ],
)
def test_target_tracking(current, value, desired, action):
    d = run(policy(), current, {"rps": value})
    assert (d.desired, d.action) == (desired, action)


def test_total_aggregate_divides_by_the_target():
    p = policy(checks=[{"name": "rps", "query": "q", "target": 50, "aggregate": "total"}])
    assert run(p, 1, {"rps": 200}).desired == 4
    assert run(p, 4, {"rps": 60}).desired == 2


def test_held_at_max_is_said():
    d = run(policy(), 6, {"rps": 500})
    assert d.action == "hold" and "held at max 6" in d.reason


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (None, "rps: metric missing: holding capacity"),
        (math.nan, "rps: metric missing (value NaN is not finite): holding capacity"),
        (math.inf, "rps: metric missing (value +Inf is not finite): holding capacity"),
        (-math.inf, "rps: metric missing (value -Inf is not finite): holding capacity"),
    ],
)
def test_a_missing_or_non_finite_metric_holds_capacity(value, said):
    d = run(policy(), 3, {"rps": value})
    assert (d.desired, d.action, d.reason) == (3, "hold", said)
    assert d.missing == ("rps",) and d.outage is None
    # The decision goes to Ansible and Consul KV as JSON: no Infinity or NaN in it.
    assert json.loads(json.dumps(d.as_dict(), allow_nan=False))["metrics"] == {"rps": None}


@pytest.mark.parametrize("value", [math.inf, math.nan, None])
def test_a_non_finite_metric_with_on_missing_ignore_lets_other_checks_decide(value):
    p = policy(
        checks=[
            {"name": "rps", "query": "q", "target": 50},
            {"name": "cpu", "query": "c", "target": 0.5, "on_missing": "ignore"},
        ]
    )
    d = run(p, 4, {"rps": 25, "cpu": value})
    assert d.desired == 2 and d.missing == ("cpu",)


def test_a_missing_metric_never_scales_to_min_but_does_not_block_scale_out():
    p = policy(checks=[{"name": "rps", "query": "q", "target": 50}, {"name": "cpu", "query": "c", "target": 0.5}])
    assert run(p, 3, {"rps": 1, "cpu": None}).desired == 3
    assert run(p, 3, {"rps": 100, "cpu": None}).desired == 6


def test_ignored_missing_metric_lets_other_checks_decide():
    p = policy(
        checks=[
            {"name": "rps", "query": "q", "target": 50},
            {"name": "cpu", "query": "c", "target": 0.5, "on_missing": "ignore"},
        ]
    )
    assert run(p, 4, {"rps": 25, "cpu": None}).desired == 2


@pytest.mark.parametrize(
    ("rps", "cpu", "desired"),
    [
        (100, 0.1, 6),  # scale-out wins
        (10, 0.9, 6),
        (10, 0.1, 1),  # both agree on scale-in
        (10, 0.5, 3),  # cpu on target: no scale-in
        (25, 0.3, 2),  # both scale in: the least reduction wins
    ],
)
def test_several_checks_combine_safely(rps, cpu, desired):
    p = policy(checks=[{"name": "rps", "query": "q", "target": 50}, {"name": "cpu", "query": "c", "target": 0.5}])
    assert run(p, 3, {"rps": rps, "cpu": cpu}).desired == desired


@pytest.mark.parametrize(
    ("value", "desired"),
    [(5, 1), (15, 3), (45, 4), (95, 6), (500, 6), (-1, 3)],
)
def test_step_scaling(value, desired):
    p = policy(
        checks=[
            {
                "name": "conns",
                "query": "q",
                "strategy": "step",
                "steps": [
                    {"upper": 10, "adjust": -2},
                    {"lower": 10, "upper": 40, "adjust": 0},
                    {"lower": 40, "upper": 90, "adjust": 1},
                    {"lower": 90, "adjust": 100, "unit": "percent"},
                ],
            }
        ]
    )
    p = parse_policy("web", {**_raw(p), "min": 0}) if value == -1 else p
    assert run(p, 3, {"conns": value}).desired == desired


def _raw(p):
    return {
        "max": p.max,
        "cooldown_up": 0,
        "cooldown_down": 0,
        "stabilization_window": 0,
        "checks": [{"name": "conns", "query": "q", "strategy": "step", "steps": [{"upper": 0, "adjust": 0}]}],
    }


def test_schedule_sets_a_floor_inside_its_window_only():
    p = policy(
        checks=[
            {"name": "rps", "query": "q", "target": 50},
            {
                "name": "office",
                "strategy": "schedule",
                "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "18:00", "min": 4}],
            },
        ]
    )
    assert run(p, 2, {"rps": 10}, local=MONDAY_10).desired == 4
    assert run(p, 2, {"rps": 10}, local=SUNDAY_10).desired == 1
    assert run(p, 2, {"rps": 10}, local=datetime(2026, 11, 23, 18, 0)).desired == 1


def test_cooldowns_are_separate_for_up_and_down():
    p = policy(cooldown_up=60, cooldown_down=300)
    up = State(last_scale_up=NOW - 30)
    d = run(p, 2, {"rps": 200}, up)
    assert d.action == "hold" and "cooldown: last scale-out 30s ago" in d.reason
    d = run(p, 2, {"rps": 200}, State(last_scale_up=NOW - 61))
    assert d.action == "scale_out"
    d = run(p, 4, {"rps": 10}, State(last_scale_up=NOW - 100))
    assert d.action == "hold" and "last scaling 100s ago" in d.reason
    d, new = run_state(p, 4, {"rps": 10}, State(last_scale_up=NOW - 301))
    assert d.action == "scale_in" and new.last_scale_down == NOW


def test_stabilization_acts_on_the_highest_recommendation_of_the_window():
    p = policy(stabilization_window=60)
    state = State(recommendations=[[NOW - 90, 6], [NOW - 50, 5], [NOW - 10, 3]])
    d, new = run_state(p, 6, {"rps": 10}, state)
    assert d.desired == 5 and "stabilization: 5" in d.reason
    assert [r[1] for r in new.recommendations] == [5, 3, 2]
    d = run(p, 6, {"rps": 10}, new, now=NOW + 45)
    assert d.desired == 3


def test_scale_out_is_not_delayed_by_stabilization():
    p = policy(stabilization_window=600)
    d = run(p, 1, {"rps": 200}, State(recommendations=[[NOW - 5, 1]]))
    assert d.desired == 4


@pytest.mark.parametrize(
    ("kw", "current", "value", "desired"),
    [
        ({"max_step": 1}, 1, 200, 2),
        ({"max_step": 2}, 6, 0, 4),
        ({"max_step_percent": 50, "min_step": 1}, 2, 300, 3),
        ({"max_step_percent": 50}, 2, 300, 6),  # min_step 4 allows more than 50 % of 2
        ({"max_step": 3, "max_step_percent": 50}, 4, 500, 6),
        ({"max_step_percent": 50}, 6, 0, 3),  # an explicit percent bounds scale-in too
        ({}, 6, 0, 1),  # scale-in has no default bound
    ],
)
def test_step_limit(kw, current, value, desired):
    assert run(policy(**kw), current, {"rps": value}).desired == desired


def test_out_of_bounds_counts_are_corrected_even_in_cooldown():
    p = policy(min=2, cooldown_up=600)
    d = run(p, 0, {"rps": 0}, State(last_scale_up=NOW - 1))
    assert d.desired == 2 and d.action == "scale_out"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"min": 5, "max": 2}, r"min \(5\) is above max \(2\)"),
        ({"checks": []}, "scaling has no checks"),
        ({"checks": [{"name": "rps", "query": "q", "target": -5}]}, "target must be above 0"),
        ({"checks": [{"name": "rps", "query": "q", "target": 0}]}, "target must be above 0"),
        ({"checks": [{"name": "rps", "target": 5}]}, "give a metric"),
        ({"checks": [{"name": "rps", "query": "q", "value": 1, "target": 5}]}, "not both"),
        ({"checks": [{"name": "rps", "query": "q", "target": 5, "strategy": "magic"}]}, "strategy must be one of"),
        (
            {
                "checks": [
                    {
                        "name": "x",
                        "query": "q",
                        "strategy": "step",
                        "steps": [{"upper": 10, "adjust": 1}, {"lower": 5, "adjust": 2}],
                    }
                ]
            },
            "steps overlap at 5",
        ),
        (
            {"checks": [{"name": "x", "strategy": "schedule", "windows": [{"days": ["funday"], "min": 1}]}]},
            "unknown day",
        ),
        ({"checks": [{"name": "x", "strategy": "schedule", "windows": [{"start": "25:00", "min": 1}]}]}, "HH:MM"),
        ({"max": "six"}, "max must be a number"),
        ({"min": -1}, "min must be 0 or more"),
        (
            {"checks": [{"name": "a", "query": "q", "target": 1}, {"name": "a", "query": "r", "target": 1}]},
            "check names must be unique",
        ),
    ],
)
def test_invalid_policies_are_rejected_with_a_clear_message(raw, message):
    with pytest.raises(SkynetError, match=message):
        parse_policy("web", {"min": 1, "max": 6, "checks": [{"name": "rps", "query": "q", "target": 50}], **raw})


def test_a_value_given_as_none_is_a_missing_metric():
    p = parse_policy("web", {"max": 3, "checks": [{"name": "rps", "value": None, "target": 50}]})
    assert p.checks[0].value is None


BIG = {"max": 1_000_000, "min": 0}


@pytest.mark.parametrize(
    ("kw", "current", "desired", "said"),
    [
        ({}, 0, 4, "step limited to 4 (the larger of 100% of 0 and min_step 4)"),
        ({}, 1, 5, "step limited to 4"),
        ({}, 4, 8, "step limited to 4"),
        ({}, 10, 20, "step limited to 10 (the larger of 100% of 10 and min_step 4)"),
        ({}, 60, 60 + MAX_NEW_PER_CYCLE, "at most 50 new instances per cycle"),
        ({"max_step_percent": 1000}, 10, 10 + MAX_NEW_PER_CYCLE, "at most 50 new instances per cycle"),
        ({"max_step_percent": 300}, 10, 40, "step limited to 30"),  # widened
        ({"max_step": 2}, 10, 12, "step limited to 2 (max_step)"),  # narrowed
        ({"min_step": 1}, 1, 2, "step limited to 1"),
        ({"max_step": 1_000_000}, 3, 7, "step limited to 4"),  # max_step alone does not widen
        ({"min": 200}, 0, MAX_NEW_PER_CYCLE, "at most 50 new instances per cycle"),  # even a min floor
    ],
)
def test_one_decision_adds_a_bounded_number_of_instances(kw, current, desired, said):
    p = policy(**{**BIG, **kw})
    d = run(p, current, {"rps": 1e9})
    assert (d.desired, d.action) == (desired, "scale_out")
    assert said in d.reason


@pytest.mark.parametrize(
    ("check", "current", "value"),
    [
        ({"target": 50}, 4, 1e308),  # current x value overflows to inf
        ({"target": 1e-300}, 4, 1e300),  # value / target overflows to inf
        ({"target": 50, "aggregate": "total"}, 4, 1.7e308),
        ({"target": 1e-300}, 0, 1e300),
        ({"target": 50}, 4, -1e308),
        ({"strategy": "step", "steps": [{"lower": 0, "adjust": 1_000_000}]}, 4, 1e308),
        ({"strategy": "step", "steps": [{"upper": 0, "adjust": -100, "unit": "percent"}]}, 4, -1e308),
    ],
)
def test_huge_finite_values_are_clamped_not_crashed(check, current, value):
    p = policy(**BIG, checks=[{"name": "rps", "query": "q", **check}])
    d = run(p, current, {"rps": value})
    assert 0 <= d.desired <= current + MAX_NEW_PER_CYCLE
    assert d.missing == ()


@pytest.mark.parametrize(
    ("aggregate", "current", "value", "said"),
    [
        ("total", 4, 20, "rps: total 20 for 4 instances = 5 per instance, within 10% of target 5"),
        ("total", 1, 20, "rps: total 20 for 1 instance = 20 per instance, target 5: ceil(20 / 5) = 4"),
        ("total", 4, 2, "rps: total 2 for 4 instances = 0.5 per instance, target 5: ceil(2 / 5) = 1"),
        ("average", 4, 5.25, "rps: 5.25 per instance for 4 instances, within 10% of target 5"),
        ("average", 4, 10, "rps: 10 per instance for 4 instances, target 5: ceil(4 x 10 / 5) = 8"),
        ("average", 0, 12, "rps: 12 for 0 instances read as a total, target 5: ceil(12 / 5) = 3"),
        ("total", 0, 1e9, "rps: 1e+09 for 0 instances read as a total, target 5: ceil(1e+09 / 5) = over 1000000"),
        (
            "average",
            4,
            1e308,
            "rps: 1e+308 per instance for 4 instances, target 5: ceil(4 x 1e+308 / 5) = over 1000000",
        ),
    ],
)
def test_reasons_state_the_arithmetic(aggregate, current, value, said):
    p = policy(max=20, checks=[{"name": "rps", "query": "q", "target": 5, "aggregate": aggregate}])
    assert run(p, current, {"rps": value}).reason.startswith(said)


OUTAGE = Unavailable("Prometheus at http://127.0.0.1:9 is unreachable: Connection refused")
TWO = [
    {"name": "rps", "query": "q", "target": 50},
    {"name": "cpu", "query": "c", "target": 0.5, "on_missing": "ignore"},
]


@pytest.mark.parametrize(
    ("current", "rps", "cpu", "desired"),
    [
        (3, OUTAGE, OUTAGE, 3),  # nothing answered: hold
        (3, 1, OUTAGE, 3),  # rps says scale in: never on partial data, even with on_missing ignore
        (3, OUTAGE, 0.01, 3),
        (3, 200, OUTAGE, 6),  # a scale-out allowed by the check that answered
        (0, OUTAGE, OUTAGE, 2),  # the min floor needs no metric
        (9, OUTAGE, OUTAGE, 6),  # nor does max
    ],
)
def test_an_unavailable_metric_always_holds_and_is_reported(current, rps, cpu, desired):
    p = policy(min=2, checks=TWO)
    d = run(p, current, {"rps": rps, "cpu": cpu})
    assert d.desired == desired
    unavailable = [n for n, v in (("rps", rps), ("cpu", cpu)) if isinstance(v, Unavailable)]
    assert d.missing == tuple(unavailable) and d.outage == str(OUTAGE)
    assert "metric unavailable (Prometheus at http://127.0.0.1:9 is unreachable" in d.reason
    assert all(d.metrics[n] is None for n in unavailable)


def test_outages_of_several_checks_are_named_once_each():
    other = Unavailable("Prometheus at http://127.0.0.1:9 failed to evaluate the query 'c': boom")
    d = run(policy(checks=TWO), 3, {"rps": OUTAGE, "cpu": other})
    assert d.outage == f"{other}; {OUTAGE}"
    d = run(policy(checks=TWO), 3, {"rps": OUTAGE, "cpu": OUTAGE})
    assert d.outage == str(OUTAGE)


def test_schedule_floors_need_no_metric():
    checks = [*TWO, {"name": "office", "strategy": "schedule", "windows": [{"min": 4}]}]
    d = run(policy(checks=checks), 2, {"rps": OUTAGE, "cpu": OUTAGE})
    assert (d.desired, d.action, d.missing) == (4, "scale_out", ("rps", "cpu"))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"max": math.inf}, "service web: max must be a finite number, got inf"),
        ({"max": math.nan}, "service web: max must be a finite number, got nan"),
        ({"max": 1_000_001}, "service web: max must be 1000000 or less"),
        ({"min": math.inf}, "service web: min must be a finite number"),
        ({"min": 1.5}, "service web: min must be a whole number"),
        ({"cooldown_up": math.inf}, "service web: cooldown_up must be a finite number"),
        ({"cooldown_up": -1}, "service web: cooldown_up must be 0 or more"),
        ({"cooldown_down": 86_401}, "service web: cooldown_down must be 86400 or less"),
        ({"stabilization_window": math.nan}, "service web: stabilization_window must be a finite number"),
        ({"stabilization_window": 3601}, "service web: stabilization_window must be 3600 or less"),
        ({"max_step": 0}, "service web: max_step must be 1 or more"),
        ({"max_step": math.inf}, "service web: max_step must be a finite number"),
        ({"max_step_percent": math.nan}, "service web: max_step_percent must be a finite number"),
        ({"max_step_percent": 0.5}, "service web: max_step_percent must be 1 or more"),
        ({"max_step_percent": 10_001}, "service web: max_step_percent must be 10000 or less"),
        ({"min_step": 0}, "service web: min_step must be 1 or more"),
        ({"min_step": 51}, "service web: min_step must be 50 or less"),
        ({"checks": [{"name": "rps", "query": "q", "target": math.inf}]}, "check rps: target must be a finite"),
        ({"checks": [{"name": "rps", "query": "q", "target": math.nan}]}, "check rps: target must be a finite"),
        ({"checks": [{"name": "rps", "query": "q", "target": 5, "tolerance": 1}]}, "tolerance must be below 1"),
        ({"checks": [{"name": "rps", "query": "q", "target": 5, "tolerance": -0.1}]}, "tolerance must be 0 or"),
        ({"checks": [{"name": "rps", "query": "q", "target": 5, "tolerance": math.inf}]}, "tolerance must be a fin"),
        (
            {"checks": [{"name": "s", "query": "q", "steps": [{"upper": math.inf, "adjust": 1}]}]},
            r"check s: steps\[0\].upper must be a finite number, got inf \(leave lower or upper out for no bound\)",
        ),
        (
            {"checks": [{"name": "s", "query": "q", "steps": [{"lower": math.nan, "adjust": 1}]}]},
            r"steps\[0\].lower must be a finite number",
        ),
        (
            {"checks": [{"name": "s", "query": "q", "steps": [{"adjust": math.inf}]}]},
            r"steps\[0\].adjust must be a fin",
        ),
        (
            {"checks": [{"name": "s", "query": "q", "steps": [{"adjust": 2e6}]}]},
            r"steps\[0\].adjust must be 1000000 or less",
        ),
        (
            {"checks": [{"name": "s", "query": "q", "steps": [{"adjust": -200, "unit": "percent"}]}]},
            r"steps\[0\].adjust must be -100 or more",
        ),
        (
            {"checks": [{"name": "o", "strategy": "schedule", "windows": [{"min": math.inf}]}]},
            r"check o: windows\[0\].min must be a finite number",
        ),
        (
            {"checks": [{"name": "o", "strategy": "schedule", "windows": [{"min": 2_000_000}]}]},
            r"windows\[0\].min must be 1000000 or less",
        ),
        ({"checks": [{"name": "rps", "value": "much", "target": 5}]}, "check rps: value must be a number"),
    ],
)
def test_absurd_numbers_are_rejected_naming_the_field(raw, message):
    with pytest.raises(SkynetError, match=message):
        parse_policy("web", {"min": 1, "max": 6, "checks": [{"name": "rps", "query": "q", "target": 50}], **raw})


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_a_non_finite_value_given_by_the_playbook_is_a_missing_metric(value):
    p = parse_policy("web", {"max": 3, "checks": [{"name": "rps", "value": value, "target": 50}]})
    d = run(p, 2, {"rps": p.checks[0].value})
    assert (d.action, d.missing) == ("hold", ("rps",))


def test_the_ceilings_themselves_are_accepted():
    p = parse_policy(
        "web",
        {
            "max": 1_000_000,
            "min_step": MAX_NEW_PER_CYCLE,
            "max_step_percent": 10_000,
            "cooldown_down": 86_400,
            "stabilization_window": 3600,
            "checks": [{"name": "rps", "query": "q", "target": 50, "tolerance": 0.99}],
        },
    )
    assert (p.max, p.min_step, p.max_step_percent) == (1_000_000, 50, 10_000)


def test_a_check_ahead_sends_the_larger_of_now_and_the_forecast():
    check = parse_check("web", 0, {"query": "sum(rate(x[1m]))", "target": 10, "ahead": {"lead": "2m"}})
    assert check.ahead == (120.0, 600.0, 0.0)
    assert check.promql == (
        "(predict_linear((sum(rate(x[1m])))[600s:], 120) > (sum(rate(x[1m])))) or (sum(rate(x[1m])))"
    )
    stepped = parse_check("web", 0, {"query": "q", "target": 1, "ahead": {"lead": 30, "over": "5m", "step": "15s"}})
    assert stepped.promql == "(predict_linear((q)[300s:15s], 30) > (q)) or (q)"
    assert parse_check("web", 0, {"query": "q", "target": 1}).promql == "q"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"value": 3, "target": 1, "ahead": {"lead": "1m"}}, "ahead forecasts a query"),
        ({"query": "q", "target": 1, "ahead": {}}, "ahead needs lead"),
        ({"query": "q", "target": 1, "ahead": {"lead": "soon"}}, "ahead.lead: 'soon' is not a duration"),
        ({"query": "q", "target": 1, "ahead": {"lead": 0}}, "ahead.lead must be a positive duration"),
        ({"query": "q", "target": 1, "ahead": {"lead": "1m", "step": "10m"}}, r"ahead.step \(600s\) must be below"),
        ({"query": "q", "target": 1, "ahead": {"lead": "1m", "window": "5m"}}, "ahead must be a dict of lead, over"),
        ({"query": "q", "target": 1, "ahead": "1m"}, "ahead must be a dict of lead, over"),
    ],
)
def test_a_bad_ahead_is_refused_naming_the_check(raw, message):
    with pytest.raises(SkynetError, match=f"service web: check 1: {message}"):
        parse_check("web", 0, raw)


# -- scale to and from zero ------------------------------------------------------------------


def test_a_service_that_may_go_to_zero_keeps_one_instance_until_idle_for_idle_after():
    p = policy(min=0, idle_after=300)
    d, new = run_state(p, 2, {"rps": 0}, State(busy_at=NOW - 100))
    assert (d.action, d.desired) == ("scale_in", 1) and "idle for 100s" in d.reason and "idle_after 300s" in d.reason
    assert new.busy_at == NOW - 100  # idle time keeps counting from the last demand
    d = run(p, 1, {"rps": 0}, State(busy_at=NOW - 299))
    assert d.action == "hold"
    d = run(p, 1, {"rps": 0}, State(busy_at=NOW - 300))
    assert (d.action, d.desired) == ("scale_in", 0)


def test_idle_time_starts_when_the_service_is_first_seen_and_demand_resets_it():
    p = policy(min=0, idle_after=60)
    d, new = run_state(p, 1, {"rps": 0}, State())
    assert d.action == "hold" and new.busy_at == NOW
    d, new = run_state(p, 1, {"rps": 3}, State(busy_at=NOW - 1000))
    assert d.action == "hold" and new.busy_at == NOW
    # a metric that cannot be read holds and never counts as idle
    d, new = run_state(p, 1, {"rps": Unavailable("down")}, State(busy_at=NOW - 1000))
    assert d.action == "hold" and new.busy_at == NOW


def test_a_new_wake_record_starts_one_instance_at_zero_without_metrics_or_cooldown():
    p = policy(min=0, cooldown_up=600)
    state = State(last_scale_up=NOW - 5, woken=7)
    d, new = run_state(p, 0, {"rps": Unavailable("Prometheus down")}, state)
    assert d.action == "hold"
    d, new = decide(p, 0, {"rps": Unavailable("Prometheus down")}, state, NOW, MONDAY_10, wake=9)
    assert (d.action, d.desired) == ("scale_out", 1) and "woken" in d.reason
    assert new.woken == 9 and new.busy_at == NOW and new.last_scale_up == NOW
    # the same record again is answered already
    d = decide(p, 0, {"rps": 0}, new, NOW + 1, MONDAY_10, wake=9)[0]
    assert d.action == "hold"


def test_a_wake_while_instances_run_is_only_noted_and_metrics_decide_above_one():
    p = policy(min=0)
    d, new = decide(p, 2, {"rps": 0}, State(busy_at=NOW - 1000), NOW, MONDAY_10, wake=4)
    assert d.desired == 1 and new.woken == 4
    d = decide(p, 0, {"rps": 200}, State(), NOW, MONDAY_10, wake=4)[0]
    assert d.desired == 4  # the metric, read as a total at zero, wants more than the wake's one


def test_idle_after_is_checked():
    with pytest.raises(SkynetError, match="idle_after"):
        policy(min=0, idle_after=-1)


def test_state_round_trips_busy_and_woken():
    s = State(1.0, 2.0, [[3.0, 1]], busy_at=4.0, woken=5)
    assert State.from_dict(json.loads(json.dumps(s.as_dict()))) == s
    assert State.from_dict({}).busy_at is None


@pytest.mark.parametrize(
    ("usable", "away", "gone", "decided", "expected"),
    [
        (3, 0, 0, 3, 3),  # steady
        (2, 0, 1, 3, 3),  # one lost or failing, its replacement not running yet (or its run was killed first)
        (3, 0, 1, 3, 3),  # its replacement runs: not counted twice, whoever started it
        (2, 1, 0, 3, 3),  # one on a host in its grace period
        (1, 1, 1, 3, 3),  # one away, one gone
        (2, 0, 2, 3, 3),  # two gone, one short: only one counts
        (0, 0, 2, 3, 2),  # all gone but one short of more than they are
        (4, 0, 0, 3, 4),  # a lost host's instance back: the surplus is for the policy to remove
        (2, 0, 1, None, 3),  # no decided count recorded (a state written before it was): all count
        (2, 0, 1, 2, 2),  # the last decision wanted 2: the gone one is not missed
        (0, 0, 0, 0, 0),
    ],
)
def test_counted_counts_gone_instances_only_as_far_as_the_decided_count_is_short(usable, away, gone, decided, expected):
    assert counted(usable, away, gone, decided) == expected
