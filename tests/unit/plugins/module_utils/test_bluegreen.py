"""The release orchestration against in-memory stand-ins of Consul, the compute, HAProxy and Prometheus."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _bluegreen as bg
from ansible_collections.cyberdyne.skynet.plugins.module_utils import _release as rel
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_analysis import Analyser
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_records import ReleaseStore
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_routing import Router
from ansible_collections.cyberdyne.skynet.plugins.module_utils._bluegreen_waits import Waiter
from ansible_collections.cyberdyne.skynet.plugins.module_utils._compute import ComputeDriver, Instance, make_spec
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._haproxy_runtime import NotDelivered
from ansible_collections.cyberdyne.skynet.plugins.module_utils._lock import LockLost, ServiceLock
from ansible_collections.cyberdyne.skynet.plugins.module_utils._registry import Registry
from ansible_collections.cyberdyne.skynet.plugins.module_utils._scale import spec_of


class Clock:
    def __init__(self):
        self.t = 1000.0
        self.hooks = []  # (time, fn) run once when the clock passes time

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.t += max(seconds, 0.01)
        for hook in list(self.hooks):
            if self.t >= hook[0]:
                self.hooks.remove(hook)
                hook[1]()


class FakeConsul:
    """KV with sessions as Consul keeps them: a lock is a key held by a live session; destroying it frees the key."""

    def __init__(self):
        self.data, self.sessions, self.maintenance = {}, set(), []
        self.index = 0
        self.kv = SimpleNamespace(get=self.kv_get, put=self.kv_put, delete=self.kv_delete)
        self.session = SimpleNamespace(create=self.create, destroy=self.destroy, renew=self.renew)
        self.agent = SimpleNamespace(service=SimpleNamespace(maintenance=self.maint))
        self.created = 0

    def kv_get(self, key):
        value = self.data.get(key)
        if value is None:
            return 1, None
        return 1, {
            "Value": None if value[0] is None else value[0].encode(),
            "Session": value[1],
            "ModifyIndex": value[2],
        }

    def kv_put(self, key, value, acquire=None, release=None, cas=None):
        held = self.data.get(key)
        holder = held[1] if held and held[1] in self.sessions else None
        if cas is not None and (held[2] if held else 0) != cas:
            return False
        if acquire:
            if acquire not in self.sessions or (holder and holder != acquire):
                return False
            holder = acquire
        if release:
            if holder != release:
                return False
            holder = None
        self.index += 1
        self.data[key] = (value, holder, self.index)
        return True

    def kv_delete(self, key):
        self.data.pop(key, None)

    def create(self, **kw):
        self.created += 1
        sid = f"s{self.created}"
        self.sessions.add(sid)
        return sid

    def renew(self, sid):
        return sid in self.sessions

    def destroy(self, sid):
        self.sessions.discard(sid)
        for key, (value, holder, index) in list(self.data.items()):
            if holder == sid:
                self.data[key] = (value, None, index)

    def maint(self, sid, enable, reason=None):
        self.maintenance.append((sid, enable))

    def json(self, key):
        return json.loads(self.data[key][0]) if key in self.data else None

    def set_json(self, key, value, session=None):
        self.index += 1
        self.data[key] = (json.dumps(value), session, self.index)


class FakeDriver(ComputeDriver):
    name = "fake"

    def __init__(self, clock):
        self.clock, self.instances, self.n = clock, {}, 0
        self.failing_removals = 0

    def check(self, spec=None):
        pass

    def list(self, service, color=None):
        found = [i for i in self.instances.values() if i.service == service and (color is None or i.color == color)]
        return sorted(found, key=lambda i: (i.created, i.id))

    def create(self, spec):
        self.n += 1
        inst = Instance(f"i{self.n}", spec.service, spec.color, spec.image, "127.0.0.1", 4000 + self.n, self.clock())
        self.instances[inst.id] = inst
        return inst

    def remove(self, instance, stop_timeout=10):
        if self.failing_removals:
            self.failing_removals -= 1
            raise SkynetError(f"Docker API failed to remove container {instance.id}: device or resource busy")
        self.instances.pop(instance.id, None)


class FakeRegistry:
    """Health from the fake driver's instances; KV through the real Registry's code on the fake Consul."""

    read_json, write_json, read_versioned = Registry.read_json, Registry.write_json, Registry.read_versioned
    keep_checked = Registry.keep_checked  # a no-op here: every instance is on an agent

    def __init__(self, driver, consul, unhealthy=()):
        self.driver, self.client, self.unhealthy = driver, consul, set(unhealthy)
        self.registered, self.drained = set(), set()

    def call(self, what, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SkynetError:
            raise
        except Exception as e:  # as Registry.call does
            raise SkynetError(f"{e} (while trying to {what})") from e

    def check(self):
        pass

    def register(self, inst, health, tags=()):
        self.registered.add(inst.id)

    def deregister(self, inst):
        self.registered.discard(inst.id)

    def drain(self, inst, reason=""):
        self.drained.add(inst.id)

    def statuses(self, service):
        out = {}
        for i in self.driver.list(service):
            if i.id in self.registered:
                out[i.id] = "critical" if i.image in self.unhealthy or i.id in self.drained else "passing"
        return out


class FakeRuntime:
    """One HAProxy node: its maps, and backends that see every running instance of a color."""

    def __init__(self, name, driver, map_dir, service="web"):
        self.name, self.driver = name, driver
        self.maps_by_file = {
            f"{map_dir}/live.map": {service: f"{service}_blue"},
            f"{map_dir}/preview.map": {service: f"{service}_green"},
        }
        self.down = False
        self.fail_set = False
        self.ignore_set = False  # answers `set map` and changes nothing
        self.slow_set = False  # changes the map, then its answer times out

    def _reach(self):
        if self.down:
            raise NotDelivered(f"HAProxy node {self.name} is unreachable on its admin socket /x.sock: No such file")

    def maps(self):
        self._reach()
        return list(self.maps_by_file)

    def get_map(self, map_id, key):
        self._reach()
        return self.maps_by_file[map_id].get(key)

    def set_map(self, map_id, key, value):
        self._reach()
        if self.fail_set:
            raise SkynetError(f"HAProxy node {self.name} refused `set map`: boom")
        if self.ignore_set:
            return
        self.maps_by_file[map_id][key] = value
        if self.slow_set:
            raise SkynetError(f"HAProxy node {self.name} did not answer `set map` within 1s")

    def servers(self, backend):
        self._reach()
        service, color = backend.rsplit("_", 1)
        return [
            {"name": f"{backend}{n}", "status": "UP", "address": f"{i.address}:{i.port}"}
            for n, i in enumerate(self.driver.list(service, color))
        ]


class FakePrometheus:
    def __init__(self, answers=None):
        self.answers, self.queries = answers or {}, []

    def query(self, promql):
        self.queries.append(promql)
        answer = self.answers.get(promql, 0.0)
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            return {"resultType": "vector", "result": []}
        return {"resultType": "scalar", "result": [0, str(answer)]}


@pytest.fixture
def world(tmp_path):
    clock = Clock()
    consul = FakeConsul()
    driver = FakeDriver(clock)
    registry = FakeRegistry(driver, consul)
    runtimes = [FakeRuntime(f"lb{n}", driver, str(tmp_path / f"lb{n}")) for n in (1, 2)]
    for n in (1, 2):
        (tmp_path / f"lb{n}").mkdir()
        (tmp_path / f"lb{n}" / "live.map").write_text("web web_blue\n")
    nodes = [bg.HAProxyNode(rt, next(iter(rt.maps_by_file)).rsplit("/", 1)[0]) for rt in runtimes]
    prometheus = FakePrometheus()
    for _n in range(2):
        inst = driver.create(bg.ReleaseOptions("web", image="web:1").spec("blue"))
        registry.register(inst, {})

    locks = []

    def make_lock(service):
        locks.append(
            ServiceLock(registry, service, "release", ttl=10**6, clock=clock, monotonic=clock, sleep=clock.sleep)
        )
        return locks[-1]

    def make():
        return bg.BlueGreen(
            consul,
            registry,
            driver,
            nodes,
            prometheus,
            clock=clock,
            monotonic=clock,
            sleep=clock.sleep,
            make_lock=make_lock,
        )

    return SimpleNamespace(
        clock=clock,
        consul=consul,
        driver=driver,
        registry=registry,
        runtimes=runtimes,
        nodes=nodes,
        prometheus=prometheus,
        make=make,
        locks=locks,
        tmp=tmp_path,
    )


def opts(**kw):
    base = dict(service="web", image="web:2", health_timeout=10, scale_down_delay=2, drain_period=1, lock_wait=1)
    return bg.ReleaseOptions(**{**base, **kw})


def images(world, color):
    return sorted(i.image for i in world.driver.list("web", color))


def routes(world, preview=False):
    return [rt.maps_by_file[list(rt.maps_by_file)[1 if preview else 0]]["web"] for rt in world.runtimes]


def test_a_release_switches_every_node_and_retires_the_old_color(world):
    result = world.make().run(opts())
    assert not result.get("failed"), result["msg"]
    assert result["changed"] and result["live"] == "green" and result["previous"] == "blue"
    assert [p["phase"] for p in result["phases"]] == list(rel.PHASES)
    assert result["phases"][3]["outcome"] == "skipped"
    assert set(result["timings"]) == {*rel.PHASES, "total"}
    assert routes(world) == ["web_green", "web_green"]
    assert (world.tmp / "lb1" / "live.map").read_text() == "web web_green\n"
    assert routes(world, preview=True) == ["web_blue", "web_blue"], "the preview shows the idle color"
    assert (world.tmp / "lb2" / "preview.map").read_text() == "web web_blue\n"
    assert images(world, "green") == ["web:2", "web:2"] and images(world, "blue") == []
    assert world.consul.json("skynet/bluegreen/web/live") == "green"
    record = world.consul.json("skynet/bluegreen/web/release")
    assert record["phase"] == "done" and record["from_image"] == "web:1" and record["version"] == "2"
    assert [h["phase"] for h in world.consul.json("skynet/bluegreen/web/history")] == ["done"]
    assert [n["switched"] for n in result["nodes"]] == [True, True]

    again = world.make().run(opts())
    assert not again["changed"] and again["plan"]["action"] == "none"
    assert "already runs web:2 on its live color green" in again["msg"]


def test_check_mode_reports_the_plan_and_changes_nothing(world):
    result = world.make().run(opts(count=3), check_mode=True)
    assert result["changed"] and result["phases"] == []
    assert result["plan"]["action"] == "release" and result["plan"]["count"] == 3
    assert result["plan"]["target"] == "green"
    assert images(world, "green") == [] and routes(world) == ["web_blue", "web_blue"]
    assert "skynet/bluegreen/web/release" not in world.consul.data


def test_a_version_failing_its_health_checks_is_never_switched_to(world):
    world.registry.unhealthy.add("web:2")
    result = world.make().run(opts())
    assert result["failed"]
    assert "did not pass their health check within health_timeout (10s)" in result["msg"]
    assert "green was removed; blue was not touched and stays live" in result["msg"]
    assert routes(world) == ["web_blue", "web_blue"] and images(world, "green") == []
    assert images(world, "blue") == ["web:1", "web:1"]
    assert world.consul.json("skynet/bluegreen/web/release")["phase"] == "failed"
    assert world.consul.json("skynet/bluegreen/web/history")[-1]["phase"] == "failed"


def test_a_failed_switch_puts_back_the_nodes_already_switched(world):
    world.runtimes[1].fail_set = True
    result = world.make().run(opts())
    assert result["failed"]
    assert "switch failed: HAProxy node lb2 refused `set map`: boom; lb1 put back to blue" in result["msg"]
    assert routes(world) == ["web_blue", "web_blue"] and images(world, "green") == []
    assert result["nodes"] == [
        {"name": "lb1", "switched": False, "serves": "blue", "error": None, "put_back": True},
        {"name": "lb2", "switched": False, "serves": "blue", "error": "HAProxy node lb2 refused `set map`: boom"},
    ]
    assert "(read back: lb1 serves blue, lb2 serves blue)" in result["msg"]
    assert world.consul.json("skynet/bluegreen/web/release")["phase"] == "failed"
    assert world.consul.json("skynet/bluegreen/web/live") is None


def test_a_switch_that_cannot_be_put_back_keeps_the_new_color_and_can_be_resumed(world):
    lb1, lb2 = world.runtimes
    original = lb1.set_map
    calls = []

    def flaky(map_id, key, value):
        calls.append(value)
        if len(calls) > 1:
            lb1.down = True
        original(map_id, key, value)

    lb1.set_map = flaky
    lb2.fail_set = True
    result = world.make().run(opts())
    assert result["failed"]
    assert "Putting back blue failed on lb1" in result["msg"] and "green was kept running" in result["msg"]
    assert images(world, "green") == ["web:2", "web:2"]
    record = world.consul.json("skynet/bluegreen/web/release")
    assert record["phase"] == "switch" and record["switched"]

    lb1.set_map, lb1.down, lb2.fail_set = original, False, False
    resumed = world.make().run(opts())
    assert not resumed.get("failed"), resumed["msg"]
    assert resumed["plan"]["action"] == "resume" and [p["phase"] for p in resumed["phases"]] == [
        "switch",
        "watch",
        "retire",
    ]
    assert routes(world) == ["web_green", "web_green"] and images(world, "blue") == []


def test_failed_post_promotion_analysis_rolls_back_automatically(world):
    world.prometheus.answers['errors{proxy="web_green"}'] = 0.5
    post = rel.parse_analysis(
        "post_analysis",
        {"duration": 5, "interval": 1, "checks": [{"name": "err", "query": 'errors{proxy="${backend}"}', "max": 0.01}]},
    )
    result = world.make().run(opts(post=post))
    assert result["failed"]
    assert "failed in phase watch: post-promotion analysis failed: check err" in result["msg"]
    assert "0.5 is above max 0.01" in result["msg"]
    assert "rolled back automatically: blue is live again and green was removed" in result["msg"]
    assert routes(world) == ["web_blue", "web_blue"] and images(world, "green") == []
    assert images(world, "blue") == ["web:1", "web:1"]
    assert world.consul.json("skynet/bluegreen/web/live") == "blue"
    assert world.consul.json("skynet/bluegreen/web/release")["phase"] == "rolled_back"
    assert result["analysis"][0]["passed"] is False
    watch = result["phases"][3]
    assert watch["phase"] == "watch" and watch["outcome"] == "failed" and watch["ended"] >= watch["started"]
    assert result["phases"][4]["phase"] == "rollback" and result["phases"][4]["outcome"] == "ok"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            SkynetError("Prometheus at http://p rejected the query 'sum(rate(': parse error"),
            "cannot be evaluated, which counts as a failure",
        ),
        (None, "returned no data"),
    ],
)
def test_pre_promotion_analysis_failures_remove_the_new_color(world, answer, message):
    world.prometheus.answers["sum(rate("] = answer
    pre = rel.parse_analysis("pre_analysis", {"checks": [{"name": "bad", "query": "sum(rate(", "max": 1}]})
    result = world.make().run(opts(pre=pre))
    assert result["failed"] and message in result["msg"] and "failed in phase verify" in result["msg"]
    assert routes(world) == ["web_blue", "web_blue"] and images(world, "green") == []


def test_an_interrupted_release_resumes_from_its_recorded_phase(world):
    for _n in range(2):
        world.registry.register(world.driver.create(opts().spec("green")), {})
    for rt in world.runtimes:
        rt.maps_by_file[next(iter(rt.maps_by_file))]["web"] = "web_green"
    record = rel.new_record("r1", "web", "web:2", "2", "blue", "web:1", 2, 900.0)
    record.update(phase="watch", switched=True)
    world.consul.set_json("skynet/bluegreen/web/release", record)
    world.consul.set_json("skynet/bluegreen/web/live", "green")
    result = world.make().run(opts())
    assert result["plan"]["action"] == "resume"
    assert [p["phase"] for p in result["phases"]] == ["watch", "retire"]
    assert images(world, "blue") == [] and world.consul.json("skynet/bluegreen/web/release")["phase"] == "done"


def test_rollback_on_request_after_a_release_kept_warm(world):
    world.make().run(opts(keep_warm=True))
    assert images(world, "blue") == ["web:1", "web:1"]
    result = world.make().run(opts(), state="rolled_back")
    assert not result.get("failed"), result["msg"]
    assert result["live"] == "blue" and routes(world) == ["web_blue", "web_blue"]
    assert routes(world, preview=True) == ["web_green", "web_green"]
    assert images(world, "green") == [] and world.consul.json("skynet/bluegreen/web/release")["phase"] == "rolled_back"
    again = world.make().run(opts(), state="rolled_back")
    assert not again["changed"] and "already ended rolled_back" in again["msg"]


def test_rollback_after_retire_starts_the_old_version_again(world):
    world.make().run(opts())
    assert images(world, "blue") == []
    result = world.make().run(opts(), state="rolled_back")
    assert not result.get("failed"), result["msg"]
    assert images(world, "blue") == ["web:1", "web:1"] and images(world, "green") == []
    assert routes(world) == ["web_blue", "web_blue"]
    assert "2 started again from web:1" in result["phases"][0]["detail"]


def test_an_abort_asked_by_another_controller_stops_the_running_release(world):
    def ask():
        world.consul.set_json("skynet/bluegreen/web/request", {"kind": "abort", "by": "awx"})

    world.clock.hooks.append((world.clock.t + 1.0, ask))
    result = world.make().run(opts(scale_down_delay=30))
    assert not result.get("failed"), result["msg"]
    assert [p["phase"] for p in result["phases"]][-1] == "abort"
    assert world.consul.json("skynet/bluegreen/web/release")["phase"] == "aborted"
    assert routes(world) == ["web_blue", "web_blue"] and images(world, "green") == []
    assert "skynet/bluegreen/web/request" not in world.consul.data


def test_abort_with_nothing_in_progress_changes_nothing(world):
    result = world.make().run(opts(), state="aborted")
    assert not result["changed"] and "nothing to abort" in result["msg"]


def test_unknown_service_and_unrouted_service_fail_before_anything_changes(world):
    with pytest.raises(SkynetError, match="unknown service api: no instance of its live color blue"):
        for rt in world.runtimes:
            rt.maps_by_file[next(iter(rt.maps_by_file))]["api"] = "api_blue"
        world.make().run(opts(service="api"))
    with pytest.raises(SkynetError, match=r"HAProxy node lb1 has no entry for shop in its map .*live.map"):
        world.make().run(opts(service="shop", count=1))
    world.runtimes[1].down = True
    with pytest.raises(SkynetError, match=r"HAProxy node lb2 is unreachable.*nothing was changed"):
        world.make().run(opts())
    assert images(world, "green") == []


def test_nodes_disagreeing_with_consul_stop_a_new_release(world):
    world.consul.set_json("skynet/bluegreen/web/live", "blue")
    world.runtimes[0].maps_by_file[next(iter(world.runtimes[0].maps_by_file))]["web"] = "web_green"
    with pytest.raises(SkynetError, match=r"HAProxy node\(s\) lb1 send it to green"):
        world.make().run(opts())


def test_a_release_held_by_another_run_is_reported(world):
    world.consul.sessions.add("other")
    world.consul.set_json("skynet/lock/web", {"purpose": "scale", "host": "awx-1", "since": 1.0}, session="other")
    with pytest.raises(SkynetError, match=r"a scale cycle on awx-1 .* holds the lock of web \(skynet/lock/web\)"):
        world.make().run(opts())


def test_another_release_in_progress_is_not_overridden(world):
    record = rel.new_record("r1", "web", "web:3", "3", "blue", "web:1", 2, 900.0)
    world.consul.set_json("skynet/bluegreen/web/release", record)
    with pytest.raises(SkynetError, match="a release of web to web:3 is in progress"):
        world.make().run(opts())


def hold_release(world, phase="verify"):
    record = rel.new_record("r1", "web", "web:2", "2", "blue", "web:1", 2, 900.0)
    record["phase"] = phase
    world.consul.set_json("skynet/bluegreen/web/release", record)
    world.consul.sessions.add("runner")
    world.consul.set_json("skynet/lock/web", {"purpose": "release", "host": "timer", "since": 1.0}, session="runner")
    return record


def test_an_abort_asks_the_running_release_and_reports_what_it_did(world):
    record = hold_release(world)

    def runner_obeys():
        assert world.consul.json("skynet/bluegreen/web/request")["kind"] == "abort"
        world.consul.set_json("skynet/bluegreen/web/release", {**record, "phase": "aborted"})
        world.consul.sessions.discard("runner")

    world.clock.hooks.append((world.clock.t + 2, runner_obeys))
    result = world.make().run(opts(lock_wait=10), state="aborted")
    assert result["changed"] and not result.get("failed")
    assert result["release"]["phase"] == "aborted"


def test_an_abort_the_running_release_does_not_act_on_is_reported(world):
    hold_release(world)
    with pytest.raises(
        SkynetError, match=r"asked a release on timer .* to abort the release of web; it did not finish"
    ):
        world.make().run(opts(lock_wait=3), state="aborted")
    assert world.consul.json("skynet/bluegreen/web/request")["kind"] == "abort"


def test_a_removal_the_engine_fails_once_is_tried_again(world):
    world.driver.failing_removals = 1
    result = world.make().run(opts())
    assert not result.get("failed"), result["msg"]
    assert images(world, "blue") == [] and result["phases"][-1]["detail"] == "blue: 2 drained and stopped"


def test_a_retire_that_keeps_failing_leaves_the_new_color_live_and_resumable(world):
    world.driver.failing_removals = 3
    result = world.make().run(opts())
    assert (
        result["failed"]
        and "green is live and stays so: run the release again to finish retiring blue" in result["msg"]
    )
    assert routes(world) == ["web_green", "web_green"]
    assert world.consul.json("skynet/bluegreen/web/release")["phase"] == "retire"
    again = world.make().run(opts())
    assert not again.get("failed") and [p["phase"] for p in again["phases"]] == ["retire"]
    assert images(world, "blue") == [] and world.consul.json("skynet/bluegreen/web/release")["phase"] == "done"


# -- the lock ------------------------------------------------------------------------------------


def lose_lock_at(world, seconds):
    """Destroys the running release's session `seconds` into the run, as `consul session destroy` would."""
    world.clock.hooks.append((world.clock.t + seconds, lambda: world.consul.destroy(world.locks[-1].session)))


def slow_pre_analysis():
    return rel.parse_analysis("pre_analysis", {"duration": 5, "interval": 1, "checks": [{"query": "up", "min": 0}]})


@pytest.mark.parametrize("then", ["released", "rolled_back"])
def test_a_release_that_loses_its_lock_stops_before_the_switch_and_a_rerun_ends_it(world, then):
    lose_lock_at(world, 2)
    result = world.make().run(opts(pre=slow_pre_analysis()))
    assert result["failed"]
    assert "the lock of web was lost" in result["msg"] and "stopped before its next step" in result["msg"]
    assert "stopped in phase verify (skynet/bluegreen/web/release records it)" in result["msg"], result["msg"]
    assert routes(world) == ["web_blue", "web_blue"], "nothing switched without the lock"
    assert images(world, "green") == ["web:2", "web:2"], "nothing undone without the lock either"
    record = world.consul.json("skynet/bluegreen/web/release")
    assert record["phase"] == "verify" and record["stopped"]["phase"] == "verify"
    assert record["phases"][-1]["outcome"] == "stopped" and "was lost" in record["error"]

    again = world.make().run(opts(), state=then)
    assert not again.get("failed"), again["msg"]
    record = world.consul.json("skynet/bluegreen/web/release")
    if then == "released":
        assert again["plan"]["action"] == "resume" and record["phase"] == "done" and "stopped" not in record
        assert routes(world) == ["web_green", "web_green"] and images(world, "blue") == []
    else:
        assert record["phase"] == "rolled_back" and images(world, "green") == []
        assert routes(world) == ["web_blue", "web_blue"] and images(world, "blue") == ["web:1", "web:1"]


def test_a_run_that_lost_its_lock_does_not_overwrite_a_record_another_run_changed(world):
    def lose_and_take_over():
        world.consul.destroy(world.locks[-1].session)
        record = world.consul.json("skynet/bluegreen/web/release")
        world.consul.set_json("skynet/bluegreen/web/release", {**record, "phase": "aborted", "by": "other"})

    world.clock.hooks.append((world.clock.t + 2, lose_and_take_over))
    result = world.make().run(opts(pre=slow_pre_analysis()))
    assert result["failed"] and "was changed by another run and is left as it is" in result["msg"]
    record = world.consul.json("skynet/bluegreen/web/release")
    assert record["phase"] == "aborted" and record["by"] == "other"


def test_a_release_waits_for_a_scale_cycle_holding_the_lock(world):
    world.consul.sessions.add("scaler")
    world.consul.set_json("skynet/lock/web", {"purpose": "scale", "host": "timer", "since": 1.0}, session="scaler")
    world.clock.hooks.append((world.clock.t + 2, lambda: world.consul.destroy("scaler")))
    result = world.make().run(opts(lock_wait=10))
    assert not result.get("failed"), result["msg"]
    assert result["live"] == "green" and world.clock.t >= 1002


def test_a_lock_that_cannot_be_released_is_a_warning_not_the_result(world):
    def refuse(sid):
        raise ConnectionError("Consul went away")

    world.consul.session.destroy = refuse
    result = world.make().run(opts())
    assert not result.get("failed"), result["msg"] and result["live"] == "green"
    assert len(result["warnings"]) == 1 and "the lock of web was not released cleanly" in result["warnings"][0]
    assert "Consul went away" in result["warnings"][0]


# -- switching, judged by read-back --------------------------------------------------------------


def test_a_node_that_answers_set_map_but_does_not_change_is_reported_and_the_switch_undone(world):
    world.runtimes[1].ignore_set = True
    result = world.make().run(opts())
    assert result["failed"]
    assert "HAProxy node lb2 answered `set map` but still sends web to blue" in result["msg"], result["msg"]
    assert "lb1 put back to blue (read back: lb1 serves blue, lb2 serves blue)" in result["msg"]
    assert [(n["name"], n["serves"], n.get("put_back", False)) for n in result["nodes"]] == [
        ("lb1", "blue", True),
        ("lb2", "blue", False),
    ]
    assert routes(world) == ["web_blue", "web_blue"] and images(world, "green") == []
    assert world.consul.json("skynet/bluegreen/web/release")["phase"] == "failed"


def test_a_set_map_whose_answer_times_out_counts_as_switched_when_read_back(world):
    world.runtimes[0].slow_set = True
    result = world.make().run(opts())
    assert not result.get("failed"), result["msg"]
    lb1, lb2 = result["nodes"]
    assert lb1["switched"] and lb1["serves"] == "green" and lb1["error"] is None
    assert "did not answer `set map` within 1s; read back, it sends web to green" in lb1["note"]
    assert lb2["switched"] and routes(world) == ["web_green", "web_green"]
    assert "lb1: HAProxy node lb1 did not answer" in result["phases"][2]["detail"]


def test_a_timed_out_set_map_that_did_not_apply_is_put_back_on_the_others(world):
    lb2 = world.runtimes[1]
    lb2.fail_set = True  # the answer is an error and the read-back shows blue: not switched
    result = world.make().run(opts())
    assert result["failed"] and [n["serves"] for n in result["nodes"]] == ["blue", "blue"]


def test_a_node_unreachable_at_the_switch_is_known_unchanged_and_the_others_put_back(world):
    lb2 = world.runtimes[1]
    original = lb2.set_map

    def vanish(map_id, key, value):
        lb2.down = True
        original(map_id, key, value)

    lb2.set_map = vanish
    result = world.make().run(opts())
    assert result["failed"] and "lb1 put back to blue" in result["msg"], result["msg"]
    assert result["nodes"][1]["serves"] == "blue" and "unreachable" in result["nodes"][1]["error"]
    assert images(world, "green") == [] and world.consul.json("skynet/bluegreen/web/release")["phase"] == "failed"


def test_a_rollback_reports_what_each_node_serves_after_it(world):
    world.make().run(opts(keep_warm=True))
    back = world.make().run(opts(), state="rolled_back")
    assert [(n["name"], n["serves"], n["put_back"]) for n in back["nodes"]] == [
        ("lb1", "blue", True),
        ("lb2", "blue", True),
    ]
    assert "2 HAProxy node(s) send web to blue, read back" in back["phases"][0]["detail"]


def test_a_rollback_that_a_node_ignores_stops_and_keeps_the_new_color(world):
    world.make().run(opts(keep_warm=True))
    world.runtimes[0].ignore_set = True
    back = world.make().run(opts(), state="rolled_back")
    assert back["failed"] and "putting web back on blue failed on lb1: it still sends web to green" in back["msg"]
    assert images(world, "green") == ["web:2", "web:2"], "green still serves lb1"
    assert world.consul.json("skynet/bluegreen/web/release")["phase"] == "rollback"


# -- the parts on their own ----------------------------------------------------------------------


def test_the_store_writes_a_record_only_if_nobody_changed_it(world):
    store = ReleaseStore(world.registry, "web")
    store.save({"id": "r1", "phase": "verify"})
    assert store.save_if_unchanged({"id": "r1", "phase": "verify", "stopped": {}})
    world.consul.set_json("skynet/bluegreen/web/release", {"id": "r2", "phase": "deploy"})
    assert not store.save_if_unchanged({"id": "r1", "phase": "verify"})
    assert world.consul.json("skynet/bluegreen/web/release")["id"] == "r2"
    assert not ReleaseStore(world.registry, "web").save_if_unchanged({"id": "r1"}), "it never wrote one"
    store.ask("abort", "awx", 1.0)
    assert store.request() == {"kind": "abort", "by": "awx", "at": 1.0}
    store.clear_request()
    assert store.request() is None
    with pytest.raises(SkynetError, match="live color 'red' is not a valid color"):
        store.set_live("red")


def test_the_router_reads_every_node_back_and_puts_back_only_what_moved(world):
    router = Router(world.nodes, "web", world.clock)
    assert router.routes() == {"lb1": "blue", "lb2": "blue"}
    world.runtimes[1].ignore_set = True
    report, _seconds, ok = router.switch("blue", "green")
    assert not ok and [(n["serves"], n["switched"]) for n in report] == [("green", True), ("blue", False)]
    assert (world.tmp / "lb1" / "live.map").read_text() == "web web_blue\n", "no file written before all switched"
    report, stuck = router.put_back("blue", report)
    assert stuck == [] and [n.get("put_back", False) for n in report] == [True, False]
    world.runtimes[1].down = True
    report, stuck = router.put_back("blue")
    assert [n["serves"] for n in report] == ["blue", None] and "lb2" in stuck[0]


def test_the_waiter_stops_on_a_request_and_on_a_lost_lock(world):
    store = ReleaseStore(world.registry, "web")
    lock = ServiceLock(world.registry, "web", "release", ttl=10**6, clock=world.clock, monotonic=world.clock)
    assert lock.acquire()
    waiter = Waiter(world.registry, store, world.nodes, lock, world.clock, world.clock.sleep)
    waiter.wait(1)
    store.ask("rollback", "awx", 1.0)
    with pytest.raises(bg.Interrupted):
        waiter.wait(1)
    store.clear_request()
    world.consul.destroy(lock.session)
    with pytest.raises(LockLost, match="stopped before its next step"):
        waiter.wait(1)
    waiter.wait(1, interruptible=False)
    lock.release()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(0.5, (0.5, None)), (float("nan"), (None, None)), (None, (None, None))],
)
def test_the_analyser_samples_a_number_or_nothing(world, answer, expected):
    world.prometheus.answers["q"] = answer
    assert Analyser(world.prometheus, None).sample("q") == expected


def test_service_specs_are_built_the_same_everywhere():
    definition = {"name": "web", "image": "web:1", "port": 80, "env": {"A": 1}, "command": ["x"], "cpus": "0.5"}
    from_scale = spec_of(definition, "green")
    from_release = bg.ReleaseOptions("web", image="web:1", port=80, env={"A": 1}, command=["x"], cpus=0.5).spec("green")
    assert from_scale == from_release == make_spec("web", "green", "web:1", 80, {"A": "1"}, ("x",), None, 0.5)
    assert from_scale.env == {"A": "1"} and from_scale.command == ("x",) and from_scale.memory == ""
