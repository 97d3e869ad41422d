"""Component policies and derived tokens: stable across runs, distinct per node and generation, least privilege."""

from __future__ import annotations

import uuid

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul_acl import COMPONENTS, rules, tokens
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

MANAGEMENT = "9eb8ce33-110c-40a9-98fd-cd76742836b1"


def test_the_same_inputs_derive_the_same_tokens_on_every_run():
    first = tokens(MANAGEMENT, "docker-1", ["agent", "registrator"], ["web"])
    assert first == tokens(MANAGEMENT, "docker-1", ["agent", "registrator"], ["web"])
    for token in first.values():
        assert uuid.UUID(token["accessor"]).version == 4 and uuid.UUID(token["secret"]).version == 4
        assert token["accessor"] != token["secret"]


def test_tokens_differ_by_node_generation_and_management_token_but_dns_is_shared():
    one = tokens(MANAGEMENT, "node-1", COMPONENTS)
    two = tokens(MANAGEMENT, "node-2", COMPONENTS)
    assert one["dns"] == two["dns"]
    secrets = [t["secret"] for c, t in one.items() if c != "dns"] + [t["secret"] for c, t in two.items() if c != "dns"]
    assert len(set(secrets)) == len(secrets)
    rotated = tokens(MANAGEMENT, "node-1", COMPONENTS, generation=2)
    assert not {t["secret"] for t in one.values()} & {t["secret"] for t in rotated.values()}
    other = tokens(str(uuid.uuid4()), "node-1", COMPONENTS)
    assert not {t["accessor"] for t in one.values()} & {t["accessor"] for t in other.values()}
    assert one["agent"]["policy"] == "skynet-agent-node-1" and one["registrator"]["policy"] == "skynet-registrator"


def test_a_shared_policy_is_the_same_from_every_node_so_that_no_play_rewrites_another_plays():
    # site.yml creates the shared policies once per play (servers, then clients): any field that named the
    # node would flip on every run.
    one = tokens(MANAGEMENT, "server-1", COMPONENTS, services=["web"])
    two = tokens(MANAGEMENT, "lb-1", COMPONENTS, services=["web"])
    fields = ("policy", "rules", "policy_description")
    for component in set(COMPONENTS) - {"agent"}:
        assert [one[component][f] for f in fields] == [two[component][f] for f in fields], component
    assert one["agent"]["policy_description"] == "skynet agent on server-1"
    assert one["registrator"]["description"] == "skynet registrator on server-1"


def test_each_component_gets_only_what_it_needs():
    def of(component):
        return rules(component, "lb-1", ["web", "db"], ["batch-"])

    assert of("agent") == 'node "lb-1" { policy = "write" }\nservice_prefix "" { policy = "read" }\n'
    assert "key_prefix" not in of("registrator") and 'service "web" { policy = "write" }' in of("registrator")
    assert 'service_prefix "batch-" { policy = "write" }' in of("registrator")
    haproxy = of("haproxy")
    assert 'key_prefix "skynet/bluegreen/" { policy = "read" }' in haproxy
    # the activator's wakes are the only thing a load balancer writes
    writes = [line for line in haproxy.splitlines() if "write" in line]
    assert writes == ['key_prefix "skynet/wake/" { policy = "write" }']
    assert "write" not in of("prometheus") and "write" not in of("dns")
    assert 'agent_prefix "" { policy = "read" }' in of("prometheus")
    scaler = of("autoscaler")
    assert 'key_prefix "skynet/" { policy = "write" }' in scaler and 'session_prefix "" { policy = "write" }' in scaler
    assert 'service "db" { policy = "write" }' in scaler and 'service_prefix "" { policy = "write" }' not in scaler
    # its node writes are the EC2 instances' own nodes, named after them
    assert [line for line in scaler.splitlines() if line.startswith("node")] == [
        'node_prefix "" { policy = "read" }',
        'node_prefix "i-" { policy = "write" }',
    ]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: tokens("not-a-uuid", "n", ["agent"]), "must be a UUID"),
        (lambda: tokens(MANAGEMENT, 'n" { policy = "write" } key_prefix "', ["agent"]), "consul_node_name"),
        (lambda: tokens(MANAGEMENT, "n", ["registrator"], ['web" {']), "consul_acl_services"),
        (lambda: tokens(MANAGEMENT, "n", ["registrator"], [], ['x"']), "consul_acl_service_prefixes"),
        (lambda: tokens(MANAGEMENT, "n", ["root"]), "unknown component 'root'"),
        (lambda: tokens(MANAGEMENT, "n", ["agent"], generation=0), "consul_acl_tokens_generation"),
    ],
)
def test_bad_input_is_refused_naming_it(call, message):
    with pytest.raises(SkynetError, match=message):
        call()
