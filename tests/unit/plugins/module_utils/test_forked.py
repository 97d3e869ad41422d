from __future__ import annotations

import operator
import os
import time

import pytest
from ansible_collections.cyberdyne.skynet.plugins.module_utils._forked import Forked, ForkedError

# The calls are of the standard library: a child finds a function by its module and name.


@pytest.fixture(scope="module")
def forked():
    f = Forked(["json"], timeout=3)
    assert f.start() == []
    return f


def test_the_server_preloads_modules_found_on_the_callers_path_and_says_which_it_could_not():
    # A module of this collection, found through the caller's sys.path (pytest's pythonpath), not PYTHONPATH.
    ours = "ansible_collections.cyberdyne.skynet.plugins.module_utils._demand"
    assert Forked([ours, "no_such_module_anywhere"], timeout=30).start() == ["no_such_module_anywhere"]


def test_a_call_gives_its_value(forked):
    assert forked.call(operator.add, 2, 3) == 5
    assert forked.call(sorted, [3, 1, 2]) == [1, 2, 3]


def test_a_call_runs_in_another_process(forked):
    assert forked.call(os.getpid) != os.getpid()


def test_a_call_that_raises_names_the_error_with_its_traceback(forked):
    with pytest.raises(ForkedError, match=r"(?s)int raised: Traceback .*ValueError: invalid literal"):
        forked.call(int, "x")


def test_a_call_whose_process_dies_is_an_error_with_its_exit_code(forked):
    with pytest.raises(ForkedError, match=r"the process of _exit died \(exit code 3\)"):
        forked.call(os._exit, 3)


def test_a_call_past_its_deadline_is_killed_and_the_next_call_runs(forked):
    start = time.monotonic()
    with pytest.raises(ForkedError, match=r"sleep did not end within 3s: its process was killed"):
        forked.call(time.sleep, 60)
    assert time.monotonic() - start < 10
    assert forked.call(operator.mul, 6, 7) == 42


def test_calls_after_failures_still_run(forked):
    for function, args in ((int, ("x",)), (os._exit, (1,))):
        with pytest.raises(ForkedError):
            forked.call(function, *args)
    assert forked.call(operator.add, 1, 1) == 2
