# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # How the instances a module starts run, are checked and are stopped (skynet_compute, skynet_bluegreen).
    DOCUMENTATION = r"""
options:
  port:
    description:
      - Port the service listens on inside an instance.
      - With an EC2 compute, the port registered in Consul with the instance's private IP.
    type: int
    default: 8080
  env:
    description: Environment variables of the instances. Docker only.
    type: dict
    default: {}
  command:
    description: Command the instances run instead of the image's. Docker only.
    type: list
    elements: str
  memory:
    description: Memory limit of each instance, for example V(256m). Docker only.
    type: str
  cpus:
    description: CPU limit of each instance, in CPUs. Docker only.
    type: float
  tags:
    description:
      - More Consul tags of every instance (the color is always one).
      - Each tag is 1 to 128 letters, digits, dashes, dots, underscores and equals signs, starting with a
        letter or a digit (V(v2), V(zone=a)), and not V(blue) or V(green), which only the color may be.
    type: list
    elements: str
    default: []
  health:
    description: Health check Consul runs against each instance.
    type: dict
    default: {}
    suboptions:
      type:
        description: V(http) gets O(health.path) and wants a 2xx; V(tcp) only connects.
        type: str
        choices: [http, tcp]
        default: http
      path:
        description: Path of the HTTP check.
        type: str
        default: /
      interval:
        description: How often Consul checks.
        type: str
        default: 2s
      timeout:
        description: How long one check may take.
        type: str
        default: 1s
      deregister_after:
        description: Consul deregisters an instance critical for this long (C(DeregisterCriticalServiceAfter)).
        type: str
        default: 1m
  drain_period:
    description: Seconds between taking an instance out of rotation and stopping it.
    type: float
    default: 5
  stop_timeout:
    description: Seconds an instance has to stop before it is killed.
    type: int
    default: 10
"""
