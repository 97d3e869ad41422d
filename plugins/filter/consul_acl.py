# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The Consul ACL policies and tokens of Skynet's components (documented in consul_acl_tokens.yml)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul_acl import tokens
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


def consul_acl_tokens(management_token, node, components, services=(), prefixes=(), generation=1):
    try:
        return tokens(management_token, node, list(components), list(services), list(prefixes), int(generation))
    except (SkynetError, ValueError, TypeError) as e:
        raise AnsibleFilterError(f"consul_acl_tokens: {e}") from e


class FilterModule:
    def filters(self):
        return {"consul_acl_tokens": consul_acl_tokens}
