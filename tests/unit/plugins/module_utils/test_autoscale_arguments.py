from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._autoscale_arguments import arguments
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

SERVICES = [{"name": "web", "image": "web:1", "port": 8080}]
DEFAULTS = {
    "services": SERVICES,
    "consul_url": "http://127.0.0.1:8500",
    "prometheus_url": "http://127.0.0.1:9090",
    "docker_host": "unix:///var/run/docker.sock",
    "advertise_address": "127.0.0.1",
    "dry_run": False,
    "lock_wait": 0,
    "drain_period": 5,
}


@pytest.mark.parametrize(
    ("settings", "changed"),
    [
        ({}, {}),
        (
            {"skynet_consul_url": "https://c:8501", "skynet_consul_token": "t"},
            {"consul_url": "https://c:8501", "consul_token": "t"},
        ),
        ({"skynet_consul_ca_cert": "/etc/ca.pem"}, {"consul_ca_cert": "/etc/ca.pem"}),
        ({"skynet_computes": {"default": {"type": "ec2"}}}, {"computes": {"default": {"type": "ec2"}}}),
        ({"skynet_autoscale_limit": ["web"], "skynet_autoscale_lock_wait": 30}, {"limit": ["web"], "lock_wait": 30}),
        ({"skynet_autoscale_dry_run": True, "skynet_autoscale_drain_period": 1}, {"dry_run": True, "drain_period": 1}),
        (
            {"skynet_prometheus_url": "http://p:9090", "skynet_docker_host": "tcp://d:2376"},
            {"prometheus_url": "http://p:9090", "docker_host": "tcp://d:2376"},
        ),
        ({"skynet_advertise_address": "10.0.0.5"}, {"advertise_address": "10.0.0.5"}),
    ],
)
def test_each_setting_gives_its_argument_and_the_others_their_defaults(settings, changed):
    assert arguments({"skynet_services": SERVICES, **settings}) == {**DEFAULTS, **changed}


@pytest.mark.parametrize("empty", [None, "", [], {}])
def test_an_empty_setting_is_unset(empty):
    settings = {
        "skynet_services": SERVICES,
        "skynet_consul_url": empty,
        "skynet_consul_token": empty,
        "skynet_computes": empty,
        "skynet_autoscale_limit": empty,
    }
    assert arguments(settings) == DEFAULTS


def test_settings_that_are_not_the_cycles_are_ignored():
    settings = {"skynet_services": SERVICES, "skynet_zone": "a", "skynet_autoscale_metrics_file": "/x", "other": 1}
    assert arguments(settings) == DEFAULTS


def test_an_empty_list_of_services_is_kept():
    assert arguments({"skynet_services": []})["services"] == []


@pytest.mark.parametrize("settings", [{}, {"skynet_services": None}, [], "skynet_services"])
def test_settings_without_services_are_refused(settings):
    with pytest.raises(SkynetError, match=r"skynet_services|mapping"):
        arguments(settings)


def test_the_settings_are_left_as_they_were():
    settings = {"skynet_services": SERVICES, "skynet_autoscale_limit": ["web"]}
    arguments(settings)
    assert settings == {"skynet_services": SERVICES, "skynet_autoscale_limit": ["web"]}
