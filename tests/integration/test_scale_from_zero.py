"""Scale from zero: HAProxy on the rendered config hands requests for a service with no instance to the
activator, which holds them and records a wake; the watcher runs the autoscale playbook for that service;
the held requests are answered by the new instance. Real Consul, HAProxy, Prometheus and Podman."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness.ansible import run_module
from harness.proc import kill_tree, wait_for
from harness.product import COLLECTIONS, autoscale_cycle, start_event_path, zero_definition
from harness.prometheus_role import notification
from harness.services import remove_service, service_containers
from harness.stack import ROOT

HOLD = 20  # seconds the activator holds a request: a cold start takes about 5
IDLE_AFTER = 30


@pytest.fixture
def at_zero(stack, consul, engine, docker_client, sample_image, unique):
    """An HTTP and a TCP (echo) service at min 0 behind HAProxy with the activator, Prometheus scraping
    HAProxy, and the watcher running the autoscale playbook for a service on its wake."""
    web = zero_definition(unique("web"), sample_image["1"], idle_after=IDLE_AFTER)
    echo = zero_definition(unique("echo"), sample_image["1"], mode="tcp")
    started = start_event_path(stack, consul, engine, [web, echo], hold=HOLD)
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}
    yield {**started, "web": web, "echo": echo, "stack": stack, "common": common}
    for s in (web, echo):
        remove_service(common, consul, s["name"])
        consul.api("DELETE", f"kv/skynet/wake/{s['name']}")


def _activator_metric(address, name, service):
    text = requests.get(f"http://{address}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{service="{service}"') and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _cycle(at_zero):
    return autoscale_cycle(at_zero, at_zero["stack"])


def test_a_burst_at_zero_is_answered_by_the_instance_it_wakes_and_the_service_idles_back_to_zero(
    at_zero, docker_client, consul
):
    web = at_zero["web"]
    url = f"http://127.0.0.1:{web['lb_port']}/"
    assert service_containers(docker_client, web["name"]) == []

    def get(n):
        time.sleep(n * 0.04)  # a burst spread over the first few seconds, not one instant
        sent = time.monotonic()
        try:
            r = requests.get(url, timeout=40)
            return r.status_code, r.text, time.monotonic() - sent
        except requests.RequestException as e:
            return None, str(e), time.monotonic() - sent

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(get, range(100)))
    statuses = [status for status, _text, _took in answers]
    assert statuses == [200] * 100, [a for a in answers if a[0] != 200][:5]
    assert all(f"{web['name']} instance=" in text for _s, text, _took in answers)
    cold_start = max(took for _s, _text, took in answers)
    print(f"cold start from zero (HTTP): the slowest of 100 requests took {cold_start:.2f}s")
    assert len(service_containers(docker_client, web["name"])) == 1, "one wake, one instance"
    assert _activator_metric(at_zero["metrics"], "skynet_activator_timed_out_total", web["name"]) == 0
    assert _activator_metric(at_zero["metrics"], "skynet_activator_forwarded_total", web["name"]) >= 1
    wake = consul.api("GET", f"kv/skynet/wake/{web['name']}", params={"raw": "1"})
    assert wake["by"] == "lb-test" and wake["color"] == "blue"

    # Later requests go through HAProxy to the instance, not through the activator.
    held = _activator_metric(at_zero["metrics"], "skynet_activator_held_total", web["name"])
    wait_for(lambda: requests.get(url, timeout=5).ok, 10, "the instance through HAProxy")
    time.sleep(3)  # HAProxy's DNS and health check have seen the instance by now
    for _attempt in range(20):
        assert requests.get(url, timeout=5).status_code == 200
    assert _activator_metric(at_zero["metrics"], "skynet_activator_held_total", web["name"]) == held

    # No more requests: once the rate reads 0 the last instance stays until idle_after (30 s) has passed since
    # the last cycle that saw demand, then a cycle takes it away.
    busy = _cycle(at_zero)[web["name"]]
    assert busy["desired"] == 1 and "idle for" not in busy["reason"], busy
    at_zero["prometheus"].wait_query(f'service:skynet_http_requests:rate{{service="{web["name"]}"}} == 0', 60)
    idle = _cycle(at_zero)[web["name"]]
    if idle["time"] - busy["time"] < IDLE_AFTER:
        assert (idle["action"], idle["desired"]) == ("hold", 1) and "idle for" in idle["reason"], idle
        time.sleep(busy["time"] + IDLE_AFTER + 1 - time.time())
        idle = _cycle(at_zero)[web["name"]]
    assert (idle["action"], idle["desired"]) == ("scale_in", 0), idle
    assert idle["time"] - busy["time"] >= IDLE_AFTER
    wait_for(lambda: not service_containers(docker_client, web["name"]), 30, "the last instance removed")


def test_tcp_connections_at_zero_are_held_then_echoed(at_zero, docker_client):
    echo = at_zero["echo"]

    def exchange(n):
        sent = time.monotonic()
        with socket.create_connection(("127.0.0.1", echo["lb_port"]), timeout=40) as conn:
            message = f"hello {n}\n".encode()
            conn.sendall(message)
            got = b""
            while len(got) < len(message):
                chunk = conn.recv(1024)
                if not chunk:
                    break
                got += chunk
        return got.decode(), time.monotonic() - sent

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(exchange, range(20)))
    assert [text for text, _took in answers] == [f"hello {n}\n" for n in range(20)]
    print(f"cold start from zero (TCP): the slowest of 20 connections took {max(t for _x, t in answers):.2f}s")
    assert len(service_containers(docker_client, echo["name"])) == 1


def _held_get(url, timeout=HOLD + 15):
    sent = time.monotonic()
    r = requests.get(url, timeout=timeout)
    return r, time.monotonic() - sent


def test_prometheus_down_at_zero_a_request_still_wakes_the_service(at_zero, docker_client):
    web = at_zero["web"]
    at_zero["prometheus"].process.stop()
    r, took = _held_get(f"http://127.0.0.1:{web['lb_port']}/")
    assert r.status_code == 200 and f"{web['name']} instance=" in r.text, (r.status_code, r.headers, r.text)
    print(f"cold start from zero with Prometheus down: {took:.2f}s")
    assert len(service_containers(docker_client, web["name"])) == 1


def test_watcher_and_timer_together_act_once_and_the_timer_alone_still_wakes(at_zero, docker_client, consul):
    web = at_zero["web"]
    url = f"http://127.0.0.1:{web['lb_port']}/"
    # Timer cycles back to back while a request wakes the service through the watcher.
    stop, cycles = threading.Event(), []

    def timer():
        while not stop.is_set():
            cycles.append(_cycle(at_zero))

    ticking = threading.Thread(target=timer)
    ticking.start()
    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(lambda _n: _held_get(url)[0].status_code, range(10)))
        time.sleep(2)
    finally:
        stop.set()
        ticking.join()
    assert answers == [200] * 10
    assert len(service_containers(docker_client, web["name"])) == 1, "the watcher and the timer acted once"
    history = consul.api("GET", f"kv/skynet/scale/{web['name']}/history", params={"raw": "1"})
    assert [h["action"] for h in history if h["action"] != "hold"] == ["scale_out"], history
    assert cycles, "timer cycles ran while the watcher answered the wake"

    # Without the watcher, the wake waits for the timer: its next cycle answers it.
    os.killpg(at_zero["watcher"].popen.pid, signal.SIGKILL)
    remove_service(at_zero["common"], consul, web["name"])
    consul.api("DELETE", f"kv/skynet/wake/{web['name']}")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_held_get, url)
        wait_for(lambda: consul.api("GET", f"kv/skynet/wake/{web['name']}"), 10, "a new wake record")
        decision = _cycle(at_zero)[web["name"]]
        r, _took = pending.result()
    assert decision["action"] == "scale_out" and "woken" in decision["reason"], decision
    assert r.status_code == 200


def test_a_paused_service_is_not_woken_and_the_request_gets_the_reason(at_zero, docker_client):
    web = at_zero["web"]
    paused = run_module(
        "cyberdyne.skynet.skynet_control",
        {
            "consul_url": at_zero["common"]["consul_url"],
            "name": web["name"],
            "state": "paused",
            "reason": "test",
            "by": "pytest",
        },
    )
    assert paused["changed"], paused
    r, took = _held_get(f"http://127.0.0.1:{web['lb_port']}/")
    assert r.status_code == 503 and took >= HOLD - 1
    assert "no instance of" in r.headers["X-Skynet-Activator"]
    assert service_containers(docker_client, web["name"]) == []
    decision = _cycle(at_zero)[web["name"]]
    assert decision["action"] == "hold" and "paused by pytest" in decision["reason"], decision


def test_an_alertmanager_notification_or_an_operator_runs_the_cycle_of_the_service(at_zero, consul):
    web = at_zero["web"]
    webhook = f"http://{at_zero['webhook']}"
    sent = notification([web["name"]], [at_zero["echo"]["name"]])
    r = requests.post(f"{webhook}/alertmanager", json=sent, timeout=5)
    assert r.status_code == 200 and web["name"] in r.text and at_zero["echo"]["name"] not in r.text
    wait_for(
        lambda: consul.api("GET", f"kv/skynet/scale/{web['name']}/last", params={"raw": "1"}), 30, "the alert's cycle"
    )
    r = requests.post(f"{webhook}/run/{at_zero['echo']['name']}", timeout=5)
    assert r.status_code == 202
    wait_for(
        lambda: consul.api("GET", f"kv/skynet/scale/{at_zero['echo']['name']}/last", params={"raw": "1"}),
        30,
        "the operator's cycle",
    )
    assert requests.post(f"{webhook}/run/not-ours", timeout=5).status_code == 404
    assert requests.post(f"{webhook}/alertmanager", data=b"{", timeout=5).status_code == 400
    metrics = requests.get(f"{webhook}/metrics", timeout=5).text
    assert 'skynet_watcher_triggers_total{source="alert"} 1' in metrics
    assert 'skynet_watcher_triggers_total{source="operator"} 1' in metrics


def test_a_cycle_killed_after_recording_the_wake_as_answered_still_wakes_the_service(at_zero, docker_client, consul):
    """Killed anywhere between recording that it answered a wake and the instance passing: the activator
    writes the wake again while it holds the request, and a later cycle answers that one, once. The dead
    run's lock outlives it (its session's TTL, then the lock-delay): the next cycle waits for it, so the
    held request may get the activator's 503 after its hold; the next request is answered."""
    web = at_zero["web"]
    name, url = web["name"], f"http://127.0.0.1:{web['lb_port']}/"
    os.killpg(at_zero["watcher"].popen.pid, signal.SIGKILL)  # the cycles are this test's
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build" / "collections"), "ANSIBLE_NOCOLOR": "1"}
    argv = ["ansible-playbook", "-i", "localhost,", str(ROOT / "playbooks" / "autoscale.yml")]
    argv += ["-e", f"@{at_zero['stack'].path('autoscale-vars.json')}"]

    def passing():
        return consul.api("GET", f"health/service/{name}", params={"passing": "1"})

    def cycles_until(done):
        deadline = time.monotonic() + 90
        while not passing() and not done() and time.monotonic() < deadline:
            autoscale_cycle(at_zero, at_zero["stack"], skynet_autoscale_lock_wait=90)
            time.sleep(1)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_held_get, url)
        (wake,) = wait_for(lambda: consul.api("GET", f"kv/skynet/wake/{name}"), 10, "the wake record")
        run = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            wait_for(
                lambda: consul.api("GET", f"kv/skynet/scale/{name}/state", params={"raw": "1"})["woken"]
                >= wake["ModifyIndex"],
                60,
                "the wake recorded as answered",
                interval=0.05,
            )
        finally:
            kill_tree(run.pid)
            run.wait(10)
        cycles_until(pending.done)
        r, _took = pending.result()
        assert r.status_code == 200 or "no instance of" in r.headers.get("X-Skynet-Activator", ""), r.headers
        later = pool.submit(_held_get, url)
        if not passing():
            wait_for(
                lambda: consul.api("GET", f"kv/skynet/wake/{name}")[0]["ModifyIndex"]
                > consul.api("GET", f"kv/skynet/scale/{name}/state", params={"raw": "1"})["woken"],
                10,
                "a wake not answered yet",
            )
        cycles_until(later.done)
        r, _took = later.result()
    assert r.status_code == 200, r.headers
    assert len(service_containers(docker_client, name)) == 1
    assert len(consul.api("GET", f"catalog/service/{name}")) == 1


def test_an_activator_killed_mid_hold_fails_its_request_at_once_and_keeps_the_wake(at_zero, docker_client, consul):
    """SIGKILLed while it holds a request (systemd restarts it: Restart=always): that client gets an answer at
    once, not a hang to its timeout; the wake it recorded stays, so the next cycle wakes the service, and the
    restarted activator (on the sockets the dead one left) holds and forwards the next request."""
    web, stack = at_zero["web"], at_zero["stack"]
    name, url = web["name"], f"http://127.0.0.1:{web['lb_port']}/"
    os.killpg(at_zero["watcher"].popen.pid, signal.SIGKILL)  # the cycles are this test's
    activator = next(p for p in stack.processes if p.name == "activator")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_held_get, url)
        wait_for(lambda: consul.api("GET", f"kv/skynet/wake/{name}"), 10, "the wake record")
        activator.signal(signal.SIGKILL)
        r, took = pending.result(timeout=15)
    assert r.status_code == 503 and took < 10, (r.status_code, took)
    restarted = stack.start("activator-restarted", activator.argv, env={"PYTHONPATH": str(COLLECTIONS)})
    restarted.wait_ready(lambda: requests.get(f"http://{at_zero['metrics']}/metrics", timeout=2).ok, timeout=30)

    decision = _cycle(at_zero)[name]
    assert (decision["action"], decision["desired"]) == ("scale_out", 1) and "woken" in decision["reason"], decision
    r, _took = _held_get(url)
    assert r.status_code == 200
    assert len(service_containers(docker_client, name)) == 1


def _children(pid):
    """Ids of the processes whose parent is pid (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat", encoding="ascii") as f:
                if int(f.read().rpartition(")")[2].split()[1]) == pid:
                    out.append(int(entry))
    return out


def _watcher_metric(webhook, line_start):
    text = requests.get(f"http://{webhook}/metrics", timeout=5).text
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)), 0.0)


def test_a_resident_cycle_killed_mid_run_leaves_the_watcher_running_and_a_later_cycle_wakes_once(
    at_zero, docker_client, consul
):
    """The watcher's cycle is a child of its forkserver: SIGKILLed once it recorded the wake as answered, the
    watcher counts a failed run and stays up; the activator's rewritten wakes make a later cycle (once the dead
    run's lock lapses) start exactly one instance, which answers a request."""
    web, webhook = at_zero["web"], at_zero["webhook"]
    name, url = web["name"], f"http://127.0.0.1:{web['lb_port']}/"
    watcher = at_zero["watcher"].popen.pid
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_held_get, url)
        (wake,) = wait_for(lambda: consul.api("GET", f"kv/skynet/wake/{name}"), 10, "the wake record")
        wait_for(
            lambda: (consul.api("GET", f"kv/skynet/scale/{name}/state", params={"raw": "1"}) or {}).get("woken", 0)
            >= wake["ModifyIndex"],
            60,
            "the wake recorded as answered",
            interval=0.02,
        )
        # The forkserver is the watcher's one child that has children: the cycles (its first, the check, ended).
        cycles = [c for server in _children(watcher) for c in _children(server)]
        assert cycles, "a cycle runs in a child of the watcher's forkserver"
        for pid in cycles:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _watcher_metric(webhook, 'skynet_watcher_runs_total{result="failed"}') >= 1, 30, "failed")
        assert at_zero["watcher"].alive()
        r, _took = pending.result()
        # The dead run's lock outlives it (TTL, then lock-delay: up to ~45 s), longer than a hold.
        deadline = time.monotonic() + 90
        while r.status_code != 200 and time.monotonic() < deadline:
            assert "no instance of" in r.headers.get("X-Skynet-Activator", ""), r.headers
            r, _took = pool.submit(_held_get, url).result()
    assert r.status_code == 200, r.headers
    assert at_zero["watcher"].alive()
    assert len(service_containers(docker_client, name)) == 1
    assert len(consul.api("GET", f"catalog/service/{name}")) == 1
