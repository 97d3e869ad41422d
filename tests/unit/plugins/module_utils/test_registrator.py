from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import Instance
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registrator import (
    Backoff,
    Container,
    Metrics,
    Port,
    Registrator,
    StatsPoller,
    container_from_inspect,
    container_labels,
    container_service,
    desired_registrations,
    diff,
    event_action,
    owned,
    parse_address,
    parse_args,
    registrations,
    service_metadata,
    stats_series,
    stats_values,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import registration

CID = "0123456789ab" + "c" * 52
HOST = "docker-1"
ADDRESS = "10.0.0.5"


def container(env=None, labels=None, ports=((8080, 40001),), running=True, cid=CID, image="web:1"):
    return Container(
        id=cid,
        name="eager_turing",
        image=image,
        running=running,
        env=dict(env or {}),
        labels=dict(labels or {}),
        ports=tuple(Port(p[0], p[2] if len(p) > 2 else "tcp", p[1]) for p in ports),
    )


def agent_entry(body):
    """What GET /v1/agent/services returns for a registration body."""
    return {
        "ID": body["ID"],
        "Service": body["Name"],
        "Address": body["Address"],
        "Port": body["Port"],
        "Tags": list(body["Tags"]),
        "Meta": dict(body["Meta"]),
    }


def test_inspect_json_of_docker_and_podman():
    attrs = {
        "Id": CID,
        "Name": "/eager_turing",
        "State": {"Running": True, "Status": "running"},
        "Config": {
            "Image": "localhost/skynet-sample:1",
            "Env": ["PATH=/bin", "SERVICE_NAME=web", "EMPTY=", "NOEQUALS"],
            "Labels": {"SERVICE_TAGS": "a,b"},
        },
        "NetworkSettings": {
            "Ports": {
                "9090/tcp": [{"HostIp": "0.0.0.0", "HostPort": "40002"}, {"HostIp": "::", "HostPort": "40002"}],
                "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "40001"}],
                "53/udp": [{"HostIp": "", "HostPort": "40053"}],
                "7000/tcp": None,
                "7001/tcp": [],
            }
        },
    }
    c = container_from_inspect(attrs)
    assert c.short_id == "0123456789ab"
    assert c.name == "eager_turing"
    assert c.image == "localhost/skynet-sample:1"
    assert c.running
    assert c.env == {"PATH": "/bin", "SERVICE_NAME": "web", "EMPTY": ""}
    assert c.labels == {"SERVICE_TAGS": "a,b"}
    assert c.ports == (Port(53, "udp", 40053), Port(8080, "tcp", 40001), Port(9090, "tcp", 40002))


def test_inspect_json_of_a_stopped_container():
    c = container_from_inspect({"Id": CID, "State": {"Running": False}, "Config": {"Env": None, "Labels": None}})
    assert not c.running
    assert c.ports == ()
    assert registrations(c, ADDRESS, HOST) == []


@pytest.mark.parametrize(
    ("env", "labels", "port", "expected"),
    [
        ({"SERVICE_NAME": "web"}, {}, 80, {"name": "web"}),
        ({"SERVICE_NAME": "web"}, {"SERVICE_NAME": "api"}, 80, {"name": "api"}),
        ({"SERVICE_NAME": "web", "SERVICE_80_NAME": "www"}, {}, 80, {"name": "www"}),
        ({"SERVICE_NAME": "web", "SERVICE_443_NAME": "tls"}, {}, 80, {"name": "web"}),
        ({"SERVICE_80_NAME": "www"}, {"SERVICE_NAME": "label"}, 80, {"name": "www"}),
        ({"SERVICE_CHECK_HTTP": "/health", "SERVICE_8080_CHECK_HTTP": "/ready"}, {}, 8080, {"check_http": "/ready"}),
        ({"SERVICE_CHECK_INTERVAL": "5s", "PATH": "/bin", "SERVICEX": "1"}, {}, 80, {"check_interval": "5s"}),
    ],
)
def test_service_metadata_follows_gliderlabs(env, labels, port, expected):
    settings, _from_port = service_metadata(env, labels, port)
    assert settings == expected


def test_a_plain_container_gets_the_skynet_id_and_shape():
    (body,) = registrations(container({"SERVICE_NAME": "web"}), ADDRESS, HOST)
    assert body == {
        "ID": "skynet-web-0123456789ab",
        "Name": "web",
        "Address": ADDRESS,
        "Port": 40001,
        "Tags": [],
        "Meta": {
            "skynet_instance": "0123456789ab",
            "skynet_color": "",
            "skynet_image": "web:1",
            "skynet_registrator": HOST,
        },
    }


def test_a_skynet_compute_container_is_registered_as_skynet_compute_registers_it():
    labels = {
        "io.skynet.managed": "true",
        "io.skynet.service": "web",
        "io.skynet.color": "green",
        "io.skynet.image": "registry.example/web:1.4",
    }
    (body,) = registrations(container({"SERVICE_NAME": "web"}, labels), ADDRESS, HOST)
    instance = Instance("0123456789ab", "web", "green", "registry.example/web:1.4", ADDRESS, 40001, 0.0)
    expected = registration(instance, {})
    expected["Meta"]["skynet_registrator"] = HOST
    assert body == expected
    assert body["ID"] == "skynet-web-0123456789ab"
    assert body["Tags"] == ["green"]
    assert body["Check"]["HTTP"] == f"http://{ADDRESS}:40001/"


@pytest.mark.parametrize(
    ("health", "tags"),
    [
        ({}, ()),
        ({"type": "http", "path": "/health", "interval": "1s", "timeout": "1s", "deregister_after": "1m"}, ()),
        ({"type": "tcp", "interval": "5s"}, ("db", "primary")),
        ({"path": "ready"}, ("x",)),
    ],
)
def test_container_labels_reproduce_what_skynet_compute_registers(health, tags):
    labels = {
        "io.skynet.service": "web",
        "io.skynet.color": "blue",
        "io.skynet.image": "web:2",
        **container_labels(health, tags),
    }
    (body,) = registrations(container({"SERVICE_NAME": "web"}, labels), ADDRESS, HOST)
    expected = registration(Instance("0123456789ab", "web", "blue", "web:2", ADDRESS, 40001, 0.0), health, tags)
    expected["Meta"]["skynet_registrator"] = HOST
    assert body == expected


def test_the_skynet_service_label_names_the_service_over_service_name():
    labels = {"io.skynet.service": "web"}
    (body,) = registrations(container({"SERVICE_NAME": "other"}, labels), ADDRESS, HOST)
    assert body["ID"] == "skynet-web-0123456789ab"


@pytest.mark.parametrize(
    ("env", "check"),
    [
        ({}, None),
        (
            {"SERVICE_CHECK_HTTP": "/health"},
            {"HTTP": f"http://{ADDRESS}:40001/health", "Interval": "2s", "Timeout": "1s"},
        ),
        (
            {"SERVICE_CHECK_HTTP": "health", "SERVICE_CHECK_INTERVAL": "5s", "SERVICE_CHECK_TIMEOUT": "3s"},
            {"HTTP": f"http://{ADDRESS}:40001/health", "Interval": "5s", "Timeout": "3s"},
        ),
        ({"SERVICE_CHECK_TCP": "true"}, {"TCP": f"{ADDRESS}:40001", "Interval": "2s", "Timeout": "1s"}),
        ({"SERVICE_CHECK_TCP": "false"}, None),
        (
            {"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_HTTP": "/h"},
            {"HTTP": f"http://{ADDRESS}:40001/h", "Interval": "2s", "Timeout": "1s"},
        ),
        (
            {"SERVICE_CHECK_HTTP": "/h", "SERVICE_CHECK_DEREGISTER_AFTER": "1m"},
            {
                "HTTP": f"http://{ADDRESS}:40001/h",
                "Interval": "2s",
                "Timeout": "1s",
                "DeregisterCriticalServiceAfter": "1m",
            },
        ),
        (
            {"SERVICE_CHECK_HTTP": "/all", "SERVICE_8080_CHECK_HTTP": "/mine"},
            {"HTTP": f"http://{ADDRESS}:40001/mine", "Interval": "2s", "Timeout": "1s"},
        ),
    ],
)
def test_checks(env, check):
    (body,) = registrations(container({"SERVICE_NAME": "web", **env}), ADDRESS, HOST)
    assert body.get("Check") == check


@pytest.mark.parametrize(
    ("env", "labels", "tags"),
    [
        ({"SERVICE_TAGS": "a,b"}, {}, ["a", "b"]),
        ({"SERVICE_TAGS": " b , a ,, "}, {}, ["a", "b"]),
        ({"SERVICE_TAGS": "a"}, {"SERVICE_TAGS": "c"}, ["c"]),
        ({"SERVICE_TAGS": "a", "SERVICE_8080_TAGS": "p"}, {}, ["p"]),
        ({"SERVICE_TAGS": "a"}, {"io.skynet.color": "blue"}, ["a", "blue"]),
    ],
)
def test_tags(env, labels, tags):
    (body,) = registrations(container({"SERVICE_NAME": "web", **env}, labels), ADDRESS, HOST)
    assert body["Tags"] == tags


@pytest.mark.parametrize(
    ("env", "labels", "ports", "expected"),
    [
        # Nothing names a service: not registered (only explicitly named containers are).
        ({}, {}, ((8080, 40001),), []),
        # Nothing published: nothing to register.
        ({"SERVICE_NAME": "web"}, {}, (), []),
        ({"SERVICE_NAME": "web", "SERVICE_IGNORE": "true"}, {}, ((8080, 40001),), []),
        ({"SERVICE_NAME": "web"}, {"SERVICE_IGNORE": "1"}, ((8080, 40001),), []),
        (
            {"SERVICE_NAME": "web", "SERVICE_IGNORE": "false"},
            {},
            ((8080, 40001),),
            [("skynet-web-0123456789ab", "web", 40001)],
        ),
        # Several ports: the port joins the ID and, without a name of its own, the service name.
        (
            {"SERVICE_NAME": "app"},
            {},
            ((80, 40080), (443, 40443)),
            [("skynet-app-0123456789ab-443", "app-443", 40443), ("skynet-app-0123456789ab-80", "app-80", 40080)],
        ),
        (
            {"SERVICE_80_NAME": "www", "SERVICE_443_NAME": "tls"},
            {},
            ((80, 40080), (443, 40443)),
            [("skynet-tls-0123456789ab-443", "tls", 40443), ("skynet-www-0123456789ab-80", "www", 40080)],
        ),
        (
            {"SERVICE_NAME": "app", "SERVICE_443_IGNORE": "yes"},
            {},
            ((80, 40080), (443, 40443)),
            [("skynet-app-0123456789ab-80", "app-80", 40080)],
        ),
        ({"SERVICE_9999_NAME": "www"}, {}, ((80, 40080), (443, 40443)), []),
        ({"SERVICE_NAME": "dns"}, {}, ((53, 40053, "udp"),), [("skynet-dns-0123456789ab-udp", "dns", 40053)]),
    ],
)
def test_which_ports_are_registered(env, labels, ports, expected):
    bodies = registrations(container(env, labels, ports), ADDRESS, HOST)
    assert sorted((b["ID"], b["Name"], b["Port"]) for b in bodies) == expected


def test_udp_ports_are_tagged():
    (body,) = registrations(container({"SERVICE_NAME": "dns"}, ports=((53, 40053, "udp"),)), ADDRESS, HOST)
    assert body["Tags"] == ["udp"]


def test_stopped_containers_want_nothing():
    assert registrations(container({"SERVICE_NAME": "web"}, running=False), ADDRESS, HOST) == []


def test_desired_registrations_skip_excluded_containers():
    other = "fedcba987654" + "0" * 52
    containers = [container({"SERVICE_NAME": "web"}), container({"SERVICE_NAME": "web"}, cid=other)]
    assert sorted(desired_registrations(containers, ADDRESS, HOST)) == [
        "skynet-web-0123456789ab",
        "skynet-web-fedcba987654",
    ]
    assert sorted(desired_registrations(containers, ADDRESS, HOST, exclude={"0123456789ab"})) == [
        "skynet-web-fedcba987654"
    ]


def web(cid=CID, port=40001, **env):
    return registrations(container({"SERVICE_NAME": "web", **env}, cid=cid, ports=((8080, port),)), ADDRESS, HOST)[0]


def skynet_compute_entry(cid="aaaaaaaaaaaa", address=ADDRESS, port=40009):
    instance = Instance(cid, "web", "blue", "web:1", address, port, 0.0)
    return agent_entry(registration(instance, {"path": "/health"}, ("extra",)))


@pytest.mark.parametrize(
    ("entry", "is_owned"),
    [
        (agent_entry(web()), True),
        ({**agent_entry(web()), "Meta": {**web()["Meta"], "skynet_registrator": "docker-2"}}, False),
        (skynet_compute_entry(), True),
        (skynet_compute_entry(address="10.0.0.6"), False),
        ({**skynet_compute_entry(), "Meta": {"skynet_instance": "i-0abc123"}}, False),
        ({"ID": "consul", "Service": "consul", "Address": ADDRESS, "Port": 8300, "Meta": {}}, False),
        ({"ID": "web-1", "Service": "web", "Address": ADDRESS, "Port": 80, "Meta": None}, False),
    ],
)
def test_owned(entry, is_owned):
    assert owned(entry, HOST, ADDRESS) is is_owned


def test_diff_registers_what_is_missing_and_deregisters_what_it_owns_and_is_gone():
    keep, new = web(), web(cid="bbbbbbbbbbbb" + "0" * 52, port=40002)
    gone = web(cid="cccccccccccc" + "0" * 52, port=40003)
    foreign = {"ID": "db", "Service": "db", "Address": ADDRESS, "Port": 5432, "Meta": {}}
    other_host = {**agent_entry(gone), "ID": "skynet-web-dddddddddddd", "Meta": {"skynet_registrator": "docker-2"}}
    current = {e["ID"]: e for e in (agent_entry(keep), agent_entry(gone), foreign, other_host)}
    changes = diff({keep["ID"]: keep, new["ID"]: new}, current, HOST, ADDRESS)
    assert [b["ID"] for b in changes.register] == [new["ID"]]
    assert changes.deregister == [gone["ID"]]
    assert changes


def test_diff_of_a_synced_agent_is_empty():
    desired = {b["ID"]: b for b in (web(), web(cid="bbbbbbbbbbbb" + "0" * 52, port=40002))}
    changes = diff(desired, {sid: agent_entry(b) for sid, b in desired.items()}, HOST, ADDRESS)
    assert not changes
    assert changes.register == [] and changes.deregister == []


def test_diff_registers_again_what_changed():
    before = web(port=40001)
    after = web(port=40777)
    changes = diff({after["ID"]: after}, {before["ID"]: agent_entry(before)}, HOST, ADDRESS)
    assert changes.register == [after]
    assert changes.deregister == []
    retagged = web(SERVICE_TAGS="x")
    assert diff({retagged["ID"]: retagged}, {before["ID"]: agent_entry(before)}, HOST, ADDRESS).register == [retagged]


def test_diff_leaves_skynet_compute_registrations_of_live_containers_alone():
    entry = skynet_compute_entry()
    body = web(cid="aaaaaaaaaaaa" + "0" * 52, port=40009)
    assert body["ID"] == entry["ID"]
    assert not diff({body["ID"]: body}, {entry["ID"]: entry}, HOST, ADDRESS)
    moved = web(cid="aaaaaaaaaaaa" + "0" * 52, port=40010)
    assert diff({moved["ID"]: moved}, {entry["ID"]: entry}, HOST, ADDRESS).register == [moved]
    assert diff({}, {entry["ID"]: entry}, HOST, ADDRESS).deregister == [entry["ID"]]


def test_diff_for_one_container_touches_only_that_container():
    one, two = web(), web(cid="bbbbbbbbbbbb" + "0" * 52, port=40002)
    current = {b["ID"]: agent_entry(b) for b in (one, two)}
    changes = diff({}, current, HOST, ADDRESS, only={"bbbbbbbbbbbb"})
    assert changes.register == []
    assert changes.deregister == [two["ID"]]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"status": "start", "id": CID, "Type": "container"}, ("sync", CID)),
        ({"Action": "start", "Actor": {"ID": CID}, "Type": "container"}, ("sync", CID)),
        ({"status": "die", "id": CID}, ("remove", CID)),
        ({"status": "died", "id": CID}, ("remove", CID)),
        ({"status": "stop", "id": CID}, ("remove", CID)),
        ({"status": "destroy", "id": CID}, ("remove", CID)),
        ({"status": "remove", "id": CID}, ("remove", CID)),
        ({"status": "kill", "id": CID, "Actor": {"Attributes": {}}}, ("remove", CID)),
        ({"status": "kill", "id": CID, "Actor": {"Attributes": {"signal": "15"}}}, ("remove", CID)),
        ({"status": "kill", "id": CID, "Actor": {"Attributes": {"signal": "SIGKILL"}}}, ("remove", CID)),
        ({"status": "kill", "id": CID, "Actor": {"Attributes": {"signal": "1"}}}, ("sync", CID)),
        ({"status": "kill", "id": CID, "Actor": {"Attributes": {"signal": "SIGHUP"}}}, ("sync", CID)),
        ({"status": "create", "id": CID}, (None, CID)),
        ({"status": "exec_start: sh", "id": CID}, (None, CID)),
        ({"status": "start", "id": "sha256:abc", "Type": "image"}, (None, "sha256:abc")),
        ({"status": "start"}, (None, "")),
    ],
)
def test_event_action(event, expected):
    assert event_action(event) == expected


def test_backoff_doubles_up_to_its_cap_and_resets():
    b = Backoff(initial=0.5, maximum=4)
    assert [b.next() for _attempt in range(6)] == [0.5, 1, 2, 4, 4, 4]
    b.reset()
    assert b.next() == 0.5
    b.failures = 5000  # hours of outage must not overflow the delay
    assert b.next() == 4


def test_metrics_render_in_the_prometheus_text_format():
    m = Metrics()
    m.inc("skynet_registrator_events_total", event="start")
    m.inc("skynet_registrator_errors_total", component="consul", amount=2)
    m.set("skynet_registrator_registrations", 3)
    m.set("skynet_registrator_last_resync_timestamp_seconds", 1764090000.125)
    text = m.render()
    lines = text.splitlines()
    assert "# TYPE skynet_registrator_events_total counter" in lines
    assert 'skynet_registrator_events_total{event="start"} 1' in lines
    assert 'skynet_registrator_events_total{event="died"} 0' in lines
    assert 'skynet_registrator_errors_total{component="consul"} 2' in lines
    assert 'skynet_registrator_errors_total{component="docker"} 0' in lines
    assert "skynet_registrator_registrations 3" in lines
    assert "skynet_registrator_last_resync_timestamp_seconds 1764090000.125" in lines
    assert "skynet_registrator_resyncs_total 0" in lines
    # A counter that exists before its first failure: increase() then sees that failure.
    assert "skynet_registrator_stats_errors_total 0" in lines
    assert text.endswith("\n")
    assert all(line.startswith(("# HELP", "# TYPE", "skynet_registrator_")) for line in lines)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9797", ("127.0.0.1", 9797)), (":9797", ("0.0.0.0", 9797)), ("[::1]:9797", ("::1", 9797))],
)
def test_parse_address(value, expected):
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:0", "127.0.0.1:70000"])
def test_parse_address_rejects(value):
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_address(value)


def test_cli_defaults_and_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "s3cret")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    args = parse_args([])
    assert args.consul_token == "s3cret"
    assert args.docker_host == "unix:///var/run/docker.sock"
    assert args.consul_url == "http://127.0.0.1:8500"
    assert args.resync_interval == 30
    assert args.advertise_address == "127.0.0.1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--resync-interval", "0"], "--resync-interval must be more than 0"),
        (["--metrics-address", "nowhere"], "--metrics-address"),
        (["--advertise-address", ""], "--advertise-address must not be empty"),
    ],
)
def test_cli_rejects(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


# What Podman 4.3 (runc, hybrid cgroups) answered here to GET /containers/{id}/stats?stream=false.
PODMAN_STATS = {
    "cpu_stats": {"cpu_usage": {"total_usage": 82803397, "percpu_usage": [31448922, 51354475]}, "online_cpus": 2},
    "memory_stats": {"usage": 1101824, "limit": 25275990016},
    "networks": {"network": {"rx_bytes": 1063, "tx_bytes": 1890}},
}
# Docker Engine on cgroup v2: page cache in memory_stats.stats, one entry per network.
DOCKER_STATS = {
    "cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
    "memory_stats": {"usage": 50_000_000, "stats": {"inactive_file": 20_000_000}},
    "networks": {"eth0": {"rx_bytes": 100, "tx_bytes": 10}, "eth1": {"rx_bytes": 5, "tx_bytes": 1}},
}


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        (
            PODMAN_STATS,
            {
                "skynet_container_cpu_seconds_total": 0.082803397,
                "skynet_container_memory_bytes": 1101824,
                "skynet_container_network_receive_bytes_total": 1063,
                "skynet_container_network_transmit_bytes_total": 1890,
            },
        ),
        (
            DOCKER_STATS,
            {
                "skynet_container_cpu_seconds_total": 2.5,
                "skynet_container_memory_bytes": 30_000_000,
                "skynet_container_network_receive_bytes_total": 105,
                "skynet_container_network_transmit_bytes_total": 11,
            },
        ),
        # cgroup v1 names the cache total_inactive_file; a cache above usage leaves usage as it is.
        ({"memory_stats": {"usage": 10, "stats": {"total_inactive_file": 4}}}, {"skynet_container_memory_bytes": 6}),
        ({"memory_stats": {"usage": 10, "stats": {"inactive_file": 40}}}, {"skynet_container_memory_bytes": 10}),
        # What the engine does not report is missing, never 0: a stopped container, no network.
        ({"cpu_stats": {}, "memory_stats": {}, "networks": None}, {}),
        (
            {"cpu_stats": {"cpu_usage": {"total_usage": None}}, "networks": {"lo": {"rx_bytes": 1}}},
            {"skynet_container_network_receive_bytes_total": 1},
        ),
        ({"cpu_stats": {"cpu_usage": {"total_usage": True}}, "memory_stats": {"usage": -1}}, {}),
    ],
)
def test_stats_values(stats, expected):
    assert stats_values(stats) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("env", "labels", "expected"),
    [
        ({}, {"io.skynet.service": "web"}, "web"),
        ({"SERVICE_NAME": "db"}, {}, "db"),
        ({"SERVICE_NAME": "db"}, {"io.skynet.service": "web"}, "web"),
        ({"SERVICE_NAME": "db", "SERVICE_IGNORE": "true"}, {}, ""),
        ({"PATH": "/bin"}, {}, ""),
    ],
)
def test_container_service(env, labels, expected):
    assert container_service(container(env=env, labels=labels)) == expected


def test_stats_series_are_labelled_with_service_color_and_container():
    web = container(labels={"io.skynet.service": "web", "io.skynet.color": "green"})
    other = container(cid="f" * 64)
    series = stats_series([(web, stats_values(DOCKER_STATS)), (other, stats_values(DOCKER_STATS))])
    labels = (("color", "green"), ("container", CID[:12]), ("service", "web"))
    assert series["skynet_container_cpu_seconds_total"] == {labels: 2.5}
    assert series["skynet_container_memory_bytes"] == {labels: 30_000_000}
    metrics = Metrics()
    metrics.set("skynet_container_cpu_seconds_total", 1.0, service="gone", color="", container="0" * 12)
    for family, values in series.items():
        metrics.replace(family, values)
    text = metrics.render()
    assert 'skynet_container_cpu_seconds_total{color="green",container="0123456789ab",service="web"} 2.5' in text
    assert 'service="gone"' not in text, "a container that went takes its series along"
    assert "# TYPE skynet_container_cpu_seconds_total counter" in text


class FakeAPI:
    """The three Docker API calls StatsPoller makes, answered from `running`; each call advances the clock."""

    def __init__(self, clock, running):
        self.clock, self.running, self.seconds = clock, running, 0.0
        self.inspected = []

    def containers(self, filters):
        return [{"Id": cid} for cid in self.running]

    def inspect_container(self, cid):
        self.clock[0] += self.seconds
        self.inspected.append(cid)
        return {"Id": cid, "State": {"Running": True}, "Config": {"Labels": self.running[cid]}}

    def stats(self, cid, stream, one_shot):
        self.clock[0] += self.seconds
        return {"cpu_stats": {"cpu_usage": {"total_usage": len(self.inspected) * 10**9}}}


def poller(api, clock, timeout=5.0):
    p = StatsPoller("unix:///nowhere.sock", Metrics(), interval=1, timeout=timeout, clock=lambda: clock[0])
    p._api = lambda: api
    return p


def test_stats_poller_inspects_once_drops_what_went_and_stays_within_its_time():
    clock = [0.0]
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    api = FakeAPI(clock, {a: {"io.skynet.service": "web"}, b: {"io.skynet.service": "web"}, c: {}})
    p = poller(api, clock)
    assert p.poll() == 3
    assert p.poll() == 3
    assert api.inspected == [a, b, c], "each container is inspected once"
    cpu = p.metrics.render()
    assert cpu.count("skynet_container_cpu_seconds_total{") == 2, "the container without a service is left out"
    del api.running[b]
    p.poll()
    assert 'container="bbbbbbbbbbbb"' not in p.metrics.render()

    # Each call takes 2 s of a 5 s round: a container not reached in time keeps its last values.
    clock[0], api.seconds = 0.0, 2.0
    d, e = "d" * 64, "e" * 64
    api.running = {d: {"io.skynet.service": "db"}, e: {}, a: {"io.skynet.service": "web"}}
    before = p.metrics.get("skynet_container_cpu_seconds_total", color="", container=a[:12], service="web")
    assert p.poll() == 2
    assert clock[0] == 6.0, "inspect and stats of d, inspect of e; the round is over before a"
    assert p.metrics.get("skynet_container_cpu_seconds_total", color="", container=a[:12], service="web") == before
    assert p.metrics.get("skynet_container_cpu_seconds_total", color="", container=d[:12], service="db") > 0


@pytest.mark.parametrize(
    ("env", "labels", "why"),
    [
        ({"SERVICE_NAME": "../evil"}, {}, "service name '../evil' is not a valid service name"),
        ({"SERVICE_NAME": "web;reload"}, {}, "service name 'web;reload'"),
        ({"SERVICE_NAME": "Web"}, {}, "service name 'Web'"),
        ({"SERVICE_NAME": "a" * 64}, {}, "is not a valid service name"),
        ({}, {"io.skynet.service": "we b"}, "service name 'we b'"),
        ({"SERVICE_NAME": "web", "SERVICE_TAGS": "ok,{{ x }}"}, {}, "SERVICE_TAGS[1] '{{ x }}' is not a valid tag"),
        ({"SERVICE_NAME": "web", "SERVICE_TAGS": "green"}, {}, "SERVICE_TAGS[0] 'green' is not a valid tag"),
        ({"SERVICE_NAME": "web"}, {"io.skynet.color": "red"}, "label io.skynet.color 'red' is not a valid color"),
    ],
)
def test_invalid_names_are_refused_and_reported(env, labels, why):
    rejected = []
    assert registrations(container(env, labels), ADDRESS, HOST, rejected) == []
    ((short, message),) = rejected
    assert short == CID[:12]
    assert message.startswith(f"container eager_turing ({CID[:12]}) port 8080: ")
    assert why in message


def test_a_port_name_that_grows_past_63_characters_is_refused():
    rejected = []
    name = "a" * 60
    bodies = registrations(
        container({"SERVICE_NAME": name}, ports=((8080, 40001), (9090, 40002))), ADDRESS, HOST, rejected
    )
    assert bodies == [] and len(rejected) == 2
    assert f"'{name}-8080' is not a valid service name" in rejected[0][1]


def test_a_refused_container_leaves_the_others_registered():
    other = "fedcba987654" + "0" * 52
    rejected = []
    containers = [container({"SERVICE_NAME": "bad name"}), container({"SERVICE_NAME": "web"}, cid=other)]
    assert sorted(desired_registrations(containers, ADDRESS, HOST, rejected=rejected)) == ["skynet-web-fedcba987654"]
    assert [short for short, _message in rejected] == [CID[:12]]


def test_the_daemon_logs_and_counts_a_refusal_once_and_forgets_gone_containers():
    class Log:
        def __init__(self):
            self.warnings = []

        def warning(self, fmt, *args):
            self.warnings.append(fmt % args)

    log, metrics = Log(), Metrics()
    daemon = Registrator("unix:///nowhere.sock", consul_client=None, metrics=metrics, log=log)
    refusal = [(CID[:12], "container x port 8080: service name 'a b' is not a valid service name")]
    for _resync in range(3):
        daemon._refused(refusal, running={CID[:12]})
    assert metrics.get("skynet_registrator_rejected_total") == 1
    assert metrics.get("skynet_registrator_rejected") == 1
    assert log.warnings == ["not registering " + refusal[0][1]]
    daemon._refused([], running=set())
    assert metrics.get("skynet_registrator_rejected") == 0
    assert "skynet_registrator_rejected_total 1" in metrics.render()


def test_stats_poller_skips_a_container_the_engine_cannot_report_on():
    import docker.errors

    clock = [0.0]
    a, b = "a" * 64, "b" * 64
    api = FakeAPI(clock, {a: {"io.skynet.service": "web"}, b: {"io.skynet.service": "web"}})
    answer = api.stats

    def stats(cid, stream, one_shot):
        if cid == a:
            raise docker.errors.APIError("container is stopping")
        return answer(cid, stream, one_shot)

    api.stats = stats
    p = poller(api, clock)
    assert p.poll() == 1
    assert p.metrics.get("skynet_registrator_stats_errors_total") == 1
    text = p.metrics.render()
    assert 'container="bbbbbbbbbbbb"' in text and 'container="aaaaaaaaaaaa"' not in text
