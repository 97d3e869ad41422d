"""Every PromQL example of the docs and of the modules' and lookup's EXAMPLES, taken from the text
itself, against the stack the collection renders: HAProxy on the haproxy role's config, Prometheus
with the prometheus role's rules, skynet-registrator exporting the Docker API's container stats.
The docs' CPU check, under a CPU-bound load on one container, asks for a scale-out."""

from __future__ import annotations

import ast
import io
import math
import re
import tarfile
import time

import pytest
import requests
import yaml
from ansible_collections.cyberdyne.skynet.plugins.module_utils._policy import parse_check

from harness.ansible import run_module
from harness.images import build_sample_image
from harness.load import LoadLoop, LoadLoops
from harness.proc import free_port, wait_for
from harness.product import start_prometheus, start_registrator
from harness.stack import ROOT, Stack

SERVICE = "web"  # the name the examples use; this test has a Consul and an engine of its own
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
EXAMPLES = [
    ROOT / "plugins" / "modules" / "skynet_scale.py",
    ROOT / "plugins" / "modules" / "skynet_bluegreen.py",
    ROOT / "plugins" / "lookup" / "prometheus.py",
]
# skynet_bluegreen's analysis queries name the backend of the color under analysis.
PLACEHOLDERS = {"${backend}": f"{SERVICE}_blue"}
# Queries that ask whether something is wrong: an empty answer is the right one here.
MAY_BE_EMPTY = {"up == 0"}
LOOKUP = re.compile(r"""(?:lookup|query)\(\s*'cyberdyne\.skynet\.prometheus'\s*((?:,\s*'(?:[^'\\]|\\.)*'\s*)+)""")
# A request to this CGI script costs the container about 50 ms of CPU (20 MB through md5sum).
BURN = b"#!/bin/sh\necho Content-Type: text/plain\necho\ndd if=/dev/zero bs=1M count=20 2>/dev/null | md5sum\n"


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _queries_in(node):
    """(kind, PromQL) of each check's `query` (as sent: with `ahead`, the forecast) and each term of the
    Prometheus lookup in parsed YAML."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "query" and isinstance(value, str):
                sent = parse_check("docs", 0, {"target": 1, **node}).promql if "ahead" in node else value
                yield "query", sent.strip()
            else:
                yield from _queries_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _queries_in(value)
    elif isinstance(node, str):
        for match in LOOKUP.finditer(node):
            for term in re.findall(r"'((?:[^'\\]|\\.)*)'", match.group(1)):
                yield "lookup", term.replace('\\"', '"')


def documented_queries():
    """[(where, kind, PromQL)] from the YAML blocks of the docs and the EXAMPLES of the plugins."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for n, block in enumerate(re.findall(r"```ya?ml\n(.*?)```", text, re.S)):
            found += [(f"{doc.name} yaml block {n + 1}", k, q) for k, q in _queries_in(yaml.safe_load(block))]
        inline = "\n".join(re.findall(r"`([^`\n]*cyberdyne\.skynet\.prometheus[^`\n]*)`", text))
        found += [(f"{doc.name} text", k, q) for k, q in _queries_in(inline)]
    for source in EXAMPLES:
        tree = ast.parse(source.read_text())
        examples = next(n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "EXAMPLES")
        found += [(f"{source.name} EXAMPLES", k, q) for k, q in _queries_in(yaml.safe_load(examples))]
    for placeholder, value in PLACEHOLDERS.items():
        found = [(where, kind, q.replace(placeholder, value)) for where, kind, q in found]
    return found


def docs_policy():
    """The scaling policy of docs/autoscaling.md, as written there."""
    text = (ROOT / "docs" / "autoscaling.md").read_text()
    for block in re.findall(r"```ya?ml\n(.*?)```", text, re.S):
        parsed = yaml.safe_load(block)
        if isinstance(parsed, dict) and "scaling" in parsed:
            return parsed["scaling"]
    raise AssertionError("docs/autoscaling.md has no scaling policy")


def test_the_extraction_finds_the_examples():
    found = documented_queries()
    where = [w.split(" yaml block")[0] for w, _k, _q in found]
    assert where.count("autoscaling.md") == 5 and "autoscaling.md text" in where, where
    assert [q for _w, _k, q in found if q.startswith("(predict_linear(")], "the example of scaling ahead"
    for source in ("skynet_scale.py", "skynet_bluegreen.py", "prometheus.py"):
        assert f"{source} EXAMPLES" in where, source
    # The frontend is NAME; the backends are NAME_blue and NAME_green.
    wrong = [q for _w, _k, q in found if re.search(r'haproxy_backend_\w+\{[^}]*proxy="web"', q)]
    assert not wrong, wrong


@pytest.fixture(scope="module")
def product():
    """Consul, an engine, the collection's HAProxy, Prometheus with the role's rules, the registrator,
    node_exporter; one instance of SERVICE started by skynet_compute, with the CPU-burning script."""
    stack = Stack()
    try:
        consul, engine = stack.consul(), stack.podman()
        client = engine.client()
        stack.on_close(client.close)
        image = build_sample_image(client, "1")
        definition = {
            "name": SERVICE,
            "image": image,
            "port": 8080,
            "lb_port": free_port(),
            "health": {"path": "/health", "interval": "1s"},
            "scaling": {**docs_policy(), "cooldown_up": 0, "cooldown_down": 0},
        }
        haproxy = stack.rendered_haproxy([definition], consul)
        registrator = start_registrator(stack, engine, consul)
        node = f"127.0.0.1:{free_port()}"
        stack.start("node_exporter", ["prometheus-node-exporter", f"--web.listen-address={node}"]).wait_ready(
            lambda: requests.get(f"http://{node}/metrics", timeout=2).ok
        )
        prometheus = start_prometheus(
            stack,
            [definition],
            {"haproxy": [f"127.0.0.1:{haproxy.stats_port}"], "registrator": [registrator], "node": [node]},
        )
        common = {"docker_host": engine.docker_host, "consul_url": consul.url}
        deployed = run_module(
            "cyberdyne.skynet.skynet_compute",
            {**common, "service": SERVICE, "image": image, "count": 1, "health": definition["health"]},
        )
        assert deployed.get("changed"), deployed
        container = client.containers.list(filters={"label": f"io.skynet.service={SERVICE}"})[0]
        script = io.BytesIO()
        with tarfile.open(fileobj=script, mode="w") as tar:
            folder = tarfile.TarInfo("cgi-bin")
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(folder)
            burn = tarfile.TarInfo("cgi-bin/burn")
            burn.size, burn.mode = len(BURN), 0o755
            tar.addfile(burn, io.BytesIO(BURN))
        assert container.put_archive("/www", script.getvalue())
        url = f"http://127.0.0.1:{definition['lb_port']}"
        wait_for(lambda: requests.get(f"{url}/", timeout=2).ok, 30, f"{SERVICE} behind the rendered HAProxy")
        yield {
            "url": url,
            "prometheus": prometheus,
            "definition": definition,
            "container": container,
            "scale_args": {**common, "services": [definition], "prometheus_url": prometheus.url},
        }
    finally:
        stack.close()


def _numbers(result):
    if isinstance(result, list):
        return [float(s["value"][1]) for s in result]
    return [float(result[1])]


def answer(prometheus, promql, at=None):
    params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
    r = requests.get(f"{prometheus.url}/api/v1/query", params=params, timeout=10)
    body = r.json()
    if body.get("status") != "success":
        raise AssertionError(f"Prometheus rejected {promql!r}: {body.get('error')}")
    return body["data"]["result"]


def test_every_documented_query_answers_on_the_rendered_stack(product):
    queries = documented_queries()
    with LoadLoop(f"{product['url']}/", rate=20) as load:
        waiting = {q for _w, _k, q in queries if q not in MAY_BE_EMPTY}
        deadline = time.monotonic() + 45
        while waiting and time.monotonic() < deadline:
            waiting = {q for q in waiting if not answer(product["prometheus"], q)}
            time.sleep(1)
        signal = f'service:skynet_http_requests:rate{{service="{SERVICE}"}} > 12'
        wait_for(lambda: answer(product["prometheus"], signal), 30, "the requests signal to show the load")
        answers = {q: answer(product["prometheus"], q) for _w, _k, q in queries}
    assert load.failures == [], load.failures[:5]
    silent = [(where, q) for where, _k, q in queries if q not in MAY_BE_EMPTY and not answers[q]]
    assert not silent, f"documented queries that return nothing on the rendered stack: {silent}"
    for where, kind, q in queries:
        numbers = _numbers(answers[q]) if answers[q] else []
        assert all(math.isfinite(v) for v in numbers), (where, q, numbers)
        if kind == "query":
            assert len(numbers) == 1, f"{where}: a check's query must give one number, {q!r} gave {numbers}"
    requests_rate = _numbers(answers[f'service:skynet_http_requests:rate{{service="{SERVICE}"}}'])[0]
    assert 10 < requests_rate < 30, f"20 requests/s offered, the signal says {requests_rate}"


def cpu_check():
    return next(c for c in docs_policy()["checks"] if c["name"] == "cpu")


def test_the_docs_cpu_check_scales_out_a_container_under_cpu_load(product):
    # The docs' query, with a target that the CGI load reaches for sure while other tests share the 2 cores.
    prometheus, check = product["prometheus"], {**cpu_check(), "target": 0.2}
    policy = {**product["definition"]["scaling"], "checks": [check]}
    args = {**product["scale_args"], "services": [{**product["definition"], "scaling": policy}]}
    idle = wait_for(lambda: answer(prometheus, check["query"]), 30, "the CPU signal")
    idle_cpu = _numbers(idle)[0]
    quiet = run_module("cyberdyne.skynet.skynet_scale", args, check=True)["decisions"][0]
    assert quiet["action"] == "hold" and quiet["current"] == 1, quiet

    container = product["container"].short_id
    decisions = []

    def scale_out():
        decisions.append(run_module("cyberdyne.skynet.skynet_scale", args, check=True)["decisions"][0])
        return decisions[-1]["action"] == "scale_out"

    with LoadLoops(f"{product['url']}/cgi-bin/burn", n=2, rate=12) as load:
        busy = wait_for(
            lambda: [v for v in _numbers(answer(prometheus, check["query"])) if v > check["target"] * 1.1],
            40,
            "the CPU signal above the target",
            interval=1,
        )[0]
        # The service's signal and its one container's rate, read at one instant (both move under load).
        at = time.time()
        busy_then = _numbers(answer(prometheus, check["query"], at))
        per_container = _numbers(
            answer(prometheus, f'container:skynet_container_cpu_seconds:rate{{container="{container}"}}', at)
        )
        wait_for(scale_out, 60, "a scale-out decision", interval=1)
    decision = decisions[-1]
    print(
        f"CPU per instance: idle {idle_cpu:.3f} s/s; under CPU-bound requests ({load.ok} in {load.seconds:.0f} s)"
        f" {busy:.3f} s/s; decision {decision['action']} {decision['current']} -> {decision['desired']}:"
        f" {decision['reason']} ({len(decisions)} check-mode run(s))"
    )
    assert load.failures == [], load.failures[:5]
    assert idle_cpu < check["target"], idle_cpu
    assert per_container and per_container[0] == pytest.approx(busy_then[0], rel=0.05), "one container: its own rate"
    assert decision["current"] == 1 and decision["desired"] >= 2 and "cpu" in decision["reason"], decision
    memory = answer(prometheus, f'service:skynet_container_memory_bytes_per_instance:avg{{service="{SERVICE}"}}')
    assert 0 < _numbers(memory)[0] < 512 * 2**20, memory


def test_the_registrator_exports_the_container_stats_with_its_labels(product):
    series = answer(product["prometheus"], f'skynet_container_cpu_seconds_total{{service="{SERVICE}"}}')
    assert len(series) == 1, series
    labels = series[0]["metric"]
    assert labels["container"] == product["container"].short_id
    assert labels["color"] == "blue" and labels["job"] == "registrator"
    received = answer(
        product["prometheus"], f'service:skynet_container_network_receive_bytes:rate{{service="{SERVICE}"}}'
    )
    assert received, "network counters of the container"
