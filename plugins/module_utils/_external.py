# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Instances with no Consul agent of ours (EC2) as external nodes of the catalog (pure: no I/O).

Each one is a node of its own in the catalog, named after the instance, at its address, with the Node meta
consul-esm looks for. No agent owns that node, so no agent's anti-entropy and no reaping of a failed agent
removes it. Its service is the one registration() builds for an agent; its check carries the same HTTP or TCP
definition, which consul-esm runs, or Skynet when it probes (statuses() and changes() decide what to write).
"""

from __future__ import annotations

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _durations

AGENT, SKYNET, ESM = "agent", "skynet", "esm"
PROBERS = (SKYNET, ESM)  # who runs the check of an external node
# The node meta of an external node, by who runs its checks: consul-esm adopts the nodes with its meta (and pings
# them), so the nodes Skynet checks carry another, which consul-esm leaves alone.
ESM_NODE_META = {"external-node": "true", "external-probe": "true"}
SKYNET_NODE_META = {"skynet-external": "true"}
MAINTENANCE = "_service_maintenance:"  # the prefix of the check an agent adds in maintenance mode
DEFINITION_KEYS = ("HTTP", "TCP", "Interval", "Timeout", "DeregisterCriticalServiceAfter")
DEFAULT_TIMEOUT = 10.0  # Consul's, for a check that states none


def is_external(instance):
    return getattr(instance, "checked_by", AGENT) != AGENT


def check_id(service_id):
    """The CheckID an agent gives the check of a service it registers."""
    return f"service:{service_id}"


def maintenance_id(service_id):
    return MAINTENANCE + service_id


def catalog_registration(body, node, prober=SKYNET):
    """The /v1/catalog/register body of an agent registration() body, on node (the instance's own), with the node
    meta of who runs its check (prober: skynet or esm).

    A new check starts critical, as on an agent, until its first probe."""
    out = {
        "Node": node,
        "Address": body["Address"],
        "NodeMeta": dict(ESM_NODE_META if prober == ESM else SKYNET_NODE_META),
        "Service": {
            "ID": body["ID"],
            "Service": body["Name"],
            "Address": body["Address"],
            "Port": body["Port"],
            "Tags": list(body.get("Tags") or ()),
            "Meta": dict(body.get("Meta") or {}),
        },
    }
    check = body.get("Check")
    if check:
        out["Check"] = {
            "Node": node,
            "CheckID": check_id(body["ID"]),
            "Name": f"Service '{body['Name']}' check",
            "ServiceID": body["ID"],
            "Status": "critical",
            "Definition": {k: check[k] for k in DEFINITION_KEYS if k in check},
        }
    return out


def maintenance_registration(node, address, service_id, reason):
    """The catalog's stand-in for an agent's service maintenance: a critical check of the service, which takes it
    out of DNS and reads as drained wherever maintenance is looked for (the CheckID prefix). The node itself
    (its meta) is left as it is."""
    return {
        "Node": node,
        "Address": address,
        "SkipNodeUpdate": True,
        "Check": {
            "Node": node,
            "CheckID": maintenance_id(service_id),
            "Name": "Service Maintenance Mode",
            "Notes": reason,
            "ServiceID": service_id,
            "Status": "critical",
        },
    }


def duration(text, default=DEFAULT_TIMEOUT):
    """Seconds of a Go duration as Consul writes them ("1s", "1m30s", "500ms"); default when absent or invalid."""
    seconds = _durations.seconds(text, _durations.GO)
    return seconds if seconds else default


def probe_target(check):
    """(kind, target, timeout in seconds) of a check that an HTTP GET or a TCP connect answers, else None."""
    definition = check.get("Definition") or {}
    timeout = duration(definition.get("Timeout"))
    if definition.get("HTTP"):
        return "http", definition["HTTP"], timeout
    if definition.get("TCP"):
        return "tcp", definition["TCP"], timeout
    return None


def http_status(code):
    """Consul's status of an HTTP check from the response code: 2xx passing, 429 warning, anything else critical."""
    if 200 <= code < 300:
        return "passing"
    return "warning" if code == 429 else "critical"


def changes(checks, probed):
    """The checks to write: each of checks (as read from the catalog, with their ModifyIndex) whose probed status
    ({(node, check id): (status, output)}) differs from the one it has, with that status and output. A check that
    was not probed, or whose status is unchanged, is not written: a steady service writes nothing."""
    out = []
    for check in checks:
        found = probed.get((check.get("Node"), check.get("CheckID")))
        if found is None or found[0] == check.get("Status"):
            continue
        status, output = found
        out.append({**check, "Status": status, "Output": output})
    return out


def cas_ops(checks):
    """Transaction operations writing each check only if it has not changed since it was read."""
    return [{"Check": {"Verb": "cas", "Check": check}} for check in checks]
