# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one entry point of Skynet's daemons, run from the collection the runtime role installs.

``python -m ansible_collections.cyberdyne.skynet.plugins.module_utils._daemon NAME [ARGS]``, or the
command ``bin/NAME`` that the runtime role writes, runs the daemon NAME with ARGS. Standard library only:
each daemon's module is imported when it is asked for, so a host needs only the packages of its own.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

DAEMONS = {
    "skynet-activator": "_activator_server",
    "skynet-consul-sd": "_consul_sd",
    "skynet-registrator": "_registrator",
    "skynet-watcher": "_watcher",
}
LOG_LEVELS = ("debug", "info", "warning", "error")
PACKAGE = "ansible_collections.cyberdyne.skynet.plugins.module_utils"


def add_log_level(parser):
    """The --log-level option every daemon takes (either case)."""
    parser.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS)


def setup_logging(level):
    # Under systemd the journal stamps every line already.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=level.upper(), format=stamp + "%(levelname)s %(message)s", stream=sys.stderr)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in DAEMONS:
        sys.stderr.write(f"usage: skynet daemon {{{','.join(DAEMONS)}}} [ARGS]\n")
        return 2
    return importlib.import_module(f"{PACKAGE}.{DAEMONS[argv[0]]}").main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
