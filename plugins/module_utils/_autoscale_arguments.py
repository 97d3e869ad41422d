# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The arguments of one skynet_scale cycle from the settings of playbooks/autoscale.yml (its skynet_*
variables), with their defaults. The one wiring of those settings: the playbook runs the module with it,
and the autoscaler role renders the watcher's resident cycle with it. Pure: a dict in, a dict out."""

from __future__ import annotations

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

OMIT = object()  # no default: the argument is left out when the setting is unset or empty

# (setting, skynet_scale argument, default)
SETTINGS = (
    ("skynet_services", "services", OMIT),
    ("skynet_consul_url", "consul_url", "http://127.0.0.1:8500"),
    ("skynet_consul_token", "consul_token", OMIT),
    ("skynet_consul_ca_cert", "consul_ca_cert", OMIT),
    ("skynet_prometheus_url", "prometheus_url", "http://127.0.0.1:9090"),
    ("skynet_computes", "computes", OMIT),
    ("skynet_docker_host", "docker_host", "unix:///var/run/docker.sock"),
    ("skynet_advertise_address", "advertise_address", "127.0.0.1"),
    ("skynet_autoscale_dry_run", "dry_run", False),
    ("skynet_autoscale_limit", "limit", OMIT),
    ("skynet_autoscale_lock_wait", "lock_wait", 0),
    ("skynet_autoscale_drain_period", "drain_period", 5),
)


def arguments(settings):
    """skynet_scale's arguments from {setting: value}; settings it does not know are not its own (other
    skynet_* variables of an inventory) and are left alone. None, "" and an empty list or dict are unset."""
    if not isinstance(settings, dict):
        raise SkynetError("the autoscale settings must be a mapping of skynet_* variables")
    if settings.get("skynet_services") is None:
        raise SkynetError("skynet_services is not set: the cycle has no service definitions")
    out = {}
    for setting, argument, default in SETTINGS:
        value = settings.get(setting)
        if value is None or (isinstance(value, (str, list, dict)) and not value and argument != "services"):
            value = default
        if value is not OMIT:
            out[argument] = value
    return out
