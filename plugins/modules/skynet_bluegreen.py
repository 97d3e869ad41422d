#!/usr/bin/python
# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: skynet_bluegreen
short_description: Blue/green release of a service without interruption, with analysis and automatic rollback
version_added: 0.1.0
description:
  - Releases a new O(image) of a service as a state machine whose state lives in Consul KV under
    C(skynet/bluegreen/<service>/) (C(live) color, C(release) record, C(history)), so any controller,
    a timer or AWX can resume or inspect it.
  - B(deploy) starts the idle color (the one that is not live) with O(image) through the compute driver,
    at the live color's running count or O(count), registered in Consul with the color as a tag.
  - B(verify) waits until every new instance passes its Consul check and is UP in the color's backend on
    every HAProxy node (O(health_timeout)); with O(preview) it points the preview map at the new color and
    sends preview traffic; O(pre_analysis) checks PromQL thresholds that must hold for a given time.
  - B(switch) points the service's entry of the live map at the new color on every HAProxy node through the
    runtime API (no reload), rewrites the map files (O(haproxy[].persist)) and records the live color in Consul.
    Every node is read back (C(show map)) after the switch and after an undo, and judged by what it serves.
    A C(set map) whose answer timed out counts as switched when the node serves the new color, one that was
    answered but changed nothing does not. If one node does not serve the new color, the nodes that do are put
    back and the release fails with the new color removed.
  - B(watch) runs O(post_analysis); when it fails the release is rolled back automatically.
  - B(retire) waits O(scale_down_delay), then drains and stops the old color, or keeps it warm (O(keep_warm)).
  - A version that fails its health checks is never switched to; the new color is removed and the old one is
    not touched. An analysis query that cannot be evaluated counts as a failure.
  - O(state=rolled_back) and O(state=aborted) return to the last good state at any phase. When another
    controller is running the release, they ask it through Consul KV (C(request) key) and wait O(lock_wait).
  - A run holds the service's lock in Consul (C(skynet/lock/<service>)), the one
    M(cyberdyne.skynet.skynet_scale) and M(cyberdyne.skynet.skynet_compute) take, so a scale cycle and a release
    of one service never change it at the same time; a release waits O(lock_wait) for it. The lock's session is
    renewed while held and checked before every change (each start, drain or removal of an instance, the switch,
    each undo step). A release that lost it (session destroyed, Consul restarted) stops there, leaves the release
    record saying where (C(stopped)); a rerun resumes it, O(state=rolled_back) undoes it.
  - While a release is in progress, M(cyberdyne.skynet.skynet_scale) holds the service.
  - The HAProxy configuration follows the collection's contract, per service a frontend choosing
    C(use_backend %[str(<name>),map(<map_dir>/live.map,<name>_blue)]), backends C(<name>_blue) and C(<name>_green)
    filled by C(server-template) from Consul DNS (C(_<name>._<color>.service.consul)), an optional
    C(<name>_preview) frontend on C(<map_dir>/preview.map), and map files with lines C(<name> <name>_<color>).
author: Skynet developers (@cyberdyne)
requirements:
  - py-consul
  - docker (with O(compute=docker))
  - boto3 (with O(compute=ec2))
  - requests (with O(pre_analysis) or O(post_analysis))
extends_documentation_fragment:
  - cyberdyne.skynet.consul
  - cyberdyne.skynet.docker
  - cyberdyne.skynet.ec2
  - cyberdyne.skynet.instance
  - cyberdyne.skynet.prometheus
attributes:
  check_mode:
    support: full
    description: Reports the plan (action, steps, colors, count, image) and changes nothing.
  diff_mode:
    support: full
    description: Shows the live color and image before and after.
  idempotent:
    support: full
    description:
      - Releasing the image the live color already runs changes nothing.
      - After an interruption, the same release resumes from the phase recorded in Consul.
options:
  service:
    description:
      - Name of the service in Consul and in HAProxy's maps.
      - A DNS label, 1 to 63 lower-case letters, digits and dashes, starting with a letter and not ending
        with a dash. Any other name fails the task before anything is read or changed.
    type: str
    required: true
  state:
    description:
      - V(released) releases O(image), or resumes an interrupted release of it.
      - V(rolled_back) undoes the release in progress, or the last one that completed (its old color is started
        again from its image when it was retired already).
      - V(aborted) stops the release in progress and returns to the color that was live before it.
    type: str
    choices: [released, rolled_back, aborted]
    default: released
  image:
    description:
      - Image of the new version; with O(compute=ec2) the id of the AMI. Required with O(state=released).
    type: str
  version:
    description: Label of the new version kept in the release record and history; the image's tag when omitted.
    type: str
  count:
    description: Instances of the new color; the live color's running count when omitted.
    type: int
  compute:
    description:
      - With O(computes), the name of the compute the instances run on (default V(default)); without it, the
        provider, V(docker) (the default) or V(ec2). See M(cyberdyne.skynet.skynet_compute).
    type: str
  computes:
    description: Named computes, as M(cyberdyne.skynet.skynet_compute) takes them.
    type: dict
  haproxy:
    description:
      - The HAProxy nodes that route the service; all are switched together.
    type: list
    elements: dict
    required: true
    suboptions:
      admin_socket:
        description:
          - Admin socket of the runtime API (C(stats socket ... level admin)), a unix socket path or C(host:port).
        type: str
        required: true
      name:
        description: Name of the node in messages; O(haproxy[].admin_socket) when omitted.
        type: str
      map_dir:
        description:
          - Directory of the node's C(live.map) and C(preview.map) as HAProxy names them; O(map_dir) when omitted.
          - A path without spaces, newlines, semicolons or backslashes, since it is a word of runtime API commands.
        type: str
      persist:
        description:
          - Rewrite the node's map files too, so that the switch survives a restart of HAProxy.
          - The files are written where the module runs. When HAProxy runs on another host, set V(false)
            (the runtime switch still happens); each run of the P(cyberdyne.skynet.haproxy#role) role on that
            node renders its map files from the live color recorded in Consul KV (C(skynet/bluegreen/<service>/live),
            read through the node's own agent), so that a reload or restart there keeps the new color once the
            role has run. Until then a reload there reads the old color from its files, so run the role on those nodes
            after a release (or run the module on that host).
        type: bool
        default: true
      timeout:
        description: Seconds to wait for the node to answer one command.
        type: float
        default: 5
  map_dir:
    description: Default directory of the HAProxy nodes' map files.
    type: str
    default: /etc/haproxy/maps
  health_timeout:
    description: Seconds the new instances have to pass their checks and be UP in HAProxy.
    type: float
    default: 120
  preview:
    description: Preview of the new color before the switch, through the service's C(<name>_preview) frontend.
    type: dict
    default: {}
    suboptions:
      enabled:
        description: Point the preview map at the new color during B(verify).
        type: bool
        default: false
      url:
        description: URL of the preview frontend to send GET requests to during B(verify); none are sent when omitted.
        type: str
      rate:
        description: Preview requests per second.
        type: float
        default: 5
      duration:
        description: Seconds of preview traffic at least (longer when O(pre_analysis.duration) is).
        type: float
        default: 10
      max_failures:
        description: Failed preview requests tolerated.
        type: int
        default: 0
  pre_analysis:
    description:
      - Checks that must hold, at every sample, for O(pre_analysis.duration) seconds before the switch.
      - A query may use C(${service}), C(${color}) and C(${backend}) (the new color and its HAProxy backend),
        C(${previous}) and C(${previous_backend}).
      - A query must give one number. An error, or several series, fails the check; no data (an empty result,
        NaN) fails it unless its C(on_missing) is V(pass).
    type: dict
    default: {}
    suboptions: &analysis
      duration:
        description: Seconds the checks must hold; V(0) takes one sample.
        type: float
        default: 0
      interval:
        description: Seconds between samples.
        type: float
        default: 5
      checks:
        description: The checks.
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: Name in messages and results.
            type: str
          query:
            description: PromQL giving one number.
            type: str
            required: true
          min:
            description: Lowest acceptable value.
            type: float
          max:
            description: Highest acceptable value.
            type: float
          on_missing:
            description: What no data counts as.
            type: str
            choices: [fail, pass]
            default: fail
  post_analysis:
    description:
      - Checks that must hold for O(post_analysis.duration) seconds after the switch (phase B(watch));
        when one fails the release is rolled back automatically. Same form as O(pre_analysis).
    type: dict
    default: {}
    suboptions: *analysis
  scale_down_delay:
    description: Seconds between the end of B(watch) and retiring the old color; a rollback in that time is instant.
    type: float
    default: 30
  keep_warm:
    description: Keep the old color running after the release, for an instant rollback; the next release reuses it.
    type: bool
    default: false
  lock_wait:
    description:
      - Seconds to wait for the service's lock, held by a release run by another controller or a scale cycle.
      - With O(state=rolled_back) or O(state=aborted), that run is asked to stop and given this long to do so.
    type: float
    default: 30
"""

EXAMPLES = r"""
- name: Release version 2 of web behind two HAProxy nodes, with analysis and automatic rollback
  cyberdyne.skynet.skynet_bluegreen:
    service: web
    image: registry.example/web:2
    health:
      path: /health
    haproxy:
      - name: lb1
        admin_socket: /run/haproxy/admin.sock
      - name: lb2
        admin_socket: 10.0.0.12:9999
        persist: false
    pre_analysis:
      duration: 30
      checks:
        - name: new color answers
          query: sum(haproxy_backend_active_servers{proxy="${backend}"})
          min: 1
    post_analysis:
      duration: 120
      interval: 10
      checks:
        - name: error rate
          query: >-
            sum(rate(haproxy_backend_http_responses_total{proxy="${backend}",code="5xx"}[1m]))
            / sum(rate(haproxy_backend_http_responses_total{proxy="${backend}"}[1m]))
          max: 0.01
          on_missing: pass
    scale_down_delay: 300
    prometheus_url: http://prometheus.example:9090

- name: Roll back the last release of web
  cyberdyne.skynet.skynet_bluegreen:
    service: web
    state: rolled_back
    haproxy:
      - admin_socket: /run/haproxy/admin.sock

- name: Show what a release would do
  cyberdyne.skynet.skynet_bluegreen:
    service: web
    image: registry.example/web:3
    haproxy:
      - admin_socket: /run/haproxy/admin.sock
  check_mode: true
  register: plan
"""

RETURN = r"""
live:
  description: The live color after the run.
  returned: always
  type: str
  sample: green
previous:
  description: The live color before the run.
  returned: always
  type: str
  sample: blue
plan:
  description: What the run does (in check mode, would do).
  returned: always
  type: dict
  contains:
    action:
      description: V(none), V(release), V(resume), V(rollback) or V(abort).
      type: str
    steps:
      description: Phases (deploy, verify, switch, watch, retire) or undo steps (restore, switch_back, remove_new).
      type: list
      elements: str
    reason:
      description: Why.
      type: str
    live:
      description: The live color when the plan was made.
      type: str
    target:
      description: The color that becomes live.
      type: str
    image:
      description: Its image.
      type: str
    count:
      description: Its instances.
      type: int
    ends:
      description: The phase the release ends in when every step succeeds.
      type: str
  sample: {"action": "release", "steps": ["deploy", "verify", "switch", "watch", "retire"], "live": "blue",
           "target": "green", "image": "web:2", "count": 2, "ends": "done", "reason": "releasing web:2 on green"}
phases:
  description: The phases this run went through, with their timings and outcome.
  returned: always
  type: list
  elements: dict
  sample: [{"phase": "deploy", "started": 1764090000.1, "ended": 1764090002.3, "seconds": 2.2,
            "outcome": "ok", "detail": "green: 2 started, 0 removed, 2 running web:2"}]
timings:
  description: Seconds per phase of this run and their C(total).
  returned: always
  type: dict
  sample: {"deploy": 2.2, "verify": 4.1, "switch": 0.02, "watch": 30.0, "retire": 35.2, "total": 71.52}
analysis:
  description: The result of every analysis check run (phase, query, samples, last value, passed, reason).
  returned: always
  type: list
  elements: dict
nodes:
  description:
    - What each HAProxy node serves, read back after the switch or the undo of this run.
    - C(name); C(switched), whether it serves the new color; C(serves), the color read back (null when it could
      not be read); C(error), why it did not switch or could not be put back; C(note), a command whose answer
      failed while the read-back showed it done; C(put_back), whether it was moved back to the old color.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "lb1", "switched": true, "serves": "green", "error": null}]
warnings:
  description: Problems that did not change the result, such as a lock that could not be given back cleanly.
  returned: when there are any
  type: list
  elements: str
preview:
  description: Preview traffic sent (url, ok, failed, errors), when O(preview.url) is set.
  returned: always
  type: dict
release:
  description: The release record kept in Consul KV at C(skynet/bluegreen/<service>/release).
  returned: always
  type: dict
msg:
  description: What happened, in one sentence.
  returned: always
  type: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _consul, _drivers, _names
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen import BlueGreen, HAProxyNode, ReleaseOptions
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_runtime import HAProxyRuntime
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import (
    client_from_params,
    prometheus_argument_spec,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry
from ansible_collections.cyberdyne.skynet.plugins.module_utils._release import parse_analysis
from ansible_collections.cyberdyne.skynet.plugins.module_utils._service import instance_argument_spec


def analysis_spec():
    return dict(
        type="dict",
        default={},
        options=dict(
            duration=dict(type="float", default=0),
            interval=dict(type="float", default=5),
            checks=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    name=dict(type="str"),
                    query=dict(type="str", required=True),
                    min=dict(type="float"),
                    max=dict(type="float"),
                    on_missing=dict(type="str", choices=["fail", "pass"], default="fail"),
                ),
            ),
        ),
    )


def main():
    argument_spec = dict(
        service=dict(type="str", required=True),
        state=dict(type="str", choices=["released", "rolled_back", "aborted"], default="released"),
        image=dict(type="str"),
        version=dict(type="str"),
        count=dict(type="int"),
        **instance_argument_spec(),
        haproxy=dict(
            type="list",
            elements="dict",
            required=True,
            options=dict(
                admin_socket=dict(type="str", required=True),
                name=dict(type="str"),
                map_dir=dict(type="str"),
                persist=dict(type="bool", default=True),
                timeout=dict(type="float", default=5),
            ),
        ),
        map_dir=dict(type="str", default="/etc/haproxy/maps"),
        health_timeout=dict(type="float", default=120),
        preview=dict(
            type="dict",
            default={},
            options=dict(
                enabled=dict(type="bool", default=False),
                url=dict(type="str"),
                rate=dict(type="float", default=5),
                duration=dict(type="float", default=10),
                max_failures=dict(type="int", default=0),
            ),
        ),
        pre_analysis=analysis_spec(),
        post_analysis=analysis_spec(),
        scale_down_delay=dict(type="float", default=30),
        keep_warm=dict(type="bool", default=False),
        lock_wait=dict(type="float", default=30),
        **prometheus_argument_spec(),
        **_consul.consul_argument_spec(),
        **_drivers.compute_argument_spec(),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=[("state", "released", ("image",))],
        supports_check_mode=True,
    )
    p = module.params
    parsed = _drivers.parse(p)
    missing = _drivers.missing_library(p, parsed)
    if missing:
        module.fail_json(msg=missing_required_lib(missing[0]), exception=str(missing[1]))
    if p["count"] is not None and p["count"] < 1:
        module.fail_json(msg=f"count must be 1 or more, got {p['count']}")

    try:
        _names.service_name(p["service"], "service")
        _names.tags(p["tags"], "tags")
        for n, node in enumerate(p["haproxy"]):
            _names.runtime_word(node["map_dir"] or p["map_dir"], f"haproxy[{n}].map_dir")
    except SkynetError as e:
        module.fail_json(msg=f"{e}; nothing was changed")

    try:
        options = ReleaseOptions(
            service=p["service"],
            image=p["image"] or "",
            version=p["version"] or "",
            count=p["count"],
            port=p["port"],
            env={k: str(v) for k, v in p["env"].items()},
            command=tuple(p["command"] or ()),
            memory=p["memory"] or "",
            cpus=p["cpus"] or 0.0,
            health=p["health"] or {},
            tags=tuple(p["tags"]),
            health_timeout=p["health_timeout"],
            preview=p["preview"] or {},
            pre=parse_analysis("pre_analysis", p["pre_analysis"]),
            post=parse_analysis("post_analysis", p["post_analysis"]),
            scale_down_delay=p["scale_down_delay"],
            keep_warm=p["keep_warm"],
            drain_period=p["drain_period"],
            stop_timeout=p["stop_timeout"],
            lock_wait=p["lock_wait"],
        )
        nodes = [
            HAProxyNode(
                HAProxyRuntime(n["admin_socket"], name=n["name"], timeout=n["timeout"]),
                map_dir=n["map_dir"] or p["map_dir"],
                persist=n["persist"],
            )
            for n in p["haproxy"]
        ]
        prometheus = None
        if options.pre.enabled or options.post.enabled:
            prometheus = client_from_params(p)
        consul = _consul.connect(p)
        driver, computes = _drivers.make_driver(p, parsed)
        release = BlueGreen(consul, Registry(consul, computes.agents), driver, nodes, prometheus)
        result = release.run(options, state=p["state"], check_mode=module.check_mode)
    except SkynetError as e:
        module.fail_json(msg=str(e), exception=traceback.format_exc())

    if module._diff:
        plan = result["plan"]
        before = dict(live=result["previous"])
        after = dict(live=result["live"] if not module.check_mode else (plan["target"] or result["previous"]))
        if plan["action"] == "none":
            after = dict(before)
        result["diff"] = dict(before=before, after=after)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
