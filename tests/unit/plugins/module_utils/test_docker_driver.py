"""What the Docker driver reads of a container, from its inspect data or from a (sparse) listing of it."""

from __future__ import annotations

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._docker_driver import labels_of, published_port

INSPECTED = {
    "Config": {"Labels": {"io.skynet.service": "web"}},
    "NetworkSettings": {"Ports": {"9090/tcp": None, "8080/tcp": [{"HostIp": "10.0.0.1", "HostPort": "33001"}]}},
}
# Podman's and Docker Engine's GET /containers/json: an exposed port that is not published has no PublicPort.
LISTED = {
    "Labels": {"io.skynet.service": "web"},
    "Config": None,
    "NetworkSettings": {"Networks": {"podman": {}}},
    "Ports": [{"PrivatePort": 9090, "Type": "tcp"}, {"IP": "10.0.0.1", "PrivatePort": 8080, "PublicPort": 33001}],
}


@pytest.mark.parametrize(
    ("attrs", "port"),
    [
        (INSPECTED, 33001),
        (LISTED, 33001),
        ({"NetworkSettings": {"Ports": {"8080/tcp": None}}}, 0),
        ({"Ports": [{"PrivatePort": 8080, "Type": "tcp"}]}, 0),
        ({"Ports": None, "NetworkSettings": None}, 0),
    ],
)
def test_the_published_port_is_read_from_inspect_data_or_a_listing(attrs, port):
    assert published_port(attrs) == port


@pytest.mark.parametrize(
    ("attrs", "labels"), [(INSPECTED, {"io.skynet.service": "web"}), (LISTED, {"io.skynet.service": "web"}), ({}, {})]
)
def test_the_labels_are_read_from_inspect_data_or_a_listing(attrs, labels):
    assert labels_of(attrs) == labels
