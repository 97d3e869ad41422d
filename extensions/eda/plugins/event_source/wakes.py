# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cyberdyne.skynet.wakes: an event per wake record the load balancers' activators write in Consul KV.

Arguments (the mapping under the source in the rulebook):
  consul_url: the Consul agent (default http://127.0.0.1:8500)
  token_file: a file holding a Consul token that may read skynet/wake/ (default: none)
  ca_file: the CA that verifies Consul's certificate over HTTPS (default: the system's)

A blocking query on skynet/wake/ gives one event {"skynet": {"service": NAME, "source": "wake"}} per
record written or rewritten; records younger than a minute when the source starts count as new (the
same reading as skynet-watcher). Consul unreachable: retried every second.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

# Loaded by its path: the collection's module_utils are imported from the tree holding this file.
sys.path.insert(0, str(Path(__file__).parents[7]))

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _wake
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul_http import (
    ConsulHTTP,
    ConsulHTTPError,
    read_token,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._watcher import (
    WAIT,
    new_wakes,
    recent_wakes,
)

log = logging.getLogger("cyberdyne.skynet.wakes")


async def main(queue, args):
    consul = ConsulHTTP(
        args.get("consul_url", "http://127.0.0.1:8500"),
        token=read_token(args.get("token_file")),
        ca_file=args.get("ca_file"),
    )
    index, seen = 0, None
    while True:
        try:
            wait = None if seen is None else WAIT
            entries, new_index = await asyncio.to_thread(consul.kv_tree, _wake.PREFIX, index, wait)
        except ConsulHTTPError as e:
            log.warning("cannot read the wake records: %s", e)
            await asyncio.sleep(1)
            continue
        index = new_index if new_index > index else 0
        if seen is None:
            services, seen = recent_wakes(entries, time.time()), {k: i for k, (_v, i) in entries.items()}
        else:
            services, seen = new_wakes(entries, seen)
        for name in services:
            await queue.put({"skynet": {"service": name, "source": "wake"}})
