# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cyberdyne.skynet.alertmanager: an event per service of the firing alerts Alertmanager posts.

Arguments (the mapping under the source in the rulebook):
  host: address to listen on (default 127.0.0.1)
  port: port to listen on (default 9108)

Alertmanager's webhook receiver posts to http://HOST:PORT/alertmanager; each firing alert with a
`service` label (the demand alerts of the prometheus role have one) becomes one event
{"skynet": {"service": NAME, "source": "alert"}}. A body that is not a notification gets 400.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from aiohttp import web

# Loaded by its path: the collection's module_utils are imported from the tree holding this file.
sys.path.insert(0, str(Path(__file__).parents[7]))

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._watcher import alerted_services


async def _notification(request):
    try:
        services = alerted_services(json.loads(await request.read()))
    except (ValueError, SkynetError) as e:
        return web.Response(status=400, text=f"not an Alertmanager notification: {e}\n")
    for name in services:
        await request.app["queue"].put({"skynet": {"service": name, "source": "alert"}})
    return web.Response(text=json.dumps({"services": services}) + "\n")


async def main(queue, args):
    app = web.Application()
    app["queue"] = queue
    app.add_routes([web.post("/alertmanager", _notification)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, args.get("host", "127.0.0.1"), int(args.get("port", 9108))).start()
    try:
        await asyncio.Future()
    finally:
        await runner.cleanup()
