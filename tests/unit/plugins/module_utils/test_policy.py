from __future__ import annotations

import math
from datetime import datetime

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._policy import State, decide, parse_policy

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
        (1, 1000, 6, "scale_out"),  # never above max
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


@pytest.mark.parametrize(("value", "desired"), [(None, 3), (math.nan, 3)])
def test_a_missing_metric_holds_capacity(value, desired):
    d = run(policy(), 3, {"rps": value})
    assert d.desired == desired and d.action == "hold"
    assert "metric missing: holding capacity" in d.reason


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
        ({"max_step_percent": 50}, 2, 300, 3),
        ({"max_step": 3, "max_step_percent": 50}, 4, 500, 6),
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
