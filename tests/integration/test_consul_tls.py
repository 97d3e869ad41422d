"""The collection's Consul clients over HTTPS with the agent's certificate verified, as the consul role sets
them up by default (TLS on): a module, the inventory plugin, skynet-consul-sd (Prometheus's discovery) and the
registrator's connection, against a real agent whose certificate comes from a CA made by `consul tls` (the
tls_consul fixture; the inventory plugin's test is in test_inventory_consul.py). Without the CA the same calls
fail, naming Consul and the certificate."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _registrator

from harness.ansible import run_module
from harness.stack import DAEMON_ENV, daemon


def test_the_agent_answers_https_only_with_its_ca(tls_consul):
    consul = tls_consul[0]
    assert requests.get(f"{consul.https_url}/v1/status/leader", verify=consul.ca_file, timeout=5).json()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{consul.https_url}/v1/status/leader", timeout=5)


def test_a_module_reads_consul_over_https_with_the_ca_and_refuses_it_without(tls_consul):
    consul, name = tls_consul
    args = {"consul_url": consul.https_url, "names": [name]}
    ok = run_module("cyberdyne.skynet.skynet_info", {**args, "consul_ca_cert": consul.ca_file})
    assert not ok.get("failed"), ok.get("msg")
    assert [s["name"] for s in ok["services"]] == [name]

    refused = run_module("cyberdyne.skynet.skynet_info", args)
    assert refused.get("failed")
    assert f"Consul at {consul.https_url}" in refused["msg"] and "CERTIFICATE_VERIFY_FAILED" in refused["msg"]


def test_skynet_consul_sd_writes_the_targets_over_https_with_the_ca(tmp_path, tls_consul):
    consul, name = tls_consul
    argv = [*daemon("skynet-consul-sd"), f"--consul-url={consul.https_url}", f"--output-dir={tmp_path}", "--once"]
    env = {**os.environ, **DAEMON_ENV}
    run = subprocess.run(
        [*argv, f"--ca-file={consul.ca_file}"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    (group,) = json.loads((tmp_path / f"{name}.json").read_text())
    assert group["targets"] == ["127.0.0.1:8080"]

    refused = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr


def test_the_registrator_connects_with_the_ca_it_is_given(tls_consul):
    consul, name = tls_consul
    url = f"--consul-url={consul.https_url}"
    client = _registrator.connect_consul(_registrator.parse_args([url, f"--consul-ca-cert={consul.ca_file}"]))
    assert f"{name}-1" in client.agent.services()
    with pytest.raises(requests.exceptions.SSLError):
        _registrator.connect_consul(_registrator.parse_args([url])).agent.services()
