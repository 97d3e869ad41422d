from __future__ import annotations

import json
import threading
import time

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._errors import SkynetError
from ansible_collections.cyberdyne.skynet.plugins.module_utils._watcher import (
    RECENT,
    CommandCycle,
    ResidentCycle,
    Runner,
    alerted_services,
    command_for,
    load,
    new_wakes,
    recent_wakes,
)

TEMPLATE = ["ansible-playbook", "autoscale.yml", "-e", "skynet_autoscale_limit={service}"]
WAIT = 5  # seconds a test waits for a thread at most: far more than any step needs


def wait_until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def idle(runner):
    with runner.lock:
        return not runner.running


@pytest.fixture
def make_runner():
    """Runner(...) that is closed at the end of the test: no thread is left behind."""
    made = []

    def make(*args, **kwargs):
        runner = Runner(*args, **kwargs)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.close()


class Recorder:
    """A fake cycle: records every service it runs; each run waits for `release` when blocking is on."""

    def __init__(self, blocking=False, result=True):
        self.calls, self.lock = [], threading.Lock()
        self.started = threading.Event()
        self.release = threading.Event()
        self.blocking, self.result = blocking, result

    def __call__(self, service):
        with self.lock:
            self.calls.append(service)
        self.started.set()
        if self.blocking:
            assert self.release.wait(WAIT), "the test never released the run"
        return self.result

    def services(self):
        with self.lock:
            return list(self.calls)


# -- wake records ------------------------------------------------------------------------------


def test_new_wakes_are_the_wake_keys_whose_index_grew():
    seen = {"skynet/wake/web": 10, "skynet/wake/db": 20}
    entries = {
        "skynet/wake/web": ({"at": 1.0}, 11),
        "skynet/wake/db": ({"at": 1.0}, 20),
        "skynet/wake/api": ({"at": 1.0}, 5),
    }
    services, now_seen = new_wakes(entries, seen)
    assert services == ["api", "web"]
    assert now_seen == {"skynet/wake/web": 11, "skynet/wake/db": 20, "skynet/wake/api": 5}
    assert seen == {"skynet/wake/web": 10, "skynet/wake/db": 20}  # not changed in place


def test_new_wakes_ignore_keys_that_are_not_wake_records():
    entries = {
        "skynet/wake": (None, 50),
        "skynet/wake/": (None, 50),
        "skynet/wake/web/extra": (None, 50),
        "skynet/wakes/web": (None, 50),
        "skynet/scale/web": (None, 50),
        "other/wake/web": (None, 50),
    }
    services, now_seen = new_wakes(entries, {})
    assert services == []
    assert set(now_seen) == set(entries)


def test_a_wake_seen_already_is_not_new_again():
    entries = {"skynet/wake/web": ({"at": 1.0}, 7)}
    services, seen = new_wakes(entries, {})
    assert services == ["web"]
    assert new_wakes(entries, seen) == ([], seen)


def test_an_index_that_went_down_is_not_a_wake():
    assert new_wakes({"skynet/wake/web": (None, 3)}, {"skynet/wake/web": 9}) == ([], {"skynet/wake/web": 3})


def test_a_seen_key_that_is_gone_stays_seen():
    assert new_wakes({}, {"skynet/wake/web": 9}) == ([], {"skynet/wake/web": 9})


def test_recent_wakes_are_those_written_within_recent_seconds():
    now = 10_000.0
    entries = {
        "skynet/wake/web": ({"at": now - 1}, 1),
        "skynet/wake/db": ({"at": now - RECENT - 1}, 2),
        "skynet/wake/api": ({"at": int(now) - 30}, 3),
        "skynet/wake/edge": ({"at": now - RECENT}, 4),
        "skynet/wake/text": ({"at": str(now)}, 5),
        "skynet/wake/none": ({"at": None}, 6),
        "skynet/wake/bare": ({}, 7),
        "skynet/wake/list": ([now], 8),
        "skynet/wake/null": (None, 9),
        "skynet/other/web": ({"at": now}, 10),
    }
    assert recent_wakes(entries, now) == ["api", "web"]


def test_recent_wakes_take_the_window_asked_for():
    entries = {"skynet/wake/web": ({"at": 100.0}, 1)}
    assert recent_wakes(entries, 105.0, recent=10) == ["web"]
    assert recent_wakes(entries, 105.0, recent=5) == []


# -- Alertmanager ------------------------------------------------------------------------------


def test_the_firing_alerts_with_a_service_label_name_their_services_once():
    payload = {
        "status": "firing",
        "alerts": [
            {"status": "firing", "labels": {"alertname": "HighLoad", "service": "web"}},
            {"status": "firing", "labels": {"alertname": "HighLatency", "service": "web"}},
            {"status": "resolved", "labels": {"alertname": "HighLoad", "service": "db"}},
            {"status": "firing", "labels": {"alertname": "NodeDown", "instance": "node-1"}},
            {"labels": {"alertname": "Backlog", "service": "queue"}},
            {"status": "firing", "labels": {"service": "api"}},
            {"status": "firing", "labels": {"service": 5}},
            {"status": "firing", "labels": None},
            {"status": "firing"},
        ],
    }
    assert alerted_services(payload) == ["web", "queue", "api"]


def test_a_notification_of_resolved_alerts_names_no_service():
    payload = {"status": "resolved", "alerts": [{"status": "resolved", "labels": {"service": "web"}}]}
    assert alerted_services(payload) == []
    assert alerted_services({"alerts": []}) == []


@pytest.mark.parametrize("payload", [None, [], "alerts", {}, {"alerts": None}, {"alerts": {"service": "web"}}])
def test_a_notification_that_is_not_one_is_refused(payload):
    with pytest.raises(SkynetError, match="Alertmanager notification"):
        alerted_services(payload)


@pytest.mark.parametrize("alert", ["web", None, 5, ["web"]])
def test_an_alert_that_is_not_a_mapping_is_refused_or_skipped(alert):
    payload = {"alerts": [alert, {"labels": {"service": "web"}}]}
    try:
        found = alerted_services(payload)
    except SkynetError:
        return
    assert found == ["web"]


# -- the command -------------------------------------------------------------------------------


def test_the_command_names_the_service_in_every_word():
    template = ["run", "{service}", "--limit={service}", "{service}-{service}.log", "plain"]
    assert command_for(template, "web") == ["run", "web", "--limit=web", "web-web.log", "plain"]
    assert template[1] == "{service}"  # the template is left as it was


def test_the_command_is_a_new_list():
    template = ["plain"]
    assert command_for(template, "web") == template
    assert command_for(template, "web") is not template


# -- Runner ------------------------------------------------------------------------------------


def test_a_trigger_runs_the_cycle_of_its_service(make_runner):
    run = Recorder()
    runner = make_runner(run)
    assert runner.trigger("web", "operator") is True
    runner.close()
    assert run.calls == ["web"]
    assert runner.counts == {"triggers": {"operator": 1}, "runs": {"ok": 1, "failed": 0}, "ignored": 0}
    assert idle(runner)


def test_triggers_during_a_run_coalesce_into_exactly_one_more_run(make_runner):
    run = Recorder(blocking=True)
    runner = make_runner(run)
    assert runner.trigger("web", "wake")
    assert run.started.wait(WAIT)
    for source in ("wake", "alert", "operator", "alert"):
        assert runner.trigger("web", source)
    run.release.set()
    wait_until(lambda: idle(runner))
    runner.close()
    assert run.services() == ["web", "web"]
    assert runner.counts["triggers"] == {"wake": 2, "alert": 2, "operator": 1}
    assert runner.counts["runs"] == {"ok": 2, "failed": 0}


def test_a_trigger_after_a_run_makes_a_new_run(make_runner):
    run = Recorder()
    runner = make_runner(run)
    runner.trigger("web", "wake")
    wait_until(lambda: idle(runner) and len(run.calls) == 1)
    runner.trigger("web", "wake")
    wait_until(lambda: idle(runner) and len(run.calls) == 2)
    assert run.services() == ["web", "web"]


def test_two_services_run_side_by_side(make_runner):
    both = threading.Barrier(2, timeout=WAIT)
    ran = []

    def run(service):
        both.wait()  # breaks (and the run fails) unless the other service runs at the same time
        ran.append(service)
        return True

    runner = make_runner(run)
    assert runner.trigger("web", "wake")
    assert runner.trigger("db", "alert")
    runner.close()
    assert sorted(ran) == ["db", "web"]
    assert runner.counts["runs"] == {"ok": 2, "failed": 0}


def test_parallel_bounds_the_runs_at_once(make_runner):
    at_once, most, lock = [0], [0], threading.Lock()

    def run(_service):
        with lock:
            at_once[0] += 1
            most[0] = max(most[0], at_once[0])
        time.sleep(0.02)
        with lock:
            at_once[0] -= 1
        return True

    runner = make_runner(run, parallel=1)
    for service in ("web", "db", "api"):
        assert runner.trigger(service, "operator")
    runner.close()
    assert most[0] == 1
    assert runner.counts["runs"]["ok"] == 3


@pytest.mark.parametrize("name", ["Web", "web_blue", "", "../web", "web/x", None, 5, "a" * 64])
def test_an_invalid_name_is_refused_and_counted(make_runner, name):
    run = Recorder()
    runner = make_runner(run)
    assert runner.trigger(name, "operator") is False
    runner.close()
    assert run.calls == []
    assert runner.counts == {"triggers": {}, "runs": {"ok": 0, "failed": 0}, "ignored": 1}


def test_a_service_not_watched_is_refused_and_counted(make_runner):
    run = Recorder()
    runner = make_runner(run, services=["web"])
    assert runner.trigger("db", "alert") is False
    assert runner.trigger("api", "operator") is False
    assert runner.trigger("web", "alert") is True
    runner.close()
    assert run.services() == ["web"]
    assert runner.counts["ignored"] == 2
    assert runner.counts["triggers"] == {"alert": 1}


def test_without_services_every_valid_name_is_watched(make_runner):
    run = Recorder()
    runner = make_runner(run, services=None)
    assert runner.trigger("anything", "operator")
    runner.close()
    assert run.services() == ["anything"]


def test_a_run_that_raises_is_counted_failed_and_later_triggers_still_run(make_runner):
    calls = []

    def run(service):
        calls.append(service)
        if len(calls) == 1:
            raise RuntimeError("ansible-playbook is not installed")
        return True

    runner = make_runner(run)
    assert runner.trigger("web", "wake")
    wait_until(lambda: idle(runner) and len(calls) == 1)
    assert runner.counts["runs"] == {"ok": 0, "failed": 1}
    assert runner.trigger("web", "wake")
    wait_until(lambda: idle(runner) and len(calls) == 2)
    assert runner.counts["runs"] == {"ok": 1, "failed": 1}


def test_a_run_that_raises_still_makes_the_run_asked_for_during_it(make_runner):
    started, release, calls = threading.Event(), threading.Event(), []

    def run(service):
        calls.append(service)
        if len(calls) == 1:
            started.set()
            assert release.wait(WAIT)
            raise OSError("fork failed")
        return True

    runner = make_runner(run)
    runner.trigger("web", "wake")
    assert started.wait(WAIT)
    runner.trigger("web", "alert")
    release.set()
    wait_until(lambda: idle(runner))
    assert len(calls) == 2
    assert runner.counts["runs"] == {"ok": 1, "failed": 1}


def test_a_run_that_says_it_failed_is_counted_failed(make_runner):
    runner = make_runner(Recorder(result=False))
    runner.trigger("web", "operator")
    runner.close()
    assert runner.counts["runs"] == {"ok": 0, "failed": 1}


def test_the_duration_of_the_last_run_is_kept(make_runner):
    ticks = iter([100.0, 107.5])
    runner = make_runner(Recorder(), clock=lambda: next(ticks))
    runner.trigger("web", "operator")
    runner.close()
    assert runner.last_seconds == {"web": 7.5}


def test_the_metrics_give_the_counters(make_runner):
    run = Recorder(blocking=True)
    runner = make_runner(run, services=["web", "db"])
    runner.trigger("web", "operator")
    assert run.started.wait(WAIT)
    runner.trigger("web", "alert")
    runner.trigger("nope", "operator")
    running = runner.metrics_text()
    run.release.set()
    wait_until(lambda: idle(runner))
    text = runner.metrics_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    for line in (
        'skynet_watcher_triggers_total{source="wake"} 0',
        'skynet_watcher_triggers_total{source="alert"} 1',
        'skynet_watcher_triggers_total{source="operator"} 1',
        'skynet_watcher_runs_total{result="failed"} 0',
        'skynet_watcher_runs_total{result="ok"} 2',
        "skynet_watcher_ignored_total 1",
        "skynet_watcher_running 0",
    ):
        assert line in lines
    assert "skynet_watcher_running 1" in running.splitlines()
    types = dict(line.split()[2:4] for line in lines if line.startswith("# TYPE"))
    assert types == {
        "skynet_watcher_triggers_total": "counter",
        "skynet_watcher_runs_total": "counter",
        "skynet_watcher_ignored_total": "counter",
        "skynet_watcher_running": "gauge",
    }
    helps = {line.split()[2] for line in lines if line.startswith("# HELP")}
    assert helps == set(types)


def test_a_runner_that_ran_nothing_gives_zero_counters(make_runner):
    lines = make_runner(Recorder()).metrics_text().splitlines()
    assert 'skynet_watcher_triggers_total{source="wake"} 0' in lines
    assert 'skynet_watcher_runs_total{result="ok"} 0' in lines
    assert "skynet_watcher_ignored_total 0" in lines
    assert "skynet_watcher_running 0" in lines


# -- cycles ------------------------------------------------------------------------------------


def test_a_command_cycle_runs_the_command_of_its_service_and_says_how_it_ended(tmp_path):
    out = tmp_path / "ran"
    assert CommandCycle(["sh", "-c", f"echo {{service}} > {out}"])("web") is True
    assert out.read_text() == "web\n"
    assert CommandCycle(["sh", "-c", "exit 3; : {service}"])("web") is False


def _alive(pid):
    """pid runs (a zombie, dead and not reaped yet, does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path):
    pids = tmp_path / "pids"
    start = time.monotonic()
    ok = CommandCycle(["sh", "-c", f"sleep 60 & echo $! > {pids}; wait; : {{service}}"], timeout=1)("web")
    assert ok is False and time.monotonic() - start < 10
    child = int(pids.read_text())
    wait_until(lambda: not _alive(child))


def test_a_resident_cycle_checks_its_arguments_as_the_module_does():
    cycle = ResidentCycle({"services": "web", "lock_wait": "soon"}, timeout=60)
    with pytest.raises(SkynetError, match=r"invalid skynet_scale arguments: .*lock_wait"):
        cycle.check()


def test_a_resident_cycle_that_cannot_run_is_a_failed_run_and_the_next_one_runs():
    # No service named web in the definitions: the cycle refuses the limit before it reads anything.
    cycle = ResidentCycle({"services": [], "consul_url": "http://127.0.0.1:1"}, token="s3cret", timeout=60)
    cycle.check()
    assert cycle("web") is False
    assert cycle("web") is False


# -- configuration -------------------------------------------------------------------------------

GOOD = {"consul_url": "http://127.0.0.1:8500", "services": ["web"]}


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({**GOOD}, "give either cycle"),
        ({**GOOD, "cycle": {"services": []}, "command": ["x", "{service}"]}, "give either cycle"),
        ({**GOOD, "cycle": ["services"]}, "cycle must be a mapping"),
        ({**GOOD, "cycle": {"services": [], "limit": ["web"]}}, "must not say limit"),
        ({**GOOD, "cycle": {"services": [], "consul_token": "t"}}, "consul_token"),
        ({**GOOD, "command": "ansible-playbook"}, "command must be a list of words"),
        ({**GOOD, "command": ["ansible-playbook"]}, "never says {service}"),
        ({**GOOD, "cycle": {"services": []}, "timeout": 0}, "timeout must be a number"),
        ({**GOOD, "cycle": {"services": []}, "timeout": "1m"}, "timeout must be a number"),
        ({**GOOD, "cycle": {"services": []}, "timeout": True}, "timeout must be a number"),
        ({"services": ["web"], "cycle": {"services": []}}, "consul_url is missing"),
        ({**GOOD, "services": ["Web"], "cycle": {"services": []}}, "services must be a list of service names"),
    ],
)
def test_a_configuration_that_says_no_one_cycle_is_refused_naming_the_problem(tmp_path, config, problem):
    path = tmp_path / "watcher.json"
    path.write_text(json.dumps(config))
    with pytest.raises(SkynetError, match=problem.replace("{", "\\{").replace("}", "\\}")):
        load(str(path))


@pytest.mark.parametrize("cycle", [{"cycle": {"services": []}, "timeout": 30}, {"command": ["run", "{service}"]}])
def test_a_resident_or_a_command_cycle_is_a_configuration(tmp_path, cycle):
    path = tmp_path / "watcher.json"
    path.write_text(json.dumps({**GOOD, **cycle}))
    config, token = load(str(path))
    assert config == {**GOOD, **cycle} and token is None
