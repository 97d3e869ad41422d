# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The compute drivers by name: one argument spec and one factory for every module."""

from __future__ import annotations

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _consul, _docker_driver, _ec2_driver

COMPUTES = ("docker", "ec2")


def compute_argument_spec():
    """`compute` and the options of every driver (doc fragments cyberdyne.skynet.docker and .ec2)."""
    return dict(
        compute=dict(type="str", choices=list(COMPUTES), default="docker"),
        **_docker_driver.docker_argument_spec(),
        **_ec2_driver.ec2_argument_spec(),
    )


def missing_library(params):
    """(library, import error) that Consul or the chosen compute needs and is not installed, or None."""
    if not _consul.HAS_CONSUL:
        return "py-consul", _consul.CONSUL_IMPORT_ERROR
    if params["compute"] == "docker" and not _docker_driver.HAS_DOCKER:
        return "docker", _docker_driver.DOCKER_IMPORT_ERROR
    if params["compute"] == "ec2" and not _ec2_driver.HAS_BOTO3:
        return "boto3", _ec2_driver.BOTO3_IMPORT_ERROR
    return None


def make_driver(params):
    if params["compute"] == "ec2":
        return _ec2_driver.Ec2Driver.from_params(params)
    return _docker_driver.DockerDriver(
        params["docker_host"],
        advertise_address=params["advertise_address"],
        bind_address=params["bind_address"],
        tls_ca_cert=params["tls_ca_cert"],
        tls_client_cert=params["tls_client_cert"],
        tls_client_key=params["tls_client_key"],
        validate_certs=params["validate_certs"],
    )
