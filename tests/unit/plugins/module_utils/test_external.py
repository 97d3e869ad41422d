from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import Instance
from ansible_collections.cyberdyne.skynet.plugins.module_utils._external import (
    cas_ops,
    catalog_registration,
    changes,
    duration,
    http_status,
    is_external,
    maintenance_registration,
    probe_target,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import registration

EC2 = Instance(
    "i-0abc", "api", "blue", "ami-1", "10.0.1.7", 9090, 1.0, host="subnet-a", zone="eu-west-1a", checked_by="skynet"
)


@pytest.mark.parametrize(
    ("health", "definition"),
    [
        (
            {"type": "http", "path": "/health", "interval": "5s", "timeout": "2s", "deregister_after": "1m"},
            {
                "HTTP": "http://10.0.1.7:9090/health",
                "Interval": "5s",
                "Timeout": "2s",
                "DeregisterCriticalServiceAfter": "1m",
            },
        ),
        ({"type": "tcp"}, {"TCP": "10.0.1.7:9090", "Interval": "2s", "Timeout": "1s"}),
    ],
)
def test_the_catalog_registration_is_the_agent_one_on_a_node_of_its_own(health, definition):
    body = registration(EC2, health, ("api",))
    assert catalog_registration(body, "i-0abc") == {
        "Node": "i-0abc",
        "Address": "10.0.1.7",
        "NodeMeta": {"skynet-external": "true"},
        "Service": {
            "ID": "skynet-api-i-0abc",
            "Service": "api",
            "Address": "10.0.1.7",
            "Port": 9090,
            "Tags": ["api", "blue"],
            "Meta": {
                "skynet_instance": "i-0abc",
                "skynet_color": "blue",
                "skynet_image": "ami-1",
                "skynet_host": "subnet-a",
                "skynet_zone": "eu-west-1a",
            },
        },
        "Check": {
            "Node": "i-0abc",
            "CheckID": "service:skynet-api-i-0abc",
            "Name": "Service 'api' check",
            "ServiceID": "skynet-api-i-0abc",
            "Status": "critical",
            "Definition": definition,
        },
    }


def test_drain_is_a_critical_maintenance_check_that_leaves_the_node_as_it_is():
    assert maintenance_registration("i-0abc", "10.0.1.7", "skynet-api-i-0abc", "draining") == {
        "Node": "i-0abc",
        "Address": "10.0.1.7",
        "SkipNodeUpdate": True,
        "Check": {
            "Node": "i-0abc",
            "CheckID": "_service_maintenance:skynet-api-i-0abc",
            "Name": "Service Maintenance Mode",
            "Notes": "draining",
            "ServiceID": "skynet-api-i-0abc",
            "Status": "critical",
        },
    }


@pytest.mark.parametrize(("checked_by", "external"), [("agent", False), ("skynet", True), ("esm", True)])
def test_only_an_instance_without_an_agent_is_external(checked_by, external):
    assert is_external(Instance("x", "s", "blue", "i", "a", 1, 0.0, checked_by=checked_by)) is external


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("500ms", 0.5),
        ("1m0s", 60.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("2h", 7200.0),
        ("250us", 0.00025),
        (None, 10.0),
        ("", 10.0),
        ("0s", 10.0),
        ("soon", 10.0),
        ("5", 10.0),
        ("1s garbage", 10.0),
    ],
)
def test_duration_reads_go_durations_and_falls_back_to_consuls_default(text, seconds):
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("definition", "target"),
    [
        ({"HTTP": "http://10.0.1.7:9090/health", "Timeout": "2s"}, ("http", "http://10.0.1.7:9090/health", 2.0)),
        ({"TCP": "10.0.1.7:9090", "Timeout": "500ms"}, ("tcp", "10.0.1.7:9090", 0.5)),
        ({"TCP": "10.0.1.7:9090"}, ("tcp", "10.0.1.7:9090", 10.0)),
        ({}, None),  # a maintenance check, or a TTL check: nothing to probe
        (None, None),
    ],
)
def test_probe_target(definition, target):
    assert probe_target({"CheckID": "c", "Definition": definition}) == target


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (200, "passing"),
        (204, "passing"),
        (299, "passing"),
        (301, "critical"),
        (404, "critical"),
        (429, "warning"),
        (500, "critical"),
        (503, "critical"),
    ],
)
def test_http_status_is_consuls(code, status):
    assert http_status(code) == status


def check(node, status, index, check_id=None):
    return {
        "Node": node,
        "CheckID": check_id or f"service:skynet-api-{node}",
        "Status": status,
        "Output": "before",
        "Definition": {"TCP": "10.0.1.7:9090"},
        "ModifyIndex": index,
    }


@pytest.mark.parametrize(
    ("checks", "probed", "written"),
    [
        # unchanged: nothing is written, whatever the output says
        ([check("i-1", "passing", 7)], {("i-1", "service:skynet-api-i-1"): ("passing", "other output")}, []),
        # changed: written with the index it was read at
        (
            [check("i-1", "critical", 7)],
            {("i-1", "service:skynet-api-i-1"): ("passing", "ok")},
            [{**check("i-1", "critical", 7), "Status": "passing", "Output": "ok"}],
        ),
        # not probed (its node is not Skynet's to check): left alone
        ([check("i-2", "critical", 3)], {}, []),
        # only what changed, among several
        (
            [check("i-1", "passing", 7), check("i-2", "passing", 8), check("i-3", "warning", 9)],
            {
                ("i-1", "service:skynet-api-i-1"): ("passing", "ok"),
                ("i-2", "service:skynet-api-i-2"): ("critical", "refused"),
                ("i-3", "service:skynet-api-i-3"): ("passing", "ok"),
            },
            [
                {**check("i-2", "passing", 8), "Status": "critical", "Output": "refused"},
                {**check("i-3", "warning", 9), "Status": "passing", "Output": "ok"},
            ],
        ),
    ],
)
def test_changes_writes_only_the_statuses_that_changed(checks, probed, written):
    assert changes(checks, probed) == written


def test_each_write_is_a_check_and_set_on_the_index_it_was_read_at():
    ops = cas_ops([{**check("i-1", "critical", 7), "Status": "passing"}])
    assert ops == [{"Check": {"Verb": "cas", "Check": {**check("i-1", "critical", 7), "Status": "passing"}}}]
    assert ops[0]["Check"]["Check"]["ModifyIndex"] == 7


@pytest.mark.parametrize(
    ("prober", "meta"),
    [("skynet", {"skynet-external": "true"}), ("esm", {"external-node": "true", "external-probe": "true"})],
)
def test_the_node_meta_says_who_runs_the_check_so_consul_esm_adopts_only_its_own(prober, meta):
    assert catalog_registration(registration(EC2, {}, ()), "i-0abc", prober)["NodeMeta"] == meta
