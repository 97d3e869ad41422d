# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""skynet_scale's arguments from the autoscale settings (documented in autoscale_arguments.yml)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._autoscale_arguments import arguments
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


def autoscale_arguments(settings):
    try:
        return arguments(settings)
    except SkynetError as e:
        raise AnsibleFilterError(str(e)) from e


class FilterModule:
    def filters(self):
        return {"autoscale_arguments": autoscale_arguments}
