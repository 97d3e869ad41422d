from __future__ import annotations

import math

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _release as rel
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


def record(phase="deploy", switched=False, image="web:2", from_image="web:1", **kw):
    r = rel.new_record("r1", "web", image, "2", "blue", from_image, 2, 100.0)
    r.update(phase=phase, switched=switched, **kw)
    return r


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("web:2", "2"),
        ("localhost/skynet-sample:1", "1"),
        ("registry.example:5000/team/web:2.1", "2.1"),
        ("registry.example:5000/team/web", "registry.example:5000/team/web"),
        ("web@sha256:abc", "web@sha256:abc"),
        ("ami-0123", "ami-0123"),
    ],
)
def test_version_of(image, version):
    assert rel.version_of(image) == version


def test_colors_and_backends():
    assert rel.other("blue") == "green" and rel.other("green") == "blue"
    assert rel.backend("web", "green") == "web_green"
    assert rel.color_of("web", "web_green") == "green"
    assert rel.color_of("web", "api_green") is None
    with pytest.raises(SkynetError, match="blue or green"):
        rel.other("red")


# -- plans -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rec", "live_images", "image", "count", "action", "steps", "target", "want_count"),
    [
        (None, ["web:1", "web:1"], "web:2", None, "release", rel.PHASES, "green", 2),
        (None, ["web:1"], "web:2", 4, "release", rel.PHASES, "green", 4),
        (None, [], "web:2", 3, "release", rel.PHASES, "green", 3),
        (None, ["web:2", "web:2"], "web:2", None, "none", (), None, 2),
        (record("done"), ["web:2", "web:2"], "web:2", None, "none", (), None, 2),
        (record("failed"), ["web:1", "web:1"], "web:2", None, "release", rel.PHASES, "green", 2),
        (record("rolled_back"), ["web:1"], "web:2", None, "release", rel.PHASES, "green", 1),
        (record("deploy"), ["web:1", "web:1"], "web:2", None, "resume", rel.PHASES, "green", 2),
        (record("verify"), ["web:1", "web:1"], "web:2", None, "resume", rel.PHASES, "green", 2),
        (
            record("switch", True),
            ["web:1", "web:1"],
            "web:2",
            None,
            "resume",
            ("switch", "watch", "retire"),
            "green",
            2,
        ),
        (record("watch", True), [], "web:2", None, "resume", ("watch", "retire"), "green", 2),
        (record("retire", True), [], "web:2", None, "resume", ("retire",), "green", 2),
    ],
)
def test_plan_release(rec, live_images, image, count, action, steps, target, want_count):
    plan = rel.plan_release("web", rec, "blue", live_images, image, count)
    assert plan.action == action, plan.reason
    assert tuple(plan.steps) == tuple(steps)
    assert plan.target == target
    assert plan.count == want_count
    assert plan.changes == (action != "none")
    assert set(plan.as_dict()) == {"action", "steps", "reason", "live", "target", "image", "count", "ends"}


@pytest.mark.parametrize(
    ("rec", "live_images", "image", "count", "message"),
    [
        (None, [], "web:2", None, "unknown service web: no instance of its live color blue is running"),
        (record("verify"), ["web:1"], "web:3", None, "a release of web to web:2 is in progress .phase verify."),
        (record("rollback"), ["web:1"], "web:2", None, "finish it first with state=rolled_back"),
        (record("abort"), ["web:1"], "web:2", None, "finish it first with state=aborted"),
        (None, ["web:1"], "web:2", 0, "count must be 1 or more"),
    ],
)
def test_plan_release_refuses(rec, live_images, image, count, message):
    with pytest.raises(SkynetError, match=message):
        rel.plan_release("web", rec, "blue", live_images, image, count)


@pytest.mark.parametrize(
    ("kind", "rec", "live", "action", "steps", "ends"),
    [
        ("abort", None, "blue", "none", (), None),
        ("abort", record("verify"), "blue", "abort", ("remove_new",), "aborted"),
        ("rollback", record("deploy"), "blue", "rollback", ("remove_new",), "rolled_back"),
        ("rollback", record("switch", switched=True), "green", "rollback", rel.UNDO_STEPS, "rolled_back"),
        ("abort", record("watch", switched=True), "green", "abort", rel.UNDO_STEPS, "aborted"),
        ("rollback", record("retire", switched=True), "green", "rollback", rel.UNDO_STEPS, "rolled_back"),
        ("rollback", record("done", switched=True), "green", "rollback", rel.UNDO_STEPS, "rolled_back"),
        ("abort", record("done", switched=True), "green", "none", (), None),
        ("rollback", record("rolled_back"), "blue", "none", (), None),
        ("abort", record("failed"), "blue", "none", (), None),
    ],
)
def test_plan_undo(kind, rec, live, action, steps, ends):
    plan = rel.plan_undo(kind, "web", rec, live)
    assert plan.action == action, plan.reason
    assert tuple(plan.steps) == tuple(steps)
    assert plan.terminal == ends
    if action != "none":
        assert plan.target == "blue" and plan.image == "web:1"


@pytest.mark.parametrize(
    ("rec", "live", "message"),
    [
        (None, "blue", "no release of web is recorded in Consul"),
        (record("done", switched=True), "blue", "changed outside the release"),
        (record("done", switched=True, from_image=None), "green", "no earlier version to roll back to"),
    ],
)
def test_plan_undo_refuses(rec, live, message):
    with pytest.raises(SkynetError, match=message):
        rel.plan_undo("rollback", "web", rec, live)


def test_an_interrupted_undo_after_the_switch_restores_traffic():
    rec = record("switch", switched=True)
    rec["phases"] = [{"phase": "switch"}]
    rec.update(phase="rollback", switched=False)
    assert rel.undo_steps(rec) == rel.UNDO_STEPS
    assert rel.undo_steps(record("rollback")) == ("remove_new",)


# -- record, history, timings ------------------------------------------------------------------


def test_record_lifecycle_and_timings():
    rec = record()
    e1 = rel.begin(rec, "deploy", 10.0)
    rel.end(rec, e1, 12.5)
    e2 = rel.begin(rec, "verify", 12.5)
    rel.end(rec, e2, 13.0, "failed", "red")
    e3 = rel.begin(rec, "deploy", 20.0)
    rel.end(rec, e3, 21.0)
    assert rec["phase"] == "deploy" and rel.in_progress(rec)
    assert [e["outcome"] for e in rec["phases"]] == ["ok", "failed", "ok"]
    assert rel.timings(rec["phases"]) == {"deploy": 3.5, "verify": 0.5, "total": 4.0}
    rel.finish(rec, "done", 30.0)
    assert not rel.in_progress(rec) and rec["ended"] == 30.0
    with pytest.raises(ValueError, match="terminal"):
        rel.finish(rec, "verify", 31.0)


def test_history_keeps_one_entry_per_release_newest_last():
    history = [{"id": f"r{n}"} for n in range(25)]
    rec = record("done", id="r3")
    out = rel.with_history(history, rec, limit=20)
    assert len(out) == 20 and out[-1]["id"] == "r3" and out[-1]["phase"] == "done"
    assert [h["id"] for h in out].count("r3") == 1
    assert rel.with_history(None, rec)[0]["image"] == "web:2"


# -- analysis -----------------------------------------------------------------------------------


def test_parse_analysis():
    a = rel.parse_analysis(
        "post_analysis",
        {
            "duration": 30,
            "interval": 2,
            "checks": [{"name": "errors", "query": "q", "max": 0.01}, {"query": "r", "min": 1}],
        },
    )
    assert a.enabled and a.duration == 30 and a.interval == 2
    assert [c.name for c in a.checks] == ["errors", "check2"]
    assert a.checks[1].on_missing == "fail"
    assert not rel.parse_analysis("pre_analysis", None).enabled
    assert not rel.parse_analysis("pre_analysis", {"duration": 10, "checks": []}).enabled


def test_parse_analysis_reports_every_problem():
    with pytest.raises(SkynetError) as e:
        rel.parse_analysis(
            "pre_analysis",
            {
                "duration": -1,
                "interval": 0,
                "checks": [
                    {"name": "a", "query": ""},
                    {"name": "a", "query": "q", "min": 2, "max": 1},
                    {"name": "b", "query": "q", "max": "lots", "on_missing": "maybe"},
                ],
            },
        )
    msg = str(e.value)
    for part in (
        "nothing was changed",
        "pre_analysis.duration must be 0 or more",
        "pre_analysis.interval must be above 0",
        "check a has no query",
        "check a needs min, max or both",
        "two checks are named a",
        "min (2) is above max (1)",
        "check b max must be a number",
        "on_missing must be fail or pass",
    ):
        assert part in msg, part


@pytest.mark.parametrize(
    ("check", "value", "ok", "reason"),
    [
        (rel.Check("e", "q", max=0.01), 0.0, True, "0 is <= 0.01"),
        (rel.Check("e", "q", max=0.01), 0.5, False, "0.5 is above max 0.01"),
        (rel.Check("e", "q", max=2), 1.0, True, "<= 2"),
        (rel.Check("u", "q", min=1), 0.0, False, "0 is below min 1"),
        (rel.Check("u", "q", min=1, max=3), 2.0, True, ">= 1 and <= 3"),
        (rel.Check("u", "q", max=1), None, False, "returned no data"),
        (rel.Check("u", "q", max=1), math.nan, False, "counted as a failure"),
        (rel.Check("u", "q", max=1, on_missing="pass"), None, True, "accepted"),
    ],
)
def test_judge(check, value, ok, reason):
    passed, why = rel.judge(check, value)
    assert passed is ok
    assert reason in why


def test_substitute_fills_every_placeholder():
    q = 'rate(x{proxy="${backend}",old="${previous_backend}",s="${service}",c="${color}",p="${previous}"}[1m])'
    assert rel.substitute(q, "web", "green", "blue") == (
        'rate(x{proxy="web_green",old="web_blue",s="web",c="green",p="blue"}[1m])'
    )
