"""Durations as Prometheus and Consul (Go) write them."""

from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._durations import GO, PROMETHEUS, seconds


@pytest.mark.parametrize(
    ("text", "units", "expected"),
    [
        ("1h30m", PROMETHEUS, 5400),
        ("500ms", PROMETHEUS, 0.5),
        ("5m", PROMETHEUS, 300),
        ("1d", PROMETHEUS, 86400),
        ("1d", GO, None),  # Go has no days
        ("1m30s", GO, 90),
        ("1.5s", GO, 1.5),
        (".5s", GO, 0.5),
        ("250us", GO, 0.00025),
        ("10", GO, None),  # a bare number is not a duration
        ("5 m", PROMETHEUS, None),
        ("m", PROMETHEUS, None),
        ("", GO, None),
        (None, GO, None),
        (5, GO, None),
    ],
)
def test_seconds(text, units, expected):
    found = seconds(text, units)
    assert found == pytest.approx(expected) if expected is not None else found is None
