# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scaling policies and decisions: pure math, no Ansible and no I/O.

A policy has min/max, one or more checks and damping (tolerance, cooldowns, a scale-down
stabilization window, step limits). decide() turns the current count, the checks' metric
values and the state of earlier decisions into one decision and the next state.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from datetime import datetime

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _wake
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import parse_duration

STRATEGIES = ("target", "step", "schedule")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

MAX_INSTANCES = 1_000_000  # the largest max a policy may give
MAX_NEW_PER_CYCLE = 50  # hard ceiling on instances one decision may add to one service
DEFAULT_STEP_PERCENT = 100  # scale-out per decision, as Kubernetes HPA's default scale-up policy...
DEFAULT_MIN_STEP = 4  # ...which always allows 4 more, whatever the percent says
MAX_COOLDOWN = 86_400
MAX_WINDOW = 3_600  # the stabilization window's recommendations are kept in Consul KV
MAX_STEP_PERCENT = 10_000
DEFAULT_IDLE_AFTER = 300


class Unavailable(str):
    """A metric that could not be read at all (Prometheus unreachable, a query failing at run time);
    the string says why. Unlike a missing metric it always holds, whatever on_missing says."""


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
    ahead: tuple = ()  # (lead, over, step) in seconds: act on where the signal will be in `lead` seconds

    @property
    def promql(self):
        """The query sent to Prometheus: the check's own, or with `ahead` the larger of its value now and
        its linear forecast `lead` seconds on, fitted over the last `over` seconds (a subquery)."""
        if not self.ahead or self.query is None:
            return self.query
        lead, over, step = self.ahead
        forecast = f"predict_linear(({self.query})[{_seconds(over)}:{_seconds(step) if step else ''}], {lead:g})"
        return f"({forecast} > ({self.query})) or ({self.query})"


def _seconds(value):
    return f"{int(value * 1000)}ms" if value != int(value) else f"{int(value)}s"


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
    max_step_percent: float | None = None  # None: DEFAULT_STEP_PERCENT for scale-out, no bound on scale-in
    min_step: int = DEFAULT_MIN_STEP
    idle_after: float = DEFAULT_IDLE_AFTER  # with min 0: seconds without demand before the last instance goes


@dataclass
class State:
    last_scale_up: float = 0.0
    last_scale_down: float = 0.0
    recommendations: list = field(default_factory=list)  # [[time, desired], ...] inside the window
    busy_at: float | None = None  # the last time the checks wanted an instance (None: not seen yet)
    woken: int = 0  # ModifyIndex of the last wake record answered (see _wake)

    @classmethod
    def from_dict(cls, data):
        data = data or {}
        busy_at = data.get("busy_at")
        return cls(
            float(data.get("last_scale_up", 0)),
            float(data.get("last_scale_down", 0)),
            [list(r) for r in data.get("recommendations", [])],
            None if busy_at is None else float(busy_at),
            int(data.get("woken") or 0),
        )

    def as_dict(self):
        return {
            "last_scale_up": self.last_scale_up,
            "last_scale_down": self.last_scale_down,
            "recommendations": self.recommendations,
            "busy_at": self.busy_at,
            "woken": self.woken,
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
    missing: tuple = ()  # checks whose metric was missing, not finite or unavailable
    outage: str | None = None

    def as_dict(self):
        return {
            "service": self.service,
            "time": self.time,
            "current": self.current,
            "desired": self.desired,
            "action": self.action,
            "reason": self.reason,
            "metrics": self.metrics,
            "missing": list(self.missing),
            "outage": self.outage,
        }


def _number(where, value, minimum=None, maximum=None, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SkynetError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SkynetError(f"{where} must be a finite number, got {value!r}")
    if integer and int(value) != value:
        raise SkynetError(f"{where} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise SkynetError(f"{where} must be {minimum} or more, got {value!r}")
    if maximum is not None and value > maximum:
        raise SkynetError(f"{where} must be {maximum} or less, got {value!r}")
    return int(value) if integer else float(value)


def _metric(where, value):
    """A metric given as a number: NaN and infinities are kept, they are read as missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SkynetError(f"{where} must be a number, got {value!r}")
    return float(value)


def finite(value):
    """Whether value is a usable metric: a finite number (None, NaN, ±Inf and Unavailable are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _minutes(where, hhmm):
    try:
        hours, minutes = (int(p) for p in str(hhmm).split(":"))
    except ValueError:
        raise SkynetError(f"{where} must be HH:MM, got {hhmm!r}") from None
    if not (0 <= hours <= 24 and 0 <= minutes < 60) or hours * 60 + minutes > 24 * 60:
        raise SkynetError(f"{where} must be HH:MM between 00:00 and 24:00, got {hhmm!r}")
    return hours * 60 + minutes


def _ahead(where, raw, query, strategy):
    """(lead, over, step) seconds of a check's `ahead`: lead, over (default 5 x lead), step (default Prometheus')."""
    if query is None or strategy == "schedule":
        raise SkynetError(f"{where}: ahead forecasts a query: give it with query (PromQL), not value or windows")
    if not isinstance(raw, dict) or set(raw) - {"lead", "over", "step"}:
        raise SkynetError(f"{where}: ahead must be a dict of lead, over and step (durations such as 2m), got {raw!r}")

    def duration(key, default):
        value = raw.get(key, default)
        try:
            seconds = parse_duration(value) if value is not None else None
        except SkynetError as e:
            raise SkynetError(f"{where}: ahead.{key}: {e}") from None
        if seconds is not None and (not math.isfinite(seconds) or seconds <= 0):
            raise SkynetError(f"{where}: ahead.{key} must be a positive duration, got {value!r}")
        return seconds

    lead = duration("lead", None)
    if lead is None:
        raise SkynetError(f"{where}: ahead needs lead, how far ahead to look (a duration such as 2m)")
    over = duration("over", 5 * lead)
    step = duration("step", None)
    if step is not None and step >= over:
        raise SkynetError(f"{where}: ahead.step ({step:g}s) must be below ahead.over ({over:g}s)")
    return (lead, over, step or 0.0)


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
    if raw.get("ahead") is not None:
        check["ahead"] = _ahead(where, raw["ahead"], query, strategy)
    if value is not None:
        check["value"] = _metric(f"{where}: value", value)
    if strategy == "target":
        check["target"] = _number(f"{where}: target", raw.get("target"))
        if check["target"] <= 0:
            raise SkynetError(f"{where}: target must be above 0, got {raw.get('target')!r}")
        check["tolerance"] = _number(f"{where}: tolerance", raw.get("tolerance", 0.1), minimum=0)
        if check["tolerance"] >= 1:
            raise SkynetError(f"{where}: tolerance must be below 1 (100%), got {raw.get('tolerance')!r}")
        check["aggregate"] = raw.get("aggregate", "average")
        if check["aggregate"] not in ("average", "total"):
            raise SkynetError(f"{where}: aggregate must be average or total, got {check['aggregate']!r}")
    elif strategy == "step":
        steps = []
        for n, step in enumerate(raw.get("steps") or []):
            lower = step.get("lower")
            upper = step.get("upper")
            try:
                lower = -math.inf if lower is None else _number(f"{where}: steps[{n}].lower", lower)
                upper = math.inf if upper is None else _number(f"{where}: steps[{n}].upper", upper)
            except SkynetError as e:
                raise SkynetError(f"{e} (leave lower or upper out for no bound)") from None
            if lower >= upper:
                raise SkynetError(f"{where}: steps[{n}] has lower {lower} not below upper {upper}")
            unit = step.get("unit", "count")
            if unit not in ("count", "percent"):
                raise SkynetError(f"{where}: steps[{n}].unit must be count or percent, got {unit!r}")
            adjust = _number(
                f"{where}: steps[{n}].adjust",
                step.get("adjust"),
                minimum=-100 if unit == "percent" else -MAX_INSTANCES,
                maximum=MAX_STEP_PERCENT if unit == "percent" else MAX_INSTANCES,
            )
            steps.append((lower, upper, adjust, unit))
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
            floor = _number(f"{where}: windows[{n}].min", w.get("min"), minimum=0, maximum=MAX_INSTANCES, integer=True)
            windows.append((days, start, end, floor))
        if not windows:
            raise SkynetError(f"{where}: a schedule check needs windows")
        check["windows"] = tuple(windows)
    return Check(**check)


def parse_policy(service, raw):
    """A Policy from a service definition's `scaling` dict; SkynetError naming what is wrong."""
    if not isinstance(raw, dict):
        raise SkynetError(f"service {service}: scaling must be a dict")
    where = f"service {service}"
    lo = _number(f"{where}: min", raw.get("min", 1), minimum=0, maximum=MAX_INSTANCES, integer=True)
    hi = _number(f"{where}: max", raw.get("max"), minimum=0, maximum=MAX_INSTANCES, integer=True)
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
        cooldown_up=_number(f"{where}: cooldown_up", raw.get("cooldown_up", 60), minimum=0, maximum=MAX_COOLDOWN),
        cooldown_down=_number(
            f"{where}: cooldown_down", raw.get("cooldown_down", 120), minimum=0, maximum=MAX_COOLDOWN
        ),
        stabilization_window=_number(
            f"{where}: stabilization_window", raw.get("stabilization_window", 120), minimum=0, maximum=MAX_WINDOW
        ),
        max_step=None
        if step is None
        else _number(f"{where}: max_step", step, minimum=1, maximum=MAX_INSTANCES, integer=True),
        max_step_percent=None
        if pct is None
        else _number(f"{where}: max_step_percent", pct, minimum=1, maximum=MAX_STEP_PERCENT),
        min_step=_number(
            f"{where}: min_step",
            raw.get("min_step", DEFAULT_MIN_STEP),
            minimum=1,
            maximum=MAX_NEW_PER_CYCLE,
            integer=True,
        ),
        idle_after=_number(
            f"{where}: idle_after", raw.get("idle_after", DEFAULT_IDLE_AFTER), minimum=0, maximum=MAX_COOLDOWN
        ),
    )


def _count(x):
    """ceil(x) between 0 and MAX_INSTANCES + 1 (any max's "more"): no overflow, whatever the metric."""
    if x > MAX_INSTANCES:
        return MAX_INSTANCES + 1
    return math.ceil(x) if x > 0 else 0


def _said(count):
    return f"over {MAX_INSTANCES}" if count > MAX_INSTANCES else str(count)


def _shown(value):
    """A non-finite value as Prometheus writes it."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return {math.inf: "+Inf", -math.inf: "-Inf"}.get(value, repr(value))


def _instances(n):
    return f"{n} instance{'' if n == 1 else 's'}"


def _target(check, current, value):
    target = check.target
    if not current:
        desired = _count(value / target)
        wanted = f"ceil({value:g} / {target:g}) = {_said(desired)}"
        return desired, f"{value:g} for 0 instances read as a total, target {target:g}: {wanted}"
    if check.aggregate == "total":
        per = value / current
        said = f"total {value:g} for {_instances(current)} = {per:g} per instance"
        desired, wanted = _count(value / target), f"ceil({value:g} / {target:g})"
    else:
        per = value
        said = f"{value:g} per instance for {_instances(current)}"
        # Divided first: current x value may overflow where value / target does not.
        desired, wanted = _count(current * (value / target)), f"ceil({current} x {value:g} / {target:g})"
    if abs(per / target - 1) <= check.tolerance:
        return current, f"{said}, within {check.tolerance * 100:g}% of target {target:g}"
    return desired, f"{said}, target {target:g}: {wanted} = {_said(desired)}"


def recommend(check, current, value, now_local):
    """(desired or None for no opinion, explanation). value None, not finite or Unavailable: missing."""
    if check.strategy == "schedule":
        minutes = now_local.hour * 60 + now_local.minute
        day = DAYS[now_local.weekday()]
        floors = [f for days, start, end, f in check.windows if day in days and start <= minutes < end]
        if not floors:
            return None, "outside every window"
        floor = max(floors)
        return max(current, floor), f"scheduled minimum {floor}"
    if isinstance(value, Unavailable):
        return current, f"metric unavailable ({value}): holding capacity"
    if not finite(value):
        what = "metric missing" if value is None else f"metric missing (value {_shown(value)} is not finite)"
        if check.on_missing == "hold":
            return current, f"{what}: holding capacity"
        return None, f"{what}: ignored"
    if check.strategy == "target":
        return _target(check, current, value)
    for lower, upper, adjust, unit in check.steps:
        if lower <= value < upper:
            delta = adjust if unit == "count" else math.ceil(abs(current * adjust / 100)) * (1 if adjust >= 0 else -1)
            sign = "%" if unit == "percent" else ""
            return max(current + int(delta), 0), f"{value:g} in [{lower:g}, {upper:g}): {adjust:+g}{sign}"
    return current, f"{value:g} in no step"


def assess(policy, values):
    """(metrics fit for JSON, names of the checks whose metric is missing, what made metrics unavailable
    or None) of the values measured for policy."""
    measured = [c for c in policy.checks if c.strategy != "schedule"]
    metrics = {c.name: values.get(c.name) if finite(values.get(c.name)) else None for c in measured}
    missing = tuple(c.name for c in measured if not finite(values.get(c.name)))
    outages = sorted({str(values[c.name]) for c in measured if isinstance(values.get(c.name), Unavailable)})
    return metrics, missing, "; ".join(outages) or None


def counted(usable, away, gone, decided):
    """The current count a policy decides on: the usable instances, those on hosts in their grace period (away),
    and those gone (failing their check, or on a lost host) as far as the others fall short of the last decided
    count (None: none recorded, all of them). Until their replacements run, a hold keeps the capacity the service
    had and no cooldown holds a replacement back; once they run, nothing counts twice, whichever run started
    them and however it ended."""
    short = gone if decided is None else max(decided - usable - away, 0)
    return usable + away + min(gone, short)


def decide(policy, current, values, state, now, now_local=None, wake=0):
    """One decision for policy; values maps check names to metric values (None: missing;
    Unavailable: could not be read, which always holds). wake: the ModifyIndex of the service's wake record
    (0: none); one newer than the state's starts an instance of a service at zero, whatever the metrics say."""
    now_local = now_local or datetime.fromtimestamp(now)
    recs, reasons = [], []
    for check in policy.checks:
        rec, why = recommend(check, current, values.get(check.name), now_local)
        reasons.append(f"{check.name}: {why}")
        if rec is not None:
            recs.append(rec)
    metrics, missing, outage = assess(policy, values)
    woken = _wake.pending(wake, state.woken)
    new_state = replace(state, recommendations=list(state.recommendations), woken=max(state.woken, int(wake or 0)))

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
    raw = _idle(policy, current, raw, state, new_state, now, woken, reasons)

    # Scale-down stabilization: act on the highest recommendation of the window.
    window_start = now - policy.stabilization_window
    new_state.recommendations = [r for r in new_state.recommendations if r[0] > window_start] + [[now, raw]]
    desired = raw
    if raw < current:
        stabilized = max(r[1] for r in new_state.recommendations)
        if stabilized > raw:
            reasons.append(f"stabilization: {stabilized} is the highest of the last {policy.stabilization_window:g}s")
        desired = min(stabilized, current)

    limit, how = step_limit(policy, current, up=desired > current)
    if limit is not None and abs(desired - current) > limit:
        reasons.append(f"{desired} wanted, step limited to {limit} ({how})")
        desired = current + limit if desired > current else current - limit
    if current < policy.min:
        desired = max(desired, policy.min)
    if current > policy.max:
        desired = min(desired, policy.max)
    if desired - current > MAX_NEW_PER_CYCLE:
        reasons.append(f"{desired} wanted, at most {MAX_NEW_PER_CYCLE} new instances per cycle")
        desired = current + MAX_NEW_PER_CYCLE

    action = "scale_out" if desired > current else "scale_in" if desired < current else "hold"
    if action == "scale_out" and now - state.last_scale_up < policy.cooldown_up and current >= policy.min:
        reasons.append(f"cooldown: last scale-out {now - state.last_scale_up:.0f}s ago (< {policy.cooldown_up:g}s)")
        desired, action = current, "hold"
    last_change = max(state.last_scale_up, state.last_scale_down)
    if action == "scale_in" and now - last_change < policy.cooldown_down and current <= policy.max:
        reasons.append(f"cooldown: last scaling {now - last_change:.0f}s ago (< {policy.cooldown_down:g}s)")
        desired, action = current, "hold"
    if woken and current == 0 and desired == 0 and policy.max > 0:
        reasons = [r for r in reasons if not r.startswith("cooldown:")]  # a held request does not wait for it
        desired, action = 1, "scale_out"
    if action == "scale_out":
        new_state.last_scale_up = now
    elif action == "scale_in":
        new_state.last_scale_down = now
    reason = "; ".join(reasons) + bound
    decision = Decision(policy.service, now, current, desired, action, reason, metrics, missing, outage)
    return decision, new_state


def _idle(policy, current, raw, state, new_state, now, woken, reasons):
    """raw, kept at one instance while a service that may go to zero has not been idle for idle_after; a wake
    is demand."""
    if woken:
        reasons.append("woken: a request for it was held at a load balancer")
    if raw > 0 or woken:
        new_state.busy_at = now
        return max(raw, min(1, policy.max)) if woken else raw
    busy_at = now if state.busy_at is None else state.busy_at
    new_state.busy_at = busy_at
    if current == 0 or policy.max == 0 or now - busy_at >= policy.idle_after:
        return raw
    reasons.append(f"idle for {now - busy_at:.0f}s: the last instance goes after idle_after {policy.idle_after:g}s")
    return 1


def step_limit(policy, current, up):
    """(most instances one decision may add (up) or remove, or None; how it was reached)."""
    if up:
        pct = DEFAULT_STEP_PERCENT if policy.max_step_percent is None else policy.max_step_percent
        limit = max(policy.min_step, math.ceil(current * pct / 100))
        how = f"the larger of {pct:g}% of {current} and min_step {policy.min_step}"
        if policy.max_step is not None and policy.max_step < limit:
            limit, how = policy.max_step, "max_step"
        return limit, how
    limits = []
    if policy.max_step is not None:
        limits.append((policy.max_step, "max_step"))
    if policy.max_step_percent is not None:
        pct = policy.max_step_percent
        limits.append((max(1, math.ceil(current * pct / 100)), f"{pct:g}% of {current}"))
    return min(limits) if limits else (None, "")
