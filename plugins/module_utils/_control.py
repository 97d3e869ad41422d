# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Operator control of a service's autoscaling: paused, or pinned to a number of instances (pure: no I/O).

The record is kept in Consul KV at skynet/scale/<service>/control, with who set it, why and when; every
path that scales (the timer, AWX, a run by hand) reads it and lets it override the policy's decision.
Resuming deletes it. Health replacement goes on while paused or pinned: a failing instance is still
replaced, so the count the operator chose is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

MODES = ("paused", "pinned")
LEAF = "control"
# Who and why are shown in tables and alerts: keep them short.
_TEXT_MAX = 200


@dataclass(frozen=True)
class Control:
    mode: str
    by: str
    reason: str
    since: float
    count: int | None = None  # pinned only

    def as_dict(self):
        record = {"mode": self.mode, "by": self.by, "reason": self.reason, "since": self.since}
        if self.mode == "pinned":
            record["count"] = self.count
        return record

    def describe(self):
        what = "paused" if self.mode == "paused" else f"pinned to {self.count}"
        return f"autoscaling {what} by {self.by} ({self.reason})"


def _text(where, value):
    if not isinstance(value, str) or not value.strip():
        raise SkynetError(f"{where} must be a non-empty text")
    if len(value) > _TEXT_MAX or any(ord(ch) < 32 for ch in value):
        raise SkynetError(f"{where} must be one line of at most {_TEXT_MAX} characters")
    return value.strip()


def make(mode, by, reason, now, count=None):
    """A validated Control (SkynetError naming the problem otherwise)."""
    if mode not in MODES:
        raise SkynetError(f"control mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "pinned":
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise SkynetError(f"a pinned service needs a count: a whole number, 0 or more, not {count!r}")
    elif count is not None:
        raise SkynetError("count is for mode pinned only")
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise SkynetError(f"control time must be a finite number, not {now!r}")
    return Control(mode, _text("control by (who)", by), _text("control reason (why)", reason), float(now), count)


def parse(record, service):
    """The Control of a KV record, None without one; SkynetError naming the service for a record that is not one."""
    if record is None:
        return None
    if not isinstance(record, dict):
        raise SkynetError(f"the control record of {service} is not an object: {record!r}")
    try:
        get = record.get
        return make(get("mode"), get("by"), get("reason"), get("since"), get("count"))
    except SkynetError as e:
        raise SkynetError(f"the control record of {service} (skynet/scale/{service}/{LEAF}) is invalid: {e}") from e


def apply(record, service, current, desired, action, reason):
    """(control, error, desired, action, reason): the KV record applied to the policy's decision. A record that
    is not a valid one holds the service at current, with the error naming it."""
    try:
        control = parse(record, service)
    except SkynetError as e:
        return None, str(e), current, "hold", f"{e}: holding ({reason})"
    return (control, None, *override(control, current, desired, action, reason))


def override(control, current, desired, action, reason):
    """(desired, action, reason) once control is applied to the policy's decision; unchanged without one."""
    if control is None:
        return desired, action, reason
    wanted = current if control.mode == "paused" else control.count
    action = "hold" if wanted == current else ("scale_out" if wanted > current else "scale_in")
    why = f"{control.describe()}: {action} {current} -> {wanted}; the policy wanted {desired} ({reason})"
    return wanted, action, why
