from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.cyberdyne.skynet.plugins.filter.haproxy_config import FilterModule
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_config import parse_map, render, render_map

WEB = {"name": "web", "port": 8080, "lb_port": 8000, "health": {"path": "/health"}, "scaling": {"max": 4}}
DB = {"name": "db", "port": 5432, "lb_port": 5432, "mode": "tcp", "health": {"type": "tcp"}}


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


def test_http_service():
    s = cfg([WEB], map_dir="/m")
    assert s["frontend web"] == [
        "bind 127.0.0.1:8000",
        "mode http",
        "option forwardfor",
        "option idle-close-on-response",
        "timeout client 30s",
        "use_backend %[str(web),map(/m/live.map,web_blue)]",
    ]
    for color in ("blue", "green"):
        assert s[f"backend web_{color}"] == [
            "mode http",
            "balance roundrobin",
            "option httpchk GET /health",
            "option redispatch",
            "retries 3",
            "retry-on all-retryable-errors",
            "timeout connect 5s",
            "timeout server 30s",
            f"server-template web_{color} 4 _web._{color}.service.consul resolvers consul "
            "resolve-opts allow-dup-ip init-addr none check inter 1s fall 2 rise 1",
        ]
    assert "frontend web_preview" not in s


def test_tcp_service():
    s = cfg([DB])
    assert s["frontend db"] == [
        "bind 127.0.0.1:5432",
        "mode tcp",
        "timeout client 1h",
        "use_backend %[str(db),map(/etc/haproxy/maps/live.map,db_blue)]",
    ]
    assert s["backend db_green"] == [
        "mode tcp",
        "balance leastconn",
        "option redispatch",
        "retries 3",
        "timeout connect 5s",
        "timeout server 1h",
        "server-template db_green 10 _db._green.service.consul resolvers consul "
        "resolve-opts allow-dup-ip init-addr none check inter 1s fall 2 rise 1",
    ]


@pytest.mark.parametrize(
    ("health", "check"),
    [
        ({"path": "/health"}, "option httpchk GET /health"),
        ({"path": "/ready", "type": "http", "interval": "1s"}, "option httpchk GET /ready"),
        ({"path": "/health", "type": "tcp"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_http_check_or_plain_check(health, check):
    backend = cfg([{**WEB, "health": health}])["backend web_blue"]
    assert [line for line in backend if line.startswith("option httpchk")] == ([check] if check else [])
    assert backend[-1].endswith(" check inter 1s fall 2 rise 1")


@pytest.mark.parametrize(("scaling", "slots"), [(None, 10), ({}, 10), ({"min": 1, "max": 3}, 3), ({"max": 50}, 50)])
def test_slots_are_scaling_max(scaling, slots):
    service = {**WEB, "scaling": scaling} if scaling is not None else {k: v for k, v in WEB.items() if k != "scaling"}
    for color in ("blue", "green"):
        assert f"server-template web_{color} {slots} _web._{color}.service.consul" in render([service])


@pytest.mark.parametrize(
    ("service", "mode", "connect", "client", "server"),
    [
        (WEB, "http", "5s", "30s", "30s"),
        (DB, "tcp", "5s", "1h", "1h"),
        ({**WEB, "timeouts": {"connect": 2, "server": "500ms"}}, "http", "2s", "30s", "500ms"),
        ({**DB, "timeouts": {"client": "8h"}}, "tcp", "5s", "8h", "1h"),
    ],
)
def test_timeouts(service, mode, connect, client, server):
    s = cfg([service])
    name = service["name"]
    assert f"timeout client {client}" in s[f"frontend {name}"]
    for color in ("blue", "green"):
        assert f"mode {mode}" in s[f"backend {name}_{color}"]
        assert f"timeout connect {connect}" in s[f"backend {name}_{color}"]
        assert f"timeout server {server}" in s[f"backend {name}_{color}"]


@pytest.mark.parametrize(
    ("color", "live", "live_fallback", "preview_fallback"),
    [
        (None, None, "web_blue", "web_green"),
        ("green", None, "web_green", "web_blue"),
        ("blue", {"web": "green"}, "web_green", "web_blue"),
        ("green", "blue", "web_blue", "web_green"),
        (None, {"other": "green"}, "web_blue", "web_green"),
    ],
)
def test_preview_frontend_serves_the_other_color(color, live, live_fallback, preview_fallback):
    service = {**WEB, "preview_port": 8001, "lb_address": "10.0.0.5", **({"color": color} if color else {})}
    s = cfg([service], map_dir="/etc/haproxy/maps/", live=live)
    assert s["frontend web"][0] == "bind 10.0.0.5:8000"
    assert s["frontend web"][-1] == f"use_backend %[str(web),map(/etc/haproxy/maps/live.map,{live_fallback})]"
    assert s["frontend web_preview"][0] == "bind 10.0.0.5:8001"
    assert s["frontend web_preview"][-1] == (
        f"use_backend %[str(web),map(/etc/haproxy/maps/preview.map,{preview_fallback})]"
    )


def test_global_resolvers_and_stats():
    s = cfg([WEB], consul_dns="10.0.0.2:53", stats_socket="/run/lb.sock", stats_bind="0.0.0.0:9101")
    assert s["global"] == [
        "master-worker",
        "stats socket /run/lb.sock mode 660 level admin expose-fd listeners",
        "stats timeout 30s",
    ]
    assert "daemon" not in s["global"], "systemd and the harness run HAProxy in the foreground (-Ws, -W -db)"
    resolvers = s["resolvers consul"]
    assert resolvers[0] == "nameserver consul 10.0.0.2:53"
    for line in ("hold valid 1s", "hold obsolete 0s", "accepted_payload_size 8192", "timeout resolve 1s"):
        assert line in resolvers
    assert s["frontend stats"] == [
        "bind 0.0.0.0:9101",
        "mode http",
        "no log",
        "http-request use-service prometheus-exporter if { path /metrics }",
        "stats enable",
        "stats uri /stats",
        "stats refresh 10s",
    ]


@pytest.mark.parametrize(("interval", "line"), [("500ms", "timeout resolve 500ms"), (2, "timeout resolve 2s")])
def test_the_resolve_interval_is_how_often_consul_dns_is_asked(interval, line):
    resolvers = cfg([WEB], resolve_interval=interval)["resolvers consul"]
    assert line in resolvers and sum(x.startswith("timeout resolve") for x in resolvers) == 1


@pytest.mark.parametrize("interval", ["0s", "0ms", 0, "fast", "1 s", -1, True, None])
def test_a_resolve_interval_that_is_no_positive_duration_is_refused(interval):
    with pytest.raises(SkynetError, match=r"resolve_interval .* is not a duration such as 1s or 500ms"):
        render([WEB], resolve_interval=interval)


def test_extra_lines_and_log_formats_only_with_somewhere_to_log():
    plain = cfg([WEB, DB])
    assert not any("log" in line.split()[1:2] for line in plain["frontend web"] + plain["frontend db"])
    s = cfg([WEB, DB], global_extra=["log /dev/log local0", "user haproxy"], defaults_extra=["option abortonclose"])
    assert s["global"][-2:] == ["log /dev/log local0", "user haproxy"]
    assert s["defaults"][-1] == "option abortonclose"
    assert "option httplog" in s["frontend web"]
    assert "option tcplog" in s["frontend db"]


def test_server_state_file_makes_new_workers_start_with_the_servers():
    s = cfg([WEB], server_state_file="/var/lib/haproxy/server-state")
    assert "server-state-file /var/lib/haproxy/server-state" in s["global"]
    assert "load-server-state-from-file global" in s["defaults"]
    assert "init-addr last,none" in s["backend web_blue"][-1]


def test_no_service_renders_the_stats_frontend_only():
    s = cfg([])
    assert [h for h in s if h.startswith(("frontend", "backend"))] == ["frontend stats"]


@pytest.mark.parametrize(
    ("live", "preview", "text"),
    [
        (None, False, "web web_blue\ndb db_green\n"),
        (None, True, "web web_green\ndb db_blue\n"),
        ({"web": "green"}, False, "web web_green\ndb db_green\n"),
        ({"web": "green", "gone": "blue"}, True, "web web_blue\ndb db_blue\n"),
        ("blue", False, "web web_blue\ndb db_blue\n"),
    ],
)
def test_maps(live, preview, text):
    services = [WEB, {**DB, "color": "green"}]
    assert render_map(services, live, preview=preview) == text
    assert parse_map(text) == {"web": text.split()[1][4:], "db": text.split()[3][3:]}


def test_maps_need_names_and_colors_only():
    assert render_map([{"name": "web"}]) == "web web_blue\n"
    assert render_map([]) == ""
    with pytest.raises(SkynetError, match="web: live color 'red' is not blue or green"):
        render_map([{"name": "web"}], {"web": "red"})


def test_parse_map_skips_what_is_not_a_service_line():
    text = "# a comment\nweb web_green # switched\n\nbad line here\ndb other_blue\napi api_red\nx x_blue\n"
    assert parse_map(text) == {"web": "green", "x": "blue"}
    assert parse_map("") == {} and parse_map(None) == {}


@pytest.mark.parametrize(
    ("services", "kw", "error"),
    [
        ([{**WEB, "port": None}], {}, "web: no port"),
        ([{k: v for k, v in WEB.items() if k != "port"}], {}, "web: no port"),
        ([{**WEB, "port": "http"}], {}, "web: port 'http' is not a port number"),
        ([{k: v for k, v in WEB.items() if k != "lb_port"}], {}, "web: no lb_port"),
        ([{**WEB, "lb_port": 70000}], {}, "web: lb_port 70000 is not a port number"),
        ([{**WEB, "preview_port": True}], {}, "web: preview_port True is not a port number"),
        ([WEB, {**DB, "lb_port": 8000}], {}, "db and web both bind 127.0.0.1:8000"),
        ([WEB, {**DB, "lb_port": 8000, "lb_address": "0.0.0.0"}], {}, "db and web both bind 0.0.0.0:8000"),
        (
            [{**WEB, "lb_address": "::"}, {**DB, "lb_port": 8000, "lb_address": "::1"}],
            {},
            "db and web both bind ::1:8000",
        ),
        ([WEB, {**DB, "lb_port": 8000, "lb_address": "10.0.0.1"}], {}, None),
        ([{**WEB, "preview_port": 8000}], {}, "web_preview and web both bind 127.0.0.1:8000"),
        ([WEB, {**DB, "preview_port": 8000}], {}, "db_preview and web both bind 127.0.0.1:8000"),
        ([{**WEB, "lb_port": 8404}], {}, "web and stats both bind 127.0.0.1:8404"),
        ([{**WEB, "preview_port": 9000}], {"stats_bind": "*:9000"}, "web_preview and stats both bind 127.0.0.1:9000"),
        ([WEB], {"stats_bind": "localhost"}, "stats_bind: 'localhost' is not an ADDRESS:PORT"),
        ([{**WEB, "mode": "udp"}], {}, "web: mode 'udp' is not http or tcp"),
        ([WEB, {**DB, "name": "web"}], {}, "web: two services have this name"),
        ([{**WEB, "name": "my_web"}], {}, "services[0].name 'my_web' is not a valid service name: use 1-63"),
        ([WEB, {**DB, "name": "Web"}], {}, "services[1].name 'Web' is not a valid service name"),
        ([{**WEB, "name": "web;\n"}], {}, "services[0].name 'web;\\n' is not a valid service name"),
        ([{**WEB, "name": "stats"}], {}, "stats: the name is taken by the stats frontend"),
        ([{**WEB, "name": ""}], {}, "service #1 has no name"),
        (["web"], {}, "service #1 is not a mapping"),
        ([{**WEB, "color": "red"}], {}, "web: color 'red' is not blue or green"),
        ([WEB], {"live": {"web": "purple"}}, "web: live color 'purple' is not blue or green"),
        ([{**WEB, "scaling": {"max": 0}}], {}, "web: scaling.max 0 is not a positive number of instances"),
        ([{**WEB, "timeouts": {"client": "30 seconds"}}], {}, "web: timeouts.client '30 seconds' is not a duration"),
        ([{**WEB, "timeouts": {"idle": "1s"}}], {}, "web: unknown timeout 'idle'"),
        ([{**WEB, "health": {"path": "health"}}], {}, "web: health.path 'health' is not a path starting with /"),
        ([WEB], {"consul_dns": "consul.example"}, "consul_dns: 'consul.example' is not an ADDRESS:PORT"),
    ],
)
def test_preflight_errors(services, kw, error):
    if error is None:
        assert render(services, **kw)
        return
    with pytest.raises(SkynetError) as e:
        render(services, **kw)
    assert error in str(e.value)


def test_every_error_is_reported_at_once():
    broken = [{"name": "web", "lb_port": 8000, "mode": "udp"}, {"name": "api", "port": 1, "lb_port": 8000}]
    with pytest.raises(SkynetError) as e:
        render(broken)
    assert str(e.value) == (
        "invalid HAProxy service definitions: web: no port (the port the instances listen on); "
        "web: mode 'udp' is not http or tcp; api and web both bind 127.0.0.1:8000"
    )
    with pytest.raises(SkynetError, match="must be a list of service definitions, not dict"):
        render({"name": "web"})


def test_filters():
    filters = FilterModule().filters()
    assert filters["haproxy_config"]([WEB], map_dir="/m") == render([WEB], map_dir="/m")
    assert filters["haproxy_map"]([WEB], {"web": "green"}) == "web web_green\n"
    assert filters["haproxy_map"]([WEB], preview=True) == "web web_green\n"
    assert filters["haproxy_live_colors"]("web web_green\n") == {"web": "green"}
    with pytest.raises(AnsibleFilterError, match="web: no lb_port"):
        filters["haproxy_config"]([{"name": "web", "port": 1}])
    with pytest.raises(AnsibleFilterError, match="blue or green"):
        filters["haproxy_map"]([WEB], "red")


def test_the_admin_socket_can_be_given_to_root_and_a_group():
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_config import render

    cfg = render(
        [{"name": "web", "port": 8080, "lb_port": 8000}], stats_socket="/run/lb.sock", stats_socket_group="haproxy"
    )
    assert "stats socket /run/lb.sock mode 660 user root group haproxy level admin expose-fd listeners" in cfg
