"""roles/prometheus's rules file (recording rules of the scaling signals, alerts), rendered by Ansible
from the role's own template with the role's defaults and vars, as the role renders it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "prometheus"

PLAYBOOK = """
- name: Render the rules of roles/prometheus
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files: [@ROLE@/defaults/main.yml, @ROLE@/vars/main.yml]
  tasks:
    - name: Load the variables
      ansible.builtin.include_vars:
        file: "@VARS@"

    - name: Render the role's rules template
      ansible.builtin.template:
        src: "@ROLE@/templates/{{ prometheus_rules_template }}"
        dest: "@DEST@"
        mode: "0644"
"""


def render_rules(workdir: Path, services: list, **variables) -> dict:
    """The rules for these service definitions (prometheus_services), parsed; the file is workdir/skynet.rules.yml."""
    workdir.mkdir(parents=True, exist_ok=True)
    dest, vars_file, playbook = (workdir / n for n in ("skynet.rules.yml", "rules-vars.json", "rules.yml"))
    vars_file.write_text(json.dumps({"prometheus_services": services, **variables}))
    playbook.write_text(
        PLAYBOOK.replace("@ROLE@", str(ROLE)).replace("@VARS@", str(vars_file)).replace("@DEST@", str(dest))
    )
    out = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", str(playbook), "-e", f"ansible_python_interpreter={sys.executable}"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    if out.returncode:
        raise RuntimeError(f"rendering the rules failed:\n{out.stdout}\n{out.stderr}")
    return yaml.safe_load(dest.read_text())
