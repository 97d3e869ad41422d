from __future__ import annotations

import math

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._control import apply, make, override, parse
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


def test_a_pause_holds_the_service_where_it_is_whatever_the_policy_wants():
    paused = make("paused", "alice", "INC-1", 100.0)
    desired, action, reason = override(paused, 3, 5, "scale_out", "load 90 > 50")
    assert (desired, action) == (3, "hold")
    assert reason.startswith("autoscaling paused by alice (INC-1): hold 3 -> 3; the policy wanted 5 (load 90 > 50)")


@pytest.mark.parametrize(("current", "action"), [(2, "scale_out"), (6, "hold"), (9, "scale_in")])
def test_a_pin_takes_the_service_to_its_count(current, action):
    pinned = make("pinned", "bob", "sale", 100.0, count=6)
    assert override(pinned, current, 1, "scale_in", "idle")[:2] == (6, action)


def test_without_a_control_the_decision_stands():
    assert override(None, 2, 4, "scale_out", "why") == (4, "scale_out", "why")


def test_a_record_reads_back_as_it_was_written():
    for control in (make("paused", "alice", "why", 1.5), make("pinned", "bob", "why", 2.0, count=0)):
        assert parse(control.as_dict(), "web") == control
    assert parse(None, "web") is None
    assert "count" not in make("paused", "a", "b", 1).as_dict()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("stopped", "a", "b", 1), "control mode must be one of paused, pinned"),
        (("pinned", "a", "b", 1), "a pinned service needs a count"),
        (("pinned", "a", "b", 1, -1), "a pinned service needs a count"),
        (("pinned", "a", "b", 1, True), "a pinned service needs a count"),
        (("paused", "a", "b", 1, 3), "count is for mode pinned only"),
        (("paused", "", "b", 1), "control by (who) must be a non-empty text"),
        (("paused", "a", " ", 1), "control reason (why) must be a non-empty text"),
        (("paused", "a", "x" * 201, 1), "one line of at most 200 characters"),
        (("paused", "a", "two\nlines", 1), "one line of at most 200 characters"),
        (("paused", "a", "b", math.nan), "control time must be a finite number"),
    ],
)
def test_bad_input_is_refused_naming_it(args, message):
    with pytest.raises(SkynetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make(*args)


def test_a_record_that_is_not_one_names_the_service_and_its_key():
    with pytest.raises(SkynetError, match=r"the control record of web \(skynet/scale/web/control\) is invalid"):
        parse({"mode": "paused"}, "web")
    with pytest.raises(SkynetError, match="the control record of web is not an object"):
        parse("paused", "web")


def test_applying_a_record_holds_on_an_invalid_one_and_passes_without_one():
    control, error, desired, action, reason = apply({"mode": "frozen"}, "web", 2, 5, "scale_out", "load")
    assert control is None and (desired, action) == (2, "hold")
    assert error.startswith("the control record of web") and reason.endswith(": holding (load)")
    assert apply(None, "web", 2, 5, "scale_out", "load") == (None, None, 5, "scale_out", "load")
    pinned = make("pinned", "bob", "sale", 1.0, count=3).as_dict()
    assert apply(pinned, "web", 2, 5, "scale_out", "load")[1:4] == (None, 3, "scale_out")
