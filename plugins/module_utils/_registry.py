# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Instances in Consul: registration with a health check, drain (maintenance), health.

An instance on a host with a Consul agent is registered on that agent. One with no agent of ours (EC2) is a
node of its own in the catalog (see _external), whose check consul-esm runs, or Skynet (keep_checked)."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import time

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _external as ext
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul import describe_failure, put_json
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._names import kv_key
from ansible_collections.cyberdyne.skynet.plugins.module_utils._probe import probe_all

TXN_OPS = 64  # the most operations Consul takes in one transaction


def _chunks(items, n):
    return [items[i : i + n] for i in range(0, len(items), n)]


def _b64(value):
    return base64.b64encode(json.dumps(value).encode()).decode()


def _stale(error):
    """Whether a transaction was refused because a check-and-set found a newer index (HTTP 409)."""
    return str(error.__cause__ or "").startswith("409")


def _json(b64):
    """The JSON value of a base64 KV value from a transaction; None when absent or not JSON."""
    if b64 is None:
        return None
    try:
        return json.loads(base64.b64decode(b64))
    except ValueError:
        return None


def service_id(instance):
    return f"skynet-{instance.service}-{instance.id}"


def check_definition(instance, health):
    """The Consul check of an instance from a health dict: type http|tcp, path, interval, timeout, deregister."""
    interval = health.get("interval") or "2s"
    timeout = health.get("timeout") or "1s"
    check = {"Interval": interval, "Timeout": timeout}
    if health.get("deregister_after"):
        check["DeregisterCriticalServiceAfter"] = health["deregister_after"]
    if (health.get("type") or "http") == "tcp":
        check["TCP"] = f"{instance.address}:{instance.port}"
    else:
        path = health.get("path") or "/"
        check["HTTP"] = f"http://{instance.address}:{instance.port}/{path.lstrip('/')}"
    return check


def registration(instance, health, tags=()):
    return {
        "ID": service_id(instance),
        "Name": instance.service,
        "Address": instance.address,
        "Port": instance.port,
        "Tags": sorted({instance.color, *tags} - {""}),
        "Meta": {
            "skynet_instance": instance.id,
            "skynet_color": instance.color,
            "skynet_image": instance.image,
            **({"skynet_host": instance.host} if getattr(instance, "host", "") else {}),
            **({"skynet_zone": instance.zone} if getattr(instance, "zone", "") else {}),
        },
        "Check": check_definition(instance, health),
    }


def register_call(client, body):
    """The agent API call that registers a registration() body, ready to run."""
    return functools.partial(
        client.agent.service.register,
        body["Name"],
        service_id=body["ID"],
        address=body["Address"],
        port=body["Port"],
        tags=body["Tags"],
        meta=body["Meta"],
        check=body.get("Check"),
    )


class Registry:
    """client: the Consul agent reads and KV go to; agents: {host: client of that host's own agent}, on which
    the instances of that host are registered, drained and deregistered (so that losing one agent takes
    only its own host's instances out of the catalog)."""

    def __init__(self, client, agents=None):
        self.client, self.agents = client, dict(agents or {})

    def agent_for(self, instance):
        return self.agents.get(getattr(instance, "host", ""), self.client)

    def agent_call(self, instance, what, fn_of, *args):
        """fn_of(client)(*args) on the instance's own agent, failures named after that agent."""
        agent = self.agent_for(instance)
        try:
            return fn_of(agent)(*args)
        except Exception as e:  # py-consul raises requests and consul errors alike
            raise SkynetError(f"{describe_failure(agent, e)} (while trying to {what})") from e

    def call(self, what, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # py-consul raises requests and consul errors alike
            raise SkynetError(f"{describe_failure(self.client, e)} (while trying to {what})") from e

    def check(self):
        self.call("read the cluster leader", self.client.status.leader)

    def read_json(self, key, default=None):
        """The JSON value of a KV key; default when the key is absent, empty or not JSON."""
        entry = self.call(f"read {key}", self.client.kv.get, kv_key(key, "Consul KV key"))[1]
        if not entry or entry.get("Value") is None:
            return default
        try:
            return json.loads(entry["Value"])
        except ValueError:
            return default

    def read_versioned(self, key, default=None):
        """(JSON value or default, ModifyIndex or 0 when absent) of a KV key, for a check-and-set write."""
        entry = self.call(f"read {key}", self.client.kv.get, kv_key(key, "Consul KV key"))[1]
        if not entry:
            return default, 0
        try:
            value = json.loads(entry["Value"]) if entry.get("Value") is not None else default
        except ValueError:
            value = default
        return value, entry["ModifyIndex"]

    def read_json_tree(self, prefix):
        """{key below prefix: JSON value} of every key under prefix (one recursive read); bad JSON is skipped."""
        entries = self.call(
            f"read {prefix}", self.client.kv.get, kv_key(prefix.rstrip("/"), "Consul KV key") + "/", recurse=True
        )[1]
        out = {}
        for entry in entries or ():
            with contextlib.suppress(ValueError, TypeError):
                out[entry["Key"][len(prefix) :]] = json.loads(entry["Value"])
        return out

    def modify_indexes(self, prefix):
        """{key: ModifyIndex} of every key under prefix (one recursive read)."""
        entries = self.call(
            f"read {prefix}", self.client.kv.get, kv_key(prefix.rstrip("/"), "Consul KV key") + "/", recurse=True
        )[1]
        return {e["Key"]: e["ModifyIndex"] for e in entries or ()}

    def keys(self, prefix):
        """Every key under prefix (names only: one cheap read)."""
        found = self.call(
            f"list {prefix}", self.client.kv.get, kv_key(prefix.rstrip("/"), "Consul KV key") + "/", keys=True
        )
        return found[1] or []

    def read_many(self, keys):
        """{key: (JSON value or None, ModifyIndex)} of those keys that exist, TXN_OPS per transaction."""
        out = {}
        for chunk in _chunks(sorted(keys), TXN_OPS):
            ops = [{"KV": {"Verb": "get", "Key": kv_key(k, "Consul KV key")}} for k in chunk]
            answer = self.call(f"read {len(chunk)} keys", self.client.txn.put, ops)
            for result in answer.get("Results") or ():
                entry = result.get("KV") or {}
                out[entry.get("Key")] = (_json(entry.get("Value")), entry.get("ModifyIndex", 0))
        return out

    def write_many(self, writes):
        """Writes [(key, JSON value, check-and-set index or None)], TXN_OPS per transaction; the keys not written.

        A check-and-set that fails rolls its transaction back: that batch is then written one key at a time,
        so only the keys whose index changed are left out.
        """
        refused = set()
        for chunk in _chunks(list(writes), TXN_OPS):
            ops = []
            for key, value, index in chunk:
                op = {"Verb": "set", "Key": kv_key(key, "Consul KV key"), "Value": _b64(value)}
                if index is not None:
                    op.update(Verb="cas", Index=index)
                ops.append({"KV": op})
            try:
                self.call(f"write {len(chunk)} keys", self.client.txn.put, ops)
                continue
            except SkynetError:
                pass
            for key, value, index in chunk:
                if not self.write_json(key, value, **({"cas": index} if index is not None else {})):
                    refused.add(key)
        return refused

    def health_all(self):
        """{service name: {service ID: (aggregated status, drained)}} of every registration with a check, from
        one read of every check in the datacenter (a node's own checks count for each of its services)."""
        checks = self.call("read every health check", self.client.health.state, "any")[1]
        nodes, services = {}, {}
        for c in checks:
            if not c.get("ServiceID"):
                nodes.setdefault(c["Node"], []).append(c["Status"])
            else:
                services.setdefault((c["Node"], c["ServiceName"], c["ServiceID"]), []).append(c)
        out = {}
        for (node, name, sid), own in services.items():
            statuses = [c["Status"] for c in own] + nodes.get(node, [])
            status = "critical" if "critical" in statuses else "warning" if "warning" in statuses else "passing"
            drained = any(c["CheckID"].startswith("_service_maintenance:") for c in own)
            out.setdefault(name, {})[sid] = (status, drained)
        return out

    def delete(self, key):
        return self.call(f"delete {key}", self.client.kv.delete, kv_key(key, "Consul KV key"))

    def write_json(self, key, value, **kwargs):
        return self.call(f"write {key}", self.client.kv.put, kv_key(key, "Consul KV key"), json.dumps(value), **kwargs)

    def register(self, instance, health, tags=()):
        body = registration(instance, health, tags)
        if ext.is_external(instance):
            self._catalog_register(
                f"register {body['ID']} on its node {instance.id}",
                ext.catalog_registration(body, instance.id, instance.checked_by),
            )
            return
        self.agent_call(instance, f"register {body['ID']}", lambda agent: register_call(agent, body))

    def _catalog_register(self, what, body):
        # py-consul's catalog.register sends node meta as a query filter, not in the body: the body goes as is.
        self.call(what, put_json, self.client, "catalog/register", body)

    def deregister(self, instance):
        sid = service_id(instance)
        if ext.is_external(instance):
            # The node goes with its service and checks: no node is left behind.
            self.call(f"deregister {sid} and its node {instance.id}", self.client.catalog.deregister, instance.id)
            return
        self.agent_call(instance, f"deregister {sid}", lambda agent: agent.agent.service.deregister, sid)

    def drain(self, instance, reason="draining before scale-in"):
        """Takes the instance out of rotation: its health turns critical, so DNS and HAProxy drop it."""
        sid = service_id(instance)
        if not ext.is_external(instance):
            self.agent_call(
                instance, f"drain {sid}", lambda agent: agent.agent.service.maintenance, sid, "true", reason
            )
            return
        body = ext.maintenance_registration(instance.id, instance.address, sid, reason)
        try:
            self._catalog_register(f"drain {sid}", body)
        except SkynetError:
            # Consul refuses a check of a service it does not have: with no registration there is nothing to
            # drain (an agent ignores maintenance of a service it does not know the same way).
            if self.registered(instance):
                raise

    def registered(self, instance):
        """Whether the instance has a registration where it belongs: on its own agent, or on its own node."""
        if ext.is_external(instance):
            node = self.call(f"read node {instance.id}", self.client.catalog.node, instance.id)[1]
            services = ((node or {}).get("Services") or {}).values()
        else:
            services = self.agent_call(
                instance, "list the agent's services", lambda agent: agent.agent.services
            ).values()
        return any((s.get("Meta") or {}).get("skynet_instance") == instance.id for s in services)

    def keep_checked(self, instances, parallel=16):
        """Runs the checks of those instances Skynet checks (external nodes without consul-esm) and writes each
        status that changed, with a check-and-set on the check's ModifyIndex: a status that consul-esm or another
        run wrote since is left as it is (the next run probes again). Writes nothing when nothing changed. An
        instance that is not running (stopped, terminating) is critical without a probe: it leaves DNS at once.
        Returns the number of statuses written."""
        mine = {i.id: i for i in instances if getattr(i, "checked_by", ext.AGENT) == ext.SKYNET}
        if not mine:
            return 0
        services = sorted({i.service for i in mine.values()})
        if len(services) == 1:
            what, read, args = f"read the checks of {services[0]}", self.client.health.checks, (services[0],)
        else:
            what, read, args = "read the checks of the external nodes", self.client.health.state, ("any",)
        found = self.call(what, read, *args, node_meta=ext.SKYNET_NODE_META)[1]
        checks = [c for c in found or () if c.get("Node") in mine and ext.probe_target(c)]
        running = [c for c in checks if mine[c["Node"]].state == "running"]
        probed = probe_all({(c["Node"], c["CheckID"]): ext.probe_target(c) for c in running}, parallel)
        for c in checks:
            if mine[c["Node"]].state != "running":
                probed[(c["Node"], c["CheckID"])] = ("critical", f"skynet: the instance is {mine[c['Node']].state}")
        writes = ext.changes(checks, probed)
        return len(writes) - self._transact(ext.cas_ops(writes), "write the health of external nodes")

    def _transact(self, ops, what):
        """Applies ops TXN_OPS per transaction; one refused by a stale check-and-set is applied an op at a time,
        so that only the stale ones are left out. Returns how many were left out."""
        refused = 0
        for chunk in _chunks(ops, TXN_OPS):
            try:
                self.call(what, self.client.txn.put, chunk)
                continue
            except SkynetError as e:
                if not _stale(e):
                    raise
            for op in chunk:
                try:
                    self.call(what, self.client.txn.put, [op])
                except SkynetError as e:
                    if not _stale(e):
                        raise
                    refused += 1
        return refused

    def statuses(self, service):
        """{instance id: aggregated status} from the health endpoint (passing, warning, critical)."""
        return {i: status for i, (status, _drained) in self.health(service).items()}

    def health(self, service):
        """{instance id: (aggregated status, whether the instance was put in maintenance)}."""
        entries = self.call(f"read the health of {service}", self.client.health.service, service)[1]
        result = {}
        for entry in entries:
            meta = entry["Service"].get("Meta") or {}
            checks = entry["Checks"]
            statuses = [c["Status"] for c in checks]
            status = "critical" if "critical" in statuses else "warning" if "warning" in statuses else "passing"
            drained = any(c["CheckID"].startswith("_service_maintenance:") for c in checks)
            result[meta.get("skynet_instance") or entry["Service"]["ID"]] = (status, drained)
        return result

    def instances_on(self, service, hosts, color=None):
        """Ids of the catalog's instances of service (of one color) registered as running on one of hosts."""
        entries = self.call(f"read the health of {service}", self.client.health.service, service)[1]
        ids = []
        for entry in entries:
            meta = entry["Service"].get("Meta") or {}
            if meta.get("skynet_host") in hosts and (color is None or meta.get("skynet_color") == color):
                ids.append(meta.get("skynet_instance") or entry["Service"]["ID"])
        return ids

    def wait_passing(self, service, instances, timeout, interval=0.5):
        """Waits until every instance is passing (probing those Skynet checks); returns the ids still not passing
        at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.keep_checked(instances)
            statuses = self.statuses(service)
            waiting = [i.id for i in instances if statuses.get(i.id) != "passing"]
            if not waiting or time.monotonic() >= deadline:
                return waiting
            time.sleep(interval)
