# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Calls in child processes forked from a warm server, so that a daemon can run heavy work at once and
survive it: multiprocessing's forkserver, a single-threaded process that imported the preloaded modules
once, forks a child per call (the daemon's own threads are never forked). A call that raises, crashes or
outlives its deadline ends in ForkedError and takes only its child with it. Standard library only.

The module run as __main__ is imported again, as __mp_main__, in every child: it must start nothing
unless __name__ == "__main__".
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import traceback

from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError


class ForkedError(SkynetError):
    """A call that raised (the child's traceback in its message), died or timed out."""


def _not_imported(names):
    """In a child: the modules of names that it did not get from the server."""
    return [n for n in names if n not in sys.modules]


def _child(send, function, args):
    try:
        answer = (True, function(*args))
    except BaseException as e:  # noqa: BLE001 - everything the call raises is the caller's to see
        answer = (False, "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
    send.send(answer)
    send.close()


class Forked:
    """call(function, *args) in a forked child, at most `timeout` seconds; function and its arguments and
    result must pickle (function by name, from an importable module). The server is multiprocessing's, one
    per process: the preload of the first to start it is the one it has."""

    def __init__(self, preload=(), timeout=600.0):
        self.context = multiprocessing.get_context("forkserver")
        self.preload = list(preload)
        self.context.set_forkserver_preload(self.preload)
        self.timeout = timeout

    def start(self):
        """Starts the server now, not at the first call; the preloaded modules it could not import (every
        call then imports them itself)."""
        # Python 3.11's forkserver drops the sys.path it is handed before it preloads: it finds the modules
        # through PYTHONPATH, set for its start only (its children get sys.path anyway).
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + ([before] if before else []))
        try:
            return self.call(_not_imported, self.preload)
        finally:
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before

    def call(self, function, *args):
        receive, send = self.context.Pipe(duplex=False)
        child = self.context.Process(target=_child, args=(send, function, args), name=f"forked-{function.__name__}")
        try:
            child.start()
        finally:
            send.close()
        try:
            if not receive.poll(self.timeout):
                child.kill()
                raise ForkedError(f"{function.__name__} did not end within {self.timeout:g}s: its process was killed")
            try:
                ok, value = receive.recv()
            except EOFError:
                child.join(5)
                raise ForkedError(f"the process of {function.__name__} died (exit code {child.exitcode})") from None
            if not ok:
                raise ForkedError(f"{function.__name__} raised: {value}")
            return value
        finally:
            receive.close()
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join()
