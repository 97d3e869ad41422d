#!/usr/bin/python
# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: skynet_scale
short_description: One elastic scaling cycle over every service definition
version_added: 0.1.0
description:
  - Evaluates the scaling policy of every service definition in one invocation, reads the current
    instance counts from the compute, decides, and applies the changes through the compute driver
    (draining on scale-in).
  - Every policy is validated and every metric is read before anything changes; invalid policies,
    bad PromQL or an unreachable Prometheus, Consul or compute fail the task with nothing changed.
  - A missing metric (an empty result, NaN) holds capacity and says so; it never scales to the policy's C(min).
  - Each service is decided under a Consul session lock, so concurrent runs never act twice; the
    decision (time, metric values, current, desired, reason) and the cooldown state are kept in Consul
    KV under O(key_prefix)C(/<service>/).
  - While a blue/green release of a service is in progress (C(skynet/bluegreen/<service>/release) in
    Consul KV), the service is held.
author: Skynet developers (@cyberdyne)
extends_documentation_fragment:
  - cyberdyne.skynet.consul
  - cyberdyne.skynet.docker
  - cyberdyne.skynet.ec2
  - cyberdyne.skynet.prometheus
attributes:
  check_mode:
    support: full
    description: Reports the decisions; changes nothing and records nothing.
  diff_mode:
    support: none
    description: The decisions table says what changes.
  idempotent:
    support: partial
    description: A run changes something only when a policy asks for another instance count.
options:
  compute:
    description: Provider of the services' instances.
    type: str
    choices: [docker, ec2]
    default: docker
  services:
    description:
      - The service definitions, the same list the roles read. Definitions without C(scaling) are skipped.
      - Each has C(name), C(image), C(port), C(health) (as in M(cyberdyne.skynet.skynet_compute)), C(env),
        C(color) (the color scaled when no release recorded a live color) and C(scaling).
      - C(scaling) has C(min), C(max), C(checks), C(cooldown_up) (60), C(cooldown_down) (120),
        C(stabilization_window) (120, seconds of scale-in recommendations of which the highest is used),
        C(max_step) and C(max_step_percent).
      - A check has a C(name), a metric (C(query), PromQL giving one number, or C(value), given by the
        playbook; V(null) is a missing metric), a C(strategy) and C(on_missing) (V(hold) or V(ignore)).
      - C(strategy=target) wants C(target) per instance, C(aggregate) V(average) (the metric is per
        instance) or V(total) (the service's total), C(tolerance) (0.1).
      - C(strategy=step) wants C(steps), a list of C(lower), C(upper), C(adjust) and C(unit) (V(count) or V(percent)).
      - C(strategy=schedule) wants C(windows), a list of C(days), C(start), C(end) (HH:MM, local time) and C(min).
      - Checks combine safely, scale-out wins and scale-in happens only when every check agrees.
    type: list
    elements: dict
    required: true
  limit:
    description: Evaluate only these services; a name not in O(services) is an error.
    type: list
    elements: str
  dry_run:
    description: Decide and report, change nothing and record nothing (like check mode, but reported as a run).
    type: bool
    default: false
  lock_wait:
    description: Seconds to wait for another run's lock on a service before skipping it.
    type: float
    default: 0
  parallel:
    description: How many services are decided and changed at the same time.
    type: int
    default: 8
  key_prefix:
    description: Consul KV prefix of the decisions, state and locks.
    type: str
    default: skynet/scale
  drain_period:
    description: Seconds between taking an instance out of rotation and stopping it.
    type: float
    default: 5
  wait_timeout:
    description: Seconds new instances have to pass their health check.
    type: float
    default: 120
"""

EXAMPLES = r"""
- name: One scaling cycle
  cyberdyne.skynet.skynet_scale:
    services:
      - name: web
        image: registry.example/web:1.4
        port: 8080
        health: {path: /health}
        scaling:
          min: 1
          max: 6
          checks:
            - name: requests
              query: sum(rate(haproxy_backend_http_requests_total{proxy="web"}[30s]))
              aggregate: total
              target: 50
    prometheus_url: http://127.0.0.1:9090
    consul_url: http://127.0.0.1:8500
    docker_host: unix:///run/podman/podman.sock
"""

RETURN = r"""
decisions:
  description: One decision per service with a scaling policy.
  returned: always
  type: list
  elements: dict
  contains:
    service:
      description: The service.
      type: str
      returned: always
    current:
      description: Running instances before the decision.
      type: int
      returned: when decided
    desired:
      description: Instances wanted after it.
      type: int
      returned: when decided
    action:
      description: V(scale_out), V(scale_in), V(hold), or V(skipped) when another run held the lock.
      type: str
      returned: always
    reason:
      description: Why, check by check.
      type: str
      returned: always
    metrics:
      description: Metric value of each check, null when missing.
      type: dict
      returned: always
    applied:
      description: Whether the change was made.
      type: bool
      returned: always
    error:
      description: Why applying failed; what was started was removed again.
      type: str
      returned: when decided
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _consul, _drivers
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import (
    client_from_params,
    prometheus_argument_spec,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry
from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale import Autoscaler


def main():
    module = AnsibleModule(
        argument_spec=dict(
            services=dict(type="list", elements="dict", required=True),
            limit=dict(type="list", elements="str"),
            dry_run=dict(type="bool", default=False),
            lock_wait=dict(type="float", default=0),
            parallel=dict(type="int", default=8),
            key_prefix=dict(type="str", default="skynet/scale", no_log=False),
            **prometheus_argument_spec(),
            drain_period=dict(type="float", default=5),
            wait_timeout=dict(type="float", default=120),
            **_consul.consul_argument_spec(),
            **_drivers.compute_argument_spec(),
        ),
        supports_check_mode=True,
    )
    missing = _drivers.missing_library(module.params)
    if missing:
        module.fail_json(msg=missing_required_lib(missing[0]), exception=str(missing[1]))
    p = module.params
    try:
        consul = _consul.connect(p)
        driver = _drivers.make_driver(p)
        prometheus = client_from_params(p)
        scaler = Autoscaler(consul, Registry(consul), driver, prometheus, key_prefix=p["key_prefix"])
        decisions = scaler.run(
            p["services"],
            limit=p["limit"],
            check_mode=module.check_mode,
            dry_run=p["dry_run"],
            lock_wait=p["lock_wait"],
            parallel=p["parallel"],
            converge_options=dict(drain_period=p["drain_period"], wait_timeout=p["wait_timeout"]),
        )
    except SkynetError as e:
        module.fail_json(msg=str(e), exception=traceback.format_exc())

    changed = any(d.get("applied") for d in decisions)
    if module.check_mode:
        changed = any(d["action"] in ("scale_out", "scale_in") for d in decisions)
    failed = [d for d in decisions if d.get("error")]
    if failed:
        module.fail_json(
            msg="scaling failed for " + "; ".join(f"{d['service']}: {d['error']}" for d in failed),
            decisions=decisions,
            changed=changed,
        )
    module.exit_json(changed=changed, decisions=decisions)


if __name__ == "__main__":
    main()
