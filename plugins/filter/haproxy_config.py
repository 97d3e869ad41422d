# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Filters rendering HAProxy's configuration and map files from service definitions.

Their documentation is in the YAML files beside this one, one per filter.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible.utils.display import Display
from ansible_collections.cyberdyne.skynet.plugins.module_utils._activator import config_for
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_config import parse_map, render, render_map
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_live import consul_live, live_plan


def haproxy_config(services, **kwargs):
    try:
        return render(services, **kwargs)
    except SkynetError as e:
        raise AnsibleFilterError(str(e)) from e


def haproxy_activator_config(services, **settings):
    try:
        return config_for(services, **settings)
    except SkynetError as e:
        raise AnsibleFilterError(str(e)) from e


def haproxy_map(services, live=None, preview=False):
    try:
        return render_map(services, live, preview=preview)
    except SkynetError as e:
        raise AnsibleFilterError(str(e)) from e


def haproxy_live_colors(text):
    return parse_map(text)


def haproxy_consul_live(listing, probe=None, url=None):
    return consul_live(listing, probe, where=f"Consul at {url}" if url else "Consul")


def haproxy_live_plan(services, current=None, consul=None, override=None, warn=True):
    try:
        render_map(services, override)  # the names and colors, checked as for the map files
    except SkynetError as e:
        raise AnsibleFilterError(str(e)) from e
    plan = live_plan(services, current, consul, override)
    if warn:
        # Display deduplicates: a plan templated more than once warns once.
        for warning in plan["warnings"]:
            Display().warning(f"haproxy: {warning}")
    return plan


class FilterModule:
    def filters(self):
        return {
            "haproxy_config": haproxy_config,
            "haproxy_activator_config": haproxy_activator_config,
            "haproxy_map": haproxy_map,
            "haproxy_live_colors": haproxy_live_colors,
            "haproxy_consul_live": haproxy_consul_live,
            "haproxy_live_plan": haproxy_live_plan,
        }
