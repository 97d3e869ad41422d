from __future__ import annotations

import json

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _info as info
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._policy import parse_policy

NOW = 1_000_000.0
CHECKS = [{"name": "load", "value": 1, "target": 1}]


def entry(iid="a1", node="n1", meta=None, checks=("passing",), address="10.0.0.1", tags=("blue",), maint=False):
    meta = {"skynet_instance": iid, "skynet_color": "blue", "skynet_image": "web:1", **(meta or {})}
    found = [{"CheckID": f"c{n}", "Status": s, "Output": f"out {n}"} for n, s in enumerate(checks)]
    if maint:
        found.append({"CheckID": f"_service_maintenance:skynet-web-{iid}", "Status": "critical", "Output": ""})
    return {
        "Node": {"Node": node, "Address": "192.0.2.1"},
        "Service": {"ID": f"skynet-web-{iid}", "Address": address, "Port": 30000, "Meta": meta, "Tags": list(tags)},
        "Checks": found,
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (entry(), {"host": "n1", "zone": None, "status": "passing", "maintenance": False, "color": "blue"}),
        (entry(meta={"skynet_host": "docker-2", "skynet_zone": "b"}), {"host": "docker-2", "zone": "b", "node": "n1"}),
        (entry(checks=("passing", "warning")), {"status": "warning"}),
        (entry(checks=("warning", "critical")), {"status": "critical"}),
        (entry(maint=True), {"status": "critical", "maintenance": True}),
        (entry(address=""), {"address": "192.0.2.1"}),
        (entry(meta={"skynet_color": ""}, tags=("green", "v2")), {"color": "green"}),
        (entry(meta={"skynet_color": ""}, tags=("v2",)), {"color": None}),
    ],
)
def test_an_instance_is_read_from_its_health_entry(raw, expected):
    record = info.instance_record(raw)
    assert {k: record[k] for k in expected} == expected
    assert record["id"] == "a1" and record["port"] == 30000 and record["image"] == "web:1"


def test_failing_checks_are_kept_with_their_output_and_passing_ones_are_not():
    record = info.instance_record(entry(checks=("passing", "critical")))
    assert record["checks"] == [{"id": "c1", "status": "critical", "output": "out 1"}]


def test_a_registration_that_is_not_a_skynet_instance_is_left_out():
    raw = entry()
    raw["Service"]["Meta"] = {"other": "x"}
    assert info.instance_record(raw) is None
    raw["Service"]["Meta"] = None
    assert info.instance_record(raw) is None


def test_instances_are_counted_by_host_and_maintenance_counts_only_there():
    instances = [
        info.instance_record(e)
        for e in (
            entry("a", "n1"),
            entry("b", "n1", checks=("critical",)),
            entry("c", "n2", maint=True),
            entry("d", "n1", meta={"skynet_host": "h3"}, checks=("warning",)),
        )
    ]
    hosts = info.by_host(instances)
    assert list(hosts) == ["h3", "n1", "n2"]
    assert hosts["n1"] == {"passing": 1, "warning": 0, "critical": 1, "maintenance": 0, "total": 2}
    assert hosts["n2"] == {"passing": 0, "warning": 0, "critical": 0, "maintenance": 1, "total": 1}
    assert info.counts(instances)["total"] == 4


@pytest.mark.parametrize(
    ("counts", "text"),
    [
        (None, "-"),
        ({"total": 0}, "-"),
        ({"passing": 2, "warning": 0, "critical": 0, "maintenance": 0, "total": 2}, "2 ok"),
        ({"passing": 1, "warning": 0, "critical": 1, "maintenance": 0, "total": 2}, "1 ok 1 crit"),
        ({"passing": 0, "warning": 1, "critical": 0, "maintenance": 2, "total": 3}, "1 warn 2 maint"),
    ],
)
def test_a_cell_says_how_many_instances_of_each_health(counts, text):
    assert info.cell(counts) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "?"), (0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"), (7200, "2h"), (90000, "1d")]
)
def test_ages_read_at_a_glance(seconds, text):
    assert info.ago(seconds) == text


POLICY = parse_policy("web", {"min": 1, "max": 4, "checks": CHECKS, "cooldown_up": 60, "cooldown_down": 120})


@pytest.mark.parametrize(
    ("state", "policy", "up_left", "down_left"),
    [
        ({}, POLICY, 0.0, 0.0),
        ({"last_scale_up": NOW - 20}, POLICY, 40.0, 100.0),  # scale-in waits for the last change of either kind
        ({"last_scale_up": NOW - 90, "last_scale_down": NOW - 30}, POLICY, 0.0, 90.0),
        ({"last_scale_up": NOW - 500, "last_scale_down": NOW - 500}, POLICY, 0.0, 0.0),
        ({"last_scale_up": NOW - 20}, None, None, None),
        ("not a dict", POLICY, 0.0, 0.0),
    ],
)
def test_cooldowns_left_are_counted_as_the_policy_counts_them(state, policy, up_left, down_left):
    record = info.cooldown_record(state, policy, NOW)
    assert (record["up_left"], record["down_left"]) == (up_left, down_left)


def test_the_times_of_the_last_changes_are_null_when_never_scaled():
    assert info.cooldown_record({}, None, NOW)["last_scale_up"] is None
    assert info.cooldown_record({"last_scale_down": NOW - 5}, None, NOW)["last_scale_down"] == NOW - 5


def held(value, session="s-1"):
    return {"Session": session, "Value": value if value is None else json.dumps(value).encode()}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, {"held": False, "host": None}),
        ({"Value": b"{}"}, {"held": False}),  # released: the key keeps its value but no session
        (
            held({"purpose": "release", "host": "ctl1", "pid": 42, "since": NOW - 75, "session": "s-1"}),
            {"held": True, "purpose": "release", "host": "ctl1", "pid": 42, "age": 75.0, "session": "s-1"},
        ),
        ({"Session": "s-2", "Value": b"not json"}, {"held": True, "purpose": None, "age": None}),
        (held(None), {"held": True, "host": None}),
        (held({"since": "yesterday"}), {"held": True, "since": None, "age": None}),
    ],
)
def test_the_lock_is_held_only_while_a_session_has_it(raw, expected):
    record = info.lock_record(raw, NOW)
    assert {k: record[k] for k in expected} == expected


def test_a_decision_is_read_with_its_age_and_nothing_is_no_decision():
    last = {"time": NOW - 30, "action": "scale_out", "current": 2, "desired": 3, "reason": "load: 3 wanted"}
    record = info.decision_record({**last, "passing": 2}, NOW)
    assert record["age"] == 30.0 and record["reason"] == "load: 3 wanted" and "passing" not in record
    assert info.decision_record(None, NOW) is None
    assert info.decision_record({"reason": "x"}, NOW) is None


def test_a_release_says_its_phase_and_whether_it_is_in_progress():
    record = {
        "id": "r1",
        "phase": "watch",
        "to": "green",
        "started": 10,
        "phases": [{"phase": "deploy", "started": 10}, {"phase": "watch", "started": 50}],
    }
    assert info.release_record(record)["in_progress"] is True
    assert info.release_record(record)["phase_since"] == 50
    assert info.release_record({**record, "phase": "rolled_back"})["in_progress"] is False
    assert info.release_record({"phase": "deploy", "started": 7})["phase_since"] == 7
    assert info.release_record(None) is None and info.release_record({}) is None


def service(name, entries=(), **kv):
    return info.service_record(name, list(entries), kv, kv.pop("policy", None), NOW)


def test_a_service_record_sorts_its_instances_and_ignores_a_live_value_that_is_no_color():
    record = service("web", [entry("b", "n2"), entry("a", "n1"), entry("c", "n1")], live="purple")
    assert [i["id"] for i in record["instances"]] == ["a", "c", "b"]
    assert record["live"] is None and record["lock"]["held"] is False and record["release"] is None
    assert service("web", live="green")["live"] == "green"


def test_the_table_has_a_row_per_service_and_a_column_per_host_aligned():
    web = service(
        "web",
        [
            entry("a", "docker-1"),
            entry("b", "docker-1"),
            entry("c", "docker-2"),
            entry("d", "docker-2", checks=["critical"]),
        ],
        live="blue",
        last={"time": NOW - 12, "action": "scale_out", "current": 3, "desired": 4, "reason": "load: 4 wanted"},
        state={"last_scale_up": NOW - 12},
        policy=POLICY,
        lock=held({"purpose": "scale", "host": "ctl1", "since": NOW - 3}),
    )
    api = service(
        "api-v2",
        [entry("e", "docker-3")],
        release={"phase": "switch", "to": "green", "phases": []},
        last={"time": NOW - 400, "action": "hold", "current": 1, "desired": 1, "error": "Docker API down"},
    )
    idle = service("idle")
    lines = info.render_table([web, api, idle])
    assert lines[:4] == [
        "SERVICE  docker-1  docker-2     docker-3  LIVE  RELEASE          LAST DECISION           LOCK",
        "web      2 ok      1 ok 1 crit  -         blue  -                scale_out 3->4 12s ago  scale on ctl1 3s",
        "api-v2   -         -            1 ok      -     switch to green  hold 1 6m ago FAILED    -",
        "idle     -         -            -         -     -                -                       -",
    ]
    notes = lines[5:]
    assert lines[4] == ""
    assert "web: load: 4 wanted" in notes
    assert "web: cooldown left: scale-out 48s, scale-in 1m" in notes
    assert "api-v2: error: Docker API down" in notes


def test_the_table_keeps_its_columns_whatever_a_host_or_reason_holds():
    odd = service(
        "web",
        [entry("a", "n1", meta={"skynet_host": "evil\nhost\t1"})],
        last={"time": NOW, "action": "hold", "current": 1, "reason": "x\n" * 300},
    )
    lines = info.render_table([odd])
    assert all("\n" not in line and "\t" not in line for line in lines)
    assert lines[0].index("LIVE") == lines[1].index("-")
    assert max(len(line) for line in lines[3:]) <= len("web: ") + info.NOTE_MAX


def test_no_service_is_said_so():
    assert info.render_table([]) == ["SERVICE  LIVE  RELEASE  LAST DECISION  LOCK", "(no Skynet services found)"]


DEFINITIONS = [
    {"name": "web", "image": "web:1", "scaling": {"min": 1, "max": 3, "checks": CHECKS, "cooldown_up": 30}},
    {"name": "db", "image": "db:1"},
]


def test_definitions_are_reported_in_their_order_with_their_policies():
    chosen = info.select(DEFINITIONS)
    assert [(n, p and p.cooldown_up) for n, p in chosen] == [("web", 30.0), ("db", None)]
    assert [pair[0] for pair in info.select(DEFINITIONS, ["db", "web", "db"])] == ["db", "web"]
    assert info.select(None, ["b", "a", "b"]) == [("b", None), ("a", None)]
    assert info.select() is None and info.select(None, []) is None


@pytest.mark.parametrize(
    ("definitions", "names", "messages"),
    [
        (None, ["web", "Web_1"], ["names[1] 'Web_1' is not a valid service name"]),
        (DEFINITIONS, ["api"], ["names not in services: api (defined: db, web)"]),
        ([{"name": "web"}, {"name": "web"}], None, ["services[1].name 'web' is defined more than once"]),
        ([{"name": "a/b"}, {"name": "x", "color": "red"}], None, ["services[0].name", "services[1].color 'red'"]),
        ([{"name": "web", "scaling": {"min": 3, "max": 1, "checks": CHECKS}}], None, ["min (3) is above max (1)"]),
        ("web", None, ["services must be a list of service definitions"]),
    ],
)
def test_bad_input_is_refused_naming_every_problem_before_anything_is_read(definitions, names, messages):
    with pytest.raises(SkynetError) as e:
        info.select(definitions, names)
    assert str(e.value).startswith("invalid services or names, nothing was read: ")
    for message in messages:
        assert message in str(e.value)
