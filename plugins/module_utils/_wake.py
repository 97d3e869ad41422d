# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wake records: a request reached a service that has no usable instance (pure: no I/O).

The activator on a load balancer holds such a request and writes skynet/wake/<service>. The record's
Consul ModifyIndex is what counts: skynet_scale starts an instance of a service at zero when the index is
newer than the one its scale state says it answered (no clock is compared across hosts), and the watcher
runs a cycle for the service as soon as the record changes. The timer's cycle reads it too, so a wake is
never lost when the watcher is down.
"""

from __future__ import annotations

import math

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

PREFIX = "skynet/wake"


def key(service):
    return f"{PREFIX}/{service}"


def service_of(kv_key):
    """The service a key under PREFIX is the wake record of, None for any other key."""
    head, _slash, name = kv_key.rpartition("/")
    return name if head == PREFIX and name else None


def record(by, now, color, held=1, since=None):
    """The value of a wake record: who holds requests (the load balancer's node), how many, for which color,
    when it was written (at) and since when they are held (since: the oldest still held)."""
    for value in (now, now if since is None else since):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SkynetError(f"a wake time must be a finite number, not {value!r}")
    return {
        "by": str(by),
        "at": float(now),
        "since": float(now if since is None else since),
        "color": str(color),
        "held": int(held),
    }


def pending(index, answered):
    """Whether a wake record at ModifyIndex index is newer than the one a scale state answered."""
    return int(index or 0) > int(answered or 0)
