"""Fuzzed service names against the real stack: every module and the registrator refuse them, and nothing
reaches Consul (KV under skynet/, the catalog), the Docker API engine (Podman) or HAProxy (its map)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from harness.ansible import run_module
from harness.proc import free_port, wait_for
from harness.stack import DAEMON_ENV, daemon, remove_containers

ROOT = Path(__file__).resolve().parents[3]
COMPUTE = "cyberdyne.skynet.skynet_compute"
SCALE = "cyberdyne.skynet.skynet_scale"
BLUEGREEN = "cyberdyne.skynet.skynet_bluegreen"
POLICY = {"min": 1, "max": 2, "checks": [{"name": "c", "value": 1, "target": 1}]}
RULE = "is not a valid service name: use 1-63 lower-case letters, digits and dashes"

FUZZ = [
    "we\nb",
    "web;reload",
    "web; show map",
    "../evil",
    "web/../../evil",
    "web app",
    "{{ 6 * 7 }}",
    "w\u00e9b",
    "\u0441\u0435\u0440\u0432\u0438\u0441",  # Cyrillic
    "a" * 64,
    "",
    "Web",
    "web_blue",
    "web-",
]


def literal(value):
    """The value as Ansible passes it to the module: `-a` is templated, so braces go in raw."""
    return f"{{% raw %}}{value}{{% endraw %}}" if "{" in value else value


def snapshot(consul, docker_client, haproxy):
    kv = requests.get(f"{consul.url}/v1/kv/skynet/", params={"keys": "1"}, timeout=5)
    keys = sorted(kv.json()) if kv.status_code == 200 else []
    return {
        "kv": keys,
        "catalog": sorted(consul.api("GET", "catalog/services")),
        "agent": sorted(consul.api("GET", "agent/services")),
        "containers": sorted(c.id for c in docker_client.containers.list(all=True)),
        "map": haproxy.command(f"show map {haproxy.map_dir}/live.map"),
        "map_file": (haproxy.map_dir / "live.map").read_text(),
    }


@pytest.fixture
def lb(stack, consul, unique):
    """An HAProxy node on the collection's rendered config for one valid service."""
    name = unique("names")
    service = {"name": name, "port": 8080, "lb_port": free_port(), "health": {"path": "/health"}}
    return name, stack.rendered_haproxy([service], consul, "lb-names")


def run_all(calls):
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda call: run_module(*call), calls))


def test_every_module_refuses_fuzzed_names_before_anything_changes(consul, engine, docker_client, sample_image, lb):
    valid, haproxy = lb
    common = {"docker_host": engine.docker_host, "consul_url": consul.url}
    before = snapshot(consul, docker_client, haproxy)
    node = {"admin_socket": str(haproxy.socket), "map_dir": str(haproxy.map_dir)}

    calls = []
    for name in FUZZ:
        calls.append(
            (COMPUTE, {**common, "service": literal(name), "image": sample_image["1"], "count": 1, "wait_timeout": 10})
        )
        calls.append((BLUEGREEN, {**common, "service": literal(name), "image": sample_image["2"], "haproxy": [node]}))
    definitions = [{"name": literal(name), "image": sample_image["1"], "scaling": POLICY} for name in FUZZ]
    calls.append((SCALE, {**common, "services": definitions, "prometheus_url": "http://127.0.0.1:9"}))
    valid_definition = {"name": valid, "image": sample_image["1"], "scaling": POLICY}
    calls.append(
        (
            SCALE,
            {**common, "services": [valid_definition], "limit": ["../evil"], "prometheus_url": "http://127.0.0.1:9"},
        )
    )
    calls.append(
        (
            SCALE,
            {
                **common,
                "services": [valid_definition],
                "key_prefix": "skynet/../evil",
                "prometheus_url": "http://127.0.0.1:9",
            },
        )
    )
    calls.append((COMPUTE, {**common, "service": valid, "image": sample_image["1"], "count": 1, "tags": ["a;b"]}))
    calls.append((COMPUTE, {**common, "service": valid, "image": sample_image["1"], "count": 1, "tags": ["green"]}))
    calls.append(
        (BLUEGREEN, {**common, "service": valid, "image": sample_image["2"], "haproxy": [{**node, "map_dir": "/m ;x"}]})
    )
    results = run_all(calls)

    for (module, args), result in zip(calls, results, strict=True):
        assert result.get("failed"), (module, args, result)
        assert "Traceback" not in result.get("module_stderr", ""), result
    for n, name in enumerate(FUZZ):
        for result in results[2 * n : 2 * n + 2]:
            assert result["msg"].startswith(f"service {name!r} {RULE}"), result["msg"]
            assert result["msg"].endswith("nothing was changed")
    scale_msg = results[2 * len(FUZZ)]["msg"]
    assert scale_msg.startswith("invalid scaling policies, nothing was changed: ")
    for n, name in enumerate(FUZZ):
        if name:
            assert f"services[{n}].name {name!r} {RULE}" in scale_msg, (name, scale_msg)
        else:
            assert f"services[{n}] has no name" in scale_msg
    limit_msg, prefix_msg, semicolon_tag, color_tag, map_dir = (r["msg"] for r in results[2 * len(FUZZ) + 1 :])
    assert f"limit[0] '../evil' {RULE}" in limit_msg
    assert "key_prefix 'skynet/../evil' is not a valid Consul KV key" in prefix_msg
    assert semicolon_tag.startswith("tags[0] 'a;b' is not a valid tag")
    assert color_tag.startswith("tags[0] 'green' is not a valid tag")
    assert map_dir.startswith("haproxy[0].map_dir '/m ;x' cannot be sent to HAProxy's runtime API")

    after = snapshot(consul, docker_client, haproxy)
    assert after == before
    assert not [k for k in after["kv"] if "evil" in k]
    print(f"{len(calls)} module runs refused {len(FUZZ)} fuzzed names; Consul, Podman and HAProxy unchanged")


def registrator_metrics(port):
    values = {}
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text.splitlines():
        if line and not line.startswith("#"):
            key, _space, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def test_the_registrator_refuses_fuzzed_names_counts_them_and_keeps_running(
    stack, consul, engine, docker_client, sample_image, unique
):
    port, host_id = free_port(), unique("host")
    argv = [*daemon("skynet-registrator"), "--docker-host", engine.docker_host, "--consul-url", consul.url,
            "--host-id", host_id, "--resync-interval", "1", "--metrics-address", f"127.0.0.1:{port}"]  # fmt: skip
    registrator = stack.start("registrator-names", argv, env=DAEMON_ENV)
    registrator.wait_ready(lambda: registrator_metrics(port).get("skynet_registrator_resyncs_total", 0) >= 1)

    bad = [
        ({"SERVICE_NAME": "we\nb"}, {}),
        ({"SERVICE_NAME": "web;reload"}, {}),
        ({"SERVICE_NAME": "../evil"}, {}),
        ({"SERVICE_NAME": "web app"}, {}),
        ({"SERVICE_NAME": "{{ 6 * 7 }}"}, {}),
        ({"SERVICE_NAME": "w\u00e9b"}, {}),
        ({}, {"io.skynet.service": "a" * 64}),
        ({"SERVICE_NAME": unique("tags"), "SERVICE_TAGS": "ok,{{ x }}"}, {}),
        ({"SERVICE_NAME": unique("color")}, {"io.skynet.color": "red"}),
    ]
    good = unique("good")
    catalog_before = set(consul.api("GET", "catalog/services"))
    started = []
    try:
        for env_vars, labels in [*bad, ({"SERVICE_NAME": good}, {})]:
            started.append(
                docker_client.containers.run(
                    sample_image["1"],
                    detach=True,
                    environment={"SERVICE_CHECK_HTTP": "/health", **env_vars},
                    labels=labels,
                    ports={"8080/tcp": ("127.0.0.1", None)},
                )
            )
        wait_for(lambda: good in consul.api("GET", "catalog/services"), 30, f"{good} in the catalog")
        wait_for(
            lambda: registrator_metrics(port).get("skynet_registrator_rejected_total") == len(bad),
            15,
            f"{len(bad)} refusals counted",
        )
        # Resyncs every second see the same containers again: they are not counted again.
        resyncs = registrator_metrics(port)["skynet_registrator_resyncs_total"]
        wait_for(lambda: registrator_metrics(port)["skynet_registrator_resyncs_total"] >= resyncs + 2, 15, "resyncs")
        metrics = registrator_metrics(port)
        assert metrics["skynet_registrator_rejected_total"] == len(bad)
        assert metrics["skynet_registrator_rejected"] == len(bad)
        assert registrator.alive()

        catalog = set(consul.api("GET", "catalog/services"))
        assert catalog - catalog_before == {good}
        mine = [
            e
            for e in consul.api("GET", "agent/services").values()
            if (e.get("Meta") or {}).get("skynet_registrator") == host_id
        ]
        assert [e["Service"] for e in mine] == [good]
        log = registrator.log.read_text()
        for env_vars, labels in bad:
            short = started[bad.index((env_vars, labels))].id[:12]
            assert "not registering container " in log and f"({short})" in log, log
        assert "'../evil' is not a valid service name" in log
        print(f"registrator: {len(bad)} containers refused and counted once, {good} registered, daemon alive")
    finally:
        remove_containers(started)
        registrator.stop()
        for entry in consul.api("GET", "agent/services").values():
            if (entry.get("Meta") or {}).get("skynet_registrator") == host_id:
                consul.api("PUT", f"agent/service/deregister/{entry['ID']}")


def test_strings_from_consul_are_never_templated_in_inventory_host_vars(consul, tmp_path, unique):
    name, marker = unique("unsafe"), "{{ 6 * 7 }}"
    sid = f"{name}-1"
    consul.api("PUT", "agent/service/register", json={"Name": name, "ID": sid, "Port": 8080, "Tags": [marker]})
    try:
        source = tmp_path / "skynet.consul.yml"
        source.write_text(f"plugin: cyberdyne.skynet.consul\nurl: {consul.url}\nhosts: services\ncache: false\n")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "ANSIBLE_"))},
            "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build" / "collections"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_STDOUT_CALLBACK": "json",
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        }
        argv = ["ansible", "-i", str(source), "all", "-c", "local", "-m", "ansible.builtin.debug"]
        argv += ["-a", json.dumps({"msg": "{{ consul_tags | first }} {{ consul_service_id }}"}), "-l", f"{sid}@*"]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        (result,) = json.loads(out.stdout)["plays"][0]["tasks"][0]["hosts"].values()
        assert result["msg"] == f"{marker} {sid}"
    finally:
        consul.api("PUT", f"agent/service/deregister/{sid}")


@pytest.mark.parametrize(
    ("role", "services"),
    [
        ("autoscaler", [{"name": "web"}, {"name": "../evil"}, {"name": "db", "color": "red"}]),
        ("haproxy", [{"name": "web", "port": 8080, "lb_port": 8000}, {"name": "web;x", "port": 8080, "lb_port": 8001}]),
    ],
)
def test_the_roles_refuse_invalid_names_in_their_preflight(tmp_path, role, services):
    playbook = tmp_path / "preflight.yml"
    play = {
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "tasks": [
            {
                "name": "Preflight",
                "ansible.builtin.include_role": {"name": f"cyberdyne.skynet.{role}", "tasks_from": "preflight"},
                "vars": {f"{role}_services": services},
            }
        ],
    }
    playbook.write_text(json.dumps([play]))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")},
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build" / "collections"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
    }
    out = subprocess.run(
        ["ansible-playbook", "-i", "localhost,", str(playbook), "-e", f"ansible_python_interpreter={sys.executable}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    tasks = json.loads(out.stdout)["plays"][0]["tasks"]
    failed = [t for t in tasks if t["hosts"]["localhost"].get("failed")]
    assert [t["task"]["name"] for t in failed] == [
        f"cyberdyne.skynet.{role} : Check the names, colors and tags of the service definitions"
    ]
    msg = failed[0]["hosts"]["localhost"]["msg"]
    bad = services[1]["name"]
    assert f"{role}_services[1].name {bad!r} {RULE}" in msg
    if role == "autoscaler":
        assert f"{role}_services[2].color 'red' is not a valid color: use blue or green" in msg
