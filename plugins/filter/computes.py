# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The default Docker pool of an inventory's docker_hosts group (documented in docker_pool.yml)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._computes import parse, pool_from_hosts
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


def docker_pool(names, hostvars, local=None, local_consul_url=None, consul_tls=None):
    try:
        computes = pool_from_hosts([(n, hostvars[n]) for n in names], local, local_consul_url, consul_tls)
        parse(computes)
    except SkynetError as e:
        raise AnsibleFilterError(f"docker_hosts: {e}") from e
    return computes


class FilterModule:
    def filters(self):
        return {"docker_pool": docker_pool}
