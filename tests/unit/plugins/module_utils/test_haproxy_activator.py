"""render(..., activator=...): the activator as the backup server of the services that scale from zero."""

from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_config import render

ACTIVATOR = {"socket_dir": "/run/skynet-activator", "hold": 30}
WEB = {"name": "web", "port": 8080, "lb_port": 8000, "health": {"path": "/health"}, "scaling": {"min": 0, "max": 4}}
API = {"name": "api", "port": 8081, "lb_port": 8001, "scaling": {"min": 1, "max": 4}}
PLAIN = {"name": "plain", "port": 8082, "lb_port": 8002}
DB = {"name": "db", "port": 5432, "lb_port": 5432, "mode": "tcp", "scaling": {"min": 0, "max": 2}}


def sections(text):
    """{section header: [its lines, stripped]}, comments left out."""
    found, current = {}, None
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace():
            found[current].append(line.strip())
        else:
            current = line.strip()
            found[current] = []
    return found


def cfg(services, **kw):
    return sections(render(services, **kw))


def activator_lines(backend):
    return [line for line in backend if line.startswith("server activator")]


def server_timeouts(backend):
    return [line for line in backend if line.startswith("timeout server")]


def test_a_service_at_zero_gets_the_activator_as_backup_of_each_color():
    s = cfg([WEB], activator=ACTIVATOR)
    for color in ("blue", "green"):
        backend = s[f"backend web_{color}"]
        assert activator_lines(backend) == [f"server activator unix@/run/skynet-activator/web_{color}.sock backup"]
        # after the instances: it is the backup of the server-template
        assert backend[-1] == f"server activator unix@/run/skynet-activator/web_{color}.sock backup"
        assert backend[-2].startswith(f"server-template web_{color} 4 _web._{color}.service.consul ")


def test_the_server_timeout_outlasts_the_hold():
    s = cfg([WEB], activator=ACTIVATOR)
    for color in ("blue", "green"):
        assert server_timeouts(s[f"backend web_{color}"]) == ["timeout server 40s"]


@pytest.mark.parametrize(
    ("hold", "timeout"),
    [(30, "40s"), (60, "70s"), (29.1, "40s"), (20.5, "31s"), (20, "30s"), (2.5, "30s")],
)
def test_the_server_timeout_is_the_hold_and_the_margin_in_whole_seconds_or_the_default_if_longer(hold, timeout):
    s = cfg([WEB], activator={**ACTIVATOR, "hold": hold})
    assert server_timeouts(s["backend web_blue"]) == [f"timeout server {timeout}"]


def test_without_a_hold_the_default_hold_is_used():
    s = cfg([WEB], activator={"socket_dir": "/run/skynet-activator"})
    assert server_timeouts(s["backend web_blue"]) == ["timeout server 40s"]
    assert activator_lines(s["backend web_blue"])


@pytest.mark.parametrize("server", ["2m", "45s", "1h", 120])
def test_a_longer_server_timeout_of_the_user_is_kept(server):
    expected = f"{server}s" if isinstance(server, int) else server
    s = cfg([{**WEB, "timeouts": {"server": server}}], activator=ACTIVATOR)
    for color in ("blue", "green"):
        assert server_timeouts(s[f"backend web_{color}"]) == [f"timeout server {expected}"]


@pytest.mark.parametrize("server", ["5s", "39999ms", "39s", 10])
def test_a_shorter_server_timeout_of_the_user_is_raised_to_outlast_the_hold(server):
    s = cfg([{**WEB, "timeouts": {"server": server}}], activator=ACTIVATOR)
    assert server_timeouts(s["backend web_blue"]) == ["timeout server 40s"]


def test_a_user_server_timeout_equal_to_the_hold_and_margin_is_kept_as_written():
    s = cfg([{**WEB, "timeouts": {"server": "40000ms"}}], activator=ACTIVATOR)
    assert server_timeouts(s["backend web_blue"]) == ["timeout server 40000ms"]


def test_the_activator_timeouts_leave_the_others_alone():
    s = cfg([{**WEB, "timeouts": {"connect": "2s", "client": "1m"}}], activator=ACTIVATOR)
    assert "timeout client 1m" in s["frontend web"]
    assert "timeout connect 2s" in s["backend web_blue"]


def test_the_activator_503_is_not_retried():
    backend = cfg([WEB], activator=ACTIVATOR)["backend web_blue"]
    retry = [line for line in backend if line.startswith("retry-on")]
    assert len(retry) == 1
    assert "503" not in retry[0].split()
    assert "all-retryable-errors" not in retry[0]
    assert "conn-failure" in retry[0].split()


@pytest.mark.parametrize("service", [API, PLAIN, {**PLAIN, "scaling": None}, {**PLAIN, "scaling": {"max": 3}}])
def test_a_service_that_does_not_scale_from_zero_gets_no_activator(service):
    s = cfg([service], activator=ACTIVATOR)
    name = service["name"]
    for color in ("blue", "green"):
        backend = s[f"backend {name}_{color}"]
        assert activator_lines(backend) == []
        assert server_timeouts(backend) == ["timeout server 30s"]
        assert "retry-on all-retryable-errors" in backend


def test_only_the_services_at_zero_get_it_in_a_mixed_configuration():
    s = cfg([WEB, API, PLAIN, DB], activator=ACTIVATOR)
    with_activator = {header for header, lines in s.items() if activator_lines(lines)}
    assert with_activator == {"backend web_blue", "backend web_green", "backend db_blue", "backend db_green"}
    assert "unix@" not in "\n".join(line for header, lines in s.items() if "api" in header for line in lines)


@pytest.mark.parametrize("activator", [None, {}])
def test_without_the_activator_option_nothing_changes(activator):
    services = [WEB, API, PLAIN, DB]
    text = render(services, activator=activator)
    assert text == render(services)
    assert "activator" not in text
    assert "unix@" not in text
    s = sections(text)
    assert server_timeouts(s["backend web_blue"]) == ["timeout server 30s"]
    assert "retry-on all-retryable-errors" in s["backend web_blue"]


def test_a_tcp_service_at_zero_gets_it_too():
    s = cfg([DB], activator=ACTIVATOR)
    for color in ("blue", "green"):
        backend = s[f"backend db_{color}"]
        assert "mode tcp" in backend
        assert activator_lines(backend) == [f"server activator unix@/run/skynet-activator/db_{color}.sock backup"]
        # an hour already outlasts the hold
        assert server_timeouts(backend) == ["timeout server 1h"]
        assert not [line for line in backend if line.startswith("retry-on")]


def test_a_tcp_service_with_a_short_server_timeout_gets_it_raised():
    s = cfg([{**DB, "timeouts": {"server": "10s"}}], activator=ACTIVATOR)
    assert server_timeouts(s["backend db_green"]) == ["timeout server 40s"]


def test_the_socket_directory_may_end_with_a_slash():
    s = cfg([WEB], activator={"socket_dir": "/run/skynet-activator/", "hold": 30})
    expected = "server activator unix@/run/skynet-activator/web_blue.sock backup"
    assert activator_lines(s["backend web_blue"]) == [expected]


@pytest.mark.parametrize(
    "activator",
    [
        {"hold": 30},
        {"socket_dir": "", "hold": 30},
        {"socket_dir": None, "hold": 30},
        {**ACTIVATOR, "hold": 0},
        {**ACTIVATOR, "hold": -5},
        {**ACTIVATOR, "hold": True},
        {**ACTIVATOR, "hold": "30"},
        {**ACTIVATOR, "hold": None},
        {**ACTIVATOR, "hold": float("nan")},
        {**ACTIVATOR, "hold": 86400},
        "/run/skynet-activator",
        ["/run/skynet-activator"],
    ],
)
def test_invalid_activator_options_are_refused(activator):
    with pytest.raises(SkynetError, match="invalid HAProxy settings: activator"):
        render([WEB], activator=activator)


def test_invalid_activator_options_are_refused_even_without_a_service_at_zero():
    with pytest.raises(SkynetError, match="activator"):
        render([API], activator={**ACTIVATOR, "hold": 0})
