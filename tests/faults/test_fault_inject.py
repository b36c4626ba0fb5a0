"""kshim.fault_inject's rules (lib/fault-inject.c semantics), seeds, spec
parser, fail-nth, enumerate mode and fail_function, in process.

Each test resets every point first; a test that draws random numbers names
its seed.
"""
from __future__ import annotations

import pytest

from kshim import fault_inject as fi
from kshim import sched
from kshim.err import EINVAL, ENOMEM
from kshim.fail_function import ALLOW_ERROR_INJECTION, EI_ETYPE_ERRNO
from kshim.fail_mempool import fail_mempool
from kshim.failslab import failslab
from kshim.fault_file import fail_file_read
from kshim.fault_inject_debugfs import debugfs_init
from kshim.fault_sched import fail_timer, fail_trylock
from kshim.fault_sock import fail_sock_recv, fail_sock_send


@pytest.fixture(autouse=True)
def clean_points():
    fi.fault_reset()
    yield
    fi.fault_reset()


def _draws(attr: fi.fault_attr, n: int) -> list[bool]:
    return [fi.should_fail(attr, 1) for _ in range(n)]


def test_should_fail_is_off_until_probability_is_set() -> None:
    assert not failslab.armed
    assert _draws(failslab, 100) == [False] * 100


def test_same_seed_fails_the_same_calls_seed_16001() -> None:
    fi.apply_fault_specs(["failslab:probability=30,times=-1,seed=16001,verbose=0"])
    first = _draws(failslab, 200)
    fi.fault_attr_set("failslab", "seed", "16001")
    assert _draws(failslab, 200) == first
    assert 20 < sum(first) < 100, sum(first)       # about 30% of 200
    fi.fault_attr_set("failslab", "seed", "16002")
    assert _draws(failslab, 200) != first


def test_times_bounds_the_failures_and_disarms_the_point() -> None:
    fi.apply_fault_specs(["fail_mempool:probability=100,times=3,verbose=0"])
    assert _draws(fail_mempool, 10) == [True] * 3 + [False] * 7
    assert fail_mempool.injected == 3
    assert not fail_mempool.armed


def test_interval_fails_every_nth_eligible_call() -> None:
    fi.apply_fault_specs(["fail_trylock:probability=100,interval=4,times=-1,verbose=0"])
    assert _draws(fail_trylock, 8) == [False, False, False, True] * 2


def test_space_lets_a_byte_budget_pass_before_failing() -> None:
    fi.apply_fault_specs(["fail_sock_send:probability=100,space=1000,times=-1,verbose=0"])
    a = fail_sock_send
    assert [fi.should_fail(a, 400) for _ in range(3)] == [False, False, True]


def test_task_filter_fails_only_marked_tasks() -> None:
    fi.apply_fault_specs(["failslab:probability=100,times=-1,task-filter=Y,verbose=0"])
    me = sched.current()
    # The idle task is not "in task" context for the filter unless marked.
    fi.set_make_it_fail(me, False)
    assert not fi.should_fail(failslab, 1)
    fi.set_make_it_fail(me, True)
    assert fi.should_fail(failslab, 1) == sched.in_task()


def _call_from_here() -> bool:
    return fi.should_fail(failslab, 1)


def test_require_and_reject_take_function_names() -> None:
    fi.apply_fault_specs(["failslab:probability=100,times=-1,verbose=0,"
                          "require-start=_call_from_here"])
    assert not fi.should_fail(failslab, 1)
    assert _call_from_here()
    fi.fault_attr_set("failslab", "reject-start", "test_require_and_reject_take_function_names")
    assert not _call_from_here()


def test_fail_nth_fails_exactly_the_nth_call_of_any_point() -> None:
    me = sched.current()
    fi.set_fail_nth(me, 3)
    got = [fi.should_fail(failslab, 1), fi.should_fail(fail_file_read, 1),
           fi.should_fail(fail_sock_recv, 1), fi.should_fail(failslab, 1)]
    assert got == [False, False, True, False]
    assert fail_sock_recv.injected == 1
    assert not failslab.armed


def test_enumerate_fails_each_recorded_site_once() -> None:
    def scenario() -> list[bool]:
        return [fi.should_fail(failslab, 1), fi.should_fail(fail_file_read, 1),
                fi.should_fail(failslab, 1)]
    fi.enumerate_record()
    assert scenario() == [False, False, False]
    sites = fi.enumerate_sites()
    assert len(sites) == 3, sites       # three call lines, three sites
    outcomes = []
    for s in sites:
        assert fi.enumerate_target(s.index) == 0
        outcomes.append(scenario())
    assert outcomes == [[True, False, False], [False, True, False], [False, False, True]]
    assert all(s.injected == 1 for s in fi.enumerate_sites())
    assert fi.enumerate_target(99) == -EINVAL


@ALLOW_ERROR_INJECTION(EI_ETYPE_ERRNO)
def _setup_path() -> int:
    return 0


def test_fail_function_returns_the_chosen_error_only_when_injected() -> None:
    fi.apply_fault_specs(["fail_function:probability=100,times=1,verbose=0"])
    assert _setup_path() == 0                     # armed but not in inject
    fi.apply_fault_specs(["fail_function:inject=_setup_path"])
    assert _setup_path() == -ENOMEM
    assert _setup_path() == 0                     # times=1 used up


@pytest.mark.parametrize("spec, why", [
    ("failslab", "expected POINT:attr=value"),
    ("nosuch:probability=1", "unknown point"),
    ("failslab:probabilty=1", "no attribute 'probabilty'"),
    ("failslab:probability=101", "must be 0..100"),
    ("failslab:probability", "is not attr=value"),
    ("fail_file_read:error=EBUSY", "must be one of"),
    ("fail_function:inject=no_such_fn", "not an injectable function"),
])
def test_bad_fault_spec_is_one_clear_error_and_changes_nothing(spec: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        fi.apply_fault_specs(["fail_timer:probability=5", spec])
    assert fail_timer.probability == 0          # the good spec was rolled back too


def test_dry_run_checks_without_applying() -> None:
    fi.apply_fault_specs(["failslab:probability=2,times=-1"], dry_run=True)
    assert failslab.probability == 0 and not failslab.armed


def test_env_specs_split_on_semicolons_and_spaces() -> None:
    assert fi.split_env_specs("failslab:probability=2 ;fail_sock_recv:times=-1") == [
        "failslab:probability=2", "fail_sock_recv:times=-1"]


def test_debugfs_files_read_and_write_the_points() -> None:
    from kshim.err import EINVAL as _EINVAL
    from kshim.sysfs import sysfs_listdir, sysfs_read, sysfs_write
    debugfs_init()
    names = {n for n, _ in sysfs_listdir("/kernel/debug")}
    assert {"failslab", "fail_page_alloc", "fail_sock_recv", "fail_file_read",
            "fail_function", "fault-inject"} <= names
    assert sysfs_write("/kernel/debug/failslab/probability", "7\n") == 2
    assert failslab.probability == 7 and failslab.armed
    assert sysfs_read("/kernel/debug/failslab/probability") == "7\n"
    assert sysfs_write("/kernel/debug/failslab/probability", "700") == -_EINVAL
    assert sysfs_write("/kernel/debug/failslab/task-filter", "Y") == 1
    assert sysfs_read("/kernel/debug/failslab/task-filter") == "Y\n"
    assert sysfs_write("/kernel/debug/fault-inject/enumerate", "record") == 6
    assert sysfs_read("/kernel/debug/fault-inject/enumerate") == "record\n"
    assert sysfs_write("/kernel/debug/fault-inject/enumerate", "nonsense") == -_EINVAL


def test_fail_nth_and_make_it_fail_leave_with_their_task() -> None:
    me = sched.current()
    fi.set_fail_nth(me, 5)
    fi.set_make_it_fail(me, True)
    fi._forget(me)                  # what the task's exit hook does
    assert fi.get_fail_nth(me) == 0 and not failslab.armed
    assert me not in fi.fault_state.make_it_fail
