# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scaling policies and decisions: pure math, no Ansible and no I/O.

A policy has min/max, one or more checks and damping (tolerance, cooldowns, a scale-down
stabilization window, a step limit). decide() turns the current count, the checks' metric
values and the state of earlier decisions into one decision and the next state.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import datetime

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

STRATEGIES = ("target", "step", "schedule")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Check:
    name: str
    strategy: str
    query: str | None = None
    value: float | None = None
    target: float | None = None
    aggregate: str = "average"
    tolerance: float = 0.1
    steps: tuple = ()
    windows: tuple = ()
    on_missing: str = "hold"


@dataclass(frozen=True)
class Policy:
    service: str
    min: int
    max: int
    checks: tuple
    cooldown_up: float = 60
    cooldown_down: float = 120
    stabilization_window: float = 120
    max_step: int | None = None
    max_step_percent: float | None = None


@dataclass
class State:
    last_scale_up: float = 0.0
    last_scale_down: float = 0.0
    recommendations: list = field(default_factory=list)  # [[time, desired], ...] inside the window

    @classmethod
    def from_dict(cls, data):
        data = data or {}
        return cls(
            float(data.get("last_scale_up", 0)),
            float(data.get("last_scale_down", 0)),
            [list(r) for r in data.get("recommendations", [])],
        )

    def as_dict(self):
        return {
            "last_scale_up": self.last_scale_up,
            "last_scale_down": self.last_scale_down,
            "recommendations": self.recommendations,
        }


@dataclass(frozen=True)
class Decision:
    service: str
    time: float
    current: int
    desired: int
    action: str  # scale_out | scale_in | hold
    reason: str
    metrics: dict

    def as_dict(self):
        return {
            "service": self.service,
            "time": self.time,
            "current": self.current,
            "desired": self.desired,
            "action": self.action,
            "reason": self.reason,
            "metrics": self.metrics,
        }


def _number(where, value, minimum=None, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SkynetError(f"{where} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise SkynetError(f"{where} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise SkynetError(f"{where} must be {minimum} or more, got {value!r}")
    return int(value) if integer else float(value)


def _minutes(where, hhmm):
    try:
        hours, minutes = (int(p) for p in str(hhmm).split(":"))
    except ValueError:
        raise SkynetError(f"{where} must be HH:MM, got {hhmm!r}") from None
    if not (0 <= hours <= 24 and 0 <= minutes < 60) or hours * 60 + minutes > 24 * 60:
        raise SkynetError(f"{where} must be HH:MM between 00:00 and 24:00, got {hhmm!r}")
    return hours * 60 + minutes


def parse_check(service, index, raw):
    where = f"service {service}: check {raw.get('name') or index + 1}"
    strategy = raw.get("strategy") or ("schedule" if raw.get("windows") else "step" if raw.get("steps") else "target")
    if strategy not in STRATEGIES:
        raise SkynetError(f"{where}: strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    query, value = raw.get("query"), raw.get("value")
    # value may be present but None: the playbook's lookup found no data, a missing metric.
    if strategy != "schedule" and (query is None) == ("value" not in raw):
        raise SkynetError(f"{where}: give a metric, either query (PromQL) or value, not both")
    on_missing = raw.get("on_missing", "hold")
    if on_missing not in ("hold", "ignore"):
        raise SkynetError(f"{where}: on_missing must be hold or ignore, got {on_missing!r}")
    check = dict(name=raw.get("name") or f"check{index + 1}", strategy=strategy, query=query, on_missing=on_missing)
    if value is not None:
        check["value"] = _number(f"{where}: value", value)
    if strategy == "target":
        check["target"] = _number(f"{where}: target", raw.get("target"))
        if check["target"] <= 0:
            raise SkynetError(f"{where}: target must be above 0, got {raw.get('target')!r}")
        check["tolerance"] = _number(f"{where}: tolerance", raw.get("tolerance", 0.1), minimum=0)
        check["aggregate"] = raw.get("aggregate", "average")
        if check["aggregate"] not in ("average", "total"):
            raise SkynetError(f"{where}: aggregate must be average or total, got {check['aggregate']!r}")
    elif strategy == "step":
        steps = []
        for n, step in enumerate(raw.get("steps") or []):
            lower = step.get("lower")
            upper = step.get("upper")
            lower = -math.inf if lower is None else _number(f"{where}: steps[{n}].lower", lower)
            upper = math.inf if upper is None else _number(f"{where}: steps[{n}].upper", upper)
            if lower >= upper:
                raise SkynetError(f"{where}: steps[{n}] has lower {lower} not below upper {upper}")
            unit = step.get("unit", "count")
            if unit not in ("count", "percent"):
                raise SkynetError(f"{where}: steps[{n}].unit must be count or percent, got {unit!r}")
            steps.append((lower, upper, _number(f"{where}: steps[{n}].adjust", step.get("adjust")), unit))
        if not steps:
            raise SkynetError(f"{where}: a step check needs steps")
        steps.sort()
        for first, second in itertools.pairwise(steps):
            if second[0] < first[1]:
                raise SkynetError(f"{where}: steps overlap at {second[0]:g}")
        check["steps"] = tuple(steps)
    else:
        windows = []
        for n, w in enumerate(raw.get("windows") or []):
            days = tuple(d.lower()[:3] for d in (w.get("days") or DAYS))
            bad = [d for d in days if d not in DAYS]
            if bad:
                raise SkynetError(f"{where}: windows[{n}].days has unknown day(s) {', '.join(bad)}")
            start = _minutes(f"{where}: windows[{n}].start", w.get("start", "00:00"))
            end = _minutes(f"{where}: windows[{n}].end", w.get("end", "24:00"))
            floor = _number(f"{where}: windows[{n}].min", w.get("min"), minimum=0, integer=True)
            windows.append((days, start, end, floor))
        if not windows:
            raise SkynetError(f"{where}: a schedule check needs windows")
        check["windows"] = tuple(windows)
    return Check(**check)


def parse_policy(service, raw):
    """A Policy from a service definition's `scaling` dict; SkynetError naming what is wrong."""
    if not isinstance(raw, dict):
        raise SkynetError(f"service {service}: scaling must be a dict")
    lo = _number(f"service {service}: min", raw.get("min", 1), minimum=0, integer=True)
    hi = _number(f"service {service}: max", raw.get("max"), minimum=0, integer=True)
    if lo > hi:
        raise SkynetError(f"service {service}: min ({lo}) is above max ({hi})")
    raw_checks = raw.get("checks") or []
    if not raw_checks:
        raise SkynetError(f"service {service}: scaling has no checks; give at least one")
    checks = tuple(parse_check(service, n, c) for n, c in enumerate(raw_checks))
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise SkynetError(f"service {service}: check names must be unique, got {names}")
    step = raw.get("max_step")
    pct = raw.get("max_step_percent")
    return Policy(
        service=service,
        min=lo,
        max=hi,
        checks=checks,
        cooldown_up=_number(f"service {service}: cooldown_up", raw.get("cooldown_up", 60), minimum=0),
        cooldown_down=_number(f"service {service}: cooldown_down", raw.get("cooldown_down", 120), minimum=0),
        stabilization_window=_number(
            f"service {service}: stabilization_window", raw.get("stabilization_window", 120), minimum=0
        ),
        max_step=None if step is None else _number(f"service {service}: max_step", step, minimum=1, integer=True),
        max_step_percent=None if pct is None else _number(f"service {service}: max_step_percent", pct, minimum=1),
    )


def recommend(check, current, value, now_local):
    """(desired or None for no opinion, explanation). value None means the metric is missing."""
    if check.strategy == "schedule":
        minutes = now_local.hour * 60 + now_local.minute
        day = DAYS[now_local.weekday()]
        floors = [f for days, start, end, f in check.windows if day in days and start <= minutes < end]
        if not floors:
            return None, "outside every window"
        floor = max(floors)
        return max(current, floor), f"scheduled minimum {floor}"
    if value is None or math.isnan(value):
        if check.on_missing == "hold":
            return current, "metric missing: holding capacity"
        return None, "metric missing: ignored"
    if check.strategy == "target":
        if check.aggregate == "total" or current == 0:
            desired = math.ceil(value / check.target)
            ratio = value / (check.target * current) if current else math.inf
        else:
            desired = math.ceil(current * value / check.target)
            ratio = value / check.target
        if current and abs(ratio - 1) <= check.tolerance:
            return current, f"{value:g} within {check.tolerance:.0%} of target {check.target:g}"
        return desired, f"{value:g} against target {check.target:g} per instance"
    for lower, upper, adjust, unit in check.steps:
        if lower <= value < upper:
            delta = adjust if unit == "count" else math.ceil(abs(current * adjust / 100)) * (1 if adjust >= 0 else -1)
            sign = "%" if unit == "percent" else ""
            return max(current + int(delta), 0), f"{value:g} in [{lower:g}, {upper:g}): {adjust:+g}{sign}"
    return current, f"{value:g} in no step"


def decide(policy, current, values, state, now, now_local=None):
    """One decision for policy; values maps check names to metric values (None: missing)."""
    now_local = now_local or datetime.fromtimestamp(now)
    recs, reasons = [], []
    for check in policy.checks:
        rec, why = recommend(check, current, values.get(check.name), now_local)
        reasons.append(f"{check.name}: {why}")
        if rec is not None:
            recs.append(rec)
    metrics = {c.name: values.get(c.name) for c in policy.checks if c.strategy != "schedule"}
    new_state = State(state.last_scale_up, state.last_scale_down, list(state.recommendations))

    if not recs:
        raw = current
    elif max(recs) > current:
        raw = max(recs)  # scale-out wins
    elif all(r < current for r in recs):
        raw = max(recs)  # scale-in only when every check agrees, by the least
    else:
        raw = current
    raw = min(max(raw, policy.min), policy.max)
    bound = ""
    if raw == policy.max and max(recs or [0]) > policy.max:
        bound = f" (held at max {policy.max})"
    elif raw == policy.min and recs and max(recs) < policy.min:
        bound = f" (held at min {policy.min})"

    # Scale-down stabilization: act on the highest recommendation of the window.
    window_start = now - policy.stabilization_window
    new_state.recommendations = [r for r in new_state.recommendations if r[0] > window_start] + [[now, raw]]
    desired = raw
    if raw < current:
        stabilized = max(r[1] for r in new_state.recommendations)
        if stabilized > raw:
            reasons.append(f"stabilization: {stabilized} is the highest of the last {policy.stabilization_window:g}s")
        desired = min(stabilized, current)

    limit = _step_limit(policy, current)
    if limit is not None and abs(desired - current) > limit:
        desired = current + limit if desired > current else current - limit
        reasons.append(f"step limited to {limit}")
    if current < policy.min:
        desired = max(desired, policy.min)
    if current > policy.max:
        desired = min(desired, policy.max)

    action = "scale_out" if desired > current else "scale_in" if desired < current else "hold"
    if action == "scale_out" and now - state.last_scale_up < policy.cooldown_up and current >= policy.min:
        reasons.append(f"cooldown: last scale-out {now - state.last_scale_up:.0f}s ago (< {policy.cooldown_up:g}s)")
        desired, action = current, "hold"
    last_change = max(state.last_scale_up, state.last_scale_down)
    if action == "scale_in" and now - last_change < policy.cooldown_down and current <= policy.max:
        reasons.append(f"cooldown: last scaling {now - last_change:.0f}s ago (< {policy.cooldown_down:g}s)")
        desired, action = current, "hold"
    if action == "scale_out":
        new_state.last_scale_up = now
    elif action == "scale_in":
        new_state.last_scale_down = now
    reason = "; ".join(reasons) + bound
    return Decision(policy.service, now, current, desired, action, reason, metrics), new_state


def _step_limit(policy, current):
    limits = []
    if policy.max_step is not None:
        limits.append(policy.max_step)
    if policy.max_step_percent is not None:
        limits.append(max(1, math.ceil(current * policy.max_step_percent / 100)))
    return min(limits) if limits else None
