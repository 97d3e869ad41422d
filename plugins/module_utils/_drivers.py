# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The computes by name: one argument spec and one factory for every module."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _computes, _consul, _docker_driver, _ec2_driver
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._pool import PoolDriver

COMPUTES = ("docker", "ec2")


def compute_argument_spec():
    """`computes`, `compute` and the options of every driver (doc fragments cyberdyne.skynet.docker and .ec2)."""
    return dict(
        computes=dict(type="dict"),
        compute=dict(type="str"),
        **_docker_driver.docker_argument_spec(),
        **_ec2_driver.ec2_argument_spec(),
    )


@dataclass
class Computes:
    """The drivers by compute name, and the Consul agent of each Docker host that names one."""

    definitions: dict
    drivers: dict
    agents: dict = field(default_factory=dict)

    def driver_of(self, definition, field_name="compute"):
        return self.drivers[_computes.compute_of(definition, self.definitions, field_name).name]

    @classmethod
    def of(cls, driver):
        """One driver as the compute `default` (a pool of one), for callers with a single endpoint."""
        return cls({_computes.DEFAULT: _computes.DockerPool(_computes.DEFAULT)}, {_computes.DEFAULT: driver})


def definitions(params):
    """{name: compute definition} of a module's options, every host name unique across them."""
    defs = _computes.resolve(params)
    seen = {}
    for compute in defs.values():
        for host in getattr(compute, "hosts", ()):
            if host.name in seen:
                raise SkynetError(
                    f"host {host.name} is in computes {seen[host.name]} and {compute.name}: one name, one host"
                )
            seen[host.name] = compute.name
    return defs


def parse(params):
    """The computes of a module's options, parsed and checked once a run (what main() does first, then passes
    along): {name: definition}, or the SkynetError saying what is wrong with them, which make_computes raises
    where the module reports its errors."""
    try:
        return definitions(params)
    except SkynetError as e:
        return e


def missing_library(params, parsed):
    """(library, import error) that Consul or one of the computes (parse()) needs and is not installed, or None."""
    if not _consul.HAS_CONSUL:
        return "py-consul", _consul.CONSUL_IMPORT_ERROR
    if isinstance(parsed, SkynetError):
        types = {params.get("compute") or "docker"}  # the bad definition is reported when the module reads it
    else:
        types = {c.type for c in parsed.values()}
    if "docker" in types and not _docker_driver.HAS_DOCKER:
        return "docker", _docker_driver.DOCKER_IMPORT_ERROR
    if "ec2" in types and not _ec2_driver.HAS_BOTO3:
        return "boto3", _ec2_driver.BOTO3_IMPORT_ERROR
    return None


def _docker_driver_of(host):
    tls = host.tls
    return _docker_driver.DockerDriver(
        host.url,
        advertise_address=host.address,
        bind_address=host.bind_address or None,
        tls_ca_cert=tls.get("ca_cert"),
        tls_client_cert=tls.get("client_cert"),
        tls_client_key=tls.get("client_key"),
        validate_certs=tls.get("verify", True),
        host_name=host.name,
        zone=host.zone,
    )


def make_computes(params, parsed, zones_of=None):
    """Computes from a module's options and their parse(): `computes`, or the pool of one its single-endpoint
    options make; the parse's error, if it had one.

    zones_of(service) gives the zones a service is pinned to (placement keeps its instances there).
    """
    if isinstance(parsed, SkynetError):
        raise parsed
    defs = parsed
    drivers, agents = {}, {}
    for name, compute in defs.items():
        if compute.type == "ec2":
            drivers[name] = _ec2_driver.Ec2Driver.from_params({**params, **compute.options}, subnets=compute.subnets)
            continue
        factories = {h.name: functools.partial(_docker_driver_of, h) for h in compute.hosts}
        drivers[name] = PoolDriver(compute, factories, zones_of)
        for host in compute.hosts:
            if host.consul_url:
                agents[host.name] = _consul.connect({**params, "consul_url": host.consul_url})
    return Computes(defs, drivers, agents)


def make_driver(params, parsed):
    """The driver of the compute `compute` names (modules that drive one compute at a time)."""
    computes = make_computes(params, parsed)
    return computes.driver_of({"compute": params.get("compute") if params.get("computes") else None}), computes
