"""skynet_info and playbooks/status.yml against a real Consul and Podman: instances started by skynet_compute,
a decision made by skynet_scale, a lock held by a ServiceLock, read back as records and as the printed table."""

from __future__ import annotations

import json
import re
import socket

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul import connect
from ansible_collections.cyberdyne.skynet.plugins.module_utils._lock import ServiceLock
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry

from harness.ansible import ROOT, run_module
from harness.proc import free_port
from harness.prometheus_role import ansible_playbook
from harness.services import remove_service

INFO = "cyberdyne.skynet.skynet_info"
SCALE = "cyberdyne.skynet.skynet_scale"
STATUS = ROOT / "playbooks" / "status.yml"
READ_RULES = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'


def definition(name, image, value, lo=1, hi=3):
    return {
        "name": name,
        "image": image,
        "port": 8080,
        "health": {"path": "/health", "interval": "1s"},
        "scaling": {
            "min": lo,
            "max": hi,
            "cooldown_up": 600,
            "cooldown_down": 600,
            "checks": [{"name": "load", "value": value, "aggregate": "total", "target": 50}],
        },
    }


def register_elsewhere(consul, name, iid, host, zone):
    """An instance as a registrator on another host registers it: Meta skynet_host and skynet_zone, a check
    that has not passed yet (a TTL check starts critical)."""
    consul.api(
        "PUT",
        "agent/service/register",
        json={
            "ID": f"skynet-{name}-{iid}",
            "Name": name,
            "Address": "192.0.2.7",
            "Port": 31000,
            "Tags": ["blue"],
            "Meta": {"skynet_instance": iid, "skynet_color": "blue", "skynet_host": host, "skynet_zone": zone},
            "Check": {"TTL": "10m", "Notes": "not reported yet"},
        },
    )
    return f"skynet-{name}-{iid}"


@pytest.fixture
def scaled(consul, engine, sample_image, unique):
    """A service with 2 instances that skynet_scale took to 3, and a foreign instance on host docker-2."""
    name = unique("inf")
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}
    defn = definition(name, sample_image["1"], value=150)
    extra = []
    try:
        started = run_module(
            "cyberdyne.skynet.skynet_compute",
            {**common, "service": name, "image": sample_image["1"], "count": 2, "health": defn["health"]},
        )
        assert not started.get("failed"), started
        scale = run_module(SCALE, {**common, "services": [defn], "drain_period": 0, "wait_timeout": 60})
        assert not scale.get("failed") and scale["decisions"][0]["action"] == "scale_out", scale
        extra.append(register_elsewhere(consul, name, "remote1", "docker-2", "b"))
        yield {"name": name, "common": common, "definition": defn, "decision": scale["decisions"][0]}
    finally:
        for sid in extra:
            consul.api("PUT", f"agent/service/deregister/{sid}")
        consul.api("DELETE", f"kv/skynet/bluegreen/{name}", params={"recurse": "1"})
        remove_service(common, consul, name)


def node_name(consul):
    return consul.api("GET", "agent/self")["Config"]["NodeName"]


def test_instances_decision_lock_and_release_are_read_back(scaled, consul, sample_image):
    name, node = scaled["name"], node_name(consul)
    consul.api("PUT", f"kv/skynet/bluegreen/{name}/live", data=json.dumps("blue"))
    release = {"id": "r1", "phase": "verify", "to": "green", "version": "2", "started": 100, "phases": []}
    consul.api("PUT", f"kv/skynet/bluegreen/{name}/release", data=json.dumps(release))
    registry = Registry(connect({"consul_url": consul.url}))
    lock = ServiceLock(registry, name, "release")
    assert lock.acquire()
    try:
        result = run_module(INFO, {"consul_url": consul.url, "services": [scaled["definition"]]}, check=True)
        assert not result.get("failed") and not result["changed"], result
        (svc,) = result["services"]
        assert svc["lock"]["held"] and svc["lock"]["purpose"] == "release", svc["lock"]
        assert svc["lock"]["host"] == socket.gethostname() and svc["lock"]["session"] == lock.session
    finally:
        assert lock.release() is None

    local = [i for i in svc["instances"] if i["host"] == node]
    assert len(local) == 3 and {i["status"] for i in local} == {"passing"}, svc["instances"]
    assert all(i["node"] == node and i["zone"] is None and not i["maintenance"] for i in local)
    assert {(i["address"], i["color"], i["image"]) for i in local} == {("127.0.0.1", "blue", sample_image["1"])}
    assert sorted(i["id"] for i in local) == sorted(
        e["ServiceMeta"]["skynet_instance"]
        for e in consul.api("GET", f"catalog/service/{name}")
        if e["ServiceMeta"].get("skynet_host") is None
    )
    (remote,) = [i for i in svc["instances"] if i["host"] == "docker-2"]
    assert (remote["node"], remote["zone"], remote["status"]) == (node, "b", "critical")
    assert remote["checks"] and remote["checks"][0]["status"] == "critical"
    assert svc["hosts"][node]["passing"] == 3 and svc["hosts"]["docker-2"]["critical"] == 1
    assert svc["counts"] == {"passing": 3, "warning": 0, "critical": 1, "maintenance": 0, "total": 4}

    decision = svc["last_decision"]
    assert (decision["action"], decision["current"], decision["desired"]) == ("scale_out", 2, 3), decision
    assert decision["reason"] == scaled["decision"]["reason"] and decision["applied"]
    assert 500 < svc["cooldown"]["up_left"] <= 600 and svc["cooldown"]["last_scale_up"] == decision["time"]
    assert svc["live"] == "blue"
    assert svc["release"]["phase"] == "verify" and svc["release"]["in_progress"]

    after = run_module(INFO, {"consul_url": consul.url, "names": [name]})
    (svc,) = after["services"]
    assert not svc["lock"]["held"]
    assert svc["cooldown"]["up_left"] is None  # names only: no policy to count cooldowns by


def test_a_drained_instance_and_a_service_scaled_to_zero_are_seen(scaled, consul, engine, sample_image, unique):
    name, common = scaled["name"], scaled["common"]
    drained = next(e["ServiceID"] for e in consul.api("GET", f"catalog/service/{name}"))
    consul.api("PUT", f"agent/service/maintenance/{drained}", params={"enable": "true", "reason": "test"})
    idle = unique("idle")
    try:
        zero = run_module(SCALE, {**common, "services": [definition(idle, sample_image["1"], value=0, lo=0)]})
        assert not zero.get("failed") and zero["decisions"][0]["desired"] == 0, zero
        everything = run_module(INFO, {"consul_url": consul.url})
        assert not everything.get("failed"), everything
        found = {s["name"]: s for s in everything["services"]}
        assert found[name]["counts"]["maintenance"] == 1 and found[name]["counts"]["passing"] == 2
        assert [i["maintenance"] for i in found[name]["instances"] if i["service_id"] == drained] == [True]
        assert found[idle]["instances"] == [] and found[idle]["last_decision"]["action"] == "hold"
        assert "consul" not in found  # no Skynet instance, no scaling record
        assert [s["name"] for s in everything["services"]] == sorted(found)
    finally:
        consul.api("DELETE", f"kv/skynet/scale/{idle}", params={"recurse": "1"})
        consul.api("DELETE", f"kv/skynet/lock/{idle}")


def columns(lines, service):
    """{column: cell} of the row of service in the table the playbook printed, cut where the header's words start."""
    header = next(line for line in lines if line.startswith("SERVICE "))
    row = next(line for line in lines if line.startswith(f"{service} "))
    starts = [0, *(m.start() for m in re.finditer(r"(?<=  )\S", header))]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    cells = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return dict(zip(names, cells, strict=True))


def test_the_status_playbook_prints_one_row_per_service_and_a_column_per_host(scaled, consul, tmp_path):
    name, node = scaled["name"], node_name(consul)
    registry = Registry(connect({"consul_url": consul.url}))
    lock = ServiceLock(registry, name, "scale")
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"skynet_consul_url": consul.url, "skynet_status_names": f"{name}, "}))
    assert lock.acquire()
    try:
        out = ansible_playbook(STATUS, "localhost,", extra=f"@{extra}")
    finally:
        assert lock.release() is None
    printed = [m.group(1) for m in re.finditer(r'^\s*"(.*)",?$', out.stdout, re.MULTILINE)]
    row = columns(printed, name)
    assert row[node] == "3 ok" and row["docker-2"] == "1 crit", printed
    assert row["LIVE"] == "-" and row["RELEASE"] == "-"
    assert re.fullmatch(r"scale_out 2->3 \d+s ago", row["LAST DECISION"]), row
    assert re.fullmatch(rf"scale on {re.escape(socket.gethostname())} \d+s", row["LOCK"]), row
    assert f"{name}: {scaled['decision']['reason'][:200]}" in printed
    assert "changed=0" in out.stdout


def test_bad_names_and_an_unreachable_consul_fail_clearly(consul):
    bad = run_module(INFO, {"consul_url": consul.url, "names": ["web", "Web_1"]})
    assert bad.get("failed") and "names[1] 'Web_1' is not a valid service name" in bad["msg"], bad
    gone = run_module(INFO, {"consul_url": f"http://127.0.0.1:{free_port()}", "consul_timeout": 2})
    assert gone.get("failed") and "is unreachable" in gone["msg"], gone


def test_a_read_only_token_is_enough_and_a_token_without_key_reads_is_named(stack, unique):
    consul = stack.consul(acl=True)
    name = unique("ro")
    consul.api("PUT", f"kv/skynet/bluegreen/{name}/live", data=json.dumps("green"))
    register_elsewhere(consul, name, "i1", "docker-1", "a")
    reader = consul.acl_token(READ_RULES + 'key_prefix "skynet/" { policy = "read" }')
    result = run_module(INFO, {"consul_url": consul.url, "consul_token": reader})
    assert not result.get("failed"), result
    (svc,) = result["services"]
    assert svc["live"] == "green" and svc["instances"][0]["host"] == "docker-1"
    assert reader not in json.dumps(result)
    blind = consul.acl_token(READ_RULES)
    refused = run_module(INFO, {"consul_url": consul.url, "consul_token": blind, "names": [name]})
    assert refused.get("failed") and "the token lacks permission" in refused["msg"], refused
    assert f"skynet/scale/{name}/last" in refused["msg"]
