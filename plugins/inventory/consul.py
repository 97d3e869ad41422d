# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: consul
short_description: Hosts and groups from the Consul catalog
version_added: 0.1.0
author: Skynet developers (@cyberdyne)
description:
  - Makes hosts of the nodes of a Consul datacenter's catalog, or of its service instances
    (O(hosts=services)), and groups them by service, tag, datacenter and node meta.
  - Group names are O(group_prefix) followed by the kind of group and the name it was made from,
    every character other than a letter, digit or V(_) replaced by V(_), for example
    C(consul_service_web), C(consul_tag_primary), C(consul_dc_dc1) or C(consul_meta_rack_r1).
    Node meta with an empty value makes no group.
  - "Every host gets these variables: C(ansible_host) (the node's address, or the instance's
    address for service hosts), C(consul_node), C(consul_datacenter), C(consul_node_meta),
    C(consul_services) (a list of C(name), C(id), C(port), C(tags), C(address)) and C(consul_tags)
    (the tags of those instances). Service hosts also get C(consul_service), C(consul_service_id)
    and C(consul_service_port); their C(consul_services) holds only their own instance."
  - The configuration file name must end in C(consul.yml) or C(consul.yaml).
requirements:
  - py-consul
extends_documentation_fragment:
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
options:
  plugin:
    description:
      - Marks the file as a configuration of this plugin.
    required: true
    type: str
    choices: [cyberdyne.skynet.consul]
  url:
    description:
      - Address of the Consul agent's HTTP API.
      - Defaults to C(http://127.0.0.1:8500) when neither this option nor E(CONSUL_HTTP_ADDR) is set.
    type: str
    env:
      - name: CONSUL_HTTP_ADDR
  token:
    description:
      - ACL token sent with every request to Consul. It is never shown in messages or host variables.
    type: str
    env:
      - name: CONSUL_HTTP_TOKEN
  datacenter:
    description:
      - Datacenter whose catalog is read; the agent's own datacenter when omitted.
    type: str
  ca_cert:
    description:
      - CA bundle that signs the Consul agent's TLS certificate.
    type: path
    env:
      - name: CONSUL_CACERT
  client_cert:
    description:
      - Client certificate for Consul agents that verify incoming connections.
    type: path
    env:
      - name: CONSUL_CLIENT_CERT
  client_key:
    description:
      - Key of O(client_cert).
    type: path
    env:
      - name: CONSUL_CLIENT_KEY
  validate_certs:
    description:
      - Whether to verify the Consul agent's TLS certificate.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for each answer from Consul.
    type: float
    default: 10
  hosts:
    description:
      - V(nodes) makes a host of every catalog node, named after the node.
      - V(services) makes a host of every service instance, named C(<service id>@<node>).
    type: str
    choices: [nodes, services]
    default: nodes
  services:
    description:
      - Only instances of these services. When set with O(hosts=nodes), only nodes that run at
        least one of them become hosts.
      - All services when empty.
    type: list
    elements: str
    default: []
  only_passing:
    description:
      - Only instances whose health checks, and those of their node, all pass.
        When set with O(hosts=nodes), only nodes that run at least one such instance become hosts.
    type: bool
    default: false
  group_prefix:
    description:
      - Prefix of the names of the groups this plugin makes.
    type: str
    default: consul_
  group_by:
    description:
      - Which groups to make.
    type: list
    elements: str
    choices: [service, tag, datacenter, meta]
    default: [service, tag, datacenter, meta]
"""

EXAMPLES = r"""
# skynet.consul.yml: every node of the local agent's datacenter
plugin: cyberdyne.skynet.consul

---
# prod.consul.yml: instances of two services that pass their health checks, over TLS
plugin: cyberdyne.skynet.consul
url: https://consul.example.com:8501
ca_cert: /etc/consul/ca.pem
datacenter: eu-west
hosts: services
services: [web, api]
only_passing: true
compose:
  ansible_port: 22
  http_endpoint: "'http://' ~ ansible_host ~ ':' ~ consul_service_port"
groups:
  primaries: "'primary' in consul_tags"
keyed_groups:
  - key: consul_node_meta.rack | default('none')
    prefix: rack

---
# cached.consul.yml: the catalog read at most once a minute
plugin: cyberdyne.skynet.consul
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/skynet-inventory
cache_timeout: 60
"""

import re

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul import (
    HAS_CONSUL,
    connect,
    describe_failure,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

try:
    import consul
    import requests

    CONSUL_ERRORS = (requests.exceptions.RequestException, consul.ConsulException)
except ImportError:
    CONSUL_ERRORS = ()

CONNECTION_OPTIONS = ("url", "token", "datacenter", "ca_cert", "client_cert", "client_key", "validate_certs", "timeout")
GROUP_BY = ("service", "tag", "datacenter", "meta")


def group_name(prefix, kind, *parts):
    """A group name safe for Ansible: every character but letters, digits and _ becomes _."""
    return re.sub(r"[^A-Za-z0-9_]", "_", "_".join((prefix + kind, *parts)))


def node_from_catalog(node, default_datacenter=None):
    return {
        "name": node["Node"],
        "address": node.get("Address") or "",
        "datacenter": node.get("Datacenter") or default_datacenter,
        "meta": dict(node.get("Meta") or {}),
    }


def instance_from_health(entry):
    """One service instance from an entry of /v1/health/service/<name>."""
    node, service = entry["Node"], entry["Service"]
    return {
        "node": node["Node"],
        "name": service["Service"],
        "id": service["ID"],
        "port": service.get("Port"),
        "tags": list(service.get("Tags") or []),
        "address": service.get("Address") or node.get("Address") or "",
    }


def _public(instance):
    return {k: instance[k] for k in ("name", "id", "port", "tags", "address")}


def node_hostvars(node, instances):
    return {
        "ansible_host": node["address"],
        "consul_node": node["name"],
        "consul_datacenter": node["datacenter"],
        "consul_node_meta": dict(node["meta"]),
        "consul_services": [_public(i) for i in instances],
        "consul_tags": sorted({t for i in instances for t in i["tags"]}),
    }


def service_hostvars(node, instance):
    hostvars = node_hostvars(node, [instance])
    hostvars.update(
        ansible_host=instance["address"],
        consul_service=instance["name"],
        consul_service_id=instance["id"],
        consul_service_port=instance["port"],
    )
    return hostvars


def build_hosts(catalog, hosts="nodes", only_nodes_with_instances=False):
    """[(host name, host vars)] from a catalog {'nodes': [...], 'instances': [...]}."""
    nodes = {n["name"]: n for n in catalog["nodes"]}
    if hosts == "services":
        return [
            (f"{i['id']}@{i['node']}", service_hostvars(nodes[i["node"]], i))
            for i in catalog["instances"]
            if i["node"] in nodes
        ]
    by_node = {}
    for instance in catalog["instances"]:
        by_node.setdefault(instance["node"], []).append(instance)
    return [
        (name, node_hostvars(node, by_node.get(name, [])))
        for name, node in nodes.items()
        if name in by_node or not only_nodes_with_instances
    ]


def host_groups(hostvars, prefix="consul_", group_by=GROUP_BY):
    """The names of the groups a host belongs to, from its host vars."""
    names = []
    if "service" in group_by:
        names += [group_name(prefix, "service", s["name"]) for s in hostvars["consul_services"]]
    if "tag" in group_by:
        names += [group_name(prefix, "tag", t) for t in hostvars["consul_tags"]]
    if "datacenter" in group_by and hostvars["consul_datacenter"]:
        names.append(group_name(prefix, "dc", hostvars["consul_datacenter"]))
    if "meta" in group_by:
        names += [group_name(prefix, "meta", k, v) for k, v in hostvars["consul_node_meta"].items() if v]
    return sorted(set(names))


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "cyberdyne.skynet.consul"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("consul.yml", "consul.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        catalog = None
        if use_cache:
            try:
                catalog = self._cache[cache_key]
                self.display.vvv(f"Consul inventory: the catalog comes from the cache ({cache_key})")
            except KeyError:
                update_cache = True
        if catalog is None:
            catalog = self._read_catalog()
        if update_cache:
            self._cache[cache_key] = catalog
        self._populate(catalog)

    def _read_catalog(self):
        if not HAS_CONSUL:
            raise AnsibleParserError("The cyberdyne.skynet.consul inventory needs the py-consul Python package")
        params = {f"consul_{name}": self.get_option(name) for name in CONNECTION_OPTIONS}
        try:
            client = connect(params)
        except SkynetError as e:
            raise AnsibleParserError(str(e)) from e
        try:
            return self._query(client, params["consul_datacenter"])
        except CONSUL_ERRORS as e:
            raise AnsibleParserError(describe_failure(client, e)) from e

    def _query(self, client, datacenter):
        raw_nodes = client.catalog.nodes()[1]
        nodes = {n["Node"]: node_from_catalog(n, datacenter) for n in raw_nodes}
        names = self.get_option("services")
        if not names:
            by_name = client.catalog.services()[1]
            names = sorted(by_name)
        instances = []
        for name in names:
            entries = client.health.service(name, passing=self.get_option("only_passing"))[1]
            for entry in entries:
                nodes.setdefault(entry["Node"]["Node"], node_from_catalog(entry["Node"], datacenter))
                instances.append(instance_from_health(entry))
        return {"nodes": list(nodes.values()), "instances": instances}

    def _populate(self, catalog):
        only_nodes_with_instances = bool(self.get_option("services")) or self.get_option("only_passing")
        strict = self.get_option("strict")
        for host, hostvars in build_hosts(catalog, self.get_option("hosts"), only_nodes_with_instances):
            self.inventory.add_host(host)
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)
            for group in host_groups(hostvars, self.get_option("group_prefix"), self.get_option("group_by")):
                self.inventory.add_group(group)
                self.inventory.add_child(group, host)
            self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, host, strict=strict)
