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
  - Every policy is validated and every metric is read before anything changes; invalid policies, PromQL
    that Prometheus rejects (a syntax error) or a query giving a range or a string, and an unreachable
    Consul or compute fail the task with nothing changed.
  - A missing metric (an empty result, NaN, +Inf or -Inf) holds capacity and says so, with the check and the
    value; it never scales to the policy's C(min). With C(on_missing=ignore) the other checks decide.
  - A metric outage (Prometheus unreachable, a query that fails at run time) holds the decisions that need
    that metric, whatever C(on_missing) says; other checks that answered may still scale out, never in.
    Everything that needs no metric still happens in that run (C(min) and C(max), scheduled capacity,
    health replacement); then the task fails, naming the outage and what was still done, with the
    decisions.
  - Each service is decided and changed under its lock, C(skynet/lock/<service>) in Consul KV, the same
    lock M(cyberdyne.skynet.skynet_bluegreen) takes, so concurrent runs (timer, AWX, a release) never act
    twice. The lock's session (TTL 15s) is renewed while held, and the run checks it still holds the lock
    before each change; a run that lost it stops there. A run that dies keeps its lock until its session
    expires, plus a lock-delay of 15s.
  - The decision (time, metric values, current, desired, reason) and the cooldown state are kept in Consul
    KV under O(key_prefix)C(/<service>/); the cooldown is recorded, with a check-and-set, before the change
    starts.
  - The policy decides on every running instance, but only instances that pass their health check (or are
    inside O(health_grace)) count towards the number it decides, so a failing instance gets a replacement in the
    same cycle, whatever the decision, and is drained and removed once it has failed for O(unhealthy_after).
    Instances left drained by an interrupted run are removed.
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
    description:
      - Without O(computes), the provider of every service's instances, V(docker) (the default) or V(ec2).
      - With O(computes), services name their compute themselves (C(compute) in a definition).
    type: str
  computes:
    description:
      - Named computes, the C(skynet_computes) variable (see M(cyberdyne.skynet.skynet_compute) and
        R(docs/compute.md, https://github.com/cyberdyne/skynet/blob/main/docs/compute.md)); one cycle scales
        services on different computes (Docker pools and EC2 together).
      - Without it, the single-endpoint options make the compute V(default), a pool of one.
    type: dict
  host_grace:
    description:
      - Seconds a host of a Docker pool (or an EC2 subnet) may fail to answer before its instances count as lost
        and are replaced on the other hosts, counted from the first failure any run recorded in Consul KV
        (C(skynet/compute/<compute>/hosts/<host>)).
      - Until then its instances (from the Consul catalog) still count and nothing replaces them; the cycle goes
        on with the other hosts and reports the host in RV(decisions[].unavailable_hosts).
    type: float
    default: 30
  services:
    description:
      - The service definitions, the same list the roles read. Definitions without C(scaling) are skipped.
      - C(compute) names the compute of a service (default V(default)); C(zones) pins its instances to those
        zones of the pool's hosts. An unknown compute, or zones no host has, fail the task before anything changes.
      - Each has C(name), C(image), C(port), C(health) (as in M(cyberdyne.skynet.skynet_compute)), C(env),
        C(color) (the color scaled when no release recorded a live color) and C(scaling).
      - A C(name) is a DNS label, 1 to 63 lower-case letters, digits and dashes, starting with a letter and
        not ending with a dash; C(color) is V(blue) or V(green). Any other name or color fails the task
        before anything is read or changed.
      - C(scaling) has C(min), C(max) (at most 1000000), C(checks), C(cooldown_up) (60), C(cooldown_down)
        (120, both at most 86400) and C(stabilization_window) (120, at most 3600, seconds of scale-in
        recommendations of which the highest is used).
      - One decision adds at most the larger of C(max_step_percent) (100) percent of the current instances and
        C(min_step) (4, at most 50) instances, as Kubernetes HPA's default scale-up policy; C(max_step) narrows
        that to a number of instances. Scale-in has no bound unless C(max_step) or C(max_step_percent) is
        given. Whatever the policy says, one cycle starts at most 50 instances for one service (restoring
        C(min) included); the next cycles go on.
      - A service with C(min=0) goes to zero instances only once its checks have wanted none for
        C(idle_after) seconds (300). At zero, a wake record (C(skynet/wake/NAME) in Consul KV, written by the
        activator of the load balancer that holds a request for it) newer than the last one answered starts
        one instance at once, without cooldown and without metrics (Prometheus may be down).
      - Numbers must be finite (no V(.inf) or V(.nan)) and inside those bounds; the task fails naming the field.
      - A check has a C(name), a metric (C(query), PromQL giving one number, or C(value), given by the
        playbook; V(null) is a missing metric), a C(strategy) and C(on_missing) (V(hold) or V(ignore)).
      - A check with a C(query) may look C(ahead), a dict of C(lead) (how far, a duration such as V(2m)),
        C(over) (the past it fits a line to, default 5 x C(lead)) and C(step) (of the subquery, default
        Prometheus' evaluation interval); the metric is then the larger of the query's value now and its
        linear forecast C(lead) on (C(predict_linear) over a subquery), so capacity comes before a ramp's
        peak and never leaves before the load does.
      - C(strategy=target) wants C(target) per instance, C(aggregate) V(average) (the metric is per
        instance) or V(total) (the service's total), C(tolerance) (0.1, below 1).
      - C(strategy=step) wants C(steps), a list of C(lower), C(upper), C(adjust) and C(unit) (V(count) or V(percent)).
      - C(strategy=schedule) wants C(windows), a list of C(days), C(start), C(end) (HH:MM, local time) and C(min).
      - Checks combine safely, scale-out wins and scale-in happens only when every check agrees.
    type: list
    elements: dict
    required: true
  limit:
    description: Evaluate only these services; a name not in O(services), or not a valid service name, is an error.
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
    description:
      - Consul KV prefix of the decisions, state and locks.
      - Parts between slashes are letters, digits, dashes, dots and underscores, none of them V(.) or V(..).
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
  health_grace:
    description:
      - Seconds after its start during which an instance that does not pass its health check yet counts as
        capacity (it is starting).
      - After that, only instances that pass count; a replacement is started for each of the others.
    type: float
    default: 60
  unhealthy_after:
    description:
      - Seconds an instance may fail its health check (past O(health_grace)) before it is drained, removed and
        replaced, in every cycle and whatever the decision, as an Auto Scaling group's health replacement.
      - How long it has been failing is kept in Consul KV with the service's state.
    type: float
    default: 60
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
              query: service:skynet_http_requests:rate{service="web"}
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
      description: Metric value of each check, null when missing, not finite or unavailable.
      type: dict
      returned: always
    missing:
      description: Checks whose metric was missing, not finite (NaN, +Inf, -Inf) or unavailable.
      type: list
      elements: str
      returned: always
    outage:
      description: Why the metrics of this service could not be read (Prometheus unreachable, a query that
        failed at run time), null when they could.
      type: str
      returned: always
    applied:
      description: Whether the change was made.
      type: bool
      returned: always
    error:
      description: Why applying failed; what was started was removed again.
      type: str
      returned: when decided
    running:
      description: Running instances of the live color, counted or not.
      type: int
      returned: when decided
    unhealthy:
      description: Instances failing their health check past O(health_grace), not counted in RV(decisions[].current).
      type: list
      elements: str
      returned: when decided
    replaced:
      description: Instances failing for longer than O(unhealthy_after), replaced in this cycle.
      type: list
      elements: str
      returned: when decided
    replacements_total:
      description: Health replacements of the service so far (kept in Consul KV); a crash loop shows as its rise.
      type: int
      returned: when decided
    left_drained:
      description: Instances an interrupted run had drained and not removed; this cycle removed them.
      type: list
      elements: str
      returned: when decided
    release_phase:
      description: The phase of a blue/green release of the service in progress.
      type: str
      returned: when a release is in progress
    release_since:
      description: When that phase started (epoch seconds).
      type: float
      returned: when a release is in progress
    compute:
      description: The compute of the service.
      type: str
      returned: when decided
    unavailable_hosts:
      description:
        - Hosts of the service's compute that did not answer, each with C(reason), C(failing_since) and C(lost)
          (past O(host_grace), so its instances are replaced elsewhere).
      type: dict
      returned: when a host of the compute did not answer
    unreachable:
      description: Instances on hosts in their grace period, counted from the Consul catalog.
      type: list
      elements: str
      returned: when a host of the compute did not answer
    warnings:
      description: What went wrong after the decision was recorded, such as a lock that could not be given back.
      type: list
      elements: str
      returned: when there are any
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _drivers, _scale_cycle
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


def main():
    module = AnsibleModule(argument_spec=_scale_cycle.argument_spec(), supports_check_mode=True)
    parsed = _drivers.parse(module.params)
    missing = _scale_cycle.missing_library(module.params, parsed)
    if missing:
        module.fail_json(msg=missing[0], exception=missing[1])
    try:
        result = _scale_cycle.run(module.params, parsed, check_mode=module.check_mode)
    except SkynetError as e:
        module.fail_json(msg=str(e), exception=traceback.format_exc())
    if result["msg"]:
        module.fail_json(msg=result["msg"], decisions=result["decisions"], changed=result["changed"])
    module.exit_json(changed=result["changed"], decisions=result["decisions"])


if __name__ == "__main__":
    main()
