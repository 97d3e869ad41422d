# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The prometheus role's rules rendered from the service definitions: the demand alerts.

The documentation is in prometheus_demand_rules.yml beside this file.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._demand import demand_rules
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


def prometheus_demand_rules(services, for_="0s"):
    try:
        return demand_rules(services, for_=for_)
    except SkynetError as e:
        raise AnsibleFilterError(str(e)) from e


class FilterModule:
    def filters(self):
        return {"prometheus_demand_rules": prometheus_demand_rules}
