# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""skynet-activator: holds requests for a service with no usable instance until one passes, then forwards them.

Runs on each load balancer next to HAProxy, with the standard library only. For every held request or
connection it records a wake for the service in Consul (skynet/wake/<service>, at most once per
REWAKE seconds while it holds any), waits on a blocking query of the service's passing instances of that
color, and relays the held bytes to one of them, so the first request is answered, late, not failed. Later
requests go straight to the instances: HAProxy prefers them to its backup server as soon as it sees
them up. With no instance within the hold, HTTP gets a 503 that says why; TCP is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _activator, _daemon, _wake
from ansible_collections.cyberdyne.skynet.plugins.module_utils._consul_http import (
    ConsulHTTP,
    ConsulHTTPError,
    read_token,
)
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError

REWAKE = 5.0  # seconds between two wake records of a service while requests are held
WATCH_WAIT = 5  # seconds of one blocking query (the cadence of rewakes)
CONNECT_TIMEOUT = 2.0
RETRY = 0.5
# Held connections forwarded at once to a service's new instances, the oldest first: a cold instance is not
# flooded by every held connection at the same moment, and the first request is the first answered.
FORWARDING = 16

log = logging.getLogger("skynet-activator")


class Waiter:
    """The passing instances of one service color, read by blocking queries while anyone waits for them."""

    def __init__(self, activator, service, color):
        self.activator, self.service, self.color = activator, service, color
        self.instances, self.ready, self.waiting, self.task = [], asyncio.Event(), 0, None
        self.turn = itertools.count()
        self.forwarding = asyncio.Semaphore(FORWARDING)  # FIFO: waiters acquire it in the order they came

    def join(self):
        self.waiting += 1
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._watch())

    def leave(self):
        self.waiting -= 1

    def next(self):
        """The instances to try, starting with the next one in turn."""
        if not self.instances:
            return []
        start = next(self.turn) % len(self.instances)
        return self.instances[start:] + self.instances[:start]

    async def _watch(self):
        index = 0
        path = f"health/service/{self.service}"
        params = {"passing": "1", "tag": self.color}
        while self.waiting > 0:
            try:
                entries, new_index = await self.activator.blocking(
                    self.activator.consul.watch, path, index, WATCH_WAIT, params
                )
            except ConsulHTTPError as e:
                log.warning("%s: cannot read its instances: %s", self.service, e)
                await asyncio.sleep(1)
                continue
            # An index that goes backwards (a new leader) or stays at 0 restarts the query from the beginning.
            index = new_index if new_index > index else 0
            self.instances = [
                (e["Service"].get("Address") or e["Node"]["Address"], e["Service"]["Port"]) for e in entries or ()
            ]
            if self.instances:
                self.ready.set()
            else:
                self.ready.clear()
                if self.waiting > 0:
                    self.activator.wake(self.service, self.color)


class Activator:
    def __init__(self, config, consul, clock=time.monotonic):
        self.config, self.consul, self.clock = config, consul, clock
        self.metrics = _activator.Metrics()
        self.waiters, self.woke, self.writes = {}, {}, set()
        self.since = {}  # service -> when its oldest request still held came
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="consul")
        self.servers = []

    async def blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- wake records ----------------------------------------------------------------------------

    def wake(self, service, color):
        """Records a wake for service unless one was written in the last REWAKE seconds."""
        now = self.clock()
        if now - self.woke.get(service, -REWAKE) < REWAKE:
            return
        self.woke[service] = now
        held = self.metrics.holding.get(service, 0)
        task = asyncio.ensure_future(self._write_wake(service, color, held, self.since.get(service)))
        self.writes.add(task)  # the loop keeps only weak references to its tasks
        task.add_done_callback(self.writes.discard)

    async def _write_wake(self, service, color, held, since):
        value = _wake.record(self.config["node"], time.time(), color, held, since)
        try:
            await self.blocking(self.consul.put_kv, _wake.key(service), value)
            self.metrics.add("wakes_total", service)
            log.info("%s: woken (%d held on %s)", service, held, color)
        except ConsulHTTPError as e:
            self.metrics.add("wake_errors_total", service)
            self.woke[service] = self.clock() - REWAKE + 1  # try again in a second
            log.warning("%s: the wake record could not be written: %s", service, e)

    # -- held connections ------------------------------------------------------------------------

    async def handle(self, service, color, mode, reader, writer):
        m, start = self.metrics, self.clock()
        m.add("held_total", service)
        if not m.holding.get(service):
            self.since[service] = time.time()
        m.hold(service, 1)
        waiter = self.waiters.setdefault((service, color), Waiter(self, service, color))
        waiter.join()
        self.wake(service, color)
        try:
            upstream = await self._instance(waiter, start + self.config["hold"])
        finally:
            waiter.leave()
            m.hold(service, -1)
        if upstream is None:
            m.add("timed_out_total", service)
            log.warning("%s: no instance passed within %gs", service, self.config["hold"])
            with contextlib.suppress(OSError):
                if mode == "http":
                    writer.write(_activator.timed_out_reply(service, self.config["hold"]))
                    await writer.drain()
            writer.close()
            return
        m.observe(service, self.clock() - start)
        m.add("forwarded_total", service)
        await _relay(reader, writer, *upstream)

    async def _instance(self, waiter, deadline):
        """(reader, writer) of a connection to a passing instance, None when none came before deadline."""
        while True:
            if waiter.instances:
                async with waiter.forwarding:
                    for host, port in waiter.next():
                        try:
                            return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
                        except (OSError, asyncio.TimeoutError) as e:
                            log.info("%s: %s:%s refused the connection: %s", waiter.service, host, port, e)
            remaining = deadline - self.clock()
            if remaining <= 0:
                return None
            if waiter.instances:  # listed but refusing (just started, or going): try again shortly
                await asyncio.sleep(min(RETRY, remaining))
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter.ready.wait(), remaining)

    # -- listeners -------------------------------------------------------------------------------

    async def start(self):
        for service, color, mode, path in _activator.listeners(self.config):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

            async def on_connection(reader, writer, service=service, color=color, mode=mode):
                await self.handle(service, color, mode, reader, writer)

            self.servers.append(await asyncio.start_unix_server(on_connection, path=path))
            os.chmod(path, 0o660)  # HAProxy's group connects
        if self.config["metrics_address"]:
            host, _colon, port = self.config["metrics_address"].rpartition(":")
            self.servers.append(await asyncio.start_server(self._metrics, host.strip("[]") or None, int(port)))
        log.info("holding for %s", ", ".join(sorted(self.config["services"])) or "no service")

    async def _metrics(self, reader, writer):
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                body, status = self.metrics.text(sorted(self.config["services"])).encode(), "200 OK"
            else:
                body, status = b"see /metrics\n", "404 Not Found"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    def close(self):
        for server in self.servers:
            server.close()
        for _service, _color, _mode, path in _activator.listeners(self.config):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.executor.shutdown(wait=False, cancel_futures=True)


async def _pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


async def _relay(client_reader, client_writer, upstream_reader, upstream_writer):
    """Both directions, byte for byte, until each side has closed its end."""
    try:
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
    finally:
        client_writer.close()
        upstream_writer.close()


def load(path):
    """The checked configuration of the JSON file at path, with the token of its token_file."""
    try:
        with open(path, encoding="utf-8") as f:
            config = _activator.parse_config(json.load(f))
    except (OSError, ValueError) as e:
        raise SkynetError(f"cannot read the activator's configuration {path}: {e}") from e
    return config, read_token(config["token_file"])


async def _serve(config, token):
    consul = ConsulHTTP(config["consul_url"], token=token, ca_file=config["ca_cert"])
    activator = Activator(config, consul)
    await activator.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        activator.close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="skynet-activator", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the JSON configuration (the haproxy role renders it)")
    parser.add_argument("--check", action="store_true", help="check the configuration and exit")
    _daemon.add_log_level(parser)
    args = parser.parse_args(argv)
    _daemon.setup_logging(args.log_level)
    try:
        config, token = load(args.config)
        if args.check:
            ConsulHTTP(config["consul_url"], ca_file=config["ca_cert"])
            sys.stdout.write(f"{args.config}: {len(config['services'])} service(s), hold {config['hold']:g}s\n")
            return 0
        asyncio.run(_serve(config, token))
    except (SkynetError, ConsulHTTPError) as e:
        log.error("%s", e)
        return 2
    return 0
