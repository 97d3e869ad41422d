"""The cyberdyne.skynet.consul inventory run as users run it, ansible-inventory, against a real agent."""

from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from harness.proc import free_port, wait_for

COLLECTIONS = Path(__file__).resolve().parents[2] / ".build" / "collections"
TOKEN = "s3cret-inventory-token"


def inventory(tmp_path, config, *args, unparsed_failed=False, extra_env=None):
    """ansible-inventory --list on a skynet.consul.yml holding config: (CompletedProcess, inventory)."""
    source = tmp_path / "skynet.consul.yml"
    source.write_text(yaml.safe_dump({"plugin": "cyberdyne.skynet.consul", **config}))
    out = tmp_path / "inventory.json"
    out.unlink(missing_ok=True)
    for d in ("home", "tmp"):
        (tmp_path / d).mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "ANSIBLE_"))}
    env.update(
        HOME=str(tmp_path / "home"),
        TMPDIR=str(tmp_path / "tmp"),
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_INVENTORY_UNPARSED_FAILED=str(unparsed_failed),
        **(extra_env or {}),
    )
    run = subprocess.run(
        ["ansible-inventory", "-i", str(source), "--list", "--output", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert TOKEN not in run.stdout + run.stderr
    if unparsed_failed:
        return run, None
    assert run.returncode == 0, run.stdout + run.stderr
    assert TOKEN not in out.read_text()
    return run, json.loads(out.read_text(), object_hook=trusted)


def trusted(obj):
    # ansible-inventory marks values from outside (Consul's) as not templates: {"__ansible_unsafe": value}
    return obj["__ansible_unsafe"] if set(obj) == {"__ansible_unsafe"} else obj


def safe(name):
    return name.replace("-", "_")


def members(inv, group):
    return set(inv.get(group, {}).get("hosts", []))


def hostvars(inv, host):
    return inv["_meta"]["hostvars"][host]


@pytest.fixture
def catalog(consul):
    """register_service(...) / register_node(...) into the shared agent; all removed at the end."""
    with ExitStack() as cleanup:

        def register_service(name, service_id, port, tags=(), address="", status=None):
            body = {"Name": name, "ID": service_id, "Port": port, "Tags": list(tags), "Address": address}
            if status:
                body["Check"] = {"TTL": "600s", "Status": status}
            consul.api("PUT", "agent/service/register", json=body)
            cleanup.callback(consul.api, "PUT", f"agent/service/deregister/{service_id}")
            wait_for(
                lambda: any(s["ServiceID"] == service_id for s in consul.api("GET", f"catalog/service/{name}")),
                10,
                f"{service_id} in the catalog",
            )

        def register_node(node, address, meta, service):
            body = {"Node": node, "Address": address, "NodeMeta": meta, "Service": service}
            consul.api("PUT", "catalog/register", json=body)
            cleanup.callback(consul.api, "PUT", "catalog/deregister", json={"Node": node})

        yield register_service, register_node


def test_nodes_groups_and_host_vars(tmp_path, consul, catalog, unique):
    register_service, register_node = catalog
    web, api, edge = unique("web"), unique("api"), unique("edge")
    primary, canary, rack = unique("primary"), unique("canary"), unique("r")
    register_service(web, f"{web}-1", 8080, tags=[primary, "v1"])
    register_service(api, api, 9090, tags=["v1"], address="127.0.0.5")
    register_node(
        edge,
        "127.0.0.9",
        {"rack": rack, "role": "edge"},
        {"Service": web, "ID": f"{web}-2", "Port": 8081, "Tags": [canary]},
    )

    config = {
        "url": consul.url,
        "token": TOKEN,
        "compose": {"node_upper": "consul_node | upper", "rack": "consul_node_meta.rack | default('none')"},
        "groups": {"runs_web": f"'{web}' in consul_services | map(attribute='name')"},
        "keyed_groups": [{"key": "consul_node_meta.role", "prefix": "role"}, {"key": "consul_tags", "prefix": "t"}],
    }
    inv = inventory(tmp_path, config, "-vvv")[1]

    assert members(inv, f"consul_service_{safe(web)}") == {"consul", edge}
    assert members(inv, f"consul_service_{safe(api)}") == {"consul"}
    assert members(inv, f"consul_tag_{safe(primary)}") == {"consul"}
    assert members(inv, f"consul_tag_{safe(canary)}") == {edge}
    assert {"consul", edge} <= members(inv, "consul_dc_dc1")
    assert members(inv, f"consul_meta_rack_{safe(rack)}") == {edge}
    assert edge in members(inv, "consul_meta_role_edge")

    assert hostvars(inv, edge) == {
        "ansible_host": "127.0.0.9",
        "consul_node": edge,
        "consul_datacenter": "dc1",
        "consul_node_meta": {"rack": rack, "role": "edge"},
        "consul_services": [{"name": web, "id": f"{web}-2", "port": 8081, "tags": [canary], "address": "127.0.0.9"}],
        "consul_tags": [canary],
        "node_upper": edge.upper(),
        "rack": rack,
    }
    agent = hostvars(inv, "consul")
    assert agent["ansible_host"] == "127.0.0.1"
    assert {"name": api, "id": api, "port": 9090, "tags": ["v1"], "address": "127.0.0.5"} in agent["consul_services"]
    assert {primary, "v1"} <= set(agent["consul_tags"])
    assert agent["rack"] == "none"

    assert members(inv, "runs_web") == {"consul", edge}
    assert members(inv, "role_edge") == {edge}
    assert members(inv, f"t_{safe(canary)}") == {edge}
    assert "consul" in members(inv, "t_v1")


def test_services_as_hosts_filtered_and_passing(tmp_path, consul, catalog, unique):
    register_service = catalog[0]
    web, other = unique("web"), unique("other")
    register_service(web, f"{web}-ok", 8080, tags=["blue"], address="127.0.0.7", status="passing")
    register_service(web, f"{web}-bad", 8081, tags=["green"], status="critical")
    register_service(other, other, 7070, status="passing")
    config = {"url": consul.url, "hosts": "services", "services": [web], "group_prefix": "sky-"}

    inv = inventory(tmp_path, config)[1]
    assert set(inv["_meta"]["hostvars"]) == {f"{web}-ok@consul", f"{web}-bad@consul"}
    ok = hostvars(inv, f"{web}-ok@consul")
    assert ok["ansible_host"] == "127.0.0.7"
    assert (ok["consul_service"], ok["consul_service_id"], ok["consul_service_port"]) == (web, f"{web}-ok", 8080)
    assert ok["consul_services"] == [
        {"name": web, "id": f"{web}-ok", "port": 8080, "tags": ["blue"], "address": "127.0.0.7"}
    ]
    assert hostvars(inv, f"{web}-bad@consul")["ansible_host"] == "127.0.0.1"
    assert members(inv, f"sky_service_{safe(web)}") == {f"{web}-ok@consul", f"{web}-bad@consul"}
    assert members(inv, "sky_tag_green") == {f"{web}-bad@consul"}

    inv = inventory(tmp_path, {**config, "only_passing": True})[1]
    assert set(inv["_meta"]["hostvars"]) == {f"{web}-ok@consul"}

    inv = inventory(tmp_path, {"url": consul.url, "services": [other], "group_by": ["service"]})[1]
    assert set(inv["_meta"]["hostvars"]) == {"consul"}
    assert [s["name"] for s in hostvars(inv, "consul")["consul_services"]] == [other]
    assert not any(g.startswith(("consul_dc_", "consul_tag_", "consul_meta_")) for g in inv)


def test_the_cache_answers_until_it_expires(tmp_path, consul, catalog, unique):
    register_service = catalog[0]
    first, second = unique("first"), unique("second")
    cache_dir = tmp_path / "cache"
    config = {
        "url": consul.url,
        "cache": True,
        "cache_plugin": "ansible.builtin.jsonfile",
        "cache_connection": str(cache_dir),
        "cache_timeout": 60,
    }
    register_service(first, first, 8080)
    run, inv = inventory(tmp_path, config, "-vvv")
    assert "comes from the cache" not in run.stdout
    assert members(inv, f"consul_service_{safe(first)}") == {"consul"}
    (cached,) = cache_dir.iterdir()
    assert first in cached.read_text()

    register_service(second, second, 8081)
    run, inv = inventory(tmp_path, config, "-vvv")
    assert "comes from the cache" in run.stdout
    assert f"consul_service_{safe(first)}" in inv
    assert f"consul_service_{safe(second)}" not in inv

    # The jsonfile cache ages by its file's time: make it older than cache_timeout instead of waiting.
    aged = time.time() - 61
    os.utime(cached, (aged, aged))
    run, inv = inventory(tmp_path, config, "-vvv")
    assert "comes from the cache" not in run.stdout
    assert members(inv, f"consul_service_{safe(second)}") == {"consul"}
    assert cached.stat().st_mtime > aged + 30


def test_an_unreachable_consul_is_named(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    run = inventory(tmp_path, {"url": url, "token": TOKEN, "timeout": 2}, unparsed_failed=True)[0]
    assert run.returncode != 0
    assert f"Consul at {url} is unreachable" in run.stderr


READ_ALL = 'node_prefix "" { policy = "read" }\nservice_prefix "" { policy = "read" }'


@pytest.fixture(scope="module")
def acl_consul(session_stack):
    """An agent with ACLs on and default deny, where one service instance is registered."""
    c = session_stack.consul("consul-acl-inventory", acl=True)
    c.api("PUT", "agent/service/register", json={"Name": "web", "ID": "web-1", "Port": 8080})
    wait_for(lambda: c.api("GET", "catalog/service/web"), 10, "web in the catalog")
    return c


def said(run):
    return " ".join(run.stderr.split())


def test_acl_denials_are_warned_with_what_was_hidden(tmp_path, acl_consul):
    url = acl_consul.url
    run, inv = inventory(tmp_path, {"url": url})
    assert inv["_meta"]["hostvars"] == {}
    assert (
        f"Consul at {url} denied part of its catalog to its anonymous token, as no token was given "
        "(option token or CONSUL_HTTP_TOKEN), so the inventory misses hosts: every node of the catalog (none "
        "visible); every service of the catalog (none visible)."
    ) in said(run)
    assert "node:read and service:read" in said(run)

    nodes_only = acl_consul.acl_token('node_prefix "" { policy = "read" }')
    run, inv = inventory(tmp_path, {"url": url, "token": nodes_only})
    assert set(inv["_meta"]["hostvars"]) == {"consul-acl-inventory"}
    assert hostvars(inv, "consul-acl-inventory")["consul_services"] == []
    assert f"Consul at {url} denied part of its catalog to the token given" in said(run)
    assert "misses hosts: every service of the catalog (none visible)." in said(run)
    assert nodes_only not in run.stderr + run.stdout

    services_only = acl_consul.acl_token('service_prefix "" { policy = "read" }')
    run, inv = inventory(tmp_path, {"url": url, "token": services_only})
    assert inv["_meta"]["hostvars"] == {}
    assert (
        "every node of the catalog (none visible); the instances of service(s) consul, web (listed, but none visible)"
    ) in said(run)

    run, inv = inventory(tmp_path, {"url": url, "token": TOKEN})
    assert inv["_meta"]["hostvars"] == {}
    assert (
        "misses hosts: the catalog's nodes (refused: ACL not found); the catalog's services (refused: ACL not found)."
    ) in said(run)


def test_a_token_that_reads_everything_gives_hosts_and_no_warning(tmp_path, acl_consul):
    run, inv = inventory(tmp_path, {"url": acl_consul.url, "token": acl_consul.acl_token(READ_ALL)})
    assert members(inv, "consul_service_web") == {"consul-acl-inventory"}
    assert "denied" not in said(run)


def test_on_denied_fail_makes_no_host(tmp_path, acl_consul):
    url = acl_consul.url
    run = inventory(tmp_path, {"url": url, "on_denied": "fail"}, unparsed_failed=True)[0]
    assert run.returncode != 0
    assert f"Consul at {url} denied part of its catalog to its anonymous token" in said(run)

    env = {"SKYNET_CONSUL_INVENTORY_ON_DENIED": "fail"}
    run, inv = inventory(tmp_path, {"url": url}, extra_env=env)
    assert inv["_meta"]["hostvars"] == {}
    assert f"Failed to parse inventory with 'auto' plugin: Consul at {url} denied part of its catalog" in said(run)

    run = inventory(tmp_path, {"url": url, "token": acl_consul.acl_token(READ_ALL)}, extra_env=env)[0]
    assert "denied" not in said(run)


def test_a_cached_catalog_warns_again(tmp_path, acl_consul):
    nodes_only = acl_consul.acl_token('node_prefix "" { policy = "read" }')
    config = {
        "url": acl_consul.url,
        "token": nodes_only,
        "cache": True,
        "cache_plugin": "ansible.builtin.jsonfile",
        "cache_connection": str(tmp_path / "cache"),
        "cache_timeout": 60,
    }
    inventory(tmp_path, config)
    run, inv = inventory(tmp_path, config, "-vvv")
    assert "comes from the cache" in run.stdout
    assert set(inv["_meta"]["hostvars"]) == {"consul-acl-inventory"}
    assert "misses hosts: every service of the catalog (none visible)." in said(run)


def test_the_inventory_lists_hosts_over_https_with_the_ca_and_fails_without(tmp_path, tls_consul):
    consul, name = tls_consul
    config = {"url": consul.https_url, "hosts": "services", "services": [name]}
    inv = inventory(tmp_path, {**config, "ca_cert": consul.ca_file})[1]
    assert set(inv["_meta"]["hostvars"]) == {f"{name}-1@consul-tls"}

    run = inventory(tmp_path, config, unparsed_failed=True)[0]
    assert run.returncode != 0
    assert f"Consul at {consul.https_url}" in run.stderr and "CERTIFICATE_VERIFY_FAILED" in run.stderr
