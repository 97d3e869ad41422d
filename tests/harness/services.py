"""What tests do with a service of their own: list its containers, remove it and its records."""

from __future__ import annotations

from .ansible import run_module


def service_containers(docker_client, name: str) -> list:
    return docker_client.containers.list(all=True, filters={"label": [f"io.skynet.service={name}"]})


def remove_service(common: dict, consul, name: str):
    """Every instance of the service (through skynet_compute) and its scale state and lock in Consul KV."""
    run_module("cyberdyne.skynet.skynet_compute", {**common, "service": name, "state": "absent", "drain_period": 0})
    consul.api("DELETE", f"kv/skynet/scale/{name}", params={"recurse": "1"})
    consul.api("DELETE", f"kv/skynet/lock/{name}")
