"""rollout.engine_cpus: parsing, the split between the engine core and the worker, pinning a real process's threads."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rollout.cpu_pinning import parse_cpus, pin_process, split_cpus


def test_cpu_lists_and_ranges_parse_to_sets():
    assert parse_cpus("0") == {0}
    assert parse_cpus("0,2") == {0, 2}
    assert parse_cpus(" 1-3, 6 ") == {1, 2, 3, 6}


@pytest.mark.parametrize("spec", ["a", "1-", "3-1", "-2", ",", "0.5"])
def test_a_bad_cpu_list_names_the_key_and_the_part(spec):
    with pytest.raises(ValueError, match="rollout.engine_cpus"):
        parse_cpus(spec)


def test_the_engine_gets_its_cpus_and_the_worker_the_rest():
    assert split_cpus({0}, {0, 1, 2, 3}) == ({0}, {1, 2, 3})


def test_engine_cpus_outside_the_allowed_set_or_all_of_it_are_refused():
    with pytest.raises(ValueError, match=r"CPUs \[4\] are not among"):
        split_cpus({3, 4}, {0, 1, 2, 3})
    with pytest.raises(ValueError, match="leaves no CPU for the worker"):
        split_cpus({0, 1}, {0, 1})


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell a pinned thread apart")
def test_every_thread_of_a_running_process_is_pinned():
    allowed = sorted(os.sched_getaffinity(0))
    threads = "import threading, time; [threading.Thread(target=time.sleep, args=(30,), daemon=True).start() " \
              "for _ in range(3)]; print('up', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", threads], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        assert pin_process(proc.pid, {allowed[-1]}) == 4  # the main thread and its three
        tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        assert all(os.sched_getaffinity(t) == {allowed[-1]} for t in tids)
    finally:
        proc.kill()
        proc.wait()
    assert pin_process(proc.pid, {allowed[0]}) == 0  # a process that ended: nothing to pin, no error
