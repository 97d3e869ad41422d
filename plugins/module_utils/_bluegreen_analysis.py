# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a release measures: PromQL checks sampled for a while (analysis), and preview traffic."""

from __future__ import annotations

import math
import threading
import time

from ansible_collections.cyberdyne.skynet.plugins.module_utils import _release as rel
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_waits import StepFailed
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._prometheus import convert_result, is_empty

try:
    import requests
except ImportError:  # pragma: no cover - py-consul, which every module needs, brings requests
    requests = None


class PreviewTraffic:
    """GET requests at a steady rate against the preview frontend, counting what fails."""

    def __init__(self, url, rate=5.0, timeout=5.0):
        self.url, self.interval, self.timeout = url, 1.0 / max(rate, 0.1), timeout
        self.ok, self.failed, self.errors = 0, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        session = requests.Session()
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                answer = session.get(self.url, timeout=self.timeout)
                if answer.status_code < 400:
                    self.ok += 1
                else:
                    self._fail(f"HTTP {answer.status_code}")
            except requests.RequestException as e:
                self._fail(str(e))
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _fail(self, why):
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(why)

    def start(self):
        if requests is None:
            raise SkynetError("the Python library requests is needed to send preview traffic")
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(self.timeout + 1)
        return {"url": self.url, "ok": self.ok, "failed": self.failed, "errors": self.errors}


class Analyser:
    """Runs analyses against Prometheus; `results` keeps every check run, for the module's result."""

    def __init__(self, prometheus, waiter, monotonic=time.monotonic):
        self.prometheus, self.waiter, self.monotonic = prometheus, waiter, monotonic
        self.results = []

    def check(self):
        if self.prometheus is None:
            raise SkynetError("pre_analysis or post_analysis has checks but no Prometheus is configured")
        self.prometheus.query("vector(1)")

    def sample(self, query):
        """(value or None, None) or (None, why the query cannot be evaluated)."""
        try:
            data = self.prometheus.query(query)
            if is_empty(data):
                return None, None
            value = convert_result(data, "scalar")
        except SkynetError as e:
            return None, str(e)
        if isinstance(value, str):
            return None, f"it returned a string ({value!r}), not a number"
        return (None if math.isnan(value) else value), None

    def run(self, which, analysis, service, color, previous):
        """Samples every check each interval for the analysis' duration; StepFailed at the first that fails."""
        if not analysis.enabled:
            return
        results = {
            c.name: {
                "phase": which,
                "name": c.name,
                "query": rel.substitute(c.query, service, color, previous),
                "min": c.min,
                "max": c.max,
                "samples": 0,
                "last": None,
                "passed": None,
                "reason": "",
            }
            for c in analysis.checks
        }
        self.results.extend(results.values())
        deadline = self.monotonic() + analysis.duration
        while True:
            for check in analysis.checks:
                result = results[check.name]
                value, error = self.sample(result["query"])
                result["samples"] += 1
                result["last"] = value
                if error:
                    result.update(passed=False, reason=f"cannot be evaluated: {error}")
                    raise StepFailed(
                        f"{which} analysis: check {check.name}: the query {result['query']!r} cannot be evaluated, "
                        f"which counts as a failure: {error}"
                    )
                ok, why = rel.judge(check, value)
                result["reason"] = why
                if not ok:
                    result["passed"] = False
                    raise StepFailed(f"{which} analysis failed: check {check.name} ({result['query']}): {why}")
            left = deadline - self.monotonic()
            if left <= 0:
                break
            self.waiter.wait(min(analysis.interval, left))
        for result in results.values():
            result["passed"] = True
