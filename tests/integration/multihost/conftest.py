"""The multi-host stack as a fixture: one per test module, torn down also on failure or interrupt."""

from __future__ import annotations

import pytest

from harness.multihost import MultiHost

_open: list[MultiHost] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for mh in _open:
            report.sections.append((f"multi-host logs ({mh.stack.workdir.name})", mh.logs()))


@pytest.fixture(scope="module")
def multihost():
    """Three Consul servers, three Docker hosts and a load balancer, each a namespace of its own."""
    with MultiHost(hosts=3) as mh:
        _open.append(mh)
        try:
            yield mh
        finally:
            _open.remove(mh)
