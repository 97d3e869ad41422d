"""The collection's own monitoring path on a Stack: HAProxy on the config the haproxy role renders,
Prometheus with the rules the prometheus role renders, skynet-registrator exporting container stats.
The demo and the end-to-end tests scale on the recording rules these give, as users do."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import requests
import yaml
from ansible_collections.cyberdyne.skynet.plugins.module_utils._autoscale_arguments import (
    arguments as autoscale_arguments,
)

from .ansible import run_playbook
from .proc import free_port
from .prometheus_role import render, render_rules
from .stack import COLLECTIONS, DAEMON_ENV, ROOT, Alertmanager, Consul, Engine, Prometheus, Stack, daemon


def activator_dir(stack: Stack) -> str:
    """A short directory for the activator's sockets (a unix socket's path has at most 107 bytes): under
    $TMPDIR when its path leaves room for the longest socket name (40 bytes), else under /tmp."""
    base = tempfile.gettempdir()
    path = tempfile.mkdtemp(prefix="skynet-act-", dir=base if len(base) + 60 < 107 else "/tmp")
    stack.on_close(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def start_activator(stack: Stack, consul: Consul, services: list, socket_dir: str, hold: float = 30) -> str:
    """skynet-activator for the services that scale from zero, as the haproxy role runs it; HOST:PORT of /metrics."""
    address = f"127.0.0.1:{free_port()}"
    config = {
        "consul_url": consul.url,
        "node": "lb-test",
        "hold": hold,
        "socket_dir": socket_dir,
        "metrics_address": address,
        "services": {s["name"]: {"mode": s.get("mode") or "http"} for s in services},
    }
    path = stack.path("activator", "activator.json")
    path.write_text(json.dumps(config))
    proc = stack.start("activator", [*daemon("skynet-activator"), f"--config={path}"], env=DAEMON_ENV)
    proc.wait_ready(lambda: requests.get(f"http://{address}/metrics", timeout=2).ok, timeout=30)
    return address


def start_watcher(
    stack: Stack,
    consul: Consul,
    services: list,
    cycle: dict | None = None,
    command: list | None = None,
    address: str | None = None,
    name: str = "watcher",
) -> str:
    """skynet-watcher running the resident cycle (skynet_scale's arguments) or command ({service} in it) on
    wakes, alerts and requests, its webhook at address (default: a free port); HOST:PORT of its webhook."""
    address = address or f"127.0.0.1:{free_port()}"
    config = {"consul_url": consul.url, "services": services, "listen": address}
    config.update({"cycle": cycle} if cycle is not None else {"command": command})
    path = stack.path(name, "watcher.json")
    path.write_text(json.dumps(config))
    env = {**DAEMON_ENV, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_NOCOLOR": "1"}
    proc = stack.start(name, [*daemon("skynet-watcher"), f"--config={path}", "--log-level=debug"], env=env)
    proc.wait_ready(lambda: requests.get(f"http://{address}/metrics", timeout=2).ok, timeout=30)
    return address


def start_registrator(stack: Stack, engine: Engine, consul: Consul, stats_interval: float = 1.0) -> str:
    """skynet-registrator on the engine, as the registrator role runs it; the HOST:PORT of its /metrics."""
    address = f"127.0.0.1:{free_port()}"
    argv = [
        *daemon("skynet-registrator"),
        f"--docker-host={engine.docker_host}",
        f"--consul-url={consul.url}",
        "--host-id=registrator-1",
        f"--metrics-address={address}",
        f"--stats-interval={stats_interval}",
        "--resync-interval=5",
    ]
    proc = stack.start("registrator", argv, env=DAEMON_ENV)
    proc.wait_ready(lambda: requests.get(f"http://{address}/metrics", timeout=2).ok, timeout=30)
    return address


def start_prometheus(
    stack: Stack,
    services: list,
    jobs: dict,
    rate_window: str = "10s",
    alertmanager_url: str | None = None,
    extra_scrape_configs: tuple = (),
    name: str = "prometheus",
    **role_variables,
) -> Prometheus:
    """Prometheus scraping each job's /metrics targets ({job: [HOST:PORT, ...]}) every second, with
    the prometheus role's rules for these service definitions (and these variables of the role)."""
    workdir = stack.path(name, "rules", ".keep").parent
    rules = render_rules(workdir, services, prometheus_rate_window=rate_window, **role_variables)
    scrape = [{"job_name": job, "static_configs": [{"targets": list(targets)}]} for job, targets in jobs.items()]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [*scrape, *extra_scrape_configs],
    }
    if alertmanager_url:
        target = alertmanager_url.split("//", 1)[-1]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [target]}]}]}
    return stack.prometheus(config, rules=rules, name=name)


def zero_definition(name: str, image: str, mode: str = "http", idle_after: float = 12) -> dict:
    """A service at min 0 of the sample image (mode tcp: its echo server), scaled on its request rate (HTTP)
    or open connections (TCP), with the damping of a test (no cooldowns, no stabilization)."""
    http = mode == "http"
    return {
        "name": name,
        "image": image,
        "port": 8080,
        "lb_port": free_port(),
        "mode": mode,
        **({} if http else {"env": {"MODE": "echo"}}),
        "health": {"path": "/health", "interval": "1s"} if http else {"type": "tcp", "interval": "1s"},
        "scaling": {
            "min": 0,
            "max": 3,
            "idle_after": idle_after,
            "cooldown_up": 0,
            "cooldown_down": 0,
            "stabilization_window": 0,
            "checks": [
                {
                    "name": "demand",
                    "query": f'service:skynet_http_requests:rate{{service="{name}"}}'
                    if http
                    else f'sum(haproxy_frontend_current_sessions{{proxy="{name}"}})',
                    "aggregate": "total",
                    "target": 50 if http else 20,
                    "on_missing": "ignore",
                }
            ],
        },
    }


def autoscale_cycle(started: dict, stack: Stack, **variables) -> dict:
    """One run of playbooks/autoscale.yml on the variables of start_event_path (and these), as the timer
    runs it: the decisions by service."""
    done = run_playbook("autoscale", {**started["variables"], **variables}, stack.workdir, json_output=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    tasks = {t["task"]["name"]: t["hosts"]["localhost"] for t in json.loads(done.stdout)["plays"][0]["tasks"]}
    return {d["service"]: d for d in tasks["Decide and apply every scaling policy"]["decisions"]}


def start_alertmanager(stack: Stack, services: list, watcher: str) -> Alertmanager:
    """Alertmanager on the configuration the prometheus role renders with the watcher at HOST:PORT watcher."""
    variables = {
        "prometheus_consul_sd": False,
        "prometheus_services": services,
        "prometheus_alertmanager_watcher_urls": [f"http://{watcher}/alertmanager"],
    }
    rendered = render(stack.path("alertmanager-role", ".keep").parent, {"alertmanager": variables})["alertmanager"]
    return stack.alertmanager(yaml.safe_load((rendered.etc / "alertmanager.yml").read_text()))


def start_event_path(
    stack: Stack,
    consul: Consul,
    engine: Engine,
    services: list,
    hold: float = 20,
    demand: bool = False,
    watcher_mode: str = "resident",
    haproxy_options: dict | None = None,
    **prometheus_variables,
) -> dict:
    """The event path as the roles deploy it: HAProxy on the rendered config with the activator,
    Prometheus scraping HAProxy with the role's rules (and these variables of the role), the activator,
    and the watcher running the cycle of a service on its wake: resident (skynet_scale's arguments from the
    autoscale settings by the filter the autoscaler role renders them with) or the autoscale playbook
    (watcher_mode "playbook"). demand: also the role's demand alerts, and Alertmanager on the role's
    configuration sending them to the watcher. haproxy_options: more options of the rendered config (as
    the haproxy role's variables give them). What tests and benchmarks use."""
    sockets = activator_dir(stack)
    activator = {"socket_dir": sockets, "hold": hold}
    haproxy = stack.rendered_haproxy(services, consul, activator=activator, **(haproxy_options or {}))
    webhook = f"127.0.0.1:{free_port()}"
    alerting = {}
    if demand:
        alertmanager = start_alertmanager(stack, services, webhook)
        alerting = {
            "alertmanager_url": alertmanager.url,
            "prometheus_alertmanager_watcher_urls": [f"http://{webhook}/alertmanager"],
        }
    prometheus = start_prometheus(
        stack, services, {"haproxy": [f"127.0.0.1:{haproxy.stats_port}"]}, **alerting, **prometheus_variables
    )
    metrics = start_activator(stack, consul, services, sockets, hold=hold)
    variables = {
        "skynet_services": services,
        "skynet_consul_url": consul.url,
        "skynet_prometheus_url": prometheus.url,
        "skynet_docker_host": engine.docker_host,
        "skynet_autoscale_drain_period": 1,
        "ansible_python_interpreter": sys.executable,
    }
    vars_file = stack.path("autoscale-vars.json")
    vars_file.write_text(json.dumps(variables))
    if watcher_mode == "resident":
        cycle = {"cycle": autoscale_arguments({**variables, "skynet_autoscale_lock_wait": 20})}
    else:
        limit = {"skynet_autoscale_limit": ["{service}"], "skynet_autoscale_lock_wait": 20}
        playbook = str(ROOT / "playbooks" / "autoscale.yml")
        ansible_playbook = str(Path(sys.executable).parent / "ansible-playbook")
        command = [ansible_playbook, "-i", "localhost,", playbook, "-e", f"@{vars_file}", "-e", json.dumps(limit)]
        cycle = {"command": command}
    start_watcher(stack, consul, [s["name"] for s in services], address=webhook, **cycle)
    return {
        "haproxy": haproxy,
        "prometheus": prometheus,
        "metrics": metrics,
        "webhook": webhook,
        "watcher": stack.processes[-1],
        "variables": variables,
    }
