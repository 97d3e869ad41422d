"""The registrator role installs the module_utils files the daemon imports: every one of them."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MODULE_UTILS = ROOT / "plugins" / "module_utils"
PACKAGE = "ansible_collections.cyberdyne.skynet.plugins.module_utils"


def imported(name):
    """The module_utils files that module_utils/name imports, directly or not, with name itself."""
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for node in ast.walk(ast.parse((MODULE_UTILS / current).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
                todo.extend(f"{alias.name}.py" for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
                todo.append(node.module.rsplit(".", 1)[1] + ".py")
    return seen


def test_the_registrator_role_installs_every_file_the_daemon_imports():
    role_vars = yaml.safe_load((ROOT / "roles" / "registrator" / "vars" / "main.yml").read_text())
    assert sorted(role_vars["_registrator_module_utils"]) == sorted(imported("_registrator.py"))


def _task(tasks, name):
    found = [task for task in tasks if task.get("name") == name]
    assert len(found) == 1, f"no single task named {name!r}"
    return found[0]


def test_the_prometheus_role_installs_every_file_skynet_consul_sd_imports():
    tasks = yaml.safe_load((ROOT / "roles" / "prometheus" / "tasks" / "consul_sd_files.yml").read_text())
    task = _task(tasks, "Install the code of skynet-consul-sd (the collection's module_utils it imports)")
    assert sorted(task["loop"]) == sorted(imported("_consul_sd.py"))


def test_the_haproxy_role_installs_every_file_the_activator_imports():
    role_vars = yaml.safe_load((ROOT / "roles" / "haproxy" / "vars" / "main.yml").read_text())
    assert sorted(role_vars["_haproxy_activator_module_utils"]) == sorted(imported("_activator_server.py"))
