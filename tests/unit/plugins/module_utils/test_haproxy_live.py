from __future__ import annotations

import base64
import json

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.cyberdyne.skynet.plugins.filter.haproxy_config import FilterModule
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_live import consul_live, live_plan

SERVICES = [{"name": "web"}, {"name": "db", "color": "green"}, {"name": "api"}]


def entry(key, value, raw=False):
    text = value if raw else json.dumps(value)
    return {"Key": key, "Value": None if value is None else base64.b64encode(text.encode()).decode()}


def listing(*entries, status=200):
    return {"status": status, "json": list(entries)}


def test_consul_live_reads_colors_and_releases_in_progress():
    answer = consul_live(
        listing(
            entry("skynet/bluegreen/web/live", "green"),
            entry("skynet/bluegreen/web/release", {"phase": "done"}),
            entry("skynet/bluegreen/db/live", "purple"),
            entry("skynet/bluegreen/api/live", "{not json", raw=True),
            entry("skynet/bluegreen/api/release", {"phase": "switch"}),
            entry("skynet/bluegreen/x/live", None),
            entry("skynet/bluegreen/web/history/1", "blue"),
            entry("skynet/bluegreen/live", "blue"),
            entry("other/bluegreen/y/live", "blue"),
        )
    )
    assert answer == {
        "live": {"web": "green"},
        "invalid": {"db": '"purple", not blue or green', "api": "a value that is not JSON", "x": "an empty value"},
        "releasing": ["api"],
    }


@pytest.mark.parametrize(
    ("result", "probe", "error"),
    [
        ({"status": -1, "msg": "Connection refused"}, None, "Consul at U is unreachable: Connection refused"),
        ({"status": 500, "msg": "rpc error"}, None, "Consul at U answered HTTP 500: rpc error"),
        ({"status": 403, "msg": "Forbidden"}, None, "denied the token read access to the keys under skynet/bluegreen/"),
        (listing(status=404), {"status": 403}, "denied the token read access"),
        (listing(status=404), {"status": -1, "msg": "timed out"}, "unreachable: timed out"),
        ({"status": 200, "json": {"not": "a list"}}, None, "answered HTTP 200"),
        (None, None, "unreachable: no answer"),
    ],
)
def test_consul_live_errors(result, probe, error):
    assert error in consul_live(result, probe, where="Consul at U")["error"]


@pytest.mark.parametrize("probe", [None, {"skipped": True}, {"status": 404}, {"status": 200}])
def test_an_empty_listing_is_no_record_when_the_direct_read_agrees(probe):
    assert consul_live(listing(status=404), probe) == {"live": {}, "invalid": {}, "releasing": []}


def consul(live=None, invalid=None, releasing=()):
    return {"live": live or {}, "invalid": invalid or {}, "releasing": list(releasing)}


@pytest.mark.parametrize(
    ("current", "kv", "override", "colors", "sources"),
    [
        # A fresh node: the record beats the definitions' colors.
        ({}, consul({"web": "green", "db": "blue"}), {}, ("green", "blue", "blue"), ("consul", "consul", "definition")),
        # persist: false left blue in the file; the record says green.
        ({"web": "blue"}, consul({"web": "green"}), {}, ("green", "green", "blue"),
         ("consul", "definition", "definition")),
        # No record: haproxy_live, then the file, then the definition.
        ({"web": "green", "db": "blue"}, consul(), {"api": "green"}, ("green", "blue", "green"),
         ("live.map", "live.map", "haproxy_live")),
        ({"web": "green"}, consul(), {"web": "blue"}, ("blue", "green", "blue"),
         ("haproxy_live", "definition", "definition")),
        # Not reading Consul: as without records.
        ({"web": "green"}, None, {"db": "blue"}, ("green", "blue", "blue"), ("live.map", "haproxy_live", "definition")),
        # A release in progress keeps the node's line (web), or takes the record where there is none (db).
        ({"web": "green"}, consul({"web": "blue", "db": "blue"}, releasing=["web", "db"]), {},
         ("green", "blue", "blue"), ("live.map, release in progress", "consul", "definition")),
    ],
)  # fmt: skip
def test_order_of_the_colors(current, kv, override, colors, sources):
    plan = live_plan(SERVICES, current, kv, override)
    assert tuple(plan["colors"][s["name"]] for s in SERVICES) == colors
    assert tuple(plan["sources"][s["name"]] for s in SERVICES) == sources
    assert plan["unknown"] == []


def test_the_record_beats_haproxy_live_with_a_warning():
    plan = live_plan(SERVICES, {}, consul({"web": "green", "db": "green"}), {"web": "blue", "db": "green"})
    assert plan["colors"]["web"] == "green"
    (warning,) = plan["warnings"]
    assert "web (blue asked, green recorded)" in warning and "db" not in warning
    assert "state=rolled_back" in warning


def test_consul_unreadable_keeps_the_file_and_names_the_guesses():
    plan = live_plan(SERVICES, {"web": "green"}, {"error": "Consul at U is unreachable: refused"}, {"db": "blue"})
    assert plan["colors"] == {"web": "green", "db": "blue", "api": "blue"}
    assert plan["sources"] == {"web": "live.map", "db": "haproxy_live", "api": "definition"}
    assert plan["unknown"] == ["web", "db", "api"]
    (warning,) = plan["warnings"]
    assert "could not be read: Consul at U is unreachable: refused" in warning
    assert "Kept from this node's live.map: web;" in warning
    assert "maybe not the recorded color: db blue (from haproxy_live), api blue (from definition)" in warning


def test_an_invalid_record_is_unknown_for_that_service_only():
    plan = live_plan(SERVICES, {"db": "blue"}, consul({"web": "green"}, invalid={"db": '"red", not blue or green'}))
    assert plan["colors"] == {"web": "green", "db": "blue", "api": "blue"}
    assert plan["unknown"] == ["db"]
    assert 'db has "red", not blue or green. Kept from this node\'s live.map: db' in plan["warnings"][0]


def test_a_release_in_progress_is_said():
    plan = live_plan(SERVICES, {"web": "blue"}, consul({"web": "blue"}, releasing=["web"]))
    assert plan["warnings"] == ["a release of web has not ended: this node's map keeps its color for now"]


def test_all_well_no_warning():
    assert live_plan(SERVICES, {"web": "blue"}, consul({"web": "blue"}))["warnings"] == []


def test_filters():
    filters = FilterModule().filters()
    kv = filters["haproxy_consul_live"]({"status": -1, "msg": "refused"}, url="http://127.0.0.1:1")
    assert kv == {"error": "Consul at http://127.0.0.1:1 is unreachable: refused"}
    plan = filters["haproxy_live_plan"](SERVICES, {"web": "green"}, kv, warn=False)
    assert plan["colors"]["web"] == "green" and plan["unknown"] == ["web", "db", "api"]
    with pytest.raises(AnsibleFilterError, match="live color 'red' is not blue or green"):
        filters["haproxy_live_plan"](SERVICES, override={"web": "red"})
    with pytest.raises(AnsibleFilterError, match="two services have this name"):
        filters["haproxy_live_plan"]([{"name": "web"}, {"name": "web"}])
