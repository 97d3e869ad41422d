"""Smoke tests proving the harness runs every real component of the stack."""

from __future__ import annotations

import subprocess

import pytest
import requests

from harness.images import build_sample_image
from harness.proc import free_port, wait_for
from harness.stack import Stack


def run_sample(docker_client, image, **kw):
    c = docker_client.containers.run(image, detach=True, ports={"8080/tcp": ("127.0.0.1", None)}, **kw)
    c.reload()
    return c, int(c.ports["8080/tcp"][0]["HostPort"])


def register(consul, name, port, service_id=None, tags=()):
    consul.api(
        "PUT",
        "agent/service/register",
        json={
            "ID": service_id or f"{name}-{port}",
            "Name": name,
            "Address": "127.0.0.1",
            "Port": port,
            "Tags": list(tags),
            "Check": {"HTTP": f"http://127.0.0.1:{port}/health", "Interval": "1s", "Timeout": "1s"},
        },
    )


def passing(consul, name):
    return consul.api("GET", f"health/service/{name}", params={"passing": "1"})


@pytest.fixture
def containers(docker_client):
    started = []
    yield started
    for c in started:
        c.remove(force=True)


def test_container_serves_http_on_published_port(docker_client, sample_image, containers):
    c, port = run_sample(docker_client, sample_image["2"], environment={"SERVICE_NAME": "smoke"})
    containers.append(c)
    page = wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=1).text, 10, "the sample page")
    assert page.strip() == f"smoke instance={c.id[:12]} version=2"
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200


def test_sample_image_can_fail_its_health_check(docker_client, sample_image, containers):
    c, port = run_sample(docker_client, sample_image["1"], environment={"HEALTHY": "false"})
    containers.append(c)
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=1).ok, 10, "the sample page")
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 404


def test_consul_check_turns_passing_and_resolves_as_srv(consul, docker_client, sample_image, containers, unique):
    name = unique("web")
    c, port = run_sample(docker_client, sample_image["1"])
    containers.append(c)
    register(consul, name, port, tags=["blue"])
    try:
        entries = wait_for(lambda: passing(consul, name), 15, f"{name} to pass its check")
        assert entries[0]["Service"]["Port"] == port
        assert entries[0]["Checks"][-1]["Status"] == "passing"
        srv = wait_for(lambda: consul.dig(f"_{name}._blue.service.consul"), 10, "the SRV record")
        assert srv[0].split()[2] == str(port)
        assert consul.dig(f"_{name}._green.service.consul") == []
    finally:
        consul.api("PUT", f"agent/service/deregister/{name}-{port}")


def test_haproxy_serves_backend_found_through_consul_dns(
    stack, consul, docker_client, sample_image, containers, unique
):
    name = unique("app")
    ports = []
    for _instance in range(2):
        c, port = run_sample(docker_client, sample_image["1"], environment={"SERVICE_NAME": name})
        containers.append(c)
        register(consul, name, port)
        ports.append(port)
    frontend = free_port()
    haproxy = stack.haproxy(f"""
resolvers consul
    nameserver consul 127.0.0.1:{consul.dns_port}
    accepted_payload_size 8192
    hold valid 1s
    timeout resolve 1s
    timeout retry 1s

frontend {name}
    bind 127.0.0.1:{frontend}
    default_backend {name}

backend {name}
    balance roundrobin
    server-template {name} 4 _{name}._tcp.service.consul resolvers consul \
        resolve-opts allow-dup-ip init-addr none check inter 1s
""")
    try:
        seen = set()

        def both_instances():
            r = requests.get(f"http://127.0.0.1:{frontend}/", timeout=2)
            if r.ok:
                seen.add(r.text.split()[1])
            return len(seen) == 2

        wait_for(both_instances, 20, "HAProxy to balance over both instances")
        assert {line.split()[0] for line in haproxy.command("show servers state").splitlines()[2:] if line}
    finally:
        for port in ports:
            consul.api("PUT", f"agent/service/deregister/{name}-{port}")


@pytest.mark.parametrize("consul_sd", [False, True], ids=["debian-build-static", "bullseye-build-consul-sd"])
def test_prometheus_answers_about_a_target_it_scrapes(stack, consul, consul_sd, unique):
    consul_target = f"127.0.0.1:{consul.http_port}"
    if consul_sd:
        name = unique("consul-agent")
        consul.api(
            "PUT",
            "agent/service/register",
            json={"ID": name, "Name": name, "Address": "127.0.0.1", "Port": consul.http_port},
        )
        discovery = {"consul_sd_configs": [{"server": consul_target, "services": [name]}]}
    else:
        discovery = {"static_configs": [{"targets": [consul_target]}]}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "consul",
                "metrics_path": "/v1/agent/metrics",
                "params": {"format": ["prometheus"]},
                **discovery,
            }
        ],
    }
    try:
        prom = stack.prometheus(config, consul_sd=consul_sd)
        result = prom.wait_query('up{job="consul"} == 1', timeout=30)
        assert result[0]["metric"]["instance"] == consul_target
        assert prom.wait_query("consul_runtime_alloc_bytes > 0", timeout=15)
    finally:
        if consul_sd:
            consul.api("PUT", f"agent/service/deregister/{name}")


def test_alertmanager_holds_a_posted_alert(stack):
    am = stack.alertmanager()
    alert = {"labels": {"alertname": "SkynetSmoke", "severity": "info"}, "annotations": {"summary": "smoke"}}
    requests.post(f"{am.url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()
    alerts = requests.get(f"{am.url}/api/v2/alerts", timeout=5).json()
    assert [a["labels"]["alertname"] for a in alerts] == ["SkynetSmoke"]
    assert alerts[0]["status"]["state"] == "active"


def test_boto3_runs_and_terminates_an_instance_on_moto(moto):
    ec2 = moto.boto3("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    run = ec2.run_instances(
        ImageId=image,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "skynet", "Value": "1"}]}],
    )
    instance_id = run["Instances"][0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[instance_id])
    state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state in ("shutting-down", "terminated")


def test_stack_close_leaves_nothing_behind():
    s = Stack()
    try:
        consul = s.consul()
        engine = s.podman()
        client = engine.client()
        container = client.containers.run(build_sample_image(client, "1"), detach=True)
        client.close()
        pids = [p.pid for p in s.processes]
    finally:
        s.close()
    assert not s.workdir.exists()
    for pid in pids:
        assert not _running(pid), f"process {pid} survived the harness"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{consul.url}/v1/status/leader", timeout=1)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert container.id not in ps, "the container's conmon survived the harness"


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_process_that_dies_at_start_is_reported_with_its_log(stack):
    proc = stack.start("doomed", ["sh", "-c", "echo cannot bind port; exit 3"])
    with pytest.raises(Exception, match=r"(?s)doomed exited with 3.*cannot bind port"):
        proc.wait_ready(lambda: False, timeout=5)
