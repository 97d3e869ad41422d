"""playbooks/site.yml puts each role on its inventory group, as the README's inventory lays them out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = {
    "all": {
        "children": {
            "consul_servers": {"hosts": {"ctl1": {}, "ctl2": {}, "ctl3": {}}},
            "consul_clients": {"hosts": {"lb1": {}, "dock1": {}, "dock2": {}, "ctl1": {}}},
            "docker_hosts": {"hosts": {"dock1": {}, "dock2": {}}},
            "load_balancers": {"hosts": {"lb1": {}}},
            "monitoring": {"hosts": {"ctl1": {}}},
            "autoscalers": {"hosts": {"ctl1": {}}},
        }
    }
}


def plays(tmp_path, *options):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    playbook = ROOT / "playbooks" / "site.yml"
    run = subprocess.run(
        [Path(sys.executable).with_name("ansible-playbook"), "-i", inventory, playbook, *options],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_each_play_runs_on_its_group(tmp_path):
    out = plays(tmp_path, "--list-hosts")
    found = {}
    for block in out.split("  play #")[1:]:
        title, _pattern, _count, *hosts = (line.strip() for line in block.strip().splitlines())
        found[title.split(": ", 1)[1].split("\t")[0]] = sorted(hosts)
    assert found == {
        "Service registry (Consul), servers first": ["ctl1", "ctl2", "ctl3"],
        "Service registry (Consul), clients": ["dock1", "dock2", "lb1"],
        "Compute (the registrator on Docker hosts)": ["dock1", "dock2"],
        "Load balancer (HAProxy)": ["lb1"],
        "Metrics and alerting (Prometheus, Alertmanager, node_exporter)": ["ctl1"],
        "Central processing unit (the autoscaler's timer)": ["ctl1"],
    }, out


def test_every_role_of_the_collection_is_applied(tmp_path):
    out = plays(tmp_path, "--list-tasks")
    roles = {p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir()}
    applied = {role for role in roles if re.search(rf"\b{role} : ", out)}
    # A role the applied ones include (the runtime) is applied by them: its tasks are not listed ahead of time.
    included = {
        name
        for role in applied
        for tasks in (ROOT / "roles" / role / "tasks").glob("*.yml")
        for name in re.findall(r"include_role:\s+name: cyberdyne\.skynet\.(\w+)", tasks.read_text())
    }
    assert applied | included == roles, out
    assert included == {"runtime"}
