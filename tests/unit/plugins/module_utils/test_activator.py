from __future__ import annotations

import http.client
import io
import math
import re

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._activator import (
    DEFAULT_HOLD,
    HOLD_BUCKETS,
    REASON_HEADER,
    SOCKET_PATH_MAX,
    Metrics,
    config_for,
    listeners,
    parse_config,
    scales_from_zero,
    socket_path,
    timed_out_reply,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

BASE = {
    "consul_url": "http://127.0.0.1:8500",
    "socket_dir": "/run/skynet-activator",
    "node": "lb-1",
    "services": {"web": {"mode": "http"}, "db": {"mode": "tcp"}},
}


def errors_of(raw):
    with pytest.raises(SkynetError) as e:
        parse_config(raw)
    message = str(e.value)
    assert message.startswith("invalid activator configuration: ")
    return message


# -- parse_config --------------------------------------------------------------------------------


def test_a_valid_configuration_gets_its_defaults():
    config = parse_config({**BASE, "services": {"web": {}, "db": {"mode": "tcp"}, "api": {"mode": None}}})
    assert config == {
        "consul_url": "http://127.0.0.1:8500",
        "ca_cert": None,
        "token_file": None,
        "node": "lb-1",
        "hold": float(DEFAULT_HOLD),
        "socket_dir": "/run/skynet-activator",
        "metrics_address": "",
        "services": {"web": {"mode": "http"}, "db": {"mode": "tcp"}, "api": {"mode": "http"}},
    }
    assert isinstance(config["hold"], float)


def test_the_optional_settings_are_kept():
    raw = {
        **BASE,
        "hold": 12,
        "ca_cert": "/etc/consul/ca.pem",
        "token_file": "/etc/skynet/token",
        "metrics_address": "127.0.0.1:9105",
    }
    config = parse_config(raw)
    assert config["hold"] == 12.0
    assert (config["ca_cert"], config["token_file"], config["metrics_address"]) == (
        "/etc/consul/ca.pem",
        "/etc/skynet/token",
        "127.0.0.1:9105",
    )


def test_a_fractional_hold_is_accepted():
    assert parse_config({**BASE, "hold": 0.5})["hold"] == 0.5


def test_no_services_is_a_valid_configuration():
    assert parse_config({**BASE, "services": {}})["services"] == {}


@pytest.mark.parametrize("hold", [0, -1, True, False, "x", "30", None, math.nan, math.inf, -math.inf])
def test_a_hold_that_is_not_seconds_above_zero_is_refused(hold):
    assert f"hold {hold!r} is not a number of seconds above 0" in errors_of({**BASE, "hold": hold})


@pytest.mark.parametrize("key", ["consul_url", "socket_dir", "node"])
@pytest.mark.parametrize("value", [None, "", 5, ["x"]])
def test_a_missing_setting_is_named(key, value):
    raw = {**BASE, key: value}
    assert f"{key} is missing" in errors_of(raw)
    raw.pop(key)
    assert f"{key} is missing" in errors_of(raw)


@pytest.mark.parametrize("services", [None, [], ["web"], "web"])
def test_services_must_be_a_mapping(services):
    assert "services must map service names to {mode: http|tcp}" in errors_of({**BASE, "services": services})


@pytest.mark.parametrize("name", ["Web", "web_blue", "-web", "web-", "1web", "", "a" * 64])
def test_a_bad_service_name_is_named(name):
    message = errors_of({**BASE, "services": {name: {"mode": "http"}}})
    assert f"service name {name!r} is not a valid service name" in message


@pytest.mark.parametrize("service", [{"mode": "udp"}, {"mode": "HTTP"}, "http", None, ["http"]])
def test_a_bad_mode_is_named(service):
    assert "web: mode must be http or tcp" in errors_of({**BASE, "services": {"web": service}})


def test_a_socket_path_over_the_unix_limit_is_refused():
    name = "web"
    # the green socket (the longer one) is exactly at the limit, then one byte over it
    directory = "/" + "d" * (SOCKET_PATH_MAX - 1 - len(f"/{name}_green.sock"))
    assert len(socket_path(directory, name, "green").encode()) == SOCKET_PATH_MAX
    assert parse_config({**BASE, "socket_dir": directory, "services": {name: {}}})["socket_dir"] == directory
    longer = directory + "d"
    message = errors_of({**BASE, "socket_dir": longer, "services": {name: {}}})
    assert f"web: the socket {longer}/web_green.sock is longer than {SOCKET_PATH_MAX} bytes" in message


def test_the_socket_path_limit_counts_bytes_not_characters():
    directory = "/" + "é" * 50  # 100 bytes in 51 characters
    assert len(directory) + len("/web_green.sock") <= SOCKET_PATH_MAX
    assert "is longer than 107 bytes" in errors_of({**BASE, "socket_dir": directory, "services": {"web": {}}})


def test_every_error_is_named_at_once():
    raw = {
        "hold": 0,
        "services": {"Web": {}, "db": {"mode": "udp"}, "api": {}},
    }
    message = errors_of(raw)
    for part in (
        "hold 0 is not a number of seconds above 0",
        "consul_url is missing",
        "socket_dir is missing",
        "node is missing",
        "service name 'Web' is not a valid service name",
        "db: mode must be http or tcp",
    ):
        assert part in message
    assert message.count("; ") == 5


def test_every_error_is_named_at_once_with_a_long_socket_directory():
    raw = {**BASE, "node": "", "hold": -1, "socket_dir": "/" + "d" * 120, "services": {"web": {}, "db": {}}}
    message = errors_of(raw)
    assert "node is missing" in message
    assert "hold -1 is not a number of seconds above 0" in message
    assert "web: the socket" in message
    assert "db: the socket" in message


@pytest.mark.parametrize("raw", [None, [], "{}", 1])
def test_a_configuration_that_is_not_an_object_is_refused(raw):
    with pytest.raises(SkynetError, match="must be a JSON object"):
        parse_config(raw)


# -- which services, which sockets -------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        ({"name": "web", "scaling": {"min": 0}}, True),
        ({"name": "web", "scaling": {"min": 0, "max": 3}}, True),
        ({"name": "web", "scaling": {"min": 1}}, False),
        ({"name": "web", "scaling": {}}, False),
        ({"name": "web", "scaling": None}, False),
        ({"name": "web"}, False),
        (None, False),
    ],
)
def test_a_service_scales_from_zero_only_at_min_zero(definition, expected):
    assert scales_from_zero(definition) is expected


def test_the_configuration_for_definitions_holds_only_the_services_at_zero():
    definitions = [
        {"name": "web", "scaling": {"min": 0}},
        {"name": "db", "mode": "tcp", "scaling": {"min": 0}},
        {"name": "api", "scaling": {"min": 1}},
        {"name": "batch"},
    ]
    config = config_for(definitions, consul_url="http://c:8500", socket_dir="/run/a", node="lb-1", hold=10)
    assert config["services"] == {"web": {"mode": "http"}, "db": {"mode": "tcp"}}
    assert config["hold"] == 10.0


@pytest.mark.parametrize("directory", ["/run/skynet-activator", "/run/skynet-activator/"])
def test_a_socket_path_is_the_service_and_color_in_the_directory(directory):
    assert socket_path(directory, "web", "blue") == "/run/skynet-activator/web_blue.sock"


def test_listeners_are_two_colors_per_service_sorted_by_name():
    config = parse_config({**BASE, "services": {"web": {}, "db": {"mode": "tcp"}, "api": {}}})
    assert listeners(config) == [
        ("api", "blue", "http", "/run/skynet-activator/api_blue.sock"),
        ("api", "green", "http", "/run/skynet-activator/api_green.sock"),
        ("db", "blue", "tcp", "/run/skynet-activator/db_blue.sock"),
        ("db", "green", "tcp", "/run/skynet-activator/db_green.sock"),
        ("web", "blue", "http", "/run/skynet-activator/web_blue.sock"),
        ("web", "green", "http", "/run/skynet-activator/web_green.sock"),
    ]
    for service, color, _mode, path in listeners(config):
        assert path == socket_path(config["socket_dir"], service, color)


def test_no_services_means_no_listeners():
    assert listeners(parse_config({**BASE, "services": {}})) == []


# -- the answer when no instance came ----------------------------------------------------------


class _Socket:
    def __init__(self, data):
        self.data = data

    def makefile(self, *_args, **_kwargs):
        return io.BytesIO(self.data)


def parse_reply(data):
    response = http.client.HTTPResponse(_Socket(data))
    response.begin()
    return response, response.read()


@pytest.mark.parametrize(("hold", "said"), [(30.0, "30s"), (30, "30s"), (2.5, "2.5s")])
def test_the_timed_out_reply_is_a_well_formed_503(hold, said):
    data = timed_out_reply("web", hold)
    head, _blank, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    response, read = parse_reply(data)
    assert (response.version, response.status, response.reason) == (11, 503, "Service Unavailable")
    assert read == body
    assert int(response.getheader("Content-Length")) == len(body)
    reason = response.getheader(REASON_HEADER)
    assert "web" in reason
    assert f"within {said}" in reason
    assert body.decode() == f"503 Service Unavailable: {reason}\n"
    assert response.getheader("Content-Type") == "text/plain"
    assert response.getheader("Retry-After") == "5"
    assert response.getheader("Connection") == "close"
    assert response.will_close


def test_the_timed_out_reply_has_no_bare_newline_in_its_head():
    head = timed_out_reply("web", 30).partition(b"\r\n\r\n")[0]
    assert b"\n" not in head.replace(b"\r\n", b"")


# -- metrics -----------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def samples(text):
    """{(name, ((label, value), ...)): float} of the text format's sample lines, checking every line's form
    (prometheus_client, whose parser would do this, is not in the venv)."""
    assert text.endswith("\n")
    found = {}
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) skynet_activator_[a-z_]+ \S", line), line
            continue
        m = _SAMPLE.match(line)
        assert m, line
        labels = tuple(re.findall(r'([a-z]+)="([^"]*)"', m["labels"] or ""))
        key = (m["name"], labels)
        assert key not in found, line
        found[key] = float(m["value"])
    return found


def observed():
    metrics = Metrics()
    metrics.add("held_total", "web")
    metrics.add("held_total", "web", 2)
    metrics.add("forwarded_total", "web", 2)
    metrics.add("timed_out_total", "web")
    metrics.add("wakes_total", "web")
    metrics.add("wake_errors_total", "db", 4)
    metrics.hold("web", 1)
    metrics.hold("web", 1)
    metrics.hold("web", -1)
    metrics.hold("db", 2)
    for seconds in (0.1, 0.25, 3.5, 45, 90):
        metrics.observe("web", seconds)
    return metrics


def test_the_counters_are_given_per_service_zero_where_nothing_happened():
    found = samples(observed().text(["web", "db"]))
    for counter in Metrics.COUNTERS:
        assert (f"skynet_activator_{counter}", (("service", "web"),)) in found
        assert (f"skynet_activator_{counter}", (("service", "db"),)) in found
    assert found[("skynet_activator_held_total", (("service", "web"),))] == 3
    assert found[("skynet_activator_forwarded_total", (("service", "web"),))] == 2
    assert found[("skynet_activator_timed_out_total", (("service", "web"),))] == 1
    assert found[("skynet_activator_failed_total", (("service", "web"),))] == 0
    assert found[("skynet_activator_wakes_total", (("service", "web"),))] == 1
    assert found[("skynet_activator_wake_errors_total", (("service", "db"),))] == 4
    assert found[("skynet_activator_wake_errors_total", (("service", "web"),))] == 0


def test_the_holding_gauge_is_what_is_held_now():
    found = samples(observed().text(["web", "db", "api"]))
    assert found[("skynet_activator_holding", (("service", "web"),))] == 1
    assert found[("skynet_activator_holding", (("service", "db"),))] == 2
    assert found[("skynet_activator_holding", (("service", "api"),))] == 0


def test_the_hold_histogram_is_cumulative_and_sums_right():
    observations = (0.1, 0.25, 3.5, 45, 90)
    found = samples(observed().text(["web"]))
    web = (("service", "web"),)
    buckets = [found[("skynet_activator_hold_seconds_bucket", (*web, ("le", f"{b:g}")))] for b in HOLD_BUCKETS]
    assert buckets == [sum(1 for o in observations if o <= b) for b in HOLD_BUCKETS]
    assert buckets == sorted(buckets)
    inf = found[("skynet_activator_hold_seconds_bucket", (*web, ("le", "+Inf")))]
    assert inf == found[("skynet_activator_hold_seconds_count", web)] == len(observations)
    assert inf >= buckets[-1]
    assert found[("skynet_activator_hold_seconds_sum", web)] == pytest.approx(sum(observations))


def test_a_service_never_held_has_an_empty_histogram():
    found = samples(Metrics().text(["web"]))
    web = (("service", "web"),)
    for bound in HOLD_BUCKETS:
        assert found[("skynet_activator_hold_seconds_bucket", (*web, ("le", f"{bound:g}")))] == 0
    assert found[("skynet_activator_hold_seconds_bucket", (*web, ("le", "+Inf")))] == 0
    assert found[("skynet_activator_hold_seconds_count", web)] == 0
    assert found[("skynet_activator_hold_seconds_sum", web)] == 0


def test_an_observation_on_a_bound_falls_in_that_bucket():
    metrics = Metrics()
    metrics.observe("web", 1)
    found = samples(metrics.text(["web"]))
    assert found[("skynet_activator_hold_seconds_bucket", (("service", "web"), ("le", "0.5")))] == 0
    assert found[("skynet_activator_hold_seconds_bucket", (("service", "web"), ("le", "1")))] == 1


def test_only_the_services_asked_for_are_given():
    found = samples(observed().text(["api"]))
    assert {labels for _name, labels in found} == {(("service", "api"),), (("service", "api"), ("le", "+Inf"))} | {
        (("service", "api"), ("le", f"{b:g}")) for b in HOLD_BUCKETS
    }


def test_every_metric_has_help_and_type():
    text = observed().text(["web"])
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names == {f"skynet_activator_{c}" for c in Metrics.COUNTERS} | {
        "skynet_activator_holding",
        "skynet_activator_hold_seconds",
    }
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    assert types["skynet_activator_holding"] == "gauge"
    assert types["skynet_activator_hold_seconds"] == "histogram"
    assert {types[f"skynet_activator_{c}"] for c in Metrics.COUNTERS} == {"counter"}
    helps = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    assert helps == names


def test_the_hold_sum_keeps_its_precision_as_it_grows():
    metrics = Metrics()
    for _hold in range(100_001):
        metrics.observe("web", 12.5)
    found = samples(metrics.text(["web"]))
    assert found[("skynet_activator_hold_seconds_sum", (("service", "web"),))] == 100_001 * 12.5
