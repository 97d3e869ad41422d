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
    head, _, name = kv_key.rpartition("/")
    return name if head == PREFIX and name else None


def record(by, now, color, held=1):
    """The value of a wake record: who held a request (the load balancer's node), when, for which color."""
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise SkynetError(f"a wake time must be a finite number, not {now!r}")
    return {"by": str(by), "at": float(now), "color": str(color), "held": int(held)}


def pending(index, answered):
    """Whether a wake record at ModifyIndex index is newer than the one a scale state answered."""
    return int(index or 0) > int(answered or 0)
