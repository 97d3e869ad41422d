"""roles/prometheus as its templates render, run by the real daemons: the rendering playbook (the
role's own templates, defaults, vars and consul_sd probe), its rules alone for a harness Prometheus,
the components of one rendered variant started on loopback, and a webhook receiver for Alertmanager."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
import yaml

from .proc import free_port, wait_for
from .stack import DAEMON_ENV, ROOT, TOOLS, Stack, daemon

ROLE = ROOT / "roles" / "prometheus"
RECEIVER = "skynet"  # the one receiver of the role's alertmanager.yml

# One inventory host per variant, all rendered in one run; include_vars outranks the role's
# files, which the play loads as vars_files.
PLAYBOOK = """
- name: Render the configuration of roles/prometheus
  hosts: all
  connection: local
  gather_facts: false
  vars_files: [@ROLE@/defaults/main.yml, @ROLE@/vars/main.yml]
  tasks:
    - name: Load the variables of the variant
      ansible.builtin.include_vars:
        file: "@WORKDIR@/{{ inventory_hostname }}.json"

    - name: Probe promtool for consul_sd_configs as the role does
      ansible.builtin.include_tasks: @ROLE@/tasks/probe.yml
      when: prometheus_consul_sd | string | lower == 'auto'

    - name: Render the role's templates
      ansible.builtin.template:
        src: "@ROLE@/templates/{{ item.src }}"
        dest: "{{ item.dest }}"
        mode: "0644"
      loop:
        - {src: "{{ prometheus_config_template }}", dest: "{{ _prometheus_config_file }}"}
        - {src: "{{ prometheus_rules_template }}", dest: "{{ _prometheus_rules_file }}"}
        - {src: "{{ prometheus_alertmanager_config_template }}", dest: "{{ _prometheus_alertmanager_config_file }}"}

    - name: Write the command lines of the role's units
      ansible.builtin.copy:
        dest: "{{ prometheus_config_dir }}/commands.json"
        mode: "0644"
        content: >-
          {{ {'prometheus': [_prometheus_binary] + _prometheus_args,
              'alertmanager': [_prometheus_alertmanager_binary] + _prometheus_alertmanager_args,
              'node_exporter': [_prometheus_node_exporter_binary] + _prometheus_node_exporter_args,
              'consul_sd': _prometheus_consul_sd_command,
              'consul_sd_enabled': _prometheus_consul_sd_enabled | bool} | to_json }}
"""


def ansible_playbook(
    playbook: Path, inventory: str, extra: str = "", timeout: float = 180
) -> subprocess.CompletedProcess:
    argv = ["ansible-playbook", "-i", inventory, str(playbook), "-e", f"ansible_python_interpreter={sys.executable}"]
    out = subprocess.run(
        [*argv, *(["-e", extra] if extra else [])],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    if out.returncode:
        raise AssertionError(f"ansible-playbook {playbook.name} failed:\n{out.stdout}\n{out.stderr}")
    return out


class Rendered:
    """One variant as the role wrote it: root/etc holds its files, commands.json its units' command lines."""

    def __init__(self, root: Path):
        self.root, self.etc = root, root / "etc"
        self.commands = json.loads((self.etc / "commands.json").read_text())

    @cached_property
    def config(self) -> dict:
        return yaml.safe_load((self.etc / "prometheus.yml").read_text())

    @cached_property
    def rules(self) -> dict:
        return yaml.safe_load((self.etc / "rules" / "skynet.rules.yml").read_text())

    def path(self, name: str) -> Path:
        return self.root / name

    def arg(self, daemon: str, flag: str) -> str:
        return next(a.split("=", 1)[1] for a in self.commands[daemon] if a.startswith(flag + "="))


def render(workdir: Path, variants: dict) -> dict:
    """Renders the role's configuration of each variant (name: variables) into workdir/NAME in one run;
    skynet-consul-sd's command is the runtime role's, run from this checkout."""
    for name, variables in variants.items():
        etc = workdir / name / "etc"
        (etc / "rules").mkdir(parents=True, exist_ok=True)
        own = {"prometheus_config_dir": str(etc), "_prometheus_consul_sd_launcher": daemon("skynet-consul-sd")}
        (workdir / f"{name}.json").write_text(json.dumps({**own, **variables}))
    playbook = workdir / "render.yml"
    playbook.write_text(PLAYBOOK.replace("@ROLE@", str(ROLE)).replace("@WORKDIR@", str(workdir)))
    ansible_playbook(playbook, ",".join(variants) + ",")
    return {name: Rendered(workdir / name) for name in variants}


def render_rules(workdir: Path, services: list, **variables) -> dict:
    """The role's rules for these service definitions (prometheus_services), parsed."""
    # The rules do not depend on the discovery: no promtool probe.
    variant = {"prometheus_consul_sd": False, "prometheus_services": services, **variables}
    return render(workdir, {"rules": variant})["rules"].rules


def loopback_variables(root: Path, webhook_url: str, **variables) -> dict:
    """Variables of a variant whose daemons listen on free loopback ports and keep their data under
    root, at test speed (1 s scrapes, evaluations and alert groups), Alertmanager posting to webhook_url."""
    for sub in ("sd", "textfile"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {
        "prometheus_consul_sd_dir": str(root / "sd"),
        "prometheus_data_dir": str(root / "prometheus-data"),
        "prometheus_alertmanager_data_dir": str(root / "alertmanager-data"),
        "prometheus_textfile_dir": str(root / "textfile"),
        "prometheus_listen_address": f"127.0.0.1:{free_port()}",
        "prometheus_alertmanager_listen_address": f"127.0.0.1:{free_port()}",
        "prometheus_node_exporter_listen_address": f"127.0.0.1:{free_port()}",
        "prometheus_scrape_interval": "1s",
        "prometheus_scrape_timeout": "1s",
        "prometheus_evaluation_interval": "1s",
        "prometheus_rate_window": "5s",
        # An alert that fires before the Alertmanager is known is sent again after this delay.
        "prometheus_extra_args": ["--rules.alert.resend-delay=1s"],
        "prometheus_alertmanager_webhook_urls": [webhook_url],
        "prometheus_alertmanager_group_wait": "1s",
        "prometheus_alertmanager_group_interval": "1s",
        **variables,
    }


class Monitoring:
    """The daemons of one rendered variant, started through a stack (which stops them). consul_sd:
    also skynet-consul-sd, for a variant that discovers Consul's services through its file_sd files."""

    def __init__(self, stack: Stack, rendered: Rendered, node_exporter: bool = False, consul_sd: bool = False):
        self.rendered = rendered
        self.url = f"http://{rendered.arg('prometheus', '--web.listen-address')}"
        am = rendered.arg("alertmanager", "--web.listen-address")
        if node_exporter:
            node = rendered.arg("node_exporter", "--web.listen-address")
            stack.start("node_exporter", rendered.commands["node_exporter"]).wait_ready(
                lambda: requests.get(f"http://{node}/metrics", timeout=2).ok
            )
        stack.start("alertmanager", rendered.commands["alertmanager"]).wait_ready(
            lambda: requests.get(f"http://{am}/-/ready", timeout=2).ok
        )
        if consul_sd and not rendered.commands["consul_sd_enabled"]:
            stack.start("skynet-consul-sd", rendered.commands["consul_sd"], env=DAEMON_ENV)
        argv = rendered.commands["prometheus"]
        if rendered.commands["consul_sd_enabled"]:
            # Debian's Prometheus has no consul_sd_configs; this build has (bullseye's).
            argv = [str(TOOLS / "prometheus-consul-sd"), *argv[1:]]
        stack.start("prometheus", argv).wait_ready(lambda: requests.get(f"{self.url}/-/ready", timeout=2).ok)

    def query(self, promql: str) -> list:
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        answer.raise_for_status()
        return answer.json()["data"]["result"]

    def wait_query(self, promql: str, timeout: float = 30) -> list:
        return wait_for(lambda: self.query(promql), timeout, f"Prometheus to answer {promql!r}", interval=0.5)

    def alerts(self, name: str, state: str = "firing") -> list[dict]:
        """Labels of the alerts named `name` Prometheus holds in `state` now."""
        return [a["metric"] for a in self.query(f'ALERTS{{alertname="{name}", alertstate="{state}"}}')]


def notification(firing: list, resolved: list = (), alertname: str = "SkynetServiceDemand") -> dict:
    """An Alertmanager webhook notification for the watcher: one alert per service, firing or resolved."""
    alerts = [{"status": "firing", "labels": {"alertname": alertname, "service": n}} for n in firing]
    alerts += [{"status": "resolved", "labels": {"alertname": alertname, "service": n}} for n in resolved]
    return {"version": "4", "status": "firing", "receiver": "skynet-watcher", "alerts": alerts}


class Receiver:
    """A webhook on loopback that keeps what Alertmanager posts to it; answers GET too (an HAProxy backend)."""

    def __init__(self):
        self.posts = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.path.strip("/"), json.loads(body)))
                self._answer()

            def do_GET(self):
                self._answer()

            def _answer(self):
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, format, *args):
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def alerts(self, path: str, name: str, status: str | None = "firing", **labels) -> list[dict]:
        """The alerts named `name` in `status` (None: any) posted to /path for the role's receiver, with
        these labels."""
        return [
            a
            for where, post in list(self.posts)
            if where == path and post["receiver"] == RECEIVER
            for a in post["alerts"]
            if a["labels"].get("alertname") == name
            and status in (None, a["status"])
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def wait(self, path: str, name: str, timeout: float = 60, status: str | None = "firing", **labels) -> dict:
        what = f"{name} {labels} {status or 'in any status'} at the webhook"
        return wait_for(lambda: self.alerts(path, name, status, **labels), timeout, what, interval=0.5)[0]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
