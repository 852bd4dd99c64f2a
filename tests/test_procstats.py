"""Instance CPU and memory from /proc: the numbers `endpoint metrics` shows per instance."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from modelyard.runtime.procstats import CpuMeter, process_stats

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_stats_of_this_process_show_its_memory():
    stats = process_stats(os.getpid())
    assert stats is not None
    assert stats["pid"] == os.getpid()
    assert stats["rss_mb"] > 1
    assert stats["pss_mb"] is None or 0 < stats["pss_mb"] <= stats["rss_mb"] + 1
    assert stats["threads"] >= 1


def test_cpu_seconds_grow_with_busy_work():
    before = process_stats(os.getpid())["cpu_seconds"]
    _spin(0.3)
    after = process_stats(os.getpid())["cpu_seconds"]
    assert after - before >= 0.2


def test_a_process_that_is_gone_has_no_stats():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_stats(child.pid) is None
    assert CpuMeter().sample(child.pid) is None
    assert process_stats(None) is None


def test_cpu_percent_of_a_busy_child_is_high_and_of_a_sleeping_one_low():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        meter = CpuMeter()
        time.sleep(0.2)
        meter.sample(busy.pid), meter.sample(idle.pid)
        time.sleep(1.0)
        assert meter.cpu_percent(busy.pid) > 50
        assert meter.cpu_percent(idle.pid) < 10
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()


def test_first_reading_is_the_average_since_start_and_quick_rereads_repeat_the_last():
    meter = CpuMeter(min_interval_s=5.0)
    _spin(0.2)
    first = meter.sample(os.getpid())
    assert first is not None and first["cpu_percent"] is not None and first["cpu_percent"] > 0
    _spin(0.2)
    assert meter.cpu_percent(os.getpid()) == first["cpu_percent"]
