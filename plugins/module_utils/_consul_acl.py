# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consul ACL policies and tokens of each Skynet component (pure: no I/O).

Every token is derived from the management token with HMAC-SHA256, so a rerun from any controller (a
laptop, AWX) finds the same tokens without storing them; a new generation derives new ones.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._names import service_name

# The DNS token is one for every agent; each other component has a token per node.
SHARED = ("dns",)
COMPONENTS = ("agent", "dns", "registrator", "haproxy", "prometheus", "autoscaler")
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
# A Consul node name: letters, digits, dashes, dots and underscores (it goes into a policy's rules).
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PREFIX = re.compile(r"[a-z0-9-]{0,63}")

_READ_CATALOG = ('node_prefix "" { policy = "read" }', 'service_prefix "" { policy = "read" }')


def _service_write(services, prefixes):
    lines = [f'service "{service_name(s, "consul_acl_services")}" {{ policy = "write" }}' for s in services]
    for prefix in prefixes:
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise SkynetError(
                f"consul_acl_service_prefixes: {prefix!r} is not a service name prefix "
                "(lower-case letters, digits and dashes)"
            )
        lines.append(f'service_prefix "{prefix}" {{ policy = "write" }}')
    return tuple(lines)


def rules(component, node, services=(), prefixes=()):
    """The HCL rules of component's policy: what it may do; everything else is denied."""
    write = _service_write(services, prefixes)
    by_component = {
        "agent": (f'node "{node}" {{ policy = "write" }}', 'service_prefix "" { policy = "read" }'),
        "dns": (*_READ_CATALOG, 'query_prefix "" { policy = "read" }'),
        "registrator": (*_READ_CATALOG, *write),
        "haproxy": (
            *_READ_CATALOG,
            'key_prefix "skynet/bluegreen/" { policy = "read" }',
            # The activator records wakes of services at zero.
            'key_prefix "skynet/wake/" { policy = "write" }',
        ),
        "prometheus": (*_READ_CATALOG, 'agent_prefix "" { policy = "read" }'),
        "autoscaler": (
            *_READ_CATALOG,
            'agent_prefix "" { policy = "read" }',
            'session_prefix "" { policy = "write" }',
            'key_prefix "skynet/" { policy = "write" }',
            # EC2 instances are external nodes of the catalog named after them (i-...), written by the autoscaler.
            'node_prefix "i-" { policy = "write" }',
            *write,
        ),
    }
    if component not in by_component:
        raise SkynetError(f"unknown component {component!r}: one of {', '.join(COMPONENTS)}")
    return "\n".join(by_component[component]) + "\n"


def _uuid(key, label):
    digest = hmac.new(key, label.encode(), hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def tokens(management_token, node, components, services=(), prefixes=(), generation=1):
    """component -> {policy, rules, policy_description, description, accessor, secret} for one node's components.

    Only the agent's policy is the node's own; the others are shared by the nodes of the component (their
    name, rules and description the same from every node), each node having its own token.
    """
    if not isinstance(management_token, str) or not _UUID.fullmatch(management_token):
        raise SkynetError("the Consul management token must be a UUID (the SecretID of a management token)")
    if not isinstance(node, str) or not _NODE.fullmatch(node):
        raise SkynetError(f"consul_node_name {node!r}: use letters, digits, dashes, dots and underscores")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
        raise SkynetError(f"consul_acl_tokens_generation must be a whole number from 1, not {generation!r}")
    key = management_token.lower().encode()
    result = {}
    for component in dict.fromkeys(components):
        text = rules(component, node, services, prefixes)
        owner = "" if component in SHARED else node
        label = f"{generation}|{component}|{owner}"
        result[component] = {
            "policy": f"skynet-{component}" + (f"-{node}" if component == "agent" else ""),
            "rules": text,
            "policy_description": f"skynet {component}" + (f" on {node}" if component == "agent" else ""),
            "description": f"skynet {component}" + (f" on {owner}" if owner else ""),
            "accessor": _uuid(key, "accessor|" + label),
            "secret": _uuid(key, "secret|" + label),
        }
    return result
