"""Fixtures starting the real stack on loopback. A failing test prints the logs of every
component it used; everything started is stopped at the end, also on failure or Ctrl-C."""

from __future__ import annotations

import signal
import uuid

import pytest

from harness.images import build_sample_image
from harness.stack import Stack

_stacks: list[Stack] = []


def pytest_configure(config):
    # CI and timeouts stop runs with SIGTERM: turn it into KeyboardInterrupt so teardown runs.
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for s in _stacks:
            logs = s.logs()
            if logs:
                report.sections.append((f"component logs ({s.workdir.name})", logs))


def _open_stack():
    s = Stack()
    _stacks.append(s)
    return s


def _close_stack(s: Stack):
    _stacks.remove(s)
    s.close()


@pytest.fixture(scope="session")
def session_stack():
    s = _open_stack()
    yield s
    _close_stack(s)


@pytest.fixture
def stack():
    """A stack of the test's own: what it starts is stopped when the test ends."""
    s = _open_stack()
    yield s
    _close_stack(s)


@pytest.fixture(scope="session")
def consul(session_stack):
    return session_stack.consul()


@pytest.fixture(scope="session")
def tls_consul(session_stack):
    """A dev agent with HTTPS (Consul.https_url, CA in Consul.ca_file) and one service registered: (consul, name)."""
    consul = session_stack.consul("consul-tls", tls=True)
    name = f"tls-{uuid.uuid4().hex[:6]}"
    consul.api("PUT", "agent/service/register", json={"ID": f"{name}-1", "Name": name, "Port": 8080})
    return consul, name


@pytest.fixture(scope="session")
def engine(session_stack):
    return session_stack.podman()


@pytest.fixture(scope="session")
def docker_client(engine):
    client = engine.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def sample_image(docker_client):
    """Tags of the sample service image by version: {'1': 'localhost/skynet-sample:1', '2': ...}."""
    return {v: build_sample_image(docker_client, v) for v in ("1", "2")}


@pytest.fixture(scope="session")
def moto(session_stack):
    return session_stack.moto()


@pytest.fixture
def unique():
    """A name no other test uses: tests share the session's Consul and engine."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:6]}"
