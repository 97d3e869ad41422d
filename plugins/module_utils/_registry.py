# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Instances in Consul: registration with a health check, drain (maintenance), health."""

from __future__ import annotations

import functools
import json
import time

from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul import describe_failure
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._names import kv_key


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
        "Meta": {"skynet_instance": instance.id, "skynet_color": instance.color, "skynet_image": instance.image},
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
    def __init__(self, client):
        self.client = client

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

    def write_json(self, key, value, **kwargs):
        return self.call(f"write {key}", self.client.kv.put, kv_key(key, "Consul KV key"), json.dumps(value), **kwargs)

    def register(self, instance, health, tags=()):
        body = registration(instance, health, tags)
        self.call(f"register {body['ID']}", register_call(self.client, body))

    def deregister(self, instance):
        self.call(f"deregister {service_id(instance)}", self.client.agent.service.deregister, service_id(instance))

    def drain(self, instance, reason="draining before scale-in"):
        """Takes the instance out of rotation: its health turns critical, so DNS and HAProxy drop it."""
        self.call(
            f"drain {service_id(instance)}", self.client.agent.service.maintenance, service_id(instance), "true", reason
        )

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

    def wait_passing(self, service, ids, timeout, interval=0.5):
        """Waits until every id is passing; returns the ids still not passing at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = self.statuses(service)
            waiting = [i for i in ids if statuses.get(i) != "passing"]
            if not waiting or time.monotonic() >= deadline:
                return waiting
            time.sleep(interval)
