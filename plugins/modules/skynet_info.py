#!/usr/bin/python
# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: skynet_info
short_description: What each service runs where, its health, last decision, cooldowns, lock and release
version_added: 0.1.0
description:
  - Reads from Consul, and changes nothing, what each service runs where and how it is doing.
  - Instances, from Consul's health endpoint, each with the Consul node it is registered on, its host
    (Meta C(skynet_host), else the node), zone (Meta C(skynet_zone)), address and port, color, image, health
    and whether it is in maintenance (draining).
  - Scaling, the last decision of M(cyberdyne.skynet.skynet_scale) with its reason
    (C(<key_prefix>/<service>/last)), the times of the last scale-out and scale-in
    (C(<key_prefix>/<service>/state)) and, when the service definition has a scaling policy, the seconds left
    of each cooldown.
  - Lock, C(skynet/lock/<service>), held or not, and by whom (purpose, host, since).
  - Release, the live color (C(skynet/bluegreen/<service>/live)) and the current or last release with its
    phase (C(skynet/bluegreen/<service>/release)).
  - Without O(services) and O(names), every service of the catalog that has Skynet instances (registrations
    with Meta C(skynet_instance)) is reported, and every service with a scaling record (one scaled to zero).
  - Returns a table too, a row per service and a column per host, as C(playbooks/status.yml) prints it.
  - The token needs only read rights, C(service_prefix "" { policy = "read" }), C(node_prefix "" { policy
    = "read" }) and C(key_prefix "skynet/" { policy = "read" }).
  - Not in the C(group/cyberdyne.skynet.skynet) action group, whose defaults carry compute options this module
    does not take; set its Consul options on the task or with C(module_defaults) for C(cyberdyne.skynet.skynet_info).
author: Skynet developers (@cyberdyne)
requirements:
  - py-consul
extends_documentation_fragment:
  - cyberdyne.skynet.consul
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so has nothing to show.
  idempotent:
    support: full
    description: Never changes anything.
options:
  services:
    description:
      - The service definitions (the C(skynet_services) list the roles and M(cyberdyne.skynet.skynet_scale)
        read); each one is reported, in this order, even with no instance.
      - The C(scaling) policy of a definition gives the cooldowns whose seconds left are reported.
      - Names, colors and scaling policies are checked as M(cyberdyne.skynet.skynet_scale) checks them;
        the task fails naming every problem before anything is read.
    type: list
    elements: dict
  names:
    description:
      - Report only these services. With O(services), names of definitions in it.
      - Each is a DNS label, 1 to 63 lower-case letters, digits and dashes, starting with a letter and not
        ending with a dash.
    type: list
    elements: str
  key_prefix:
    description:
      - Consul KV prefix of the decisions and state of M(cyberdyne.skynet.skynet_scale), its
        O(cyberdyne.skynet.skynet_scale#module:key_prefix).
    type: str
    default: skynet/scale
  parallel:
    description: How many services are read at the same time.
    type: int
    default: 8
"""

EXAMPLES = r"""
- name: Every Skynet service in Consul
  cyberdyne.skynet.skynet_info:
    consul_url: http://127.0.0.1:8500
  register: status

- name: Print it as a table
  ansible.builtin.debug:
    msg: "{{ status.table }}"

- name: The services of the definitions, with their cooldowns
  cyberdyne.skynet.skynet_info:
    services: "{{ skynet_services }}"
  register: status

- name: Fail when web has fewer than two passing instances
  ansible.builtin.assert:
    that: (status.services | selectattr('name', 'equalto', 'web') | first).counts.passing >= 2
"""

RETURN = r"""
services:
  description: One entry per service, in the order of O(services) or O(names), else by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The service.
      type: str
      returned: always
    instances:
      description: Its instances registered in Consul, by host, color and id.
      type: list
      elements: dict
      returned: always
      sample: [{"id": "3f2a9c1b7d10", "service_id": "skynet-web-3f2a9c1b7d10", "node": "docker-1",
                "host": "docker-1", "zone": "a", "address": "10.0.0.11", "port": 40123, "color": "blue",
                "image": "web:1.4", "status": "passing", "maintenance": false, "checks": []}]
      contains:
        id:
          description: Instance id (Meta C(skynet_instance)).
          type: str
          returned: always
        node:
          description: Consul node the instance is registered on.
          type: str
          returned: always
        host:
          description: Host it runs on, Meta C(skynet_host), else its node.
          type: str
          returned: always
        zone:
          description: Its zone, Meta C(skynet_zone), null when not known.
          type: str
          returned: always
        status:
          description: V(passing), V(warning) or V(critical), the worst of its checks (its node's included).
          type: str
          returned: always
        maintenance:
          description: Whether it is in maintenance (drained, or its node is).
          type: bool
          returned: always
        checks:
          description: Its checks that do not pass, with their output.
          type: list
          elements: dict
          returned: always
    counts:
      description: Instances by status, C(passing), C(warning), C(critical), C(maintenance) (counted only
        there) and C(total).
      type: dict
      returned: always
    hosts:
      description: The same counts by host.
      type: dict
      returned: always
      sample: {"docker-1": {"passing": 2, "warning": 0, "critical": 0, "maintenance": 0, "total": 2}}
    last_decision:
      description: The last decision recorded by M(cyberdyne.skynet.skynet_scale) (C(time), C(age) in seconds,
        C(action), C(current), C(desired), C(reason), C(applied), C(error), C(color), C(metrics)); null when none.
      type: dict
      returned: always
    cooldown:
      description: C(last_scale_up), C(last_scale_down) (epoch seconds, null when never) and C(up_left),
        C(down_left), the seconds left of each cooldown (null without a scaling policy).
      type: dict
      returned: always
    lock:
      description: C(held), and when held C(purpose) (V(scale), V(release), V(compute)), C(host), C(pid),
        C(since), C(age) and C(session) of the holder.
      type: dict
      returned: always
    live:
      description: The live color recorded by M(cyberdyne.skynet.skynet_bluegreen), null when none is.
      type: str
      returned: always
    release:
      description: The current or last release (C(id), C(phase), C(in_progress), C(phase_since), C(image),
        C(version), C(from), C(to), C(started), C(updated), C(ended), C(error)); null when none.
      type: dict
      returned: always
table:
  description: The status table, a row per service and a column per host, then notes (reasons, errors,
    cooldowns), one string per line.
  returned: always
  type: list
  elements: str
  sample:
    - "SERVICE  docker-1  docker-2     LIVE  RELEASE  LAST DECISION          LOCK"
    - "web      2 ok      1 ok 1 crit  blue  done     scale_out 2->3 1m ago  -"
"""

import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _consul, _names
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._info import InfoReader, render_table
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry


def main():
    module = AnsibleModule(
        argument_spec=dict(
            services=dict(type="list", elements="dict"),
            names=dict(type="list", elements="str"),
            key_prefix=dict(type="str", default="skynet/scale", no_log=False),
            parallel=dict(type="int", default=8),
            **_consul.consul_argument_spec(),
        ),
        supports_check_mode=True,
    )
    if not _consul.HAS_CONSUL:
        module.fail_json(msg=missing_required_lib("py-consul"), exception=str(_consul.CONSUL_IMPORT_ERROR))
    p = module.params
    if p["parallel"] < 1:
        module.fail_json(msg=f"parallel must be 1 or more, got {p['parallel']}")
    try:
        _names.kv_key(p["key_prefix"].rstrip("/"), "key_prefix")
        reader = InfoReader(Registry(_consul.connect(p)), time.time, key_prefix=p["key_prefix"], parallel=p["parallel"])
        services = reader.run(p["services"], p["names"] or None)
    except SkynetError as e:
        module.fail_json(msg=str(e), exception=traceback.format_exc())
    module.exit_json(changed=False, services=services, table=render_table(services))


if __name__ == "__main__":
    main()
