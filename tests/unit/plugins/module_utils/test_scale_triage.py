"""How a cycle sorts a service's running instances by their Consul health and age (pure)."""

from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import Instance
from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale import triage

NOW, GRACE, UNHEALTHY = 1000.0, 60.0, 60.0


def inst(age):
    return Instance(id="i", service="web", color="blue", image="x", address="a", port=1, created=NOW - age)


@pytest.mark.parametrize(
    ("health", "age", "critical_since", "kind", "since", "seen"),
    [
        ({"i": ("passing", False)}, 500, {}, "usable", None, []),
        ({"i": ("warning", False)}, 500, {}, "usable", None, []),
        ({"i": ("critical", False)}, 10, {}, "usable", None, []),  # young: its check has not passed yet
        ({"i": ("critical", False)}, 500, {}, "uncounted", NOW, []),
        ({"i": ("critical", False)}, 500, {"i": NOW - 30}, "uncounted", NOW - 30, []),
        ({"i": ("critical", False)}, 500, {"i": NOW - 61}, "discard", NOW - 61, []),
        ({"i": ("critical", True)}, 500, {}, "drained", None, []),
        # In no catalog and never seen failing: left by a run killed before it registered it.
        ({}, 10, {}, "unregistered", None, []),
        ({}, 500, {}, "unregistered", None, []),
        # In no catalog after failing: Consul deregistered it (deregister_after); still failing.
        ({}, 500, {"i": NOW - 30}, "uncounted", NOW - 30, []),
        ({}, 500, {"i": NOW - 90}, "discard", NOW - 90, []),
        # In no catalog, seen registered by an earlier cycle: deregistered while failing, not a killed run's.
        ({}, 500, {}, "uncounted", NOW, ["i"]),
        ({}, 10, {}, "usable", None, ["i"]),  # young: its replacement would be no better yet
    ],
)
def test_triage(health, age, critical_since, kind, since, seen):
    usable, uncounted, discard, drained, unregistered, critical = triage(
        health, [inst(age)], {"critical_since": critical_since, "registered": seen}, NOW, GRACE, UNHEALTHY
    )
    found = {
        "usable": usable,
        "uncounted": uncounted,
        "discard": discard,
        "drained": drained,
        "unregistered": unregistered,
    }
    # An unregistered instance counts (it serves once registered): it is usable too.
    expected = {"usable", "unregistered"} if kind == "unregistered" else {kind}
    assert {k for k, v in found.items() if v} == expected
    assert critical == ({"i": since} if since is not None else {})
