"""roles/prometheus without containers: the role's templates, rendered by Ansible with the role's own
variables, run by the real components. promtool and amtool accept them; on both Prometheus builds
(bullseye's with consul_sd_configs, Debian bookworm's without, fed by skynet-consul-sd) the targets of
the real Consul are discovered, the recording rules give the scaling signals, and alerts (the
Watchdog, an instance down) go through a real Alertmanager to a webhook the test runs."""

from __future__ import annotations

import json
import subprocess
import uuid
from functools import partial

import pytest
import requests
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul_sd import Catalog, ConsulSdError, sync

from harness.proc import free_port, wait_for
from harness.prometheus_role import Monitoring, Receiver, loopback_variables, render


def check(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


LIVE = {"live-consul-sd": True, "live-file-sd": False}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, consul, receiver, unique_module):
    """Every variant the tests use, rendered by one ansible-playbook run."""
    workdir = tmp_path_factory.mktemp("prometheus-role")
    # A promtool that accepts every config: it reads what it is given (`true` would exit before
    # Ansible has written stdin, and the write fails with a broken pipe).
    accepting = workdir / "promtool-accepting"
    accepting.write_text("#!/bin/sh\ncat >/dev/null\n")
    accepting.chmod(0o755)
    variants = {
        "auto-debian-promtool": {"prometheus_consul_sd": "auto", "_prometheus_promtool": "/usr/bin/promtool"},
        "auto-consul-sd-promtool": {"prometheus_consul_sd": "auto", "_prometheus_promtool": str(accepting)},
    }
    for name, consul_sd in LIVE.items():
        variants[name] = loopback_variables(
            workdir / name,
            receiver.url(name),
            prometheus_consul_sd=consul_sd,
            prometheus_consul_url=consul.url,
            prometheus_consul_metrics_port=consul.http_port,
            prometheus_consul_sd_interval=1,
            prometheus_alert_instance_down_for="1s",
            prometheus_services=[{"name": unique_module(name), "scaling": {"min": 1, "max": 3}}],
        )
    return render(workdir, variants)


@pytest.fixture(scope="module")
def unique_module():
    names = {}
    return lambda key: names.setdefault(key, f"web-{uuid.uuid4().hex[:6]}")


@pytest.mark.parametrize(
    ("variant", "expected"),
    [("auto-debian-promtool", False), ("auto-consul-sd-promtool", True)],
)
def test_auto_detection_follows_what_promtool_accepts(rendered, variant, expected):
    r = rendered[variant]
    assert r.commands["consul_sd_enabled"] is expected
    jobs = {job["job_name"]: job for job in r.config["scrape_configs"]}
    for name in ("consul", "node", "haproxy", "registrator", "services"):
        assert ("consul_sd_configs" in jobs[name]) is expected, name
        assert ("file_sd_configs" in jobs[name]) is not expected, name
    assert "static_configs" in jobs["prometheus"] and "static_configs" in jobs["alertmanager"]


def test_promtool_and_amtool_accept_the_configuration(rendered):
    etc = rendered["live-file-sd"].etc
    config = check("promtool", "check", "config", str(etc / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    rules = check("promtool", "check", "rules", str(etc / "rules" / "skynet.rules.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    amtool = check("amtool", "check-config", str(etc / "alertmanager.yml"))
    assert amtool.returncode == 0, amtool.stdout + amtool.stderr
    # Debian's promtool knows no consul_sd_configs: the very reason for the file_sd fallback.
    # (Bullseye's Prometheus itself accepts that configuration: see the test below.)
    refused = check("promtool", "check", "config", str(rendered["live-consul-sd"].etc / "prometheus.yml"))
    assert refused.returncode != 0 and "consul_sd_configs" in refused.stdout + refused.stderr


def haproxy_body(backend: str, frontend: int, server_port: int) -> str:
    return f"""
frontend web
    bind 127.0.0.1:{frontend}
    default_backend {backend}

backend {backend}
    server s1 127.0.0.1:{server_port}
"""


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


@pytest.mark.parametrize("variant", list(LIVE), ids=["bullseye-build-consul-sd", "bookworm-build-file-sd"])
def test_discovery_rules_and_alert_delivery(stack, consul, receiver, rendered, unique_module, unique, variant):
    consul_sd = LIVE[variant]
    r = rendered[variant]
    web, ghost = unique_module(variant), unique("ghost")
    prom_port = port_of(r.arg("prometheus", "--web.listen-address"))
    frontend = free_port()
    haproxy = stack.haproxy(haproxy_body(f"{web}_blue", frontend, receiver.port))
    r.path("textfile").joinpath("skynet_autoscaler.prom").write_text(
        "skynet_autoscaler_last_run_timestamp_seconds 1.7e9\n"
    )
    registered = []

    def register(name, port, service_id, **meta):
        consul.api(
            "PUT",
            "agent/service/register",
            json={"ID": service_id, "Name": name, "Address": "127.0.0.1", "Port": port, "Meta": meta},
        )
        registered.append(service_id)

    try:
        register(web, prom_port, f"{web}-1", skynet_color="blue")
        register(ghost, free_port(), f"{ghost}-1")
        register("haproxy-exporter", haproxy.stats_port, f"haproxy-exporter-{web}")

        assert r.commands["consul_sd_enabled"] is consul_sd
        mon = Monitoring(stack, r, node_exporter=True, consul_sd=True)
        wait_query = partial(mon.wait_query, timeout=20)
        if not consul_sd:
            wait_for(lambda: list(r.path("sd").glob(f"{web}.json")), 15, f"the file_sd file of {web}")

        # Every instance of a service, with its labels from Consul; the stack's components too.
        up = wait_query(f'up{{job="services", service="{web}"}} == 1')[0]["metric"]
        assert up["instance"] == f"127.0.0.1:{prom_port}"
        assert (up["color"], up["consul_health"], up["node"]) == ("blue", "passing", "consul")
        consul_up = wait_query('up{job="consul"} == 1')[0]["metric"]
        assert consul_up["instance"] == f"127.0.0.1:{consul.http_port}"
        assert wait_query("consul_runtime_alloc_bytes > 0")
        assert wait_query(f'up{{job="haproxy", instance="127.0.0.1:{haproxy.stats_port}"}} == 1')
        for job in ("prometheus", "alertmanager", "node"):
            assert wait_query(f'up{{job="{job}"}} == 1'), job
        # The autoscaler's textfile metrics come through node_exporter, as do skynet-consul-sd's.
        assert wait_query('skynet_autoscaler_last_run_timestamp_seconds{job="node"}')[0]["value"][1] == "1700000000"
        if not consul_sd:
            assert wait_query('skynet_consul_sd_last_success_timestamp_seconds{job="node"} > 0')

        # Scaling signals: HAProxy's backend WEB_blue is the service WEB.
        assert wait_query(f'service:skynet_max_instances:config{{service="{web}"}}')[0]["value"][1] == "3"
        for _request in range(30):
            requests.get(f"http://127.0.0.1:{frontend}/", timeout=2).raise_for_status()
        assert wait_query(f'service:skynet_http_requests:rate{{service="{web}"}} > 0')
        assert wait_query(f'service:skynet_bytes_in:rate{{service="{web}"}} > 0')
        assert wait_query(f'service:skynet_connections:sum{{service="{web}"}}')
        assert wait_query(f'instance:skynet_cpu_seconds:rate{{service="{web}"}} > 0')
        assert wait_query(f'service:skynet_healthy_instances:count{{service="{web}"}}')[0]["value"][1] == "1"

        # Alerts: the Watchdog and the instance that is down reach the webhook through Alertmanager.
        watchdog = receiver.wait(variant, "Watchdog", timeout=30, status=None)
        assert watchdog["status"] == "firing"
        assert watchdog["labels"]["severity"] == "none"
        down = receiver.wait(variant, "SkynetInstanceDown", timeout=30, status=None, service=ghost)
        assert down["status"] == "firing"
        assert down["labels"]["instance"].startswith("127.0.0.1:")

        # A deregistered instance leaves the targets.
        consul.api("PUT", f"agent/service/deregister/{web}-1")
        wait_for(lambda: not mon.query(f'up{{job="services", service="{web}"}}'), 20, "the deregistered instance to go")
    finally:
        for service_id in registered:
            consul.api("PUT", f"agent/service/deregister/{service_id}")


def test_consul_sd_reads_the_real_catalog_and_names_consul_errors(consul, tmp_path):
    result = sync(Catalog(consul.url), tmp_path)
    assert "consul.json" in result["written"]
    consul_targets = json.loads((tmp_path / "consul.json").read_text())
    assert consul_targets[0]["labels"]["__meta_consul_health"] == "passing"
    with pytest.raises(ConsulSdError, match=r"answered 500 to /v1/catalog/services: No path to datacenter"):
        Catalog(consul.url, datacenter="nowhere").services()
    with pytest.raises(ConsulSdError, match=r"failed on /v1/catalog/services"):
        Catalog(f"http://127.0.0.1:{free_port()}", timeout=2).services()
