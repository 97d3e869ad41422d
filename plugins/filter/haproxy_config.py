# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Filters rendering HAProxy's configuration and map files from service definitions.

Their documentation is in the YAML files beside this one, one per filter.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_config import parse_map, render, render_map


def haproxy_config(services, **kwargs):
    try:
        return render(services, **kwargs)
    except SkynetError as e:
        raise AnsibleFilterError(str(e)) from e


def haproxy_map(services, live=None, preview=False):
    try:
        return render_map(services, live, preview=preview)
    except SkynetError as e:
        raise AnsibleFilterError(str(e)) from e


def haproxy_live_colors(text):
    return parse_map(text)


class FilterModule:
    def filters(self):
        return {
            "haproxy_config": haproxy_config,
            "haproxy_map": haproxy_map,
            "haproxy_live_colors": haproxy_live_colors,
        }
