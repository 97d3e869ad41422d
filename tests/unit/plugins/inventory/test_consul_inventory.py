from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.inventory.consul import (
    InventoryModule,
    acl_denials,
    build_hosts,
    denial_message,
    group_name,
    host_groups,
    instance_from_health,
    node_from_catalog,
)

NODE_A = {"name": "a", "address": "10.0.0.1", "datacenter": "dc1", "meta": {"rack": "r1", "empty": ""}}
NODE_B = {"name": "b", "address": "10.0.0.2", "datacenter": "dc1", "meta": {}}
WEB_A = {"node": "a", "name": "web", "id": "web-1", "port": 80, "tags": ["primary", "v1"], "address": "10.0.0.1"}
API_A = {"node": "a", "name": "api", "id": "api", "port": 90, "tags": ["v1"], "address": "172.16.0.5"}
WEB_B = {"node": "b", "name": "web", "id": "web-1", "port": 80, "tags": [], "address": "10.0.0.2"}
CATALOG = {
    "nodes": [NODE_A, NODE_B, {"name": "idle", "address": "10.0.0.3", "datacenter": "dc1", "meta": {}}],
    "instances": [WEB_A, API_A, WEB_B],
}


@pytest.mark.parametrize(
    ("prefix", "kind", "parts", "expected"),
    [
        ("consul_", "service", ("web",), "consul_service_web"),
        ("consul_", "service", ("web-api.v2",), "consul_service_web_api_v2"),
        ("consul_", "tag", ("env=prod",), "consul_tag_env_prod"),
        ("consul_", "tag", ("1.0",), "consul_tag_1_0"),
        ("", "dc", ("eu-west",), "dc_eu_west"),
        ("sky-", "meta", ("rack", "r 1/a"), "sky_meta_rack_r_1_a"),
        ("consul_", "service", ("été",), "consul_service__t_"),
    ],
)
def test_group_names_are_safe(prefix, kind, parts, expected):
    assert group_name(prefix, kind, *parts) == expected


@pytest.mark.parametrize(
    ("raw", "default_dc", "expected"),
    [
        (
            {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc2", "Meta": {"rack": "r1"}},
            "dc1",
            {"name": "n1", "address": "10.0.0.1", "datacenter": "dc2", "meta": {"rack": "r1"}},
        ),
        (
            {"Node": "n1", "Address": "10.0.0.1", "Meta": None},
            "dc1",
            {"name": "n1", "address": "10.0.0.1", "datacenter": "dc1", "meta": {}},
        ),
    ],
)
def test_node_from_catalog(raw, default_dc, expected):
    assert node_from_catalog(raw, default_dc) == expected


@pytest.mark.parametrize(
    ("service", "expected_address", "expected_tags"),
    [
        ({"Service": "web", "ID": "web-1", "Port": 80, "Tags": ["a"], "Address": "172.16.0.9"}, "172.16.0.9", ["a"]),
        ({"Service": "web", "ID": "web-1", "Port": 80, "Tags": None, "Address": ""}, "10.0.0.1", []),
    ],
)
def test_an_instance_without_an_address_takes_its_nodes(service, expected_address, expected_tags):
    entry = {"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": service, "Checks": []}
    assert instance_from_health(entry) == {
        "node": "n1",
        "name": "web",
        "id": "web-1",
        "port": 80,
        "tags": expected_tags,
        "address": expected_address,
    }


@pytest.mark.parametrize(
    ("hosts", "only_with_instances", "expected"),
    [
        ("nodes", False, ["a", "b", "idle"]),
        ("nodes", True, ["a", "b"]),
        ("services", False, ["web-1@a", "api@a", "web-1@b"]),
        ("services", True, ["web-1@a", "api@a", "web-1@b"]),
    ],
)
def test_host_names(hosts, only_with_instances, expected):
    assert [host[0] for host in build_hosts(CATALOG, hosts, only_with_instances)] == expected


def test_node_host_vars_list_the_nodes_instances():
    hostvars = dict(build_hosts(CATALOG, "nodes"))["a"]
    assert hostvars == {
        "ansible_host": "10.0.0.1",
        "consul_node": "a",
        "consul_datacenter": "dc1",
        "consul_node_meta": {"rack": "r1", "empty": ""},
        "consul_services": [
            {"name": "web", "id": "web-1", "port": 80, "tags": ["primary", "v1"], "address": "10.0.0.1"},
            {"name": "api", "id": "api", "port": 90, "tags": ["v1"], "address": "172.16.0.5"},
        ],
        "consul_tags": ["primary", "v1"],
    }
    assert dict(build_hosts(CATALOG, "nodes"))["idle"]["consul_services"] == []


def test_service_host_vars_describe_one_instance():
    hostvars = dict(build_hosts(CATALOG, "services"))["api@a"]
    assert hostvars == {
        "ansible_host": "172.16.0.5",
        "consul_node": "a",
        "consul_datacenter": "dc1",
        "consul_node_meta": {"rack": "r1", "empty": ""},
        "consul_services": [{"name": "api", "id": "api", "port": 90, "tags": ["v1"], "address": "172.16.0.5"}],
        "consul_tags": ["v1"],
        "consul_service": "api",
        "consul_service_id": "api",
        "consul_service_port": 90,
    }


def test_an_instance_on_an_unknown_node_is_skipped():
    catalog = {"nodes": [NODE_B], "instances": [WEB_A, WEB_B]}
    assert [host[0] for host in build_hosts(catalog, "services")] == ["web-1@b"]


@pytest.mark.parametrize(
    ("host", "prefix", "group_by", "expected"),
    [
        (
            "a",
            "consul_",
            ("service", "tag", "datacenter", "meta"),
            [
                "consul_dc_dc1",
                "consul_meta_rack_r1",
                "consul_service_api",
                "consul_service_web",
                "consul_tag_primary",
                "consul_tag_v1",
            ],
        ),
        ("a", "c_", ("service",), ["c_service_api", "c_service_web"]),
        ("a", "", ("meta", "datacenter"), ["dc_dc1", "meta_rack_r1"]),
        ("idle", "consul_", ("service", "tag", "datacenter", "meta"), ["consul_dc_dc1"]),
        ("b", "consul_", (), []),
    ],
)
def test_host_groups(host, prefix, group_by, expected):
    hostvars = dict(build_hosts(CATALOG, "nodes"))[host]
    assert host_groups(hostvars, prefix, group_by) == expected


@pytest.mark.parametrize(
    ("path", "accepted"),
    [
        ("skynet.consul.yml", True),
        ("consul.yaml", True),
        ("prod.consul.yaml", True),
        ("consul.json", False),
        ("inventory.yml", False),
        ("consul.yml.bak", False),
    ],
)
def test_verify_file_wants_the_suffix(tmp_path, path, accepted):
    f = tmp_path / path
    f.write_text("plugin: cyberdyne.skynet.consul\n")
    assert InventoryModule().verify_file(str(f)) is accepted


def test_verify_file_wants_an_existing_file(tmp_path):
    assert not InventoryModule().verify_file(str(tmp_path / "missing.consul.yml"))


@pytest.mark.parametrize(
    ("reads", "expected"),
    [
        ({"nodes": 3, "services": ["consul", "web"]}, []),
        ({"nodes": 3, "services": None}, []),
        (
            {"nodes": 0, "services": []},
            ["every node of the catalog (none visible)", "every service of the catalog (none visible)"],
        ),
        ({"nodes": 2, "services": []}, ["every service of the catalog (none visible)"]),
        (
            {"nodes": 0, "services": ["consul", "web"], "empty_services": ["consul", "web"]},
            [
                "every node of the catalog (none visible)",
                "the instances of service(s) consul, web (listed, but none visible)",
            ],
        ),
        (
            {
                "nodes": None,
                "services": None,
                "refused": [("the catalog's nodes", "ACL not found"), ("the catalog's services", "")],
            },
            ["the catalog's nodes (refused: ACL not found)", "the catalog's services (refused: permission denied)"],
        ),
        (
            {"nodes": 4, "services": ["web"], "filtered": ["/v1/catalog/nodes", "/v1/catalog/nodes"]},
            ["part of /v1/catalog/nodes (Consul filtered the answer)"],
        ),
    ],
)
def test_acl_denials(reads, expected):
    assert acl_denials(**reads) == expected


def test_many_hidden_services_are_summed_up():
    names = [f"s{i:02}" for i in range(25)]
    (phrase,) = acl_denials(5, names, names)
    assert phrase == (
        "the instances of service(s) s00, s01, s02, s03, s04, s05, s06, s07, s08, s09 and 15 more "
        "(listed, but none visible)"
    )


@pytest.mark.parametrize(
    ("token_given", "who"),
    [
        (False, "to its anonymous token, as no token was given (option token or CONSUL_HTTP_TOKEN),"),
        (True, "to the token given (option token or CONSUL_HTTP_TOKEN),"),
    ],
)
def test_denial_message_names_consul_the_token_and_what_was_denied(token_given, who):
    message = denial_message("https://consul:8501", token_given, ["a", "b"])
    assert message.startswith(f"Consul at https://consul:8501 denied part of its catalog {who}")
    assert "so the inventory misses hosts: a; b. The token needs node:read and service:read" in message
