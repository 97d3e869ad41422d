"""The prometheus lookup, run by the ansible CLI as users run it, against a real Prometheus scraping
a real HAProxy that serves a known, paced load. HAProxy also stands in front of Prometheus where a
test needs authentication or TLS."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from harness.proc import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
LOOKUP = "cyberdyne.skynet.prometheus"
FAILED = f"The lookup plugin '{LOOKUP}' failed: "
RATE = 100  # requests a second through the web frontend
DURATION = 18  # seconds of load: Prometheus scrapes a new target only after 5 to 7 s
WINDOW = 5  # seconds of the rate() window
COUNTER = "haproxy_frontend_http_requests_total"
PASSWORD = "correct-horse-battery"
TOKEN = "t0ken-of-the-reader"


def _ansible() -> str:
    beside = Path(sys.executable).with_name("ansible")
    return str(beside) if beside.exists() else shutil.which("ansible")


@dataclass
class Run:
    ok: bool
    value: object  # the lookup's result, or Ansible's failure message
    output: str

    @property
    def failure(self) -> str:
        """The lookup's own message, without what Ansible puts before it."""
        assert not self.ok, f"the lookup succeeded: {self.value!r}"
        assert FAILED in self.value, self.output
        return self.value.split(FAILED, 1)[1]


@pytest.fixture(scope="module")
def ansible(tmp_path_factory):
    """Runs `ansible localhost -m debug -a msg={{ expression }}`; config and temp files stay in a dir of its own."""
    home = tmp_path_factory.mktemp("ansible")
    empty_cfg = home / "ansible.cfg"
    empty_cfg.write_text("")

    def run(expression: str, extra_vars: dict | None = None, env: dict | None = None, verbose: bool = False) -> Run:
        argv = [_ansible(), "localhost", "-m", "ansible.builtin.debug", "-a", f"msg={{{{ {expression} }}}}"]
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        if verbose:
            argv.append("-vvv")
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_", "ANSIBLE_"))}
        environ.update(
            ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
            ANSIBLE_CONFIG=str(empty_cfg),
            ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_LOCALHOST_WARNING="false",
            ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        )
        environ.update(env or {})
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=environ, cwd=home, check=False)
        head, sep, body = out.stdout.partition(" => ")
        assert sep, f"ansible printed no result:\n{out.stdout}{out.stderr}"
        return Run("SUCCESS" in head, json.loads(body)["msg"], out.stdout + out.stderr)

    return run


@pytest.fixture(scope="module")
def lookup(ansible):
    """lookup(*terms, **options) in a template, terms and options passed as extra vars."""

    def run(*terms: str, wantlist: bool = False, env: dict | None = None, verbose: bool = False, **options) -> Run:
        call = "query" if wantlist else "lookup"
        expression = f"{call}('{LOOKUP}', *terms, **options)"
        return ansible(expression, {"terms": list(terms), "options": options}, env=env, verbose=verbose)

    return run


class Load:
    """RATE requests a second for DURATION seconds to a URL, from a thread; `sent` holds when each was answered."""

    def __init__(self, url: str, rate: float, duration: float):
        self.url, self.rate, self.duration = url, rate, duration
        self.sent: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def _run(self):
        with requests.Session() as session:
            start = time.monotonic()
            for i in range(int(self.rate * self.duration)):
                if self._stop.wait(max(0.0, start + i / self.rate - time.monotonic())):
                    return
                try:
                    session.get(self.url, timeout=2).raise_for_status()
                    self.sent.append(time.time())
                except requests.RequestException:
                    self.failures += 1

    def wait(self) -> Load:
        self._thread.join()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()

    def rate_between(self, t0: float, t1: float) -> float:
        return sum(t0 < t <= t1 for t in self.sent) / (t1 - t0)


@dataclass
class Site:
    haproxy: object
    prometheus: object
    load: Load
    end: float = field(default=0.0)  # evaluation time inside the load, once the load is over

    @property
    def url(self) -> str:
        return self.prometheus.url


@pytest.fixture(scope="module")
def site(session_stack):
    """HAProxy answering `ok` on a frontend `web` under load, scraped every second by Prometheus.

    The components live on the session's stack so that every test of this module shares one
    Prometheus and one load, which runs while the tests that need no scraped data run.
    """
    web = free_port()
    haproxy = session_stack.haproxy(
        f"""frontend web
    bind 127.0.0.1:{web}
    http-request return status 200 content-type text/plain string ok
""",
        name="lookup-haproxy",
    )
    prometheus = session_stack.prometheus(
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "haproxy", "static_configs": [{"targets": [f"127.0.0.1:{haproxy.stats_port}"]}]}
            ],
        },
        name="lookup-prometheus",
    )
    load = Load(f"http://127.0.0.1:{web}/", RATE, DURATION).start()
    yield Site(haproxy, prometheus, load)
    load.stop()


@pytest.fixture(scope="module")
def loaded(site):
    """The site once the load is over, with `end` a time whose rate() windows all lie inside the load."""
    load = site.load.wait()
    assert load.failures == 0 and load.sent, f"{load.failures} requests of the load failed"
    # A range reaching back past the load's start, however late this runs: [60s] missed the first samples once
    # the tests before it took over a minute under load.
    samples = site.prometheus.query(f'{COUNTER}{{proxy="web"}}[15m]')[0]["values"]
    first_sample = samples[0][0]
    site.end = round(load.sent[-1] - 1.0, 3)
    assert site.end - WINDOW - 3 > first_sample, (
        f"Prometheus scraped HAProxy first at {first_sample:.1f}, too late for a load ending at {load.sent[-1]:.1f}: "
        "raise DURATION"
    )
    wait_for(
        lambda: float(site.prometheus.query(f'timestamp({COUNTER}{{proxy="web"}})')[0]["value"][1]) > site.end,
        10,
        "Prometheus to scrape past the end of the window",
    )
    return site


@pytest.fixture
def certs(tmp_path):
    """Self-signed server (127.0.0.1) and client certificates; HAProxy's PEMs hold cert and key."""

    def make(name: str, subject: str, san: str) -> dict:
        cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        req = ["openssl", "req", "-x509", "-days", "1", "-nodes", "-subj", f"/CN={subject}"]
        req += ["-addext", f"subjectAltName={san}"]
        new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", str(key), "-out", str(cert)]
        subprocess.run([*req, *new_key], check=True, capture_output=True)
        pem = tmp_path / f"{name}.pem"
        pem.write_text(cert.read_text() + key.read_text())
        return {"cert": str(cert), "key": str(key), "pem": str(pem)}

    return {"server": make("server", "127.0.0.1", "IP:127.0.0.1"), "client": make("client", "reader", "DNS:reader")}


def _in_front_of(prometheus, frontend: str) -> str:
    return f"""{frontend}
    default_backend prometheus

backend prometheus
    server prometheus {prometheus.url.removeprefix("http://")}
"""


# -- errors and shapes: these need no scraped data and run while the load goes on --------------


def test_an_unreachable_prometheus_is_named(lookup):
    url = f"http://127.0.0.1:{free_port()}"
    run = lookup("up", url=url, env={"ANSIBLE_DISPLAY_TRACEBACK": "error"})
    assert run.failure == f"Prometheus at {url} is unreachable: Connection refused"
    # The message stays one sentence, while the traceback keeps the chain down to the socket.
    assert "Max retries exceeded" not in run.failure
    for cause in ("ConnectionRefusedError", "requests.exceptions.ConnectionError", "_prometheus.Unreachable"):
        assert cause in run.output


def test_a_prometheus_that_does_not_answer_times_out(lookup):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        run = lookup("up", url=url, timeout=1)
        elapsed = time.monotonic() - started
    assert run.failure == f"Prometheus at {url} did not answer within 1 s (option timeout)"
    assert elapsed < 8


def test_a_url_that_is_not_prometheus(lookup, site):
    run = lookup("up", url=site.haproxy.stats_url)
    assert run.failure.startswith(
        f"Prometheus at {site.haproxy.stats_url} answered HTTP 503 with something other than a Prometheus API answer"
    )


def test_bad_promql_carries_the_message_of_prometheus(lookup, site):
    promql = f"sum(rate({COUNTER}[5s])"
    answer = requests.get(f"{site.url}/api/v1/query", params={"query": promql}, timeout=10)
    assert answer.status_code == 400
    own = answer.json()["error"]
    assert "parse error" in own
    run = lookup(promql, url=site.url)
    assert run.failure == f"Prometheus at {site.url} rejected the query {promql!r}: {own}"


def test_no_data_is_an_error(lookup, site):
    promql = 'up{job="no-such-job"}'
    run = lookup(promql, url=site.url)
    assert run.failure == (
        f"the query {promql!r} returned no data from Prometheus at {site.url}: no series matched "
        "(set default to return a value instead)"
    )


def test_no_data_gives_the_default(lookup, site):
    assert lookup('up{job="no-such-job"}', url=site.url, default=0).value == 0
    assert lookup('up{job="no-such-job"}', url=site.url, type="scalar", default="n/a").value == "n/a"
    # Only the empty result takes the default: the other terms keep their own.
    run = lookup("vector(3)", 'up{job="no-such-job"}', url=site.url, default=None, wantlist=True)
    assert run.value == [[{"labels": {}, "value": 3.0}], None]


def test_one_result_per_term_and_special_values(lookup, site):
    run = lookup(
        "scalar(vector(1))",
        "0/0",
        "1/0",
        "-1/0",
        'label_replace(vector(2), "a", "b", "", "")',
        url=site.url,
        wantlist=True,
    )
    assert run.ok, run.output
    one, nan, inf, minus_inf, vector = run.value
    assert (one, inf, minus_inf) == (1.0, math.inf, -math.inf)
    assert math.isnan(nan)
    assert vector == [{"labels": {"a": "b"}, "value": 2.0}]
    # type=scalar turns a single-series vector into its value, type=vector a scalar into a series.
    assert lookup("vector(2)", url=site.url, type="scalar").value == 2.0
    assert lookup("scalar(vector(1))", url=site.url, type="vector").value == [{"labels": {}, "value": 1.0}]


def test_scalar_needs_exactly_one_series(lookup, site):
    promql = 'label_replace(vector(1), "a", "b", "", "") or label_replace(vector(1), "a", "c", "", "")'
    run = lookup(promql, url=site.url, type="scalar")
    assert run.failure.startswith("the query returned 2 series where type=scalar needs exactly one")


def test_options_come_from_the_environment_and_ansible_cfg(ansible, lookup, site, tmp_path):
    assert lookup("scalar(vector(1))", env={"PROMETHEUS_URL": site.url}).value == 1.0
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text(f"[prometheus]\nurl = {site.url}\ntimeout = 3\n")
    assert lookup("scalar(vector(1))", env={"ANSIBLE_CONFIG": str(cfg)}).value == 1.0
    # An option given to the lookup wins over the environment.
    unreachable = f"http://127.0.0.1:{free_port()}"
    run = lookup("scalar(vector(1))", url=unreachable, env={"PROMETHEUS_URL": site.url})
    assert run.failure.startswith(f"Prometheus at {unreachable} is unreachable")


def test_basic_auth(lookup, stack, site):
    port = free_port()
    stack.haproxy(
        f"""userlist readers
    user reader insecure-password {PASSWORD}

"""
        + _in_front_of(
            site.prometheus,
            f"""frontend basic
    bind 127.0.0.1:{port}
    http-request auth realm prometheus unless {{ http_auth(readers) }}""",
        )
    )
    url = f"http://127.0.0.1:{port}"
    run = lookup("scalar(vector(1))", url=url)
    assert run.failure == (
        f"Prometheus at {url} refused the credentials (HTTP 401): check username and password, or bearer_token"
    )
    wrong = lookup("scalar(vector(1))", url=url, env={"PROMETHEUS_USERNAME": "reader", "PROMETHEUS_PASSWORD": "nope"})
    assert "refused the credentials (HTTP 401)" in wrong.failure
    right = lookup(
        "scalar(vector(1))",
        url=url,
        verbose=True,
        env={"PROMETHEUS_USERNAME": "reader", "PROMETHEUS_PASSWORD": PASSWORD},
    )
    assert right.value == 1.0
    assert PASSWORD not in right.output


def test_bearer_token(lookup, stack, site):
    port = free_port()
    stack.haproxy(
        _in_front_of(
            site.prometheus,
            f"""frontend bearer
    bind 127.0.0.1:{port}
    http-request deny deny_status 403 unless {{ req.hdr(authorization) -m str "Bearer {TOKEN}" }}""",
        )
    )
    url = f"http://127.0.0.1:{port}"
    run = lookup("scalar(vector(1))", url=url, verbose=True, env={"PROMETHEUS_BEARER_TOKEN": "not-the-token"})
    assert run.failure == (
        f"Prometheus at {url} denied access (HTTP 403): check username and password, or bearer_token"
    )
    assert "not-the-token" not in run.output
    right = lookup("scalar(vector(1))", url=url, verbose=True, env={"PROMETHEUS_BEARER_TOKEN": TOKEN})
    assert right.value == 1.0
    assert TOKEN not in right.output


def test_tls_with_client_certificates(lookup, stack, site, certs):
    port = free_port()
    server, client = certs["server"], certs["client"]
    stack.haproxy(
        _in_front_of(
            site.prometheus,
            f"""frontend tls
    bind 127.0.0.1:{port} ssl crt {server["pem"]} ca-file {client["cert"]} verify required""",
        )
    )
    url = f"https://127.0.0.1:{port}"
    mine = {"client_cert": client["cert"], "client_key": client["key"]}

    untrusted = lookup("scalar(vector(1))", url=url, **mine)
    assert untrusted.failure.startswith(f"Prometheus at {url} failed the TLS handshake: ")
    assert untrusted.failure.endswith("; set ca_cert to the CA that signed its certificate, or validate_certs=false")
    assert "certificate verify failed" in untrusted.failure

    assert lookup("scalar(vector(1))", url=url, ca_cert=server["cert"], **mine).value == 1.0
    assert lookup("scalar(vector(1))", url=url, validate_certs=False, client_cert=client["pem"]).value == 1.0

    missing = lookup("scalar(vector(1))", url=url, ca_cert="/nonexistent/ca.pem", **mine)
    assert missing.failure == (
        f"the TLS files for Prometheus at {url} are unusable: "
        "Could not find a suitable TLS CA certificate bundle, invalid path: /nonexistent/ca.pem"
    )

    anonymous = lookup("scalar(vector(1))", url=url, ca_cert=server["cert"])
    assert anonymous.failure.startswith(f"Prometheus at {url} failed the TLS handshake: ")
    assert anonymous.failure.endswith("; it wants a client certificate it trusts: set client_cert and client_key")


# -- against the load: these wait for it to end ---------------------------------------------


def test_rate_agrees_with_the_generated_load(ansible, loaded):
    """The way users write it: a literal query and options in a template run by the ansible CLI."""
    promql = f"sum(rate({COUNTER}{{proxy='web'}}[{WINDOW}s]))"
    run = ansible(f"lookup('{LOOKUP}', \"{promql}\", url='{loaded.url}', time={loaded.end}, type='scalar')")
    assert run.ok, run.output
    measured = run.value
    generated = loaded.load.rate_between(loaded.end - WINDOW, loaded.end)
    print(f"\ngenerated {generated:.3f} req/s, Prometheus rate() {measured:.3f} req/s")
    assert isinstance(measured, float)
    assert abs(generated - RATE) / RATE < 0.10, f"the load ran at {generated:.1f} req/s instead of {RATE}"
    assert abs(measured - generated) / generated < 0.10, f"rate() {measured:.2f} vs generated {generated:.2f} req/s"


def test_a_vector_keeps_its_labels(lookup, loaded):
    run = lookup(COUNTER, url=loaded.url, time=loaded.end)
    assert run.ok, run.output
    by_proxy = {series["labels"]["proxy"]: series for series in run.value}
    assert {"web", "stats"} <= set(by_proxy)
    web = by_proxy["web"]
    assert web["labels"] == {
        "__name__": COUNTER,
        "instance": f"127.0.0.1:{loaded.haproxy.stats_port}",
        "job": "haproxy",
        "proxy": "web",
    }
    # The last scrape before `end` counted what was sent up to a second before it.
    sent = loaded.load.sent
    assert sum(t <= loaded.end - 1.5 for t in sent) <= web["value"] <= sum(t <= loaded.end + 0.5 for t in sent)


def test_a_range_query_gives_series_of_points(lookup, loaded):
    start = loaded.end - 2
    run = lookup(
        f"sum by (proxy) (rate({COUNTER}{{proxy='web'}}[{WINDOW}s]))",
        url=loaded.url,
        start=start,
        end=loaded.end,
        step="1s",
    )
    assert run.ok, run.output
    (series,) = run.value
    assert series["labels"] == {"proxy": "web"}
    assert [point[0] for point in series["values"]] == pytest.approx([start, start + 1, start + 2])
    for ts, value in series["values"]:
        generated = loaded.load.rate_between(ts - WINDOW, ts)
        assert abs(value - generated) / generated < 0.10, f"rate() at {ts}: {value:.2f} vs generated {generated:.2f}"


def test_a_range_query_needs_a_step(lookup, site):
    run = lookup("up", url=site.url, start="now-1m")
    assert run.failure == "a range query (start is set) needs step, e.g. step=15s"
