# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Demand alerts: for each scaling check that reads a query, a Prometheus alert that fires while the
check would add instances, so that Alertmanager can hand the service to the watcher at once instead
of waiting for the timer. Pure: service definitions in, rule dicts out.

The alert approximates the check from the outside (the cycle still decides): a `target` check fires
while its value is above the target by more than the tolerance (per instance, or for `aggregate:
total` per instance of those the load balancers have up), a `step` check while its value is in a
step that adds instances. `schedule` checks and checks given a `value` have nothing to alert on.
"""

from __future__ import annotations

import math

from ansible_collections.cyberdyne.skynet.plugins.module_utils._names import COLORS
from ansible_collections.cyberdyne.skynet.plugins.module_utils._policy import parse_policy
from ansible_collections.cyberdyne.skynet.plugins.module_utils._release import backend

ALERT = "SkynetServiceDemand"


def instances(service):
    """The instances of a service that are up, as the load balancers see them: the active servers of
    its color backends on each load balancer (each sees them all), the most any one counts; 0 with none."""
    proxies = "|".join(backend(service, c) for c in COLORS)
    return f'(max(sum by (instance) (haproxy_backend_active_servers{{proxy=~"{proxies}"}})) or vector(0))'


def _condition(service, check):
    """(PromQL true while check wants more instances, what its value is), or None when it cannot say."""
    value = f"max({check.promql})"
    if check.strategy == "target":
        above = f"{check.target * (1 + check.tolerance):g}"
        if check.aggregate == "total":
            return f"{value} / {above} > {instances(service)}", f"instances' worth of load at target {check.target:g}"
        return f"{value} > {above}", f"per instance, target {check.target:g}"
    if check.strategy == "step":
        # The lowest bound from which a step adds instances (steps are sorted and do not overlap).
        adding = [lower for lower, _upper, adjust, _unit in check.steps if adjust > 0]
        if adding and not math.isinf(adding[0]):
            return f"{value} >= {adding[0]:g}", f"in a step that adds instances (from {adding[0]:g})"
    return None


def demand_rules(services, for_="0s"):
    """The alert rules of every check that can say it wants more instances, one per check, labelled with
    the service and the check; definitions without scaling have none. SkynetError for an invalid policy."""
    rules = []
    for s in services:
        if not s.get("scaling"):
            continue
        policy = parse_policy(s["name"], s["scaling"])
        for check in policy.checks:
            if check.query is None:
                continue
            condition = _condition(s["name"], check)
            if condition is None:
                continue
            expr, meaning = condition
            # Not at max: there the cycle has nothing to add.
            expr = f"({expr}) and on() ({instances(s['name'])} < {policy.max})"
            rules.append(
                {
                    "alert": ALERT,
                    "expr": expr,
                    "for": for_,
                    "labels": {"service": s["name"], "check": check.name, "severity": "info"},
                    "annotations": {
                        "summary": f"{s['name']}: check {check.name} wants more instances",
                        "description": (
                            f"{check.query}: {{{{ $value }}}} {meaning}: {s['name']} wants more instances "
                            "than run; the watcher runs a cycle for it."
                        ),
                    },
                }
            )
    return rules
