"""Bounded HTTP load loops that count what failed and note what answered."""

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
        self.latencies: list[tuple[float, float]] = []  # (monotonic time, seconds) of each success
        self.answers: list[tuple[float, str]] = []  # (wall time the request was sent, body) of each success
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        session = requests.Session()
        next_at = time.monotonic()
        while not self._stop.is_set():
            started, sent = time.monotonic(), time.time()
            try:
                r = session.get(self.url, timeout=5)
                if r.status_code == 200:
                    self.ok += 1
                    self.latencies.append((started, time.monotonic() - started))
                    self.answers.append((sent, r.text.strip()))
                else:
                    self.failures.append(f"HTTP {r.status_code}")
            except requests.RequestException as e:
                self.failures.append(str(e))
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    @property
    def bodies(self) -> Counter:
        return Counter(body for _sent, body in self.answers)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


class LoadLoops:
    """n LoadLoops of `rate` requests/s each, started and stopped together."""

    def __init__(self, url: str, n: int = 4, rate: float = 50):
        self.loops = [LoadLoop(url, rate) for _loop in range(n)]
        self.seconds = 0.0

    def __enter__(self):
        self._started = time.monotonic()
        for loop in self.loops:
            loop.__enter__()
        return self

    def __exit__(self, *exc):
        for loop in self.loops:
            loop.__exit__(*exc)
        self.seconds = time.monotonic() - self._started

    @property
    def ok(self) -> int:
        return sum(loop.ok for loop in self.loops)

    @property
    def failures(self) -> list[str]:
        return [f for loop in self.loops for f in loop.failures]

    @property
    def answers(self) -> list[tuple[float, str]]:
        return sorted(a for loop in self.loops for a in loop.answers)
