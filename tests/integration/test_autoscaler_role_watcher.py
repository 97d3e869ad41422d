"""The autoscaler role's two files as its templates and variables render them: the timer's settings
(/etc/skynet/autoscale.yml, the playbook's variables) and the watcher's configuration. The watcher's resident
cycle must be the one the playbook runs: the same arguments, by the same filter, limited to one service."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.cyberdyne.skynet.plugins.module_utils._autoscale_arguments import arguments

from harness.prometheus_role import ansible_playbook
from harness.stack import DAEMON_ENV, daemon

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "autoscaler"
PLAYBOOK = """
- name: Render the files of roles/autoscaler
  hosts: all
  connection: local
  gather_facts: false
  vars_files: [@ROLE@/defaults/main.yml, @ROLE@/vars/main.yml]
  tasks:
    - name: Load the variables of the variant
      ansible.builtin.include_vars:
        file: "@WORKDIR@/variables.json"

    - name: The timer's settings
      ansible.builtin.template:
        src: "@ROLE@/templates/autoscale.yml.j2"
        dest: "@WORKDIR@/autoscale.yml"
        mode: "0600"

    - name: The watcher's configuration, as the role writes it
      ansible.builtin.copy:
        dest: "@WORKDIR@/watcher.json"
        content: "{{ _autoscaler_watcher_settings | to_nice_json }}"
        mode: "0600"
"""
SERVICES = [
    {"name": "web", "image": "web:1", "port": 8080, "scaling": {"min": 1, "max": 3, "checks": []}},
    {"name": "static", "image": "nginx:1", "port": 80},
]


def _render(tmp_path, **variables):
    base = {
        "autoscaler_services": SERVICES,
        "autoscaler_consul_url": "http://127.0.0.1:8500",
        "autoscaler_consul_token": "s3cret-token",
        "autoscaler_computes": {"default": {"type": "docker", "hosts": [{"name": "d1", "url": "tcp://10.0.0.5:2376"}]}},
        "runtime_venv": "/opt/skynet/venv",
        **variables,
    }
    (tmp_path / "variables.json").write_text(json.dumps(base))
    playbook = tmp_path / "render.yml"
    playbook.write_text(PLAYBOOK.replace("@ROLE@", str(ROLE)).replace("@WORKDIR@", str(tmp_path)))
    ansible_playbook(playbook, "autoscaler1,")
    settings = yaml.safe_load((tmp_path / "autoscale.yml").read_text())
    return settings, json.loads((tmp_path / "watcher.json").read_text())


def test_the_resident_watcher_runs_the_playbooks_arguments_without_the_token(tmp_path):
    settings, watcher = _render(tmp_path)
    assert settings["skynet_consul_token"] == "s3cret-token"  # the timer's file (0600) carries it
    assert "command" not in watcher and watcher["services"] == ["web"]
    without_token = {k: v for k, v in settings.items() if k != "skynet_consul_token"}
    assert watcher["cycle"] == arguments({**without_token, "skynet_autoscale_lock_wait": 30.0})
    assert "s3cret-token" not in json.dumps(watcher)
    assert watcher["token_file"] == "/etc/skynet/consul-token" and watcher["timeout"] == 600.0

    # The watcher accepts it: its forkserver checks the arguments with the module's own spec.
    path = tmp_path / "watcher.json"
    done = _check(path)
    assert done.returncode == 2 and "token" in done.stderr  # the token file is the role's to write
    watcher["token_file"] = ""
    path.write_text(json.dumps(watcher))
    done = _check(path)
    assert done.returncode == 0, done.stderr
    assert "resident cycle, watching web" in done.stdout


def _check(path):
    argv = [*daemon("skynet-watcher"), "--check", f"--config={path}"]
    return subprocess.run(argv, capture_output=True, text=True, check=False, env=DAEMON_ENV, timeout=120)


@pytest.mark.parametrize("timeout", [None, 120])
def test_the_playbook_mode_runs_the_autoscale_playbook_limited_to_the_service(tmp_path, timeout):
    variables = {"autoscaler_watcher_mode": "playbook"}
    if timeout:
        variables["autoscaler_watcher_timeout"] = timeout
    _settings, watcher = _render(tmp_path, **variables)
    assert "cycle" not in watcher and watcher["timeout"] == float(timeout or 600)
    command = watcher["command"]
    assert command[:2] == ["/opt/skynet/venv/bin/ansible-playbook", "cyberdyne.skynet.autoscale"]
    assert json.loads(command[-1])["skynet_autoscale_limit"] == ["{service}"]
