"""Every failure mode alerts: the prometheus role's rules, rendered by Ansible, evaluated by the real
Prometheus on the real signals, delivered by the real Alertmanager to a webhook of the test.

- the autoscaler: the cycle's metrics as playbooks/autoscale.yml exports them (its own task, run on
  decisions of the shape skynet_scale returns), read by node_exporter's textfile collector;
- the registrator: real skynet-registrator daemons, one whose engine stops, one whose Consul is gone;
- Consul: three real servers on loopback, one killed (autopilot), then the leader (no quorum).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time

import pytest
import requests
import yaml

from harness.proc import free_port, wait_for
from harness.product import activator_dir
from harness.prometheus_role import Monitoring, Receiver, ansible_playbook, loopback_variables, render
from harness.stack import DAEMON_ENV, ROOT, TOOLS, daemon

AUTOSCALE = ROOT / "playbooks" / "autoscale.yml"
EXPORT_TASK = "Export the cycle's own metrics for node_exporter's textfile collector"

# Short enough for a test, in the same relations as the defaults.
TIMINGS = {
    "prometheus_alert_metric_missing_for": "2s",
    "prometheus_alert_crash_loop_window": "30s",
    "prometheus_alert_crash_loop_replacements": 3,
    "prometheus_alert_release_stuck_seconds": 120,
    "prometheus_alert_control_max_age": 120,
    "prometheus_alert_registrator_for": "3s",
    "prometheus_alert_registrator_errors_window": "20s",
    "prometheus_alert_consul_for": "2s",
    "prometheus_alert_consul_election_window": "20s",
    "prometheus_alert_activator_window": "30s",
}
CONSUL_PORTS = ("http", "dns", "serf_lan", "serf_wan", "server")


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, receiver):
    """Every variant rendered by one ansible-playbook run, with the ports of what each test starts."""
    workdir = tmp_path_factory.mktemp("alerts")
    servers = [{k: free_port() for k in CONSUL_PORTS} for _server in range(3)]
    registrators = {"engine-gone": free_port(), "consul-gone": free_port()}
    activators = {"no-instance": free_port(), "consul-gone": free_port()}

    def variant(name, **variables):
        return loopback_variables(
            workdir / name, receiver.url(name), prometheus_consul_sd=False, **TIMINGS, **variables
        )

    variants = {
        "autoscaler": variant("autoscaler"),
        "registrator": variant(
            "registrator",
            prometheus_node_exporter_enabled=False,
            prometheus_static_targets={"registrator": [f"127.0.0.1:{p}" for p in registrators.values()]},
        ),
        "activator": variant(
            "activator",
            prometheus_node_exporter_enabled=False,
            prometheus_static_targets={"activator": [f"127.0.0.1:{p}" for p in activators.values()]},
        ),
        "consul": variant(
            "consul",
            prometheus_node_exporter_enabled=False,
            prometheus_static_targets={"consul": [f"127.0.0.1:{s['http']}" for s in servers]},
        ),
    }
    rendered = render(workdir, variants)
    return {
        "workdir": workdir,
        "rendered": rendered,
        "servers": servers,
        "registrators": registrators,
        "activators": activators,
    }


def test_promtool_accepts_the_rules_with_every_new_alert(setup):
    rules = setup["rendered"]["consul"].etc / "rules" / "skynet.rules.yml"
    out = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    names = {r.get("alert") for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"]}
    assert names >= {
        "SkynetAutoscalerMetricMissing",
        "SkynetAutoscalerMetricsOutage",
        "SkynetInstanceCrashLooping",
        "SkynetReleaseStuck",
        "SkynetAutoscalingPausedTooLong",
        "SkynetRegistratorDockerDisconnected",
        "SkynetRegistratorConsulFailing",
        "SkynetActivatorTimingOut",
        "SkynetActivatorWakeFailing",
        "SkynetWatcherCyclesFailing",
        "ConsulServerUnhealthy",
        "ConsulNoLeader",
    }


# -- the autoscaler ------------------------------------------------------------------------------


def export_task() -> dict:
    """The metrics task of playbooks/autoscale.yml, as it is."""
    for task in yaml.safe_load(AUTOSCALE.read_text())[0]["tasks"]:
        for step in task.get("always", []):
            if step.get("name") == EXPORT_TASK:
                return step
    raise AssertionError(f"playbooks/autoscale.yml has no task {EXPORT_TASK!r}")


def run_cycles(workdir, metrics_file, cycles, pause=2):
    """Runs the export task once per cycle result (what skynet_scale registered), `pause` seconds apart."""
    (workdir / "cycle.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Take the result of this cycle",
                    "ansible.builtin.set_fact": {
                        "__skynet_autoscale": "{{ __cycle }}",
                        "__skynet_autoscale_start": "{{ now(utc=true).timestamp() }}",
                    },
                },
                export_task(),
                {"name": "Let node_exporter and Prometheus read it", "ansible.builtin.wait_for": {"timeout": pause}},
            ]
        )
    )
    play = [
        {
            "name": "Cycles",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"skynet_autoscale_metrics_file": str(metrics_file), "cycles": cycles},
            "tasks": [
                {
                    "name": "One cycle",
                    "ansible.builtin.include_tasks": str(workdir / "cycle.yml"),
                    "loop": "{{ cycles }}",
                    "loop_control": {"loop_var": "__cycle"},
                }
            ],
        }
    ]
    playbook = workdir / "cycles.yml"
    playbook.write_text(json.dumps(play))
    ansible_playbook(playbook, "localhost,")


def decision(service, **fields):
    return {"service": service, "action": "hold", "current": 2, "desired": 2, "reason": "test", **fields}


def test_autoscaler_alerts_missing_metric_outage_crash_loop_stuck_release(stack, setup, receiver, unique):
    r = setup["rendered"]["autoscaler"]
    names = {k: unique(k) for k in ("blind", "legacy", "dark", "crash", "stuck", "calm")}
    check = 'p95 "latency" \\ms'
    now = time.time()
    quiet = {"missing": [], "outage": None, "replaced": []}
    cycles = []
    for n in range(5):
        decisions = [
            decision(names["blind"], **{**quiet, "missing": [check]}, metrics={check: None}),
            # A decision from before the fields existed: the missing check comes from its values.
            decision(names["legacy"], metrics={"rps": None, "cpu": 0.3}),
            decision(
                names["dark"], **{**quiet, "outage": "Prometheus at http://127.0.0.1:1 refused", "missing": ["rps"]}
            ),
            decision(names["crash"], **{**quiet, "replaced": [f"i-{n}"], "replacements_total": 10 + n}),
            decision(names["stuck"], **quiet, release_phase="preview", release_since=now - 600),
            decision(names["calm"], **quiet, replacements_total=4, release_phase="deploy", release_since=now),
        ]
        cycles.append({"changed": False, "failed": False, "decisions": decisions})
    metrics = r.root / "textfile" / "skynet_autoscaler.prom"

    mon = Monitoring(stack, r, node_exporter=True)
    run_cycles(setup["workdir"], metrics, cycles)

    assert mon.wait_query('node_textfile_scrape_error{job="node"} == 0')
    assert mon.wait_query(f'skynet_autoscaler_replacements_total{{service="{names["crash"]}"}} == 14')
    assert mon.query(f'skynet_autoscaler_replaced_instances{{service="{names["crash"]}"}}')[0]["value"][1] == "1"
    path = "autoscaler"
    blind = receiver.wait(path, "SkynetAutoscalerMetricMissing", service=names["blind"])
    assert blind["labels"]["check"] == check and blind["labels"]["severity"] == "warning"
    receiver.wait(path, "SkynetAutoscalerMetricMissing", service=names["legacy"], check="rps")
    outage = receiver.wait(path, "SkynetAutoscalerMetricsOutage", service=names["dark"])
    assert outage["labels"]["severity"] == "critical"
    crash = receiver.wait(path, "SkynetInstanceCrashLooping", service=names["crash"])
    assert "replaced again and again" in crash["annotations"]["summary"]
    stuck = receiver.wait(path, "SkynetReleaseStuck", service=names["stuck"], phase="preview")
    assert "in phase preview for 10m" in stuck["annotations"]["summary"]

    # Nothing fires for what is well: a constant replacement count, a fresh release, the legacy
    # decision's check that answered, the services without a missing metric.
    firing = {
        (a["metric"]["alertname"], a["metric"].get("service"), a["metric"].get("check"))
        for a in mon.query('ALERTS{alertstate="firing"}')
    }
    assert not [f for f in firing if f[1] == names["calm"]], firing
    assert ("SkynetAutoscalerMetricMissing", names["legacy"], "cpu") not in firing
    # The outage explains the missing metric: Prometheus has both, Alertmanager sends only the outage.
    assert ("SkynetAutoscalerMetricMissing", names["dark"], "rps") in firing
    assert not receiver.alerts(path, "SkynetAutoscalerMetricMissing", service=names["dark"])
    assert not [f for f in firing if f[0] == "SkynetInstanceCrashLooping" and f[1] != names["crash"]]
    assert not [f for f in firing if f[0] == "SkynetAutoscalerMetricsOutage" and f[1] != names["dark"]]


def test_the_autoscale_playbook_itself_feeds_the_alerts(stack, setup, receiver, consul, engine, unique):
    """playbooks/autoscale.yml as the timer runs it: a check whose metric does not exist and a release
    left in phase verify ten minutes ago, read by skynet_scale from the real Consul and Prometheus."""
    r = setup["rendered"]["autoscaler"]
    name = unique("held")
    mon = Monitoring(stack, r, node_exporter=True)
    since = time.time() - 600
    release = {
        "phase": "verify",
        "started": since - 60,
        "phases": [{"phase": "deploy", "started": since - 60}, {"phase": "verify", "started": since}],
    }
    definition = {
        "name": name,
        "image": "localhost/skynet-sample:1",
        "scaling": {"min": 0, "max": 3, "checks": [{"name": "rps", "query": "skynet_no_such_metric", "target": 5}]},
    }
    extra = {
        "skynet_services": [definition],
        "skynet_consul_url": consul.url,
        "skynet_prometheus_url": mon.url,
        "skynet_docker_host": engine.docker_host,
        "skynet_autoscale_dry_run": True,
        "skynet_autoscale_metrics_file": str(r.root / "textfile" / "skynet_autoscaler_playbook.prom"),
    }
    (setup["workdir"] / "extra.json").write_text(json.dumps(extra))
    try:
        consul.api("PUT", f"kv/skynet/bluegreen/{name}/release", data=json.dumps(release))
        control = {"mode": "paused", "by": "alice", "reason": "INC-5", "since": since}
        consul.api("PUT", f"kv/skynet/scale/{name}/control", data=json.dumps(control))
        ansible_playbook(AUTOSCALE, "localhost,", extra=f"@{setup['workdir'] / 'extra.json'}")
        assert mon.wait_query(f'skynet_autoscaler_decisions{{service="{name}", action="hold"}} == 1')
        assert mon.query("skynet_autoscaler_last_run_success")[0]["value"][1] == "1"
        receiver.wait("autoscaler", "SkynetAutoscalerMetricMissing", service=name, check="rps")
        stuck = receiver.wait("autoscaler", "SkynetReleaseStuck", service=name, phase="verify")
        assert stuck["labels"]["severity"] == "warning"
        paused = receiver.wait("autoscaler", "SkynetAutoscalingPausedTooLong", service=name, mode="paused", who="alice")
        assert "has been paused by alice for 10m" in paused["annotations"]["summary"]
        assert not mon.query(f'ALERTS{{alertname="SkynetAutoscalerMetricsOutage", service="{name}"}}')
    finally:
        for prefix in ("skynet/bluegreen", "skynet/scale", "skynet/lock"):
            consul.api("DELETE", f"kv/{prefix}/{name}", params={"recurse": "true"})


# -- the registrator -----------------------------------------------------------------------------


def registrator(stack, name, docker_host, consul_url, metrics_port):
    argv = [
        *daemon("skynet-registrator"),
        *("--docker-host", docker_host, "--consul-url", consul_url, "--host-id", name),
        *("--resync-interval", "2", "--metrics-address", f"127.0.0.1:{metrics_port}"),
    ]
    proc = stack.start(f"registrator-{name}", argv, env=DAEMON_ENV)
    proc.wait_ready(lambda: requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).ok)
    return f"127.0.0.1:{metrics_port}"


def test_registrator_alerts_engine_lost_and_consul_failing(stack, setup, receiver, engine, consul):
    r, ports = setup["rendered"]["registrator"], setup["registrators"]
    own_engine = stack.podman("engine-of-registrator")
    # One follows an engine that will stop and writes to a working Consul; the other follows a
    # working engine and writes to a Consul that does not answer.
    engine_gone = registrator(stack, "engine-gone", own_engine.docker_host, consul.url, ports["engine-gone"])
    consul_gone = registrator(
        stack, "consul-gone", engine.docker_host, f"http://127.0.0.1:{free_port()}", ports["consul-gone"]
    )
    mon = Monitoring(stack, r)
    path = "registrator"

    assert mon.wait_query(f'skynet_registrator_docker_connected{{instance="{engine_gone}"}} == 1')
    assert mon.wait_query(f'skynet_registrator_docker_connected{{instance="{consul_gone}"}} == 1')
    failing = receiver.wait(path, "SkynetRegistratorConsulFailing", instance=consul_gone)
    assert failing["labels"]["severity"] == "critical"
    assert not receiver.alerts(path, "SkynetRegistratorDockerDisconnected")
    assert [a["instance"] for a in mon.alerts("SkynetRegistratorConsulFailing")] == [consul_gone]

    stopped = time.monotonic()
    own_engine.process.stop()
    lost = receiver.wait(path, "SkynetRegistratorDockerDisconnected", instance=engine_gone)
    print(f"engine stopped -> SkynetRegistratorDockerDisconnected at the webhook: {time.monotonic() - stopped:.1f}s")
    assert lost["labels"]["job"] == "registrator"
    assert [a["instance"] for a in mon.alerts("SkynetRegistratorDockerDisconnected")] == [engine_gone]
    assert [a["instance"] for a in mon.alerts("SkynetRegistratorConsulFailing")] == [consul_gone]


# -- the activator -------------------------------------------------------------------------------


def activator(stack, name, consul_url, metrics_port, service):
    """skynet-activator holding `service` for 1 s; the path of its blue socket."""
    sockets = activator_dir(stack)
    config = stack.path(f"activator-{name}", "activator.json")
    config.write_text(
        json.dumps(
            {
                "consul_url": consul_url,
                "node": name,
                "hold": 1,
                "socket_dir": sockets,
                "metrics_address": f"127.0.0.1:{metrics_port}",
                "services": {service: {"mode": "http"}},
            }
        )
    )
    argv = [*daemon("skynet-activator"), f"--config={config}"]
    proc = stack.start(f"activator-{name}", argv, env=DAEMON_ENV)
    proc.wait_ready(lambda: requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).ok)
    return f"{sockets}/{service}_blue.sock"


def held_request(path):
    """A request as HAProxy hands it to the activator; the status line of the answer."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(10)
        conn.connect(path)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        return conn.recv(4096).split(b"\r\n", 1)[0].decode()


def test_activator_alerts_requests_not_served_and_wakes_not_recorded(stack, setup, receiver, consul):
    r, ports = setup["rendered"]["activator"], setup["activators"]
    # No instance of the service ever comes: the held request times out. The other cannot record its wake.
    alone = activator(stack, "no-instance", consul.url, ports["no-instance"], "lonely")
    cut_off = activator(stack, "consul-gone", f"http://127.0.0.1:{free_port()}", ports["consul-gone"], "orphan")
    mon = Monitoring(stack, r)
    # A counter's increase needs a sample before the change.
    assert mon.wait_query('skynet_activator_timed_out_total{service="lonely"} == 0')
    assert mon.wait_query('skynet_activator_wake_errors_total{service="orphan"} == 0')
    assert held_request(alone) == "HTTP/1.1 503 Service Unavailable"
    held_request(cut_off)
    timing_out = receiver.wait("activator", "SkynetActivatorTimingOut", service="lonely")
    assert timing_out["labels"]["severity"] == "critical"
    failing = receiver.wait("activator", "SkynetActivatorWakeFailing", service="orphan")
    assert failing["labels"]["instance"] == f"127.0.0.1:{ports['consul-gone']}"
    assert [a["service"] for a in mon.alerts("SkynetActivatorWakeFailing")] == ["orphan"]


# -- Consul --------------------------------------------------------------------------------------


class Server:
    def __init__(self, process, ports):
        self.process, self.ports = process, ports

    @property
    def url(self):
        return f"http://127.0.0.1:{self.ports['http']}"

    def leader(self):
        return requests.get(f"{self.url}/v1/status/leader", timeout=2).json()

    def crash(self):
        self.process.signal(signal.SIGKILL)
        self.process.popen.wait(10)


def consul_servers(stack, all_ports):
    """Servers on loopback that elect a leader among themselves (raft_multiplier 1: elections in seconds)."""
    binary = str(TOOLS / "consul") if (TOOLS / "consul").exists() else shutil.which("consul")
    servers = []
    for i, ports in enumerate(all_ports):
        name = f"consul-server-{i}"
        config = {
            "node_name": name,
            "datacenter": "dc1",
            "server": True,
            "bootstrap_expect": len(all_ports),
            "data_dir": str(stack.path(name, "data")),
            "bind_addr": "127.0.0.1",
            "advertise_addr": "127.0.0.1",
            "client_addr": "127.0.0.1",
            "ports": {**ports, "grpc": -1, "https": -1},
            "retry_join": [f"127.0.0.1:{p['serf_lan']}" for p in all_ports if p is not ports],
            "performance": {"raft_multiplier": 1},
            "disable_update_check": True,
            "telemetry": {"prometheus_retention_time": "60s", "disable_hostname": True},
        }
        cfg = stack.path(name, "consul.json")
        cfg.write_text(json.dumps(config))
        servers.append(Server(stack.start(name, [binary, "agent", f"-config-file={cfg}"]), ports))
    wait_for(lambda: all(s.leader() for s in servers), 60, "the Consul servers to elect a leader")
    return servers


def test_consul_alerts_server_down_then_no_leader(stack, setup, receiver):
    r = setup["rendered"]["consul"]
    servers = consul_servers(stack, setup["servers"])
    mon = Monitoring(stack, r)
    path = "consul"
    assert mon.wait_query("consul_autopilot_healthy == 1", timeout=60)
    assert mon.wait_query("consul_autopilot_failure_tolerance == 1", timeout=30)
    assert not mon.alerts("ConsulServerUnhealthy") and not mon.alerts("ConsulNoLeader")

    leader = servers[0].leader()
    lead = next(s for s in servers if leader.endswith(f":{s.ports['server']}"))
    follower = next(s for s in servers if s is not lead)
    killed = time.monotonic()
    follower.crash()
    unhealthy = receiver.wait(path, "ConsulServerUnhealthy")
    print(f"follower killed -> ConsulServerUnhealthy at the webhook: {time.monotonic() - killed:.1f}s")
    assert unhealthy["labels"]["instance"] == f"127.0.0.1:{lead.ports['http']}"
    assert mon.wait_query(f'up{{job="consul", instance="127.0.0.1:{follower.ports["http"]}"}} == 0')
    # Two servers of three still elect: a leader, so no ConsulNoLeader.
    assert lead.leader()
    assert not mon.alerts("ConsulNoLeader") and not mon.alerts("ConsulNoLeader", state="pending")

    killed = time.monotonic()
    lead.crash()
    no_leader = receiver.wait(path, "ConsulNoLeader")
    print(f"leader killed too -> ConsulNoLeader at the webhook: {time.monotonic() - killed:.1f}s")
    assert no_leader["labels"]["severity"] == "critical"
    last = next(s for s in servers if s is not lead and s is not follower)
    assert last.leader() == ""
