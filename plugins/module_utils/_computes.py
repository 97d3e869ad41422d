# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named computes (`skynet_computes`): parsed and checked as a whole, before anything is read or changed.

Pure code. A compute is a Docker pool (`type: docker`, `hosts:`) or an EC2 account and region
(`type: ec2`, `subnets:`). Without `computes`, the single-endpoint options of a module make a pool of one
named `default`, so playbooks written for one Docker API endpoint keep working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _names
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._external import PROBERS

DEFAULT = "default"
TYPES = ("docker", "ec2")
HOST_KEYS = {"name", "url", "tls", "address", "bind_address", "consul_url", "zone", "capacity"}
TLS_KEYS = {"ca_cert", "client_cert", "client_key", "verify"}
EC2_KEYS = {"type", "region", "endpoint_url", "profile", "instance_type", "subnets", "security_groups", "key_name"}
EC2_KEYS |= {"user_data", "subnet_id", "ec2_health"}
SECRET_KEYS = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "secret_key", "access_key"}


@dataclass(frozen=True)
class DockerHost:
    name: str
    url: str
    address: str
    bind_address: str = ""
    consul_url: str = ""
    zone: str = ""
    capacity: int | None = None
    tls: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DockerPool:
    name: str
    hosts: tuple = ()
    type: str = "docker"

    def zones(self):
        return {h.zone for h in self.hosts if h.zone}


@dataclass(frozen=True)
class Ec2Compute:
    name: str
    options: dict = field(default_factory=dict)
    subnets: tuple = ()  # ((subnet id, zone), ...)
    type: str = "ec2"

    def zones(self):
        return {z for _s, z in self.subnets if z}


def _host(compute, n, raw):
    where = f"computes.{compute}.hosts[{n}]"
    if not isinstance(raw, dict):
        raise SkynetError(f"{where} must be a dict with name, url and address, not {raw!r}")
    unknown = sorted(set(raw) - HOST_KEYS)
    if unknown:
        raise SkynetError(f"{where} has unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(HOST_KEYS))})")
    name = _names.service_name(raw.get("name"), f"{where}.name")
    url = raw.get("url")
    if not isinstance(url, str) or "://" not in url:
        raise SkynetError(f"{where}.url {url!r} is not a Docker API URL (unix:///path.sock or tcp://host:port)")
    address = raw.get("address")
    if not isinstance(address, str) or not address or any(c.isspace() for c in address):
        raise SkynetError(f"{where}.address {address!r} is not an address: the host's instances are reached at it")
    capacity = raw.get("capacity")
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0):
        raise SkynetError(f"{where}.capacity must be a whole number, 0 or more, not {capacity!r}")
    tls = raw.get("tls") or {}
    if not isinstance(tls, dict) or set(tls) - TLS_KEYS:
        raise SkynetError(f"{where}.tls must be a dict of {', '.join(sorted(TLS_KEYS))}, not {tls!r}")
    zone = raw.get("zone") or ""
    if zone:
        _names.kv_segment(zone, f"{where}.zone")
    return DockerHost(
        name=name,
        url=url,
        address=address,
        bind_address=raw.get("bind_address") or "",
        consul_url=raw.get("consul_url") or "",
        zone=zone,
        capacity=capacity,
        tls=dict(tls),
    )


def _docker(name, raw):
    hosts = raw.get("hosts")
    if not isinstance(hosts, list) or not hosts:
        raise SkynetError(f"computes.{name}: a docker compute needs hosts, a list of at least one Docker API endpoint")
    parsed = tuple(_host(name, n, h) for n, h in enumerate(hosts))
    for what in ("name", "url"):
        seen = {}
        for n, h in enumerate(parsed):
            value = getattr(h, what)
            if value in seen:
                raise SkynetError(
                    f"computes.{name}: hosts[{seen[value]}] and hosts[{n}] have the same {what} {value!r}: "
                    "one endpoint, one entry"
                )
            seen[value] = n
    return DockerPool(name, parsed)


def _ec2(name, raw):
    secrets = sorted(set(raw) & SECRET_KEYS)
    if secrets:
        raise SkynetError(
            f"computes.{name}: credentials ({', '.join(secrets)}) do not belong in computes, which is not secret: "
            "use the module's aws_* options (no_log), the environment or an AWS profile"
        )
    unknown = sorted(set(raw) - EC2_KEYS)
    if unknown:
        raise SkynetError(
            f"computes.{name} has unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(EC2_KEYS))})"
        )
    if raw.get("ec2_health") is not None and raw["ec2_health"] not in PROBERS:
        raise SkynetError(
            f"computes.{name}.ec2_health {raw['ec2_health']!r} is not one of {', '.join(PROBERS)} "
            "(who runs the health checks of its instances)"
        )
    subnets = []
    for n, s in enumerate(raw.get("subnets") or ()):
        if not isinstance(s, dict) or not isinstance(s.get("id"), str) or not s["id"]:
            raise SkynetError(f"computes.{name}.subnets[{n}] must be a dict with an id (and a zone), not {s!r}")
        subnets.append((s["id"], s.get("zone") or ""))
    if raw.get("subnet_id") and not subnets:
        subnets.append((raw["subnet_id"], ""))
    ids = [s for s, _z in subnets]
    if len(set(ids)) != len(ids):
        raise SkynetError(f"computes.{name}: a subnet is listed twice in subnets")
    options = {k: v for k, v in raw.items() if k not in ("type", "subnets", "subnet_id")}
    return Ec2Compute(name, options, tuple(subnets))


def parse(raw):
    """{name: DockerPool | Ec2Compute} from a `computes` dict; SkynetError naming the first problem."""
    if not isinstance(raw, dict):
        raise SkynetError(f"computes must be a dict of name: definition, not {raw!r}")
    out = {}
    for name, definition in raw.items():
        _names.service_name(name, "computes name")
        if not isinstance(definition, dict):
            raise SkynetError(f"computes.{name} must be a dict with a type ({' or '.join(TYPES)}), not {definition!r}")
        kind = definition.get("type")
        if kind == "docker":
            unknown = sorted(set(definition) - {"type", "hosts"})
            if unknown:
                raise SkynetError(
                    f"computes.{name} has unknown key(s) {', '.join(unknown)} (a docker compute has hosts)"
                )
            out[name] = _docker(name, definition)
        elif kind == "ec2":
            out[name] = _ec2(name, definition)
        else:
            raise SkynetError(f"computes.{name}: type {kind!r} is not one of {', '.join(TYPES)}")
    return out


def legacy(params):
    """The `default` compute from a module's single-endpoint options (compute, docker_host, region, ...)."""
    kind = params.get("compute") or "docker"
    if kind not in TYPES:
        raise SkynetError(
            f"compute {kind!r} names no compute: without computes it is the provider, {' or '.join(TYPES)}"
        )
    if kind == "ec2":
        keys = EC2_KEYS - {"type", "subnets"}
        raw = {k: params[k] for k in keys if params.get(k) is not None}
        return Ec2Compute(DEFAULT, {k: v for k, v in raw.items() if k != "subnet_id"}, _legacy_subnets(params))
    tls = {"ca_cert": params.get("tls_ca_cert"), "client_cert": params.get("tls_client_cert")}
    tls.update(client_key=params.get("tls_client_key"), verify=params.get("validate_certs", True))
    # The one endpoint has no name: its instances name no host (they are on the node they are registered on).
    host = DockerHost(
        name="",
        url=params.get("docker_host") or "unix:///var/run/docker.sock",
        address=params.get("advertise_address") or "127.0.0.1",
        bind_address=params.get("bind_address") or "",
        tls={k: v for k, v in tls.items() if v is not None},
    )
    return DockerPool(DEFAULT, (host,))


def _legacy_subnets(params):
    return ((params["subnet_id"], ""),) if params.get("subnet_id") else ()


def resolve(params):
    """Every compute a module may use: those of `computes`, else the pool of one of its single-endpoint options."""
    raw = params.get("computes")
    if raw:
        return parse(raw)
    return {DEFAULT: legacy(params)}


def compute_of(definition, computes, field="compute"):
    """The compute a service definition names (`compute:`, default `default`); SkynetError when unknown."""
    name = definition.get("compute") or DEFAULT
    if name not in computes:
        known = ", ".join(sorted(computes)) or "none"
        raise SkynetError(f"{field} {name!r} is not a defined compute (defined: {known})")
    compute = computes[name]
    zones = definition.get("zones") or ()
    if isinstance(zones, str):
        zones = (zones,)
    missing = sorted(set(zones) - compute.zones())
    if zones and len(missing) == len(set(zones)):
        have = ", ".join(sorted(compute.zones())) or "none"
        raise SkynetError(
            f"service {definition.get('name')} is pinned to zone(s) {', '.join(missing)}, which no host or subnet of "
            f"compute {name} has (zones: {have})"
        )
    return compute


def _host_label(name):
    label = re.sub(r"[^a-z0-9-]+", "-", str(name).lower()).strip("-")[:63].strip("-")
    return label if label[:1].isalpha() else f"h-{label}"[:63].strip("-")


def _agent_url(address, hostvars, tls_default):
    tls = hostvars.get("consul_tls") or {}
    enabled = tls.get("enabled", tls_default)
    if str(enabled).lower() in ("true", "1", "yes"):
        return f"https://{address}:{tls.get('https_port') or 8501}"
    return f"http://{address}:8500"


def pool_from_hosts(hosts, local=None, local_consul_url=None, consul_tls=None):
    """The `default` docker compute of an inventory's Docker hosts: [(inventory name, vars), ...].

    Each host's entry takes its own `skynet_docker_url`, `skynet_docker_tls`, `skynet_advertise_address`,
    `skynet_consul_agent_url`, `skynet_zone` and `skynet_capacity` when set; otherwise its registrator's
    advertise address (else its default IPv4 address, ansible_host, its name), the Docker API on that
    address (tcp, port 2376) except on the local host, which uses its registrator's socket, and that host's
    Consul agent at its own default IPv4 address (else the address above): HTTPS on the port of the consul role's
    fact `consul_tls` when it says TLS is on, else HTTP on 8500 (on the local host, local_consul_url). A host
    without the fact (a run that did not run the consul role: AWX) takes consul_tls (True: HTTPS on 8501).
    """
    entries = []
    for name, hv in hosts:
        facts = hv.get("ansible_facts") or {}
        own_address = (facts.get("default_ipv4") or {}).get("address")
        address = (
            hv.get("skynet_advertise_address")
            or hv.get("registrator_advertise_address")
            or own_address
            or hv.get("ansible_host")
            or name
        )
        is_local = name == local
        url = hv.get("skynet_docker_url") or (
            hv.get("registrator_docker_host") if is_local and hv.get("registrator_docker_host") else None
        )
        agent = _agent_url(own_address or address, hv, consul_tls)
        entry = {
            "name": hv.get("skynet_host_name") or _host_label(name),
            "url": url or f"tcp://{address}:2376",
            "address": address,
            "consul_url": hv.get("skynet_consul_agent_url")
            or (local_consul_url if is_local and local_consul_url else agent),
        }
        for key, var in (("tls", "skynet_docker_tls"), ("zone", "skynet_zone"), ("capacity", "skynet_capacity")):
            if hv.get(var) not in (None, "", {}):
                entry[key] = hv.get(var)
        entries.append(entry)
    return {DEFAULT: {"type": "docker", "hosts": entries}} if entries else {}
