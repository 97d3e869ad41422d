"""The service lock against a real Consul, and skynet_scale runs that outlive it, lose it or die holding it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul import connect
from ansible_collections.cyberdyne.skynet.plugins.module_utils._lock import LockLost, ServiceLock
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry

from harness.ansible import ROOT, run_module
from harness.proc import kill_tree, wait_for
from harness.services import remove_service, service_containers

COMPUTE = "cyberdyne.skynet.skynet_compute"
SCALE = "cyberdyne.skynet.skynet_scale"


@pytest.fixture
def registry(consul):
    return Registry(connect({"consul_url": consul.url}))


def session_of(consul, key):
    entry = consul.api("GET", f"kv/{key}")
    return entry[0].get("Session") if entry else None


def test_a_held_lock_is_renewed_past_its_ttl_and_released_without_delay(registry, consul, unique):
    name = unique("lock")
    first = ServiceLock(registry, name, "scale", ttl=10, lock_delay=15)
    assert first.acquire()
    try:
        time.sleep(22)  # more than twice the TTL: only renewal keeps the session
        assert first.lost() is None
        assert session_of(consul, first.key) == first.session
        second = ServiceLock(registry, name, "release", ttl=10)
        assert not second.acquire(wait=1)
        assert "a scale cycle on" in second.holder()
    finally:
        assert first.release() is None
    # A clean release is not held back by the lock-delay.
    third = ServiceLock(registry, name, "scale", ttl=10, lock_delay=15)
    assert third.acquire(wait=0)
    assert third.release() is None


def test_a_holder_whose_session_is_destroyed_is_fenced_and_the_key_waits_out_its_lock_delay(registry, consul, unique):
    name = unique("lock")
    lock = ServiceLock(registry, name, "scale", ttl=10, lock_delay=8)
    assert lock.acquire()
    sid = lock.session
    lock.fence("a change")
    consul.api("PUT", f"session/destroy/{sid}")
    with pytest.raises(LockLost, match=f"the lock of {name} was lost .*stopped before a change"):
        lock.fence("a change")
    lost_at = time.monotonic()
    other = ServiceLock(registry, name, "scale", ttl=10)
    assert not other.acquire(wait=3)  # the lock-delay of the invalidated session
    assert other.acquire(wait=15)
    assert time.monotonic() - lost_at >= 7
    assert other.release() is None
    assert lock.release() is None  # giving back a lost lock is quiet


@pytest.fixture
def service(consul, engine, sample_image, unique):
    name = unique("lk")
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}
    definition = {
        "name": name,
        "image": sample_image["1"],
        "port": 8080,
        # Consul would deregister a drained instance after deregister_after: these tests find it drained.
        "health": {"path": "/health", "interval": "1s", "deregister_after": "10m"},
        "scaling": {
            "min": 1,
            "max": 4,
            "cooldown_up": 600,
            "cooldown_down": 600,
            "checks": [{"name": "load", "value": 100, "aggregate": "total", "target": 50}],
        },
    }
    yield {"name": name, "common": common, "definition": definition}
    remove_service(common, consul, name)


def start(common, name, count, **extra):
    result = run_module(COMPUTE, {**common, "service": name, "image": extra.pop("image"), "count": count, **extra})
    assert not result.get("failed"), result
    return result


def test_a_run_that_outlives_the_session_ttl_is_not_doubled(service, docker_client, sample_image):
    """The reproduction of the lapsed lock: a scale-out whose instance takes 25 s to pass (the TTL is 15 s)."""
    name, common = service["name"], service["common"]
    start(common, name, 1, image=sample_image["1"], health=service["definition"]["health"])
    # It wants 4 instances, one more per cycle: a doubled run would start a third inside the cooldown.
    scaling = {**service["definition"]["scaling"], "max_step": 1}
    scaling["checks"] = [{"name": "load", "value": 200, "aggregate": "total", "target": 50}]
    slow = {**service["definition"], "env": {"START_DELAY": "25"}, "scaling": scaling}
    args = {**common, "services": [slow], "wait_timeout": 90, "drain_period": 0}
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", run_module(SCALE, args)))
    first.start()
    time.sleep(18)  # past the TTL of the first run's session, while its new instance still starts
    results["second"] = run_module(SCALE, args)
    first.join(120)
    results["third"] = run_module(SCALE, args)

    assert results["first"]["decisions"][0]["action"] == "scale_out", results["first"]
    assert results["first"]["decisions"][0]["applied"]
    second = results["second"]["decisions"][0]
    assert second["action"] == "skipped" and "a scale cycle on" in second["reason"], second
    third = results["third"]["decisions"][0]
    assert third["action"] == "hold" and "cooldown" in third["reason"], third
    assert len(service_containers(docker_client, name)) == 2


def test_a_run_that_loses_its_lock_mid_drain_stops_and_the_next_run_converges(
    service, consul, docker_client, sample_image
):
    name, common = service["name"], service["common"]
    args = {**common, "services": [two_wanting_one(service, sample_image)], "drain_period": 12}
    results = {}
    run = threading.Thread(target=lambda: results.setdefault("run", run_module(SCALE, args)))
    run.start()
    # Once an instance is in maintenance the run sleeps its drain period: destroy its session then.
    wait_for(lambda: drained(consul, name), 60, "an instance in maintenance")
    sid = session_of(consul, f"skynet/lock/{name}")
    consul.api("PUT", f"session/destroy/{sid}")
    run.join(120)
    decision = results["run"]["decisions"][0]
    assert results["run"].get("failed"), results["run"]
    assert "was lost" in decision["error"] and "stopped before removing" in decision["error"], decision
    assert len(service_containers(docker_client, name)) == 2  # nothing removed after the lock was gone
    assert drained(consul, name)

    # The next run waits out the lock-delay, removes what was left drained and holds at 1 (cooldown).
    nxt = run_module(SCALE, {**args, "lock_wait": 40, "drain_period": 0})
    decision = nxt["decisions"][0]
    assert not nxt.get("failed"), nxt
    assert decision["left_drained"], decision
    assert len(service_containers(docker_client, name)) == 1
    assert not drained(consul, name)


def two_wanting_one(service, sample_image):
    """Starts 2 instances of the service; its definition, returned, then scales in to 1 at once."""
    start(service["common"], service["name"], 2, image=sample_image["1"], health=service["definition"]["health"])
    scaling = {**service["definition"]["scaling"], "min": 0, "stabilization_window": 0}
    scaling["checks"] = [{"name": "load", "value": 10, "aggregate": "total", "target": 50}]
    return {**service["definition"], "scaling": scaling}


def drained(consul, name):
    return [c for c in consul.api("GET", f"health/checks/{name}") if c["CheckID"].startswith("_service_maintenance:")]


def test_an_autoscale_run_killed_mid_drain_leaves_nothing_in_maintenance_after_the_next(
    service, consul, docker_client, sample_image, tmp_path
):
    name, common = service["name"], service["common"]
    args = {**common, "services": [two_wanting_one(service, sample_image)], "drain_period": 30}
    playbook = tmp_path / "scale.yml"
    playbook.write_text(
        json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [{"cyberdyne.skynet.skynet_scale": args}]}])
    )
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build" / "collections")}
    run = subprocess.Popen(
        [
            "ansible-playbook",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: drained(consul, name), 60, "an instance in maintenance")
    finally:
        kill_tree(run.pid)
        run.wait(10)
    assert len(service_containers(docker_client, name)) == 2 and drained(consul, name)

    # The dead run's session lives out its TTL (and the lock-delay after it): the next run waits for it.
    nxt = run_module(SCALE, {**args, "lock_wait": 60, "drain_period": 0})
    assert not nxt.get("failed"), nxt
    assert nxt["decisions"][0]["left_drained"], nxt
    assert not drained(consul, name)
    assert len(service_containers(docker_client, name)) == 1
