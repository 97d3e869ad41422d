# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The records of a service's releases in Consul KV, under skynet/bluegreen/<service>/.

`release` is the record of the current or last release, `live` the color HAProxy should serve,
`history` the summaries of the last releases, and `request` a rollback or abort asked for by a
controller that does not hold the service's lock.
"""

from __future__ import annotations

import json

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _names
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _release as rel
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

PREFIX = "skynet/bluegreen"
REQUESTS = ("rollback", "abort")


class ReleaseStore:
    def __init__(self, registry, service, prefix=PREFIX):
        self.registry, self.service, self.prefix = registry, service, prefix.rstrip("/")
        self._written = None  # the record as this run last wrote it

    def key(self, leaf):
        return f"{self.prefix}/{self.service}/{leaf}"

    def record(self):
        record = self.registry.read_json(self.key("release"))
        return record if isinstance(record, dict) else None

    def save(self, record):
        self.registry.write_json(self.key("release"), record)
        self._written = json.loads(json.dumps(record))

    def save_if_unchanged(self, record):
        """Writes the record only if nobody changed it since this run wrote it (check-and-set); True if written.

        A run that lost the service's lock uses it: another run may own the record by now.
        """
        current, index = self.registry.read_versioned(self.key("release"))
        if self._written is None or current != self._written:
            return False
        if not self.registry.write_json(self.key("release"), record, cas=index):
            return False
        self._written = json.loads(json.dumps(record))
        return True

    def archive(self, record):
        history = self.registry.read_json(self.key("history"), [])
        self.registry.write_json(self.key("history"), rel.with_history(history, record))

    def live(self):
        """The live color recorded in Consul, None when none is."""
        live = self.registry.read_json(self.key("live"))
        return live if live in rel.COLORS else None

    def set_live(self, color):
        self.registry.write_json(self.key("live"), _names.color(color, "live color"))

    def request(self):
        """The rollback or abort another controller asked for, None when none is pending."""
        request = self.registry.read_json(self.key("request"))
        return request if isinstance(request, dict) and request.get("kind") in REQUESTS else None

    def ask(self, kind, by, at):
        if kind not in REQUESTS:
            raise SkynetError(f"a request is rollback or abort, not {kind!r}")
        self.registry.write_json(self.key("request"), {"kind": kind, "by": by, "at": at})

    def clear_request(self):
        self.registry.call(f"delete {self.key('request')}", self.registry.client.kv.delete, self.key("request"))
