#!/usr/bin/python
# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: skynet_control
short_description: Pause or resume a service's autoscaling, or pin it to a number of instances
version_added: 0.1.0
description:
  - Records an operator's word on a service in Consul KV (C(<key_prefix>/<service>/control)) with who and why,
    and when. Every run of M(cyberdyne.skynet.skynet_scale) honours it, from the timer, AWX or by hand.
  - V(paused) holds the service at the instances it has; V(pinned) keeps it at O(count). The policy's
    decision is still made and shown in the reason, and its cooldowns stay as they were. Failing instances
    are still replaced, so the count holds.
  - V(resumed) deletes the record; the policy decides again from the next cycle.
  - M(cyberdyne.skynet.skynet_info) and C(playbooks/status.yml) show it; the autoscaler exports it as a
    metric and the prometheus role alerts when a pause or pin outlives its limit.
  - The token needs C(key_prefix "skynet/scale/" { policy = "write" }) (the autoscaler's token has it).
author: Skynet developers (@cyberdyne)
requirements:
  - py-consul
extends_documentation_fragment:
  - cyberdyne.skynet.consul
attributes:
  check_mode:
    support: full
    description: Reports what would be recorded and writes nothing.
  diff_mode:
    support: full
    description: The record before and after.
  idempotent:
    support: full
    description: The same mode, count and reason again change nothing (the first time and author are kept).
options:
  name:
    description:
      - The service, a DNS label (1 to 63 lower-case letters, digits and dashes, starting with a letter).
    type: str
    required: true
  state:
    description: What autoscaling of the service does from now on.
    type: str
    choices: [paused, pinned, resumed]
    required: true
  count:
    description: The number of instances of a V(pinned) service (0 or more).
    type: int
  reason:
    description: Why, shown in decisions, tables and alerts. Required with V(paused) and V(pinned).
    type: str
  by:
    description:
      - Who, shown with the reason. By default the user AWX names (C(awx_user_name)) in C(playbooks/control.yml),
        else the controller's user.
    type: str
  key_prefix:
    description:
      - Where the scaling records are, as for M(cyberdyne.skynet.skynet_scale).
    type: str
    default: skynet/scale
seealso:
  - module: cyberdyne.skynet.skynet_scale
  - module: cyberdyne.skynet.skynet_info
"""

EXAMPLES = r"""
- name: Hold web where it is during the incident
  cyberdyne.skynet.skynet_control:
    name: web
    state: paused
    reason: INC-1234, database failover

- name: Keep api at 6 instances over the sale
  cyberdyne.skynet.skynet_control:
    name: api
    state: pinned
    count: 6
    reason: black friday

- name: Let the policy decide again
  cyberdyne.skynet.skynet_control:
    name: web
    state: resumed
"""

RETURN = r"""
control:
  description: The record now (before it, in check mode, what would be recorded); null once resumed.
  returned: always
  type: dict
  sample: {mode: pinned, count: 6, by: alice, reason: black friday, since: 1764633600.0}
"""

import getpass
import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _consul, _control, _names
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry


def wanted(p, before, now):
    """The record the task asks for (None: resumed); an unchanged mode, count and reason keep before's."""
    if p["state"] == "resumed":
        return None
    mode = p["state"]
    count = p["count"] if mode == "pinned" else None
    if mode == "paused" and p["count"] is not None:
        raise SkynetError("count is for state pinned only")
    if not p["reason"]:
        raise SkynetError(f"state {mode} needs a reason (shown in decisions, tables and alerts)")
    by = p["by"] or getpass.getuser()
    new = _control.make(mode, by, p["reason"], now, count)
    if before and (before.mode, before.count, before.reason) == (new.mode, new.count, new.reason):
        return before
    return new


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", required=True, choices=["paused", "pinned", "resumed"]),
            count=dict(type="int"),
            reason=dict(type="str"),
            by=dict(type="str"),
            key_prefix=dict(type="str", default="skynet/scale", no_log=False),
            **_consul.consul_argument_spec(),
        ),
        required_if=[("state", "pinned", ["count"])],
        supports_check_mode=True,
    )
    if not _consul.HAS_CONSUL:
        module.fail_json(msg=missing_required_lib("py-consul"), exception=str(_consul.CONSUL_IMPORT_ERROR))
    p = module.params
    try:
        name = _names.service_name(p["name"], "name")
        key = _names.kv_key(f"{p['key_prefix'].rstrip('/')}/{name}/{_control.LEAF}", "key_prefix")
        registry = Registry(_consul.connect(p))
        raw, index = registry.read_versioned(key)
        try:
            before = _control.parse(raw, name)
        except SkynetError:
            before = None  # an invalid record is replaced (or deleted) by this task
        after = wanted(p, before, time.time())
        changed = raw is not None if after is None else (before is None or after is not before)
        if changed and not module.check_mode:
            done = registry.delete(key) if after is None else registry.write_json(key, after.as_dict(), cas=index)
            if not done:
                raise SkynetError(f"the control record of {name} changed under this task: run it again")
    except SkynetError as e:
        module.fail_json(msg=str(e), exception=traceback.format_exc())
    record = after.as_dict() if after else None
    module.exit_json(
        changed=changed,
        control=record,
        diff={"before": raw if isinstance(raw, dict) else {}, "after": record or {}},
    )


if __name__ == "__main__":
    main()
