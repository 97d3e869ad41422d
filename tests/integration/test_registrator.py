"""The registrator daemon against a real Docker API engine (Podman) and a real Consul.

Containers are started and killed "by hand" through the Docker API, as `docker run` would;
the registrator runs as it does on a Docker host: roles/registrator/files/skynet-registrator.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import pytest
import requests
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import Spec
from ansible_collections.cyberdyne.skynet.plugins.module_utils._docker_driver import DockerDriver
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import registration

from harness.images import build_sample_image
from harness.proc import HarnessError, free_port, wait_for
from harness.stack import DAEMON_ENV
from harness.stack import daemon as daemon_argv

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0p-s3cret-registrator"
FOLLOW_LIMIT = 2.0


@dataclass
class Daemon:
    """One registrator: started (and restarted) through the test's stack, stopped with it."""

    stack: object
    engine: object
    consul: object
    host_id: str
    metrics_port: int
    resync_interval: float = 30
    starts: int = 0
    process: object = None

    @property
    def metrics_url(self):
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self):
        self.starts += 1
        argv = [
            *daemon_argv("skynet-registrator"),
            "--docker-host",
            self.engine.docker_host,
            "--consul-url",
            self.consul.url,
            "--advertise-address",
            "127.0.0.1",
            "--host-id",
            self.host_id,
            "--resync-interval",
            str(self.resync_interval),
            "--metrics-address",
            f"127.0.0.1:{self.metrics_port}",
        ]
        env = {**DAEMON_ENV, "CONSUL_HTTP_TOKEN": TOKEN}
        self.process = self.stack.start(f"registrator-{self.starts}", argv, env=env)
        # Ready once in step and following: a container started before the event stream is
        # connected is found by the resync that follows the connection, not by its event.
        self.process.wait_ready(
            lambda: (
                (m := self.metrics()).get("skynet_registrator_resyncs_total", 0) >= 1
                and m.get("skynet_registrator_docker_connected") == 1
            )
        )
        return self

    def stop(self):
        self.process.stop()

    def metrics(self):
        text = requests.get(self.metrics_url, timeout=2).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _space, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def metrics_reaching(self, floors, timeout=5.0):
        """The metrics once every series in floors is at least its value. A counter is raised just
        after the call to Consul it counts, so Consul can show a change a moment before it is counted."""
        last = {}

        def reached():
            last.update(self.metrics())
            return all(last.get(key, 0) >= floor for key, floor in floors.items())

        try:
            wait_for(reached, timeout, "the registrator's metrics")
        except HarnessError:
            got = {key: last.get(key) for key in floors}
            raise AssertionError(f"after {timeout:g}s the metrics are {got}, expected at least {floors}") from None
        return last

    def log(self):
        return "\n".join(p.log.read_text() for p in self.stack.processes if p.name.startswith("registrator-"))


@pytest.fixture
def daemon(stack, engine, consul, unique):
    d = Daemon(stack, engine, consul, unique("host"), free_port())
    yield d
    if d.process is not None:
        d.stop()
    for entry in consul.api("GET", "agent/services").values():
        if (entry.get("Meta") or {}).get("skynet_registrator") == d.host_id:
            consul.api("PUT", f"agent/service/deregister/{entry['ID']}")


@pytest.fixture
def containers(docker_client):
    started = []
    yield started
    for c in started:
        remove(c)


def remove(c, attempts=3):
    """docker rm -f; Podman's vfs storage now and then fails a removal that works when retried."""
    for attempt in range(attempts):
        try:
            c.remove(force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


def run_by_hand(docker_client, containers, image, service, **kw):
    """What `docker run -d -e SERVICE_NAME=... -p 127.0.0.1::8080 image` does."""
    env = {"SERVICE_NAME": service, "SERVICE_CHECK_HTTP": "/health", "SERVICE_CHECK_INTERVAL": "1s"}
    c = docker_client.containers.run(
        image,
        detach=True,
        environment={**env, **kw.pop("environment", {})},
        ports={"8080/tcp": ("127.0.0.1", None)},
        **kw,
    )
    containers.append(c)
    return c


def host_port(c):
    c.reload()
    return int(c.ports["8080/tcp"][0]["HostPort"])


def services_of(consul, service):
    return {sid: e for sid, e in consul.api("GET", "agent/services").items() if e["Service"] == service}


def ids_of(consul, service):
    return sorted(services_of(consul, service))


def timed(check, what, timeout=10.0):
    start = time.monotonic()
    wait_for(check, timeout, what, interval=0.02)
    return time.monotonic() - start


def expected_ids(service, *cs):
    return sorted(f"skynet-{service}-{c.id[:12]}" for c in cs)


def test_follows_containers_run_and_killed_by_hand(daemon, consul, docker_client, sample_image, containers, unique):
    service = unique("hand")
    daemon.start()

    # Latencies count from the moment the engine has done what was asked (the API call returned):
    # the registrator can only follow what the engine reports.
    called = time.monotonic()
    c = run_by_hand(docker_client, containers, sample_image["1"], service)
    started = time.monotonic()
    sid = f"skynet-{service}-{c.id[:12]}"
    timed(lambda: sid in services_of(consul, service), f"{sid} in Consul")
    appeared = time.monotonic() - started
    print(f"registered {appeared:.2f}s after docker run returned ({time.monotonic() - called:.2f}s after the call)")
    assert appeared < FOLLOW_LIMIT, f"registration took {appeared:.2f}s"

    entry = services_of(consul, service)[sid]
    port = host_port(c)
    assert (entry["Service"], entry["Address"], entry["Port"]) == (service, "127.0.0.1", port)
    assert entry["Meta"] == {
        "skynet_instance": c.id[:12],
        "skynet_color": "",
        "skynet_image": sample_image["1"],
        "skynet_registrator": daemon.host_id,
    }
    check = consul.api("GET", "agent/checks")[f"service:{sid}"]
    assert (check["ServiceID"], check["Type"]) == (sid, "http")
    wait_for(
        lambda: consul.api("GET", f"health/service/{service}", params={"passing": "1"}), 30, "the /health check to pass"
    )

    called = time.monotonic()
    c.kill()
    killed = time.monotonic()
    timed(lambda: sid not in services_of(consul, service), f"{sid} to leave Consul")
    gone = time.monotonic() - killed
    print(f"deregistered {gone:.2f}s after docker kill returned ({time.monotonic() - called:.2f}s after the call)")
    assert gone < FOLLOW_LIMIT, f"deregistration took {gone:.2f}s"

    # A container started again gets a new host port: the registration follows it.
    c.start()
    timed(lambda: services_of(consul, service).get(sid, {}).get("Port") == host_port(c), "the new port", FOLLOW_LIMIT)
    stopped = time.monotonic()
    remove(c)
    timed(lambda: sid not in services_of(consul, service), f"{sid} to leave Consul", FOLLOW_LIMIT)
    print(f"deregistered {time.monotonic() - stopped:.2f}s after docker rm -f")

    metrics = daemon.metrics_reaching(
        {
            'skynet_registrator_events_total{event="start"}': 2,
            'skynet_registrator_changes_total{action="register"}': 2,
            'skynet_registrator_changes_total{action="deregister"}': 2,
        }
    )
    assert (
        metrics['skynet_registrator_events_total{event="kill"}']
        + metrics['skynet_registrator_events_total{event="die"}']
        >= 1
    )
    assert metrics["skynet_registrator_resyncs_total"] >= 1
    assert metrics["skynet_registrator_last_resync_timestamp_seconds"] > time.time() - 120
    assert metrics["skynet_registrator_docker_connected"] == 1
    assert metrics['skynet_registrator_errors_total{component="consul"}'] == 0
    assert "skynet_registrator_registrations" in metrics

    log = daemon.log()
    assert f"registered {sid} ({service} at 127.0.0.1:{port}" in log
    assert f"deregistered {sid}" in log
    assert TOKEN not in log


def test_containers_made_by_skynet_compute_get_its_id_and_shape(
    daemon, engine, consul, docker_client, sample_image, containers, unique
):
    service = unique("made")
    daemon.start()
    driver = DockerDriver(engine.docker_host)
    instance = driver.create(Spec(service=service, color="green", image=sample_image["2"], port=8080))
    containers.append(docker_client.containers.get(instance.id))
    sid = f"skynet-{service}-{instance.id}"
    timed(lambda: sid in services_of(consul, service), f"{sid} in Consul", FOLLOW_LIMIT)

    expected = registration(instance, {})
    entry = services_of(consul, service)[sid]
    assert entry["ID"] == expected["ID"]
    assert (entry["Service"], entry["Address"], entry["Port"], entry["Tags"]) == (
        expected["Name"],
        expected["Address"],
        expected["Port"],
        ["green"],
    )
    assert entry["Meta"] == {**expected["Meta"], "skynet_registrator": daemon.host_id}
    check = consul.api("GET", "agent/checks")[f"service:{sid}"]
    assert check["Type"] == "http"

    remove(docker_client.containers.get(instance.id))
    timed(lambda: sid not in services_of(consul, service), f"{sid} to leave Consul", FOLLOW_LIMIT)


def test_resync_after_a_restart_and_periodically(daemon, consul, docker_client, sample_image, containers, unique):
    service = unique("resync")
    daemon.resync_interval = 1
    daemon.start()
    a = run_by_hand(docker_client, containers, sample_image["1"], service)
    b = run_by_hand(docker_client, containers, sample_image["1"], service)
    timed(lambda: ids_of(consul, service) == expected_ids(service, a, b), "a and b in Consul")
    resyncs_before = daemon.metrics()["skynet_registrator_resyncs_total"]

    daemon.stop()
    c = run_by_hand(docker_client, containers, sample_image["1"], service)
    remove(b)
    time.sleep(1)
    assert ids_of(consul, service) == expected_ids(service, a, b), "nothing follows while the registrator is down"

    restarted = time.monotonic()
    daemon.start()
    timed(lambda: ids_of(consul, service) == expected_ids(service, a, c), "Consul to match Docker (a and c)")
    print(f"in step {time.monotonic() - restarted:.2f}s after the restart")
    assert daemon.metrics()["skynet_registrator_resyncs_total"] >= 1
    assert resyncs_before >= 1

    # Periodic resyncs repair what changed behind the registrator's back in Consul.
    consul.api("PUT", f"agent/service/deregister/skynet-{service}-{a.id[:12]}")
    stale = f"skynet-{service}-{'f' * 12}"
    consul.api(
        "PUT",
        "agent/service/register",
        json={
            "ID": stale,
            "Name": service,
            "Address": "127.0.0.1",
            "Port": 1,
            "Meta": {"skynet_instance": "f" * 12, "skynet_registrator": daemon.host_id},
        },
    )
    foreign = f"{service}-not-ours"
    consul.api("PUT", "agent/service/register", json={"ID": foreign, "Name": service, "Port": 2})
    timed(
        lambda: ids_of(consul, service) == sorted([*expected_ids(service, a, c), foreign]),
        "the periodic resync to repair Consul",
        timeout=5,
    )
    consul.api("PUT", f"agent/service/deregister/{foreign}")
    daemon.metrics_reaching({"skynet_registrator_resyncs_total": 2, "skynet_registrator_registrations": 2})


def test_the_check_is_the_one_the_container_asks_for(daemon, consul, docker_client, sample_image, containers, unique):
    service = unique("check")
    daemon.start()
    sick = run_by_hand(docker_client, containers, sample_image["1"], service, environment={"HEALTHY": "false"})
    well = run_by_hand(docker_client, containers, sample_image["1"], service)
    wait_for(
        lambda: [e["Service"]["ID"] for e in consul.api("GET", f"health/service/{service}", params={"passing": "1"})]
        == [f"skynet-{service}-{well.id[:12]}"],
        30,
        "the healthy container to pass",
    )

    def sick_check():
        check = consul.api("GET", "agent/checks")[f"service:skynet-{service}-{sick.id[:12]}"]
        return check if check["Output"] else None

    check = wait_for(sick_check, 30, "the sick container's first check")
    assert check["Status"] == "critical"
    assert f"http://127.0.0.1:{host_port(sick)}/health" in check["Output"]
    assert "404" in check["Output"]


def test_ignored_and_unnamed_containers_are_not_registered(
    daemon, consul, docker_client, sample_image, containers, unique
):
    service = unique("ignored")
    daemon.start()
    run_by_hand(docker_client, containers, sample_image["1"], service, environment={"SERVICE_IGNORE": "true"})
    unnamed = docker_client.containers.run(sample_image["1"], detach=True, ports={"8080/tcp": ("127.0.0.1", None)})
    containers.append(unnamed)
    tagged = run_by_hand(docker_client, containers, sample_image["1"], service, labels={"SERVICE_TAGS": "web,v1"})
    sid = f"skynet-{service}-{tagged.id[:12]}"
    timed(lambda: sid in services_of(consul, service), f"{sid} in Consul", FOLLOW_LIMIT)
    # Events are handled in the order the engine reports them: the two started before are done with.
    assert ids_of(consul, service) == [sid]
    assert sorted(services_of(consul, service)[sid]["Tags"]) == ["v1", "web"]
    assert not any(
        e["Meta"].get("skynet_instance") == unnamed.id[:12] for e in consul.api("GET", "agent/services").values()
    )


class FlakyProxy:
    """A TCP proxy in front of Consul that can play dead (it then drops every connection) and
    come back on the same port, which a Consul restarted on its old ports cannot promise here."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.up = True
        self.open = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _peer = self.listener.accept()
            except OSError:
                return
            if not self.up:
                conn.close()
                continue
            upstream = socket.create_connection(self.target)
            self.open += [conn, upstream]
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def down(self):
        self.up = False
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.open = []

    def close(self):
        self.down()
        self.listener.close()


def test_reconnects_when_consul_comes_back(stack, engine, consul, docker_client, sample_image, containers, unique):
    proxy = FlakyProxy(consul.http_port)
    stack.on_close(proxy.close)
    service = unique("back")
    daemon = Daemon(stack, engine, proxy, unique("host"), free_port(), resync_interval=1)
    try:
        daemon.start()
        a = run_by_hand(docker_client, containers, sample_image["1"], service)
        timed(lambda: ids_of(consul, service) == expected_ids(service, a), "a in Consul")

        proxy.down()
        wait_for(
            lambda: daemon.metrics()['skynet_registrator_errors_total{component="consul"}'] >= 1,
            10,
            "the registrator to notice Consul is gone",
        )
        # Meanwhile a container starts, and Consul loses what it had (as a restarted -dev agent does).
        b = run_by_hand(docker_client, containers, sample_image["1"], service)
        consul.api("PUT", f"agent/service/deregister/skynet-{service}-{a.id[:12]}")
        time.sleep(1)
        assert ids_of(consul, service) == []

        back = time.monotonic()
        proxy.up = True
        timed(lambda: ids_of(consul, service) == expected_ids(service, a, b), "Consul to match Docker again", 30)
        print(f"in step {time.monotonic() - back:.2f}s after Consul came back")
        assert "unreachable" in daemon.log()
    finally:
        daemon.stop()
        for entry in consul.api("GET", "agent/services").values():
            if (entry.get("Meta") or {}).get("skynet_registrator") == daemon.host_id:
                consul.api("PUT", f"agent/service/deregister/{entry['ID']}")


def test_reconnects_when_the_docker_api_comes_back(stack, consul, unique):
    # An engine of the test's own, stopped and started again; its containers go with the stack.
    private = stack.podman("podman-private")
    client = private.client()
    image = build_sample_image(client, "1")
    service = unique("engine")
    daemon = Daemon(stack, private, consul, unique("host"), free_port(), resync_interval=30)
    daemon.start()
    try:
        private.process.stop()
        wait_for(lambda: daemon.metrics()["skynet_registrator_docker_connected"] == 0, 10, "the stream to break")
        back = stack.start("podman-private-again", private.process.argv, env=private.env)
        back.wait_ready(lambda: private.client().ping())
        wait_for(lambda: daemon.metrics()["skynet_registrator_docker_connected"] == 1, 40, "the stream to come back")
        c = run_by_hand(client, [], image, service)
        timed(lambda: ids_of(consul, service) == expected_ids(service, c), "c in Consul", FOLLOW_LIMIT)
        assert daemon.metrics()['skynet_registrator_errors_total{component="docker"}'] >= 1
    finally:
        daemon.stop()
        for entry in consul.api("GET", "agent/services").values():
            if (entry.get("Meta") or {}).get("skynet_registrator") == daemon.host_id:
                consul.api("PUT", f"agent/service/deregister/{entry['ID']}")
        client.close()
