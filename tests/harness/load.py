"""A bounded HTTP load loop that counts what failed."""

from __future__ import annotations

import threading
import time
from collections import Counter

import requests


class LoadLoop:
    def __init__(self, url: str, rate: float = 50):
        self.url, self.interval = url, 1 / rate
        self.ok = 0
        self.failures: list[str] = []
        self.bodies: Counter = Counter()
        self.latencies: list[tuple[float, float]] = []  # (monotonic time, seconds) of each success
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        session = requests.Session()
        next_at = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                r = session.get(self.url, timeout=5)
                if r.status_code == 200:
                    self.ok += 1
                    self.latencies.append((started, time.monotonic() - started))
                    self.bodies[r.text.strip()] += 1
                else:
                    self.failures.append(f"HTTP {r.status_code}")
            except requests.RequestException as e:
                self.failures.append(str(e))
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
