from __future__ import annotations

import json

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul_sd import (
    Catalog,
    ConsulSdError,
    Daemon,
    aggregated_health,
    file_name,
    label_name,
    metrics_text,
    parse_args,
    sync,
    target_group,
    write_files,
)


def check(status, check_id="service:web-1"):
    return {"Status": status, "CheckID": check_id}


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        ([], "passing"),
        ([check("passing"), check("passing", "serfHealth")], "passing"),
        ([check("passing"), check("warning")], "warning"),
        ([check("warning"), check("critical"), check("passing")], "critical"),
        ([check("critical"), check("critical", "_service_maintenance:web-1")], "maintenance"),
        ([check("passing", "_node_maintenance")], "maintenance"),
        ([check("passing"), check("bogus")], ""),
    ],
)
def test_aggregated_health_is_the_worst_status_as_consul_computes_it(checks, expected):
    assert aggregated_health(checks) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [("skynet_color", "skynet_color"), ("metrics-path", "metrics_path"), ("a.b/c", "a_b_c")],
)
def test_label_names_are_sanitized_like_consul_sd(key, expected):
    assert label_name(key) == expected


ENTRY = {
    "Node": {
        "Node": "docker-1",
        "Address": "10.0.0.5",
        "Datacenter": "dc1",
        "Meta": {"rack": "r1"},
        "TaggedAddresses": {"lan": "10.0.0.5"},
    },
    "Service": {
        "ID": "web-abc",
        "Service": "web",
        "Address": "",
        "Port": 40001,
        "Tags": ["blue", "v2"],
        "Meta": {"skynet_color": "blue", "metrics-path": "/m"},
    },
    "Checks": [check("passing", "serfHealth"), check("passing")],
}


def test_a_target_group_carries_every_label_consul_sd_gives():
    group = target_group("web", ENTRY)
    assert group == {
        "targets": ["10.0.0.5:40001"],
        "labels": {
            "__meta_consul_service": "web",
            "__meta_consul_service_id": "web-abc",
            "__meta_consul_service_address": "",
            "__meta_consul_service_port": "40001",
            "__meta_consul_address": "10.0.0.5",
            "__meta_consul_node": "docker-1",
            "__meta_consul_dc": "dc1",
            "__meta_consul_health": "passing",
            "__meta_consul_tags": ",blue,v2,",
            "__meta_consul_service_metadata_skynet_color": "blue",
            "__meta_consul_service_metadata_metrics_path": "/m",
            "__meta_consul_metadata_rack": "r1",
            "__meta_consul_tagged_address_lan": "10.0.0.5",
        },
    }


@pytest.mark.parametrize(
    ("service_address", "node_address", "target"),
    [("192.0.2.7", "10.0.0.5", "192.0.2.7:40001"), ("", "fd00::5", "[fd00::5]:40001")],
)
def test_the_service_address_wins_over_the_node_address(service_address, node_address, target):
    entry = {**ENTRY, "Service": {**ENTRY["Service"], "Address": service_address}}
    entry["Node"] = {**ENTRY["Node"], "Address": node_address}
    assert target_group("web", entry)["targets"] == [target]


def test_no_tags_give_the_separators_alone():
    entry = {**ENTRY, "Service": {**ENTRY["Service"], "Tags": None}}
    assert target_group("web", entry)["labels"]["__meta_consul_tags"] == ",,"


@pytest.mark.parametrize(
    ("service", "expected"),
    [("web", "web.json"), ("web-2.internal", "web-2.internal.json")],
)
def test_file_names_of_plain_service_names(service, expected):
    assert file_name(service) == expected


def test_unusual_service_names_get_distinct_safe_file_names():
    names = {file_name(s) for s in ("a/b", "a_b", "a b", "..x")}
    assert len(names) == 4
    assert all("/" not in n and " " not in n and not n.startswith(".") for n in names)


def test_write_files_writes_changes_only_and_removes_what_is_gone(tmp_path):
    (tmp_path / "old.json").write_text("[]\n")
    (tmp_path / "keep.txt").write_text("not ours")
    assert write_files(tmp_path, {"web.json": "[1]\n", "db.json": "[2]\n"}) == (["db.json", "web.json"], ["old.json"])
    assert write_files(tmp_path, {"web.json": "[1]\n", "db.json": "[3]\n"}) == (["db.json"], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.json", "keep.txt", "web.json"]
    assert (tmp_path / "db.json").read_text() == "[3]\n"


class FakeCatalog:
    def __init__(self, services, fail_on=None):
        self.data, self.fail_on = services, fail_on

    def services(self):
        if self.fail_on == "catalog":
            raise ConsulSdError("Consul at http://x failed on /v1/catalog/services: refused")
        return sorted(self.data)

    def health(self, service):
        if self.fail_on == service:
            raise ConsulSdError(f"Consul at http://x answered 500 to /v1/health/service/{service}: boom")
        return self.data[service]


def test_sync_writes_one_file_per_service(tmp_path):
    result = sync(FakeCatalog({"web": [ENTRY, ENTRY], "consul": []}), tmp_path)
    assert result == {"services": 2, "targets": 2, "written": ["consul.json", "web.json"], "removed": []}
    assert json.loads((tmp_path / "consul.json").read_text()) == []
    assert json.loads((tmp_path / "web.json").read_text())[0]["targets"] == ["10.0.0.5:40001"]


@pytest.mark.parametrize("fail_on", ["catalog", "web"])
def test_a_failing_consul_changes_no_file(tmp_path, fail_on):
    sync(FakeCatalog({"web": [ENTRY], "db": [ENTRY]}), tmp_path)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    with pytest.raises(ConsulSdError):
        sync(FakeCatalog({"web": [], "db": []}, fail_on=fail_on), tmp_path)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_the_daemon_keeps_counting_and_reports_its_metrics(tmp_path):
    metrics = tmp_path / "skynet_consul_sd.prom"
    (tmp_path / "sd").mkdir()
    daemon = Daemon(FakeCatalog({"web": [ENTRY]}, fail_on="catalog"), tmp_path / "sd", metrics_file=str(metrics))
    assert daemon.step() is False
    daemon.catalog.fail_on = None
    assert daemon.step() is True
    daemon.write_metrics()
    text = metrics.read_text()
    assert "skynet_consul_sd_errors_total 1\n" in text
    assert "skynet_consul_sd_targets 1\n" in text
    assert daemon.last_success > 0


def test_metrics_text_is_prometheus_text_format():
    lines = metrics_text(12.5, 3, 7, 0).splitlines()
    assert "# TYPE skynet_consul_sd_errors_total counter" in lines
    assert "skynet_consul_sd_last_success_timestamp_seconds 12.5" in lines


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output-dir=/x", "--interval=0"], "--interval"),
        (["--output-dir=/x", "--consul-url=consul:8500"], "--consul-url"),
        (["--output-dir=/x", "--metrics-file=/t/sd.txt"], ".prom"),
    ],
)
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_consul_url_must_be_http():
    with pytest.raises(ConsulSdError, match="http"):
        Catalog("file:///etc/passwd")
