#!/usr/bin/python
# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: skynet_compute
short_description: Desired state of a service's instances on a compute, registered in Consul
version_added: 0.1.0
description:
  - Runs exactly O(count) instances of a service of one O(color) on a compute (a Docker API endpoint,
    Docker Engine or Podman, or AWS EC2), registers each in Consul with a health check, and waits until
    every instance passes.
  - On EC2 each instance is a VM started from the AMI O(image), tagged C(io.skynet.managed=true) with its
    service, color, image, port and creation time, and registered in Consul at its private IP and O(port).
  - A changed O(image) replaces instances one at a time, never dropping below the healthy count.
  - Scale-in picks instances by O(scale_in_policy), takes each out of rotation first (Consul
    maintenance, so DNS and HAProxy drop it), waits O(drain_period), then stops it (EC2 terminates it).
  - Everything is checked before anything changes (Consul, the engine or EC2 credentials, the image or AMI).
    An instance that cannot be registered or does not pass its check in time is removed again.
author: Skynet developers (@cyberdyne)
requirements:
  - py-consul
  - docker (with O(compute=docker))
  - boto3 (with O(compute=ec2))
extends_documentation_fragment:
  - cyberdyne.skynet.consul
  - cyberdyne.skynet.docker
  - cyberdyne.skynet.ec2
  - cyberdyne.skynet.instance
attributes:
  check_mode:
    support: full
    description: Predicts exactly what a real run would create, replace and remove; changes nothing.
  diff_mode:
    support: full
    description: Shows the instance count and ids before and after.
  idempotent:
    support: full
    description: A second run with the same arguments changes nothing.
options:
  service:
    description:
      - Name of the service; the name it has in Consul.
      - A DNS label, 1 to 63 lower-case letters, digits and dashes, starting with a letter and not ending
        with a dash (HAProxy finds the instances as C(_<service>._<color>.service.consul)). Any other name
        fails the task before anything is read or changed.
    type: str
    required: true
  compute:
    description:
      - With O(computes), the name of the compute the instances run on (default V(default)).
      - Without it, the provider of the instances, V(docker) (the default), a Docker API endpoint (options of the
        docker fragment), or V(ec2), AWS EC2 (options of the ec2 fragment).
    type: str
  computes:
    description:
      - Named computes, the C(skynet_computes) variable of the roles and playbooks; see R(docs/compute.md,
        https://github.com/cyberdyne/skynet/blob/main/docs/compute.md).
      - A C(type=docker) compute is a pool of C(hosts), each a dict of C(name) (a DNS label), C(url) (its Docker
        API), C(address) (where its instances are reached and registered), optional C(bind_address),
        C(consul_url) (that host's own Consul agent, on which its instances are registered), C(zone),
        C(capacity) (most instances of all services) and C(tls) (C(ca_cert), C(client_cert), C(client_key),
        C(verify)).
      - A new instance goes to the host with the fewest instances of the service, then the fewest overall, then
        by zone; a scale-in takes from the host with the most. A host that does not answer is skipped and
        reported in RV(unavailable).
      - A C(type=ec2) compute has the ec2 options (C(region), C(instance_type), ...) and C(subnets), a list of
        C(id) and C(zone) over which instances are spread the same way. Credentials are not taken from here.
    type: dict
  state:
    description: V(present) runs O(count) instances; V(absent) removes every instance of the color.
    type: str
    choices: [present, absent]
    default: present
  count:
    description: Exact number of instances of O(color). Required with O(state=present).
    type: int
  image:
    description:
      - Image the instances run; with O(compute=ec2) the id of the AMI. Required with O(state=present).
    type: str
  host_port:
    description: Host port to publish O(port) on; V(0) picks a free one per instance. Docker only.
    type: int
    default: 0
  color:
    description: Generation of the service, a tag in Consul (C(_web._blue.service.consul) resolves one color).
    type: str
    choices: [blue, green]
    default: blue
  wait:
    description: Wait until every new instance passes its health check.
    type: bool
    default: true
  lock_wait:
    description:
      - Seconds to wait for the lock of the service (C(skynet/lock/<service>) in Consul KV), which
        M(cyberdyne.skynet.skynet_scale) and M(cyberdyne.skynet.skynet_bluegreen) take too, before failing with
        nothing changed. Every change is made under that lock, and stops if the lock is lost.
    type: float
    default: 30
  wait_timeout:
    description:
      - Seconds to wait for new instances to pass; those that do not are removed and the task fails.
      - With O(compute=ec2) it also bounds the wait for each new instance to reach the running state.
    type: float
    default: 120
  scale_in_policy:
    description: Which instances go first when scaling in.
    type: str
    choices: [newest_first, oldest_first]
    default: newest_first
"""

EXAMPLES = r"""
- name: Run three instances of web, registered in Consul
  cyberdyne.skynet.skynet_compute:
    service: web
    image: registry.example/web:1.4
    count: 3
    port: 8080
    health:
      path: /health
    docker_host: unix:///run/podman/podman.sock
    consul_url: http://127.0.0.1:8500

- name: Run two EC2 instances of api from an AMI, registered at their private IPs
  cyberdyne.skynet.skynet_compute:
    service: api
    compute: ec2
    image: ami-0abcdef1234567890
    count: 2
    port: 8080
    region: eu-west-1
    instance_type: t3.small
    subnet_id: subnet-0123456789abcdef0
    security_groups: [sg-0123456789abcdef0]
    user_data: |
      #cloud-config
      runcmd: [systemctl start api]
    health:
      type: tcp

- name: Remove every blue instance of web
  cyberdyne.skynet.skynet_compute:
    service: web
    color: blue
    state: absent
"""

RETURN = r"""
instances:
  description:
    - The instances of the service and color after the run.
    - C(checked_by) says who runs an instance's Consul check, V(agent) (the Consul agent it is registered on),
      or, for an EC2 instance (a node of its own in the catalog), V(skynet) or V(esm) (O(ec2_health)).
  returned: always
  type: list
  elements: dict
  sample: [{"id": "3f2a9c1b7d10", "service": "web", "color": "blue", "image": "web:1.4",
            "address": "127.0.0.1", "port": 40123, "created": 1764090000.5, "state": "running",
            "host": "docker-1", "zone": "a", "checked_by": "agent"}]
created:
  description: Ids of the instances started (predicted as C((new N)) in check mode).
  returned: always
  type: list
  elements: str
removed:
  description: Ids of the instances stopped (EC2 instances terminated) and deregistered.
  returned: always
  type: list
  elements: str
replaced:
  description: Ids of the instances replaced because their image changed.
  returned: always
  type: list
  elements: str
registered:
  description: Ids of running instances that were missing from Consul and were registered again.
  returned: always
  type: list
  elements: str
unavailable:
  description:
    - Hosts of the compute (EC2 subnets) that did not answer, or failed a start, in this run, with why; they were
      skipped and their instances not counted.
  returned: always
  type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _consul, _drivers, _names
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import make_spec
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._lock import ServiceLock
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry
from ansible_collections.cyberdyne.skynet.plugins.module_utils._service import (
    Desired,
    ServiceConverger,
    instance_argument_spec,
)


def main():
    argument_spec = dict(
        service=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        count=dict(type="int"),
        image=dict(type="str"),
        host_port=dict(type="int", default=0),
        color=dict(type="str", choices=list(_names.COLORS), default="blue"),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="float", default=120),
        lock_wait=dict(type="float", default=30),
        scale_in_policy=dict(type="str", choices=["newest_first", "oldest_first"], default="newest_first"),
        **instance_argument_spec(),
        **_consul.consul_argument_spec(),
        **_drivers.compute_argument_spec(),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_if=[("state", "present", ("count", "image"))],
        supports_check_mode=True,
    )
    p = module.params
    parsed = _drivers.parse(p)
    missing = _drivers.missing_library(p, parsed)
    if missing:
        module.fail_json(msg=missing_required_lib(missing[0]), exception=str(missing[1]))
    if p["compute"] == "ec2" and not p["computes"]:
        ignored = [k for k in ("host_port", "env", "command", "memory", "cpus") if p[k]]
        if ignored:
            module.warn(f"compute=ec2 ignores the Docker-only options {', '.join(ignored)}")
    if p["count"] is not None and p["count"] < 0:
        module.fail_json(msg=f"count must be 0 or more, got {p['count']}")
    try:
        _names.service_name(p["service"], "service")
        _names.color(p["color"], "color")
        _names.tags(p["tags"], "tags")
    except SkynetError as e:
        module.fail_json(msg=f"{e}; nothing was changed")

    desired = Desired(
        spec=make_spec(
            p["service"],
            p["color"],
            p["image"],
            p["port"],
            p["env"],
            p["command"],
            p["memory"],
            p["cpus"],
            host_port=p["host_port"],
        ),
        count=p["count"] or 0,
        state=p["state"],
        health=p["health"] or {},
        tags=tuple(p["tags"]),
        wait=p["wait"],
        wait_timeout=p["wait_timeout"],
        drain_period=p["drain_period"],
        stop_timeout=p["stop_timeout"],
        scale_in_policy=p["scale_in_policy"],
    )
    problem = None
    try:
        driver, computes = _drivers.make_driver(p, parsed)
        registry = Registry(_consul.connect(p), computes.agents)
        if module.check_mode:
            outcome, before, after = ServiceConverger(driver, registry).converge(desired, check_mode=True)
        else:
            lock = ServiceLock(registry, p["service"], "compute")
            if not lock.acquire(p["lock_wait"]):
                raise SkynetError(
                    f"{lock.holder()} holds the lock of {p['service']} ({lock.key}) and did not release it within "
                    f"lock_wait ({p['lock_wait']:g}s); nothing was changed"
                )
            try:
                outcome, before, after = ServiceConverger(driver, registry, fence=lock.fence).converge(desired)
            finally:
                problem = lock.release()
    except SkynetError as e:
        module.fail_json(msg=str(e), exception=traceback.format_exc())
    if problem:
        module.warn(f"the lock of {p['service']} was not released cleanly: {problem}")

    after_ids = after if module.check_mode else [i.id for i in after]
    result = dict(
        changed=outcome.changed,
        instances=[] if module.check_mode else [i.as_dict() for i in after],
        created=outcome.created,
        removed=outcome.removed,
        replaced=outcome.replaced,
        registered=outcome.registered,
        unavailable=driver.unavailable(),
    )
    if module._diff:
        ids_before = [i.id for i in before]
        result["diff"] = dict(
            before=dict(count=len(ids_before), instances=ids_before),
            after=dict(count=len(after_ids), instances=after_ids),
        )
    if module.check_mode:
        result["instances"] = [i.as_dict() for i in before]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
