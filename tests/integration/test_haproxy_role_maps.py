"""The haproxy role's map files, rendered from the live colors in a real Consul's KV and applied to a real
HAProxy 2.6 (the collection's config): what a node whose files no release wrote (persist: false) serves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_live import PREFIX

from harness.proc import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = """
- name: The map part of the haproxy role
  hosts: localhost
  gather_facts: false
  roles:
    - role: cyberdyne.skynet.haproxy
"""


class Node:
    """A HAProxy node on the rendered config, with one blue and one green instance of `web` in Consul."""

    def __init__(self, stack, consul, unique, serve=True):
        self.stack, self.consul = stack, consul
        self.web, self.other = unique("web"), unique("api")
        self.services = [
            {"name": self.web, "port": 1, "lb_port": free_port(), "preview_port": free_port(), "health": {"path": "/"}},
            {"name": self.other, "port": 1, "lb_port": free_port()},
        ]
        for color in ("blue", "green"):
            root = stack.path(f"{color}-site", "index.html")
            root.write_text(f"{color}\n")
            port = free_port()
            proc = stack.start(
                f"{self.web}-{color}",
                [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", root.parent, str(port)],
            )
            proc.wait_ready(lambda port=port: requests.get(f"http://127.0.0.1:{port}/", timeout=2).ok)
            sid = f"{self.web}-{color}"
            consul.api(
                "PUT",
                "agent/service/register",
                json={
                    "ID": sid,
                    "Name": self.web,
                    "Address": "127.0.0.1",
                    "Port": port,
                    "Tags": [color],
                    "Check": {"HTTP": f"http://127.0.0.1:{port}/", "Interval": "1s"},
                },
            )
            stack.on_close(lambda sid=sid: consul.api("PUT", f"agent/service/deregister/{sid}"))
        for service in (self.web, self.other):
            stack.on_close(lambda service=service: consul.api("DELETE", f"kv/{PREFIX}/{service}?recurse=true"))
        self.haproxy = stack.rendered_haproxy(self.services, consul, "lb")
        self.map_dir = self.haproxy.map_dir
        for color in ("blue", "green") if serve else ():
            wait_for(lambda color=color: self.up(color), 20, f"the {color} server UP")

    def up(self, color):
        lines = self.haproxy.command(f"show servers state {self.web}_{color}").splitlines()[2:]
        return [f for f in (line.split() for line in lines) if len(f) > 5 and f[5] == "2"]

    def page(self, preview=False):
        port = self.services[0]["preview_port" if preview else "lb_port"]
        return requests.get(f"http://127.0.0.1:{port}/", timeout=2).text.strip()

    def live_map(self):
        return (self.map_dir / "live.map").read_text()

    def served(self):
        """The backend the running HAProxy's live map sends web to (show map)."""
        out = self.haproxy.command(f"show map {self.map_dir}/live.map")
        return next(line.split()[-1] for line in out.splitlines() if f" {self.web} " in line)

    def worker(self):
        return next(line for line in self.haproxy.command("show info").splitlines() if line.startswith("Pid:"))

    def reload(self):
        before = self.worker()
        os.kill(self.haproxy.process.pid, signal.SIGUSR2)
        wait_for(lambda: self.worker() != before, 10, "the new HAProxy worker")

    def record(self, color):
        requests.put(f"{self.consul.url}/v1/kv/{PREFIX}/{self.web}/live", data=json.dumps(color), timeout=5)

    def role(self, tmp_path, check=False, **variables):
        """Runs the role's map part (tag haproxy_maps); {task name: result} and the run's return code."""
        extra = {
            "haproxy_services": self.services,
            "haproxy_map_dir": str(self.map_dir),
            "haproxy_stats_socket": str(self.haproxy.socket),
            "haproxy_consul_url": self.consul.url,
            "haproxy_consul_dns": f"127.0.0.1:{self.consul.dns_port}",
            "ansible_python_interpreter": sys.executable,
            **variables,
        }
        (tmp_path / "vars.json").write_text(json.dumps(extra))
        (tmp_path / "play.yml").write_text(PLAYBOOK)
        argv = ["ansible-playbook", "-i", "localhost,", "-c", "local", "--tags", "haproxy_maps"]
        argv += ["-e", f"@{tmp_path / 'vars.json'}", str(tmp_path / "play.yml")]
        env = {
            **os.environ,
            "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build" / "collections"),
            "ANSIBLE_STDOUT_CALLBACK": "json",
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        out = subprocess.run(
            [*argv, *(["--check", "--diff"] if check else [])],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        data = json.loads(out.stdout)
        tasks = {t["task"]["name"]: t["hosts"]["localhost"] for t in data["plays"][0]["tasks"]}
        return tasks, out.returncode


WRITE_LIVE = "cyberdyne.skynet.haproxy : Write the live map"
PLAN = "cyberdyne.skynet.haproxy : Choose the live color of each service"
SET_MAP = "cyberdyne.skynet.haproxy : Switch the running HAProxy to the colors of the map files"


def warnings(tasks):
    return [w for result in tasks.values() for w in result.get("warnings", [])]


@pytest.fixture
def node(stack, consul, unique):
    return Node(stack, consul, unique)


def test_the_recorded_color_is_rendered_served_and_kept_when_consul_is_down(node, tmp_path):
    web = node.web
    assert node.page() == "blue" and node.live_map().startswith(f"{web} {web}_blue\n")
    node.record("green")  # what skynet_bluegreen records after switching a node it does not write (persist: false)

    tasks, rc = node.role(tmp_path, check=True)
    assert rc == 0, tasks
    assert tasks[WRITE_LIVE]["changed"], tasks[WRITE_LIVE]
    assert tasks[WRITE_LIVE]["diff"][0]["after"].startswith(f"{web} {web}_green\n"), tasks[WRITE_LIVE]["diff"]
    assert node.live_map().startswith(f"{web} {web}_blue\n") and node.page() == "blue", "check mode changed the node"

    before = node.worker()
    tasks, rc = node.role(tmp_path, haproxy_live={web: "blue", node.other: "green"})
    assert rc == 0, tasks
    assert tasks[WRITE_LIVE]["changed"] and tasks[SET_MAP]["changed"]
    # The record beats a stale haproxy_live, which still applies to the service Consul has no record of.
    assert node.live_map() == f"{web} {web}_green\n{node.other} {node.other}_green\n"
    assert (node.map_dir / "preview.map").read_text() == f"{web} {web}_blue\n{node.other} {node.other}_blue\n"
    assert any(f"{web} (blue asked, green recorded)" in w for w in warnings(tasks)), warnings(tasks)
    assert node.served() == f"{web}_green" and node.page() == "green" and node.page(preview=True) == "blue"
    assert node.worker() == before, "switched by set map, without a reload"
    node.reload()
    assert {node.page() for _attempt in range(6)} == {"green"}, "a reload reads green from the file"

    tasks, rc = node.role(tmp_path, haproxy_live={node.other: "green"})
    assert rc == 0 and not tasks[WRITE_LIVE]["changed"] and SET_MAP not in tasks, tasks
    assert warnings(tasks) == []

    # The node's agent does not answer: the role keeps what the node serves (green), not the definition's
    # color (blue) nor a haproxy_live naming blue, and says so.
    down = f"http://127.0.0.1:{free_port()}"
    tasks, rc = node.role(tmp_path, haproxy_consul_url=down, haproxy_live={web: "blue", node.other: "green"})
    assert rc == 0, tasks
    assert not tasks[WRITE_LIVE]["changed"] and SET_MAP not in tasks
    assert node.live_map().startswith(f"{web} {web}_green\n") and node.page() == "green"
    (warning,) = [w for w in warnings(tasks) if "could not be read" in w]
    assert f"Consul at {down} is unreachable" in warning and f"live.map: {web}, {node.other}" in warning

    tasks, rc = node.role(tmp_path, haproxy_consul_url=down, haproxy_consul_kv_required=True)
    assert rc != 0
    failed = next(r for r in tasks.values() if r.get("failed"))
    assert "haproxy_consul_kv_required is true" in failed["msg"] and f"Consul at {down} is unreachable" in failed["msg"]
    assert WRITE_LIVE not in tasks and node.live_map().startswith(f"{web} {web}_green\n")

    # A node that lost its map file while Consul is down cannot know the color: it warns that it guesses.
    (node.map_dir / "live.map").unlink()
    tasks, rc = node.role(tmp_path, haproxy_consul_url=down)
    assert rc == 0
    assert any(f"maybe not the recorded color: {web} blue (from definition)" in w for w in warnings(tasks))


def test_a_token_that_may_not_read_the_records_is_not_taken_for_no_record(stack, unique, tmp_path):
    consul = stack.consul("acl", acl=True)
    node = Node(stack, consul, unique, serve=False)  # Consul DNS answers no anonymous query here
    web = node.web
    consul.api("PUT", f"kv/{PREFIX}/{web}/live", data=json.dumps("green"))
    (node.map_dir / "live.map").write_text(f"{web} {web}_green\n")

    # Consul leaves the keys out of the listing (404, no error); the direct read of the key says 403.
    tasks, rc = node.role(tmp_path)
    assert rc == 0, tasks
    assert tasks[PLAN]["ansible_facts"]["__haproxy_live_plan"]["unknown"] == [web, node.other]
    assert any("denied the token read access" in w for w in warnings(tasks)), warnings(tasks)
    assert node.live_map().startswith(f"{web} {web}_green\n")

    reader = consul.acl_token(f'key_prefix "{PREFIX}/" {{ policy = "read" }}')
    (node.map_dir / "live.map").unlink()
    tasks, rc = node.role(tmp_path, haproxy_consul_token=reader)
    assert rc == 0 and warnings(tasks) == [], tasks
    assert reader not in json.dumps(tasks), "the token is never logged"
    assert node.live_map() == f"{web} {web}_green\n{node.other} {node.other}_blue\n"


def hook(node, *options):
    script = ROOT / "roles" / "haproxy" / "files" / "skynet-haproxy-maps.py"
    argv = [sys.executable, script, "--map-dir", node.map_dir, "--consul", node.consul.url, *options]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_a_reload_reads_the_recorded_color_before_any_role_run(node):
    """The drop-in's ExecReload/ExecStartPre hook, on the real Consul and HAProxy."""
    web, other = node.web, node.other
    node.record("green")
    consul = node.consul
    consul.api("PUT", f"kv/{PREFIX}/{other}/live", data=json.dumps("green"))
    consul.api("PUT", f"kv/{PREFIX}/{other}/release", data=json.dumps({"phase": "switch"}))
    out = hook(node, "--token-file", str(node.map_dir / "no-token"))
    assert out.returncode == 0, out.stderr
    assert f"written to the map files: {web} green" in out.stderr
    # A release of `other` has not ended: its line stays as the node has it.
    assert node.live_map() == f"{web} {web}_green\n{other} {other}_blue\n"
    assert (node.map_dir / "preview.map").read_text() == f"{web} {web}_blue\n{other} {other}_green\n"
    assert node.page() == "blue", "the files only: the running HAProxy is the release's"
    node.reload()
    assert {node.page() for _attempt in range(6)} == {"green"} and node.page(preview=True) == "blue"

    again = hook(node)
    assert again.returncode == 0 and again.stderr == "", again.stderr

    node.record("blue")
    down = f"http://127.0.0.1:{free_port()}"
    out = hook(node, "--consul", down)
    assert out.returncode == 0 and f"Consul KV at {down} could not be read" in out.stderr
    assert node.live_map().startswith(f"{web} {web}_green\n")
