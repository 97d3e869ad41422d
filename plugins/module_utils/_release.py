# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The blue/green release as a state machine: pure data and decisions, no I/O.

A release moves a service from its live color to the other one through the phases
deploy -> verify -> switch -> watch -> retire and ends `done`. Undoing it (on failure, or on
request) runs restore -> switch_back -> remove_new as far as needed and ends `failed`,
`rolled_back` or `aborted`. The record of a release is plain JSON kept in Consul KV, so any
controller can resume or inspect it; plan_release() and plan_undo() decide from it what to run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._names import COLORS

PHASES = ("deploy", "verify", "switch", "watch", "retire")
UNDOING = ("rollback", "abort")
TERMINAL = ("done", "rolled_back", "aborted", "failed")
UNDO_STEPS = ("restore", "switch_back", "remove_new")
STATES = ("released", "rolled_back", "aborted")
ON_MISSING = ("fail", "pass")
HISTORY = 20


def other(color):
    if color not in COLORS:
        raise SkynetError(f"color must be blue or green, not {color!r}")
    return "green" if color == "blue" else "blue"


def backend(service, color):
    """The HAProxy backend of one color of a service, the value of its map entries."""
    return f"{service}_{color}"


def color_of(service, value):
    """The color a map value (`web_green`) points at, None when it is not one of the service's backends."""
    for color in COLORS:
        if value == backend(service, color):
            return color
    return None


def version_of(image):
    """The tag of an image reference (`registry:5000/web:2` -> `2`), the whole reference when it has none."""
    name = (image or "").split("@", 1)[0].rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[1] if ":" in name else image or ""


# -- analysis ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    query: str
    min: float | None = None
    max: float | None = None
    on_missing: str = "fail"

    def as_dict(self):
        return {"name": self.name, "query": self.query, "min": self.min, "max": self.max, "on_missing": self.on_missing}


@dataclass(frozen=True)
class Analysis:
    duration: float = 0.0
    interval: float = 5.0
    checks: tuple = ()

    @property
    def enabled(self):
        return bool(self.checks)


def _number(errors, where, value, minimum=None, above=None):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        try:
            value = float(value)
        except (TypeError, ValueError):
            errors.append(f"{where} must be a number, got {value!r}")
            return None
    if minimum is not None and value < minimum:
        errors.append(f"{where} must be {minimum:g} or more, got {value!r}")
    if above is not None and value <= above:
        errors.append(f"{where} must be above {above:g}, got {value!r}")
    return float(value)


def _given(spec, key, default):
    return default if spec.get(key) is None else spec[key]


def parse_analysis(where, spec):
    """An Analysis from its options ({duration, interval, checks: [{name, query, min, max, on_missing}]}).

    Every problem is reported at once; a check needs a query and at least one of min and max.
    """
    spec = spec or {}
    errors = []
    duration = _number(errors, f"{where}.duration", _given(spec, "duration", 0), minimum=0) or 0.0
    interval = _number(errors, f"{where}.interval", _given(spec, "interval", 5), above=0) or 5.0
    checks, names = [], set()
    raw_checks = spec.get("checks") or []
    if not isinstance(raw_checks, list):
        raise SkynetError(f"{where}.checks must be a list of checks")
    for n, raw in enumerate(raw_checks):
        if not isinstance(raw, dict):
            errors.append(f"{where}.checks[{n}] must be a dict with query and min or max")
            continue
        name = str(raw.get("name") or f"check{n + 1}")
        here = f"{where} check {name}"
        if name in names:
            errors.append(f"{where}: two checks are named {name}")
        names.add(name)
        query = str(raw.get("query") or "").strip()
        if not query:
            errors.append(f"{here} has no query")
        low = _number(errors, f"{here} min", raw.get("min"))
        high = _number(errors, f"{here} max", raw.get("max"))
        if low is None and high is None:
            errors.append(f"{here} needs min, max or both: the thresholds the query's value must stay within")
        elif low is not None and high is not None and low > high:
            errors.append(f"{here}: min ({low:g}) is above max ({high:g})")
        on_missing = raw.get("on_missing") or "fail"
        if on_missing not in ON_MISSING:
            errors.append(f"{here} on_missing must be fail or pass, not {on_missing!r}")
        checks.append(Check(name, query, low, high, on_missing))
    if errors:
        raise SkynetError("invalid analysis, nothing was changed: " + "; ".join(errors))
    return Analysis(duration, interval, tuple(checks))


def substitute(query, service, color, previous):
    """The query with ${service}, ${color}, ${backend}, ${previous} and ${previous_backend} filled in."""
    values = {
        "${service}": service,
        "${color}": color,
        "${backend}": backend(service, color),
        "${previous}": previous,
        "${previous_backend}": backend(service, previous),
    }
    for placeholder in sorted(values, key=len, reverse=True):
        query = query.replace(placeholder, values[placeholder])
    return query


def judge(check, value):
    """(passed, sentence) for one sample of a check; no value (empty result, NaN) fails unless on_missing=pass."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if check.on_missing == "pass":
            return True, "no data, accepted (on_missing=pass)"
        return (
            False,
            "returned no data (an empty result or NaN): counted as a failure (set on_missing=pass to accept it)",
        )
    if check.max is not None and value > check.max:
        return False, f"{value:g} is above max {check.max:g}"
    if check.min is not None and value < check.min:
        return False, f"{value:g} is below min {check.min:g}"
    bounds = [f">= {check.min:g}"] if check.min is not None else []
    if check.max is not None:
        bounds.append(f"<= {check.max:g}")
    return True, f"{value:g} is {' and '.join(bounds)}"


# -- the record ----------------------------------------------------------------------------------


def in_progress(record):
    return bool(record) and record.get("phase") not in TERMINAL


def new_record(release_id, service, image, version, live, live_image, count, now):
    return {
        "id": release_id,
        "service": service,
        "image": image,
        "version": version,
        "from": live,
        "to": other(live),
        "from_image": live_image,
        "count": count,
        "phase": "deploy",
        "switched": False,
        "started": now,
        "updated": now,
        "ended": None,
        "error": None,
        "phases": [],
    }


def begin(record, phase, now):
    record["phase"] = phase
    record["updated"] = now
    entry = {"phase": phase, "started": now, "ended": None, "seconds": None, "outcome": "running", "detail": ""}
    record.setdefault("phases", []).append(entry)
    return entry


def end(record, entry, now, outcome="ok", detail=""):
    entry.update(ended=now, seconds=round(now - entry["started"], 3), outcome=outcome, detail=detail)
    record["updated"] = now


def finish(record, terminal, now, error=None):
    if terminal not in TERMINAL:
        raise ValueError(f"{terminal} is not a terminal phase")
    record.update(phase=terminal, ended=now, updated=now, error=error)


def summary(record):
    """What history keeps of a release."""
    keys = ("id", "version", "image", "from", "to", "phase", "started", "ended", "error")
    return {k: record.get(k) for k in keys}


def with_history(history, record, limit=HISTORY):
    """The history list with the release's summary in place of an earlier entry of the same id, newest last."""
    entries = [h for h in (history or []) if isinstance(h, dict) and h.get("id") != record.get("id")]
    return [*entries, summary(record)][-limit:]


def timings(entries):
    """{phase: seconds} of phase entries (a phase run twice adds up) and their total."""
    result = {}
    for entry in entries:
        if entry.get("seconds") is not None:
            result[entry["phase"]] = round(result.get(entry["phase"], 0) + entry["seconds"], 3)
    result["total"] = round(sum(v for k, v in result.items() if k != "total"), 3)
    return result


# -- plans ---------------------------------------------------------------------------------------


@dataclass
class Plan:
    action: str  # none | release | resume | rollback | abort
    steps: tuple = ()
    reason: str = ""
    live: str = "blue"
    target: str | None = None
    image: str | None = None
    count: int | None = None
    terminal: str | None = None  # how the steps end when they all succeed
    record: dict | None = field(default=None, repr=False)

    @property
    def changes(self):
        return self.action != "none"

    def as_dict(self):
        return {
            "action": self.action,
            "steps": list(self.steps),
            "reason": self.reason,
            "live": self.live,
            "target": self.target,
            "image": self.image,
            "count": self.count,
            "ends": self.terminal,
        }


def undo_steps(record):
    """What undoing a release needs: the old color back and traffic on it if traffic may have moved."""
    phase = record.get("phase")
    if record.get("switched") or phase in ("watch", "retire", "done"):
        return UNDO_STEPS
    if phase in UNDOING and any(e.get("phase") in ("switch", "watch", "retire") for e in record.get("phases", [])):
        return UNDO_STEPS
    return ("remove_new",)


def resume_steps(phase):
    """The phases left after an interruption in phase; before the switch the new color is checked again."""
    if phase in ("deploy", "verify"):
        return PHASES
    return PHASES[PHASES.index(phase) :]


def plan_release(service, record, live, live_images, image, count=None):
    """The plan of `state=released` of image.

    live_images are the images of the live color's running instances. An unfinished release of
    the same image resumes from its phase; one of another image must be finished or aborted first.
    """
    if in_progress(record):
        phase = record["phase"]
        if phase in UNDOING:
            wanted = "rolled_back" if phase == "rollback" else "aborted"
            raise SkynetError(
                f"the {phase} of the release of {service} to {record.get('image')} was interrupted: "
                f"finish it first with state={wanted}"
            )
        if record.get("image") != image:
            raise SkynetError(
                f"a release of {service} to {record.get('image')} is in progress (phase {phase}): run it again to "
                f"finish it, or end it with state=aborted, before releasing {image}"
            )
        return Plan(
            "resume",
            resume_steps(phase),
            f"resuming the release of {service} to {image} from phase {phase}",
            live=record["from"],
            target=record["to"],
            image=image,
            count=record.get("count"),
            terminal="done",
            record=record,
        )
    if live_images and all(i == image for i in live_images):
        return Plan(
            "none",
            reason=f"{service} already runs {image} on its live color {live} ({len(live_images)} instance(s))",
            live=live,
            image=image,
            count=len(live_images),
        )
    if count is None:
        if not live_images:
            raise SkynetError(
                f"unknown service {service}: no instance of its live color {live} is running and no count was "
                "given, so there is nothing to release from; deploy it first (skynet_compute) or give count"
            )
        count = len(live_images)
    if count < 1:
        raise SkynetError(f"count must be 1 or more for a release, got {count}")
    return Plan(
        "release",
        PHASES,
        f"releasing {image} on {other(live)} ({count} instance(s)), then switching {service} from {live}",
        live=live,
        target=other(live),
        image=image,
        count=count,
        terminal="done",
    )


def plan_undo(kind, service, record, live):
    """The plan of state=rolled_back (kind rollback) or state=aborted (kind abort)."""
    terminal = "rolled_back" if kind == "rollback" else "aborted"
    if not record:
        if kind == "abort":
            return Plan("none", reason=f"no release of {service} is recorded, nothing to abort", live=live)
        raise SkynetError(f"no release of {service} is recorded in Consul: there is nothing to roll back")
    common = dict(live=live, target=record.get("from"), image=record.get("from_image"), count=record.get("count"))
    if in_progress(record):
        steps = undo_steps(record)
        return Plan(
            kind,
            steps,
            f"{'rolling back' if kind == 'rollback' else 'aborting'} the release of {service} to {record.get('image')} "
            f"(phase {record['phase']}): {record['from']} stays or becomes live again",
            terminal=terminal,
            record=record,
            **common,
        )
    if record["phase"] == "done" and kind == "rollback":
        if live != record.get("to"):
            raise SkynetError(
                f"the live color of {service} is {live}, not {record.get('to')} as its last release left it: "
                "it was changed outside the release, not rolling back"
            )
        if not record.get("from_image"):
            raise SkynetError(
                f"the last release of {service} started with no running instance: "
                "there is no earlier version to roll back to"
            )
        return Plan(
            "rollback",
            UNDO_STEPS,
            f"rolling back the release of {service} to {record.get('image')}: {record['from']} running "
            f"{record['from_image']} becomes live again",
            terminal=terminal,
            record=record,
            **common,
        )
    if kind == "abort":
        return Plan(
            "none", reason=f"no release of {service} is in progress (the last one ended {record['phase']})", live=live
        )
    return Plan(
        "none",
        reason=f"the last release of {service}, to {record.get('image')}, already ended {record['phase']}",
        live=live,
    )
