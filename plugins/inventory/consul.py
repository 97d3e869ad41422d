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
  on_denied:
    description:
      - What to do when Consul's ACLs keep part of the catalog from the token (or from Consul's
        anonymous token when O(token) is not set), so that the inventory would miss hosts.
      - Consul refuses some reads (HTTP 403, for example for a token it does not know) and silently
        leaves out of others whatever the token may not read. The plugin tells the second case from
        an empty catalog where the catalog cannot be empty (no node at all, no service at all,
        a listed service without a single instance) and where Consul says so
        (C(X-Consul-Results-Filtered-By-ACLs), Consul 1.11 and later); with O(services) set, a
        service the token may not read looks exactly like one that has no instance.
      - V(warn) makes the hosts that could be read and prints a warning naming Consul, the token
        and what was denied. V(fail) makes none and fails to parse the source with that message;
        Ansible then warns, or stops when its C(inventory_unparsed_failed) setting is on.
      - The token needs C(node:read) and C(service:read) on what it should list, for example
        C(node_prefix "" { policy = "read" }) and C(service_prefix "" { policy = "read" }).
    type: str
    choices: [warn, fail]
    default: warn
    env:
      - name: SKYNET_CONSUL_INVENTORY_ON_DENIED
    ini:
      - section: skynet_consul_inventory
        key: on_denied
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
from urllib.parse import urlsplit

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.unsafe_proxy import wrap_var
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
FILTERED_HEADER = "X-Consul-Results-Filtered-By-ACLs"


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


def acl_denials(nodes, services, empty_services=(), refused=(), filtered=()):
    """What Consul kept from the token, as phrases, from what its catalog reads gave.

    nodes: how many nodes were read (None when refused); services: the names catalog/services
    gave (None when not read or refused); empty_services: listed services whose health read gave
    no instance; refused: (read, Consul's reason) of the reads answered 403; filtered: the reads
    whose answer said results were filtered by ACLs.
    """
    denied = [f"{what} (refused: {reason or 'permission denied'})" for what, reason in refused]
    # Consul always lists its own servers, as nodes and as the service `consul`.
    if nodes == 0:
        denied.append("every node of the catalog (none visible)")
    if services is not None and not services:
        denied.append("every service of the catalog (none visible)")
    if empty_services:
        names = ", ".join(empty_services[:10]) + (
            f" and {len(empty_services) - 10} more" if len(empty_services) > 10 else ""
        )
        denied.append(f"the instances of service(s) {names} (listed, but none visible)")
    denied += [f"part of {what} (Consul filtered the answer)" for what in filtered]
    return list(dict.fromkeys(denied))


def denial_message(url, token_given, denied):
    if token_given:
        who = "the token given (option token or CONSUL_HTTP_TOKEN)"
    else:
        who = "its anonymous token, as no token was given (option token or CONSUL_HTTP_TOKEN)"
    return (
        f"Consul at {url} denied part of its catalog to {who}, so the inventory misses hosts: "
        f"{'; '.join(denied)}. The token needs node:read and service:read on what it should list "
        '(e.g. node_prefix "" and service_prefix "" with policy "read")'
    )


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
        denied = catalog.get("denied") or []
        if denied and self.get_option("on_denied") == "fail":
            raise AnsibleParserError(self._denial_message(catalog))
        if update_cache:
            self._cache[cache_key] = catalog
        self._populate(catalog)
        if denied:
            self.display.warning(self._denial_message(catalog))

    def _denial_message(self, catalog):
        return denial_message(catalog.get("url", "Consul"), bool(self.get_option("token")), catalog["denied"])

    def _read_catalog(self):
        if not HAS_CONSUL:
            raise AnsibleParserError("The cyberdyne.skynet.consul inventory needs the py-consul Python package")
        params = {f"consul_{name}": self.get_option(name) for name in CONNECTION_OPTIONS}
        try:
            client = connect(params)
        except SkynetError as e:
            raise AnsibleParserError(str(e)) from e
        try:
            return {**self._query(client, params["consul_datacenter"]), "url": client.skynet_url}
        except CONSUL_ERRORS as e:
            raise AnsibleParserError(describe_failure(client, e)) from e

    def _query(self, client, datacenter):
        refused, filtered = [], []

        def note_filtered(response, *args, **kwargs):
            # Consul 1.11+ says when ACLs filtered an answer (1.8 does not); the path names the read.
            if response.headers.get(FILTERED_HEADER):
                filtered.append(urlsplit(response.url).path)

        session = getattr(client.http, "session", None)
        if session is not None:
            session.hooks["response"].append(note_filtered)

        def read(what, call, *args, **kwargs):
            try:
                return call(*args, **kwargs)[1]
            except consul.ACLPermissionDenied as e:
                refused.append((what, str(e).strip()))
                return None

        raw_nodes = read("the catalog's nodes", client.catalog.nodes)
        nodes = {n["Node"]: node_from_catalog(n, datacenter) for n in raw_nodes or []}
        names, listed = self.get_option("services"), None
        if not names:
            by_name = read("the catalog's services", client.catalog.services)
            listed = None if by_name is None else sorted(by_name)
            names = listed or []
        instances, empty = [], []
        for name in names:
            entries = read(
                f"the instances of service {name}", client.health.service, name, passing=self.get_option("only_passing")
            )
            if entries == [] and listed is not None and not self.get_option("only_passing"):
                empty.append(name)
            for entry in entries or []:
                nodes.setdefault(entry["Node"]["Node"], node_from_catalog(entry["Node"], datacenter))
                instances.append(instance_from_health(entry))
        denied = acl_denials(None if raw_nodes is None else len(raw_nodes), listed, empty, refused, filtered)
        return {"nodes": list(nodes.values()), "instances": instances, "denied": denied}

    def _populate(self, catalog):
        only_nodes_with_instances = bool(self.get_option("services")) or self.get_option("only_passing")
        strict = self.get_option("strict")
        for host, raw in build_hosts(catalog, self.get_option("hosts"), only_nodes_with_instances):
            # Names, tags and meta come from whoever can register in Consul: never templates.
            hostvars = wrap_var(raw)
            self.inventory.add_host(host)
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)
            for group in host_groups(hostvars, self.get_option("group_prefix"), self.get_option("group_by")):
                self.inventory.add_group(group)
                self.inventory.add_child(group, host)
            self._set_composite_vars(self.get_option("compose"), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, host, strict=strict)
