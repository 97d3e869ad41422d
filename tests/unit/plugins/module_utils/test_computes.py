"""Named computes: parsing, the pool of one of the single-endpoint options, and the errors before anything."""

from __future__ import annotations

from collections import Counter

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _computes, _host_failures
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import Instance, plan
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import HostUnavailable, SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._pool import PoolDriver


def pool(*names, zone=None):
    hosts = [{"name": n, "url": f"tcp://10.0.0.{i}:2375", "address": f"10.0.0.{i}"} for i, n in enumerate(names, 1)]
    if zone:
        for h in hosts:
            h["zone"] = zone
    return {"type": "docker", "hosts": hosts}


def test_a_docker_pool_and_an_ec2_compute_parse_with_their_hosts_and_subnets():
    defs = _computes.parse(
        {
            "default": pool("docker-1", "docker-2"),
            "aws": {"type": "ec2", "region": "eu-west-1", "subnets": [{"id": "subnet-1", "zone": "eu-west-1a"}]},
        }
    )
    assert [h.name for h in defs["default"].hosts] == ["docker-1", "docker-2"]
    assert defs["default"].hosts[1].address == "10.0.0.2"
    assert defs["aws"].subnets == (("subnet-1", "eu-west-1a"),)
    assert defs["aws"].options == {"region": "eu-west-1"}
    esm = _computes.parse({"aws": {"type": "ec2", "ec2_health": "esm"}})["aws"]
    assert esm.options == {"ec2_health": "esm"}


def test_without_computes_the_single_endpoint_options_make_a_pool_of_one():
    defs = _computes.resolve({"docker_host": "unix:///run/podman/podman.sock", "advertise_address": "10.1.1.1"})
    (host,) = defs["default"].hosts
    assert (host.url, host.address) == ("unix:///run/podman/podman.sock", "10.1.1.1")
    ec2 = _computes.resolve({"compute": "ec2", "region": "us-east-1", "subnet_id": "subnet-9"})["default"]
    assert ec2.type == "ec2" and ec2.subnets == (("subnet-9", ""),)


@pytest.mark.parametrize(
    ("computes", "message"),
    [
        ({"default": {"type": "docker", "hosts": []}}, "needs hosts"),
        ({"default": {"type": "k8s"}}, "type 'k8s' is not one of docker, ec2"),
        ({"Bad_Name": pool("a")}, "computes name 'Bad_Name' is not a valid service name"),
        (
            {"default": {"type": "docker", "hosts": [pool("a")["hosts"][0], {**pool("a")["hosts"][0], "name": "b"}]}},
            "hosts[0] and hosts[1] have the same url 'tcp://10.0.0.1:2375': one endpoint, one entry",
        ),
        (
            {"default": {"type": "docker", "hosts": [{"name": "a", "url": "tcp://x:1"}]}},
            "address None is not an address",
        ),
        ({"default": {"type": "docker", "hosts": [{**pool("a")["hosts"][0], "capacity": -1}]}}, "capacity must be"),
        (
            {"aws": {"type": "ec2", "aws_secret_access_key": "s3cr3t"}},
            "credentials (aws_secret_access_key) do not belong",
        ),
        (
            {"aws": {"type": "ec2", "ec2_health": "consul"}},
            "computes.aws.ec2_health 'consul' is not one of skynet, esm (who runs the health checks",
        ),
    ],
)
def test_bad_computes_are_refused_naming_the_problem(computes, message):
    with pytest.raises(SkynetError) as e:
        _computes.parse(computes)
    assert message in str(e.value)
    assert "s3cr3t" not in str(e.value)


def test_a_module_parses_its_computes_once_and_reports_a_bad_one_where_it_reads_them(monkeypatch):
    from ansible_collections.cyberdyne.skynet.plugins.module_utils import _drivers

    parses = []
    real = _computes.parse
    monkeypatch.setattr(_computes, "parse", lambda raw: parses.append(raw) or real(raw))
    good = {"computes": {"default": pool("a", "b")}, "consul_url": "http://127.0.0.1:8500"}
    parsed = _drivers.parse(good)
    assert _drivers.missing_library(good, parsed) is None
    computes = _drivers.make_computes(good, parsed)
    assert sorted(computes.agents) == [] and len(parses) == 1
    bad = {"computes": {"default": {"type": "docker", "hosts": []}}, "compute": None}
    parsed = _drivers.parse(bad)
    assert _drivers.missing_library(bad, parsed) is None  # the libraries of the provider option
    with pytest.raises(SkynetError, match="needs hosts") as raised:
        _drivers.make_computes(bad, parsed)
    assert raised.value is parsed and len(parses) == 2


def test_a_service_naming_an_unknown_compute_or_a_zone_no_host_has_is_refused():
    defs = _computes.parse({"default": pool("a", "b", zone="z1")})
    assert _computes.compute_of({"name": "web"}, defs).name == "default"
    with pytest.raises(SkynetError, match="compute 'gpu' is not a defined compute \\(defined: default\\)"):
        _computes.compute_of({"name": "web", "compute": "gpu"}, defs)
    with pytest.raises(SkynetError, match="pinned to zone\\(s\\) z9, which no host or subnet of compute default has"):
        _computes.compute_of({"name": "web", "zones": ["z9"]}, defs)


def test_a_host_is_in_its_grace_period_then_lost_then_returned():
    view, create, delete = _host_failures.assess({}, {"b": "refused"}, now=100, grace=30)
    assert view.in_grace == {"b": "refused"} and not view.lost and create == {"b": {"since": 100, "reason": "refused"}}
    records = {"b": {"since": 100}}
    view, create, delete = _host_failures.assess(records, {"b": "refused"}, now=131, grace=30)
    assert view.lost == {"b": "refused"} and not create and not delete
    assert view.report() == {"b": {"reason": "refused", "failing_since": 100, "lost": True}}
    view, create, delete = _host_failures.assess(records, {}, now=140, grace=30)
    assert view.returned == ("b",) and delete == ["b"]
    view, _create, _delete = _host_failures.assess(records, {}, now=110, grace=30)
    assert view.returned == ()  # back within its grace period: it was never lost


def inst(i, host, created=None, service="web"):
    return Instance(f"i{i}", service, "blue", "img", "10.0.0.1", 1000 + i, created or float(i), host=host)


class Lister:
    """The part of DockerDriver a pool uses for listing: a fixed set of instances; counts listings in full."""

    def __init__(self, instances):
        self.instances, self.listings = instances, Counter()

    @property
    def full_listings(self):
        return self.listings[None]

    def list(self, service, color=None):
        self.listings[service] += 1
        return [i for i in self.instances if service is None or i.service == service]


def test_a_pool_scales_in_where_the_service_has_most_and_plan_uses_it():
    defs = _computes.parse({"default": pool("a", "b", "c")})
    mine = [inst(1, "a"), inst(2, "a"), inst(3, "a"), inst(4, "b"), inst(5, "c")]
    drivers = {h: Lister([i for i in mine if i.host == h]) for h in "abc"}
    driver = PoolDriver(defs["default"], drivers)
    assert [i.id for i in driver.choose_removals(mine, 2)] == ["i3", "i2"]
    todo = plan(mine, 3, "img", choose=driver.choose_removals)
    assert [i.host for i in todo.remove] == ["a", "a"]
    # Without a pool, the newest go first.
    assert [i.id for i in plan(mine, 3, "img").remove] == ["i5", "i4"]


def test_the_default_pool_of_an_inventory_takes_each_hosts_own_api_address_and_agent():
    hosts = [
        ("dock1", {"registrator_advertise_address": "10.0.0.11", "registrator_docker_host": "unix:///run/d.sock"}),
        ("Dock_2.example", {"ansible_facts": {"default_ipv4": {"address": "10.0.0.12"}}, "skynet_zone": "b"}),
        ("dock3", {"ansible_host": "10.0.0.13", "skynet_docker_url": "tcp://10.0.0.13:2375", "skynet_capacity": 5}),
    ]
    pool = _computes.pool_from_hosts(hosts, local="dock1", local_consul_url="http://127.0.0.1:8500")
    parsed = _computes.parse(pool)["default"]
    a, b, c = parsed.hosts
    assert (a.name, a.url, a.address, a.consul_url) == (
        "dock1",
        "unix:///run/d.sock",
        "10.0.0.11",
        "http://127.0.0.1:8500",
    )
    assert (b.name, b.url, b.consul_url, b.zone) == (
        "dock-2-example",
        "tcp://10.0.0.12:2376",
        "http://10.0.0.12:8500",
        "b",
    )
    assert (c.url, c.address, c.capacity) == ("tcp://10.0.0.13:2375", "10.0.0.13", 5)
    assert _computes.pool_from_hosts([]) == {}


def test_the_default_pool_reaches_each_hosts_agent_at_its_own_address_over_https_when_consul_tls_is_on():
    # The instances are published on 10.0.1.5 (another interface); the agent listens on the host's own address.
    facts = {"default_ipv4": {"address": "10.0.0.21"}}
    hosts = [
        (
            "d1",
            {
                "ansible_facts": facts,
                "registrator_advertise_address": "10.0.1.5",
                "consul_tls": {"enabled": True, "https_port": 8601, "ca_cert": "/etc/consul-tls/ca.pem"},
            },
        ),
        ("d2", {"ansible_facts": {"default_ipv4": {"address": "10.0.0.22"}}, "consul_tls": {"enabled": False}}),
        ("d3", {"ansible_host": "10.0.0.23", "consul_tls": {"enabled": "True"}}),
    ]
    a, b, c = _computes.parse(_computes.pool_from_hosts(hosts))["default"].hosts
    assert (a.address, a.consul_url) == ("10.0.1.5", "https://10.0.0.21:8601")
    assert b.consul_url == "http://10.0.0.22:8500"
    assert c.consul_url == "https://10.0.0.23:8501"
    # No fact (an AWX job that did not run the consul role): as the caller says, HTTP by default.
    bare = [("d4", {"ansible_host": "10.0.0.24"})]
    assert _computes.parse(_computes.pool_from_hosts(bare))["default"].hosts[0].consul_url == "http://10.0.0.24:8500"
    (d4,) = _computes.parse(_computes.pool_from_hosts(bare, consul_tls=True))["default"].hosts
    assert d4.consul_url == "https://10.0.0.24:8501"


class FakeHost(Lister):
    """A host's driver that starts instances in memory; down=True answers like an engine that is gone."""

    def __init__(self, name, instances=(), down=False, refuses=None):
        super().__init__(list(instances))
        self.name, self.is_down, self.refuses, self.started = name, down, refuses, 0

    def create(self, spec):
        if self.is_down:
            raise HostUnavailable(f"Docker API at {self.name} is unreachable while trying to start")
        if self.refuses:
            raise SkynetError(self.refuses)
        self.started += 1
        made = Instance(
            f"{self.name}-{self.started}",
            spec.service,
            spec.color,
            spec.image,
            "10.0.0.1",
            1,
            100.0 + self.started,
            host=self.name,
        )
        self.instances.append(made)
        return made

    def remove(self, instance, stop_timeout=10):
        self.instances = [i for i in self.instances if i.id != instance.id]


def test_a_pool_starts_many_spread_and_a_host_that_fails_meanwhile_has_its_share_started_elsewhere():
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import make_spec

    defs = _computes.parse({"default": pool("a", "b", "c")})
    hosts = {"a": FakeHost("a"), "b": FakeHost("b", down=True), "c": FakeHost("c")}
    driver = PoolDriver(defs["default"], hosts)
    made, error = driver.create_many(make_spec("web", "blue", "img"), 6)
    assert error is None
    assert Counter(i.host for i in made) == {"a": 3, "c": 3}
    assert "unreachable" in driver.unavailable()["b"]


def test_a_failure_that_is_not_the_hosts_is_reported_not_retried_on_another_host():
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import make_spec

    defs = _computes.parse({"default": pool("a", "b")})
    # Even an error whose text says "unreachable" is not a host failure unless the driver says so.
    hosts = {"a": FakeHost("a", refuses="the health URL is unreachable: bad port"), "b": FakeHost("b")}
    driver = PoolDriver(defs["default"], hosts)
    made, error = driver.create_many(make_spec("web", "blue", "img"), 2)
    assert str(error) == "the health URL is unreachable: bad port"
    assert [i.host for i in made] == ["b"] and driver.unavailable() == {}


def test_a_rolling_replacement_stays_on_the_old_ones_host_when_the_spread_is_even():
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import make_spec

    defs = _computes.parse({"default": pool("a", "b", "c")})
    old = [inst(n, h) for n, h in enumerate("aabbcc")]
    hosts = {h: FakeHost(h, [i for i in old if i.host == h]) for h in "abc"}
    driver = PoolDriver(defs["default"], hosts)
    for victim in (old[2], old[4], old[0]):
        (new,), error = driver.create_replacing(make_spec("web", "blue", "img2"), victim)
        assert error is None and new.host == victim.host


def test_a_pool_lists_each_host_in_full_once_to_start_an_instance_of_each_of_many_services():
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import make_spec

    defs = _computes.parse({"default": pool("a", "b")})
    hosts = {h: FakeHost(h) for h in "ab"}
    driver = PoolDriver(defs["default"], hosts)
    made = [driver.create(make_spec(f"s{n}", "blue", "img")) for n in range(6)]
    # Its own starts are in its view: each service goes where there are fewest instances overall.
    assert [i.host for i in made] == ["a", "b"] * 3
    assert {h: d.full_listings for h, d in hosts.items()} == {"a": 1, "b": 1}


def test_a_pool_places_a_service_on_its_instances_as_they_are_now_not_as_the_run_first_listed_them():
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import make_spec

    defs = _computes.parse({"default": pool("a", "b")})
    hosts = {h: FakeHost(h) for h in "ab"}
    driver = PoolDriver(defs["default"], hosts)
    driver.list(None)
    hosts["a"].instances += [inst(1, "a"), inst(2, "a")]  # started by another run since
    assert driver.create(make_spec("web", "blue", "img")).host == "b"


def test_a_pool_places_a_service_its_caller_just_listed_without_listing_it_again():
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import make_spec

    defs = _computes.parse({"default": pool("a", "b")})
    hosts = {"a": FakeHost("a", [inst(1, "a")]), "b": FakeHost("b")}
    driver = PoolDriver(defs["default"], hosts)
    driver.list(None)
    driver.list("web")  # as ServiceConverger does, under the service's lock
    assert driver.create(make_spec("web", "blue", "img")).host == "b"
    assert [d.listings["web"] for d in hosts.values()] == [1, 1]
    driver.list(None)  # a new cycle: listed again before it is placed
    driver.create(make_spec("web", "blue", "img"))
    assert [d.listings["web"] for d in hosts.values()] == [2, 2]


def test_a_pool_lists_a_host_with_a_capacity_again_before_it_places_on_it():
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import make_spec

    raw = pool("a", "b")
    raw["hosts"][0]["capacity"] = 2
    defs = _computes.parse({"default": raw})
    hosts = {h: FakeHost(h) for h in "ab"}
    driver = PoolDriver(defs["default"], hosts)
    driver.list(None)
    hosts["a"].instances += [inst(1, "a", service="db"), inst(2, "a", service="db")]  # another run filled it
    made = [driver.create(make_spec(f"s{n}", "blue", "img")) for n in range(2)]
    assert [i.host for i in made] == ["b", "b"]


def test_a_pools_own_removals_are_in_its_view():
    from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import make_spec

    defs = _computes.parse({"default": pool("a", "b")})
    x1, x2, y1 = inst(1, "a", service="x"), inst(2, "a", service="x"), inst(3, "b", service="y")
    hosts = {"a": FakeHost("a", [x1, x2]), "b": FakeHost("b", [y1])}
    driver = PoolDriver(defs["default"], hosts)
    driver.list(None)
    driver.remove(x2)
    # a and b hold one instance each now: the tie goes to a, by name.
    assert driver.create(make_spec("z", "blue", "img")).host == "a"
    assert {h: d.full_listings for h, d in hosts.items()} == {"a": 1, "b": 1}


def test_the_computes_example_of_docs_compute_md_is_valid():
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[4] / "docs" / "compute.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "skynet_computes:" in b]
    example = yaml.safe_load(block.replace("scaling: {...}", "scaling: {}"))
    defs = _computes.parse(example["skynet_computes"])
    assert [h.name for h in defs["default"].hosts] == ["docker-1", "docker-2", "docker-3"]
    assert {s["name"]: _computes.compute_of(s, defs).name for s in example["skynet_services"]} == {
        "web": "default",
        "batch": "aws",
    }
