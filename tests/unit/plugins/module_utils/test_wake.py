from __future__ import annotations

import math

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _wake
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


@pytest.mark.parametrize("service", ["web", "db", "a", "my-api-2"])
def test_the_key_of_a_service_reads_back_as_the_service(service):
    assert _wake.key(service) == f"skynet/wake/{service}"
    assert _wake.key(service).startswith(_wake.PREFIX + "/")
    assert _wake.service_of(_wake.key(service)) == service


@pytest.mark.parametrize(
    "key",
    [
        "skynet/wake",
        "skynet/wake/",
        "skynet/wake/web/extra",
        "skynet/wakes/web",
        "skynet/scale/web",
        "other/skynet/wake/web",
        "/skynet/wake/web",
        "web",
        "",
    ],
)
def test_other_keys_are_no_wake_record(key):
    assert _wake.service_of(key) is None


def test_a_record_says_who_when_which_color_and_how_many():
    assert _wake.record("lb-1", 100, "blue") == {
        "by": "lb-1",
        "at": 100.0,
        "since": 100.0,
        "color": "blue",
        "held": 1,
    }
    assert _wake.record("lb-2", 105.5, "green", held=3, since=99) == {
        "by": "lb-2",
        "at": 105.5,
        "since": 99.0,
        "color": "green",
        "held": 3,
    }


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf, True, False, "100", None, [100]])
def test_a_record_refuses_a_time_that_is_not_a_finite_number(now):
    with pytest.raises(SkynetError, match="a wake time must be a finite number"):
        _wake.record("lb-1", now, "blue")


@pytest.mark.parametrize("since", [math.nan, math.inf, True, "99"])
def test_a_record_refuses_a_since_that_is_not_a_finite_number(since):
    with pytest.raises(SkynetError, match="a wake time must be a finite number"):
        _wake.record("lb-1", 100.0, "blue", since=since)


@pytest.mark.parametrize(
    ("index", "answered", "expected"),
    [
        (5, 4, True),
        (5, 5, False),
        (4, 5, False),
        (1, None, True),
        (1, 0, True),
        (None, None, False),
        (0, None, False),
        (None, 3, False),
        ("12", "11", True),
    ],
)
def test_a_wake_is_pending_while_its_index_is_newer_than_the_one_answered(index, answered, expected):
    assert _wake.pending(index, answered) is expected
