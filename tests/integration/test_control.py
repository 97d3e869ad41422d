"""Operator control against a real Consul and Podman: skynet_control pauses, pins and resumes a service, and
skynet_scale honours it (the policy wanting more all along); skynet_info and playbooks/control.yml show and set
it; an invalid record holds the service with an error naming it, and nothing is changed."""

from __future__ import annotations

import json

import pytest
import requests

from harness.ansible import run_module, run_playbook
from harness.services import remove_service

CONTROL = "cyberdyne.skynet.skynet_control"
SCALE = "cyberdyne.skynet.skynet_scale"
INFO = "cyberdyne.skynet.skynet_info"


def definition(name, image, value):
    return {
        "name": name,
        "image": image,
        "port": 8080,
        "health": {"path": "/health", "interval": "1s"},
        "scaling": {
            "min": 1,
            "max": 4,
            "cooldown_up": 0,
            "cooldown_down": 0,
            "checks": [{"name": "load", "value": value, "aggregate": "total", "target": 10}],
        },
    }


@pytest.fixture
def service(consul, engine, sample_image, unique):
    name = unique("ctl")
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}
    yield name, common, sample_image["1"]
    remove_service(common, consul, name)


def scale(common, defn):
    result = run_module(SCALE, {**common, "services": [defn], "drain_period": 0, "wait_timeout": 60})
    assert not result.get("failed"), result.get("msg")
    return result["decisions"][0]


def test_a_paused_service_holds_a_pinned_one_keeps_its_count_and_resume_gives_it_back(consul, service):
    name, common, image = service
    assert scale(common, definition(name, image, 10))["desired"] == 1
    busy = definition(name, image, 40)  # the policy wants 4 from here on

    pause = {"consul_url": consul.url, "name": name, "state": "paused", "reason": "INC-7"}
    paused = run_module(CONTROL, {**pause, "by": "alice"})
    assert paused["changed"] and paused["control"]["mode"] == "paused"
    again = run_module(CONTROL, pause)
    assert not again["changed"] and again["control"]["by"] == "alice"  # the first author and time are kept
    held = scale(common, busy)
    assert (held["action"], held["current"], held["desired"]) == ("hold", 1, 1)
    assert "autoscaling paused by alice (INC-7)" in held["reason"] and "the policy wanted 4" in held["reason"]
    assert held["control"]["mode"] == "paused"

    (svc,) = run_module(INFO, {"consul_url": consul.url, "names": [name]})["services"]
    assert (svc["control"]["mode"], svc["control"]["by"], svc["control"]["reason"]) == ("paused", "alice", "INC-7")

    args = {"consul_url": consul.url, "name": name, "state": "pinned", "count": 2, "reason": "sale", "by": "bob"}
    checked = run_module(CONTROL, args, check=True, diff=True)
    assert checked["changed"] and checked["diff"]["after"]["count"] == 2
    assert consul.api("GET", f"kv/skynet/scale/{name}/control")[0]["Value"]  # still the pause
    assert run_module(CONTROL, args)["changed"]
    pinned = scale(common, busy)
    assert (pinned["action"], pinned["desired"], pinned["applied"]) == ("scale_out", 2, True)
    assert len(consul.api("GET", f"health/service/{name}", params={"passing": "1"})) == 2

    resumed = run_module(CONTROL, {"consul_url": consul.url, "name": name, "state": "resumed"})
    assert resumed["changed"] and resumed["control"] is None
    assert not run_module(CONTROL, {"consul_url": consul.url, "name": name, "state": "resumed"})["changed"]
    free = scale(common, busy)
    assert (free["action"], free["desired"]) == ("scale_out", 4) and "control" not in free


def test_an_invalid_record_holds_the_service_naming_it_and_changes_nothing(consul, service):
    name, common, image = service
    scale(common, definition(name, image, 10))
    consul.api("PUT", f"kv/skynet/scale/{name}/control", data='{"mode": "frozen"}')
    refused = run_module(SCALE, {**common, "services": [definition(name, image, 40)], "drain_period": 0})
    assert refused.get("failed")
    assert f"the control record of {name} (skynet/scale/{name}/control) is invalid" in refused["msg"]
    (held,) = refused["decisions"]
    assert (held["action"], held["desired"], held["applied"]) == ("hold", 1, False)
    assert len(consul.api("GET", f"health/service/{name}")) == 1
    # skynet_control replaces it.
    fixed = run_module(CONTROL, {"consul_url": consul.url, "name": name, "state": "pinned", "count": 1, "reason": "x"})
    assert fixed["changed"] and scale(common, definition(name, image, 40))["error"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"name": "Web!", "state": "paused", "reason": "x"}, "name"),
        ({"name": "web", "state": "paused"}, "state paused needs a reason"),
        (
            {"name": "web", "state": "pinned", "reason": "x"},
            "state is pinned but all of the following are missing: count",
        ),
        ({"name": "web", "state": "pinned", "count": -1, "reason": "x"}, "a pinned service needs a count"),
        ({"name": "web", "state": "paused", "count": 2, "reason": "x"}, "count is for state pinned only"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(consul, args, message):
    result = run_module(CONTROL, {"consul_url": consul.url, **args})
    assert result.get("failed") and message in result["msg"]
    assert requests.get(f"{consul.url}/v1/kv/skynet/scale/web/control", timeout=5).status_code == 404


def test_the_playbook_records_who_aws_names_and_the_status_playbook_shows_it(consul, service, tmp_path):
    name, _common, _image = service
    # The connection comes from the inventory, as an AWX inventory gives it: the playbooks' own defaults must
    # not outrank it.
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": {"skynet_consul_url": consul.url}}}}))
    asked = {"service": name, "state": "paused", "reason": "INC-9 failover", "awx_user_name": "carol"}
    run = run_playbook("control", asked, tmp_path, inventory=str(inventory))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{name}: paused by carol (INC-9 failover)" in run.stdout
    status = run_playbook("status", {"skynet_status_names": [name]}, tmp_path, inventory=str(inventory))
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{name}: autoscaling paused by carol (INC-9 failover) " in status.stdout
    resumed = run_playbook("control", {"service": name, "state": "resumed"}, tmp_path, inventory=str(inventory))
    assert resumed.returncode == 0 and "autoscaling resumed" in resumed.stdout
