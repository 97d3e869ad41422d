# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One skynet_scale cycle: its argument spec and its run, shared by the module (through AnsibleModule) and
the watcher's resident cycles (through ArgumentSpecValidator), so that both validate, default and run the
same way, under the same locks and with the same records in Consul KV."""

from __future__ import annotations

import traceback

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.module_utils.errors import UnsupportedError
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _consul, _drivers, _names
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import (
    client_from_params,
    prometheus_argument_spec,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry
from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale import Autoscaler


def argument_spec():
    """The arguments of skynet_scale (documented in the module)."""
    return dict(
        services=dict(type="list", elements="dict", required=True),
        limit=dict(type="list", elements="str"),
        dry_run=dict(type="bool", default=False),
        lock_wait=dict(type="float", default=0),
        parallel=dict(type="int", default=8),
        key_prefix=dict(type="str", default="skynet/scale", no_log=False),
        **prometheus_argument_spec(),
        drain_period=dict(type="float", default=5),
        wait_timeout=dict(type="float", default=120),
        health_grace=dict(type="float", default=60),
        unhealthy_after=dict(type="float", default=60),
        host_grace=dict(type="float", default=30),
        **_consul.consul_argument_spec(),
        **_drivers.compute_argument_spec(),
    )


def validate(arguments):
    """(the parameters with their defaults, the values never to show) as AnsibleModule makes them;
    SkynetError naming every problem."""
    result = ArgumentSpecValidator(argument_spec()).validate(arguments)
    if result.error_messages:
        said = [f"unsupported parameters: {e.msg}" if isinstance(e, UnsupportedError) else e.msg for e in result.errors]
        raise SkynetError("invalid skynet_scale arguments: " + "; ".join(said))
    return result.validated_parameters, result._no_log_values


def missing_library(params, parsed):
    """(missing_required_lib's sentence, the import error) for a library the cycle needs and lacks, or None.
    parsed: the computes of params, _drivers.parse(params)."""
    missing = _drivers.missing_library(params, parsed)
    if not missing:
        return None
    from ansible.module_utils.basic import missing_required_lib

    return missing_required_lib(missing[0]), str(missing[1])


def run(params, parsed, check_mode=False):
    """One cycle: {changed, decisions, msg}; msg (the task fails with it) when a decision failed or metrics
    were out. SkynetError when nothing could be decided (bad input, Consul or a compute unreachable).
    parsed: the computes of params, _drivers.parse(params)."""
    _names.kv_key(params["key_prefix"].rstrip("/"), "key_prefix")
    consul = _consul.connect(params)
    computes = _drivers.make_computes(params, parsed, zones_of=zones_of(params["services"]))
    scaler = Autoscaler(
        consul,
        Registry(consul, computes.agents),
        computes,
        client_from_params(params),
        key_prefix=params["key_prefix"],
        health_grace=params["health_grace"],
        unhealthy_after=params["unhealthy_after"],
        host_grace=params["host_grace"],
    )
    decisions = scaler.run(
        params["services"],
        limit=params["limit"],
        check_mode=check_mode,
        dry_run=params["dry_run"],
        lock_wait=params["lock_wait"],
        parallel=params["parallel"],
        converge_options=dict(drain_period=params["drain_period"], wait_timeout=params["wait_timeout"]),
    )
    changed = any(d.get("applied") for d in decisions)
    if check_mode:
        changed = any(d["action"] in ("scale_out", "scale_in") for d in decisions)
    failed = [d for d in decisions if d.get("error")]
    problems = [outage_message(decisions)] if any(d.get("outage") for d in decisions) else []
    if failed:
        problems.append("scaling failed for " + "; ".join(f"{d['service']}: {d['error']}" for d in failed))
    return {"changed": changed, "decisions": decisions, "msg": ". ".join(problems)}


def run_arguments(arguments):
    """A cycle outside Ansible (the watcher's): validated as the module is, its result with the values of
    no_log arguments removed as AnsibleModule removes them; {"msg"} alone when it could not run or crashed."""
    no_log = {arguments.get("consul_token")} - {None, ""}
    try:
        params, no_log = validate(arguments)
        parsed = _drivers.parse(params)
        missing = missing_library(params, parsed)
        result = {"msg": f"{missing[0]}: {missing[1]}"} if missing else run(params, parsed)
    except SkynetError as e:
        result = {"msg": str(e)}
    except Exception:  # noqa: BLE001 - a bug: reported like a module's traceback, with the secrets removed
        result = {"msg": f"the cycle crashed: {traceback.format_exc()}"}
    return remove_values(result, no_log)


def zones_of(definitions):
    """zones_of(service) for placement: the zones a service definition is pinned to."""
    zones = {}
    for d in definitions:
        if isinstance(d, dict) and isinstance(d.get("name"), str):
            z = d.get("zones") or ()
            zones[d["name"]] = (z,) if isinstance(z, str) else tuple(z)
    return lambda service: zones.get(service, ())


def outage_message(decisions):
    """The outages, the checks they held, and what the run still did: the run fails so that alerts fire."""
    held = {}
    for d in decisions:
        if d.get("outage"):
            held.setdefault(d["outage"], []).append(f"{d['service']} ({', '.join(d.get('missing') or ())})")
    said = "; ".join(f"{outage}, for {', '.join(services)}" for outage, services in held.items())
    done = [
        f"{d['service']} {d['action']} {d['current']} -> {d['desired']}"
        + (f" replacing {len(d['replaced'])}" if d.get("replaced") else "")
        for d in decisions
        if d.get("applied")
    ]
    return f"metrics unavailable, the decisions that need them held: {said}. Still done in this run: " + (
        ", ".join(done) or "nothing (nothing else needed changing)"
    )
