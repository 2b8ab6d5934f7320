import os
import threading
import time

import psutil
import pytest

from pulsewatch_emitter.figures import (
    LatencyReservoir,
    ProcessFigures,
    cgroup_cpu_allotment,
    cgroup_memory_limit,
    percentile,
)


def test_process_figures_match_psutil():
    figures = ProcessFigures()
    me = psutil.Process(os.getpid())
    read = figures.read()
    rss = me.memory_info().rss
    # Tolerance: 5 % of the resident size (the two readings are a few microseconds apart).
    assert abs(read["memory_used_bytes"] - rss) <= 0.05 * rss
    assert read["memory_limit_bytes"] > 0
    assert abs(read["threads"] - me.num_threads()) <= 1
    assert abs(read["open_fds"] - me.num_fds()) <= 2
    assert abs(read["disk_used_ratio"] - psutil.disk_usage("/").percent / 100) <= 0.01


def test_cpu_ratio_follows_the_cpu_time_used():
    figures = ProcessFigures()
    figures.cpu_allotment = 1.0
    time.sleep(0.5)
    idle = figures.cpu_ratio()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        pass
    busy = figures.cpu_ratio()
    assert idle is not None and busy is not None
    assert idle < 0.3
    assert busy > 0.6
    assert 0.0 <= busy <= 1.0


def test_cgroup_v2_limits(tmp_path):
    assert cgroup_memory_limit(tmp_path) is None
    assert cgroup_cpu_allotment(tmp_path) is None
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_memory_limit(tmp_path) is None
    assert cgroup_cpu_allotment(tmp_path) is None
    (tmp_path / "memory.max").write_text("536870912\n")
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_memory_limit(tmp_path) == 536870912
    assert cgroup_cpu_allotment(tmp_path) == pytest.approx(1.5)
    figures = ProcessFigures(cgroup_root=tmp_path)
    assert figures.memory_limit == 536870912
    assert figures.cpu_allotment == pytest.approx(1.5)


def test_latency_reservoir_is_bounded_and_estimates_percentiles():
    reservoir = LatencyReservoir(capacity=512)

    def feed() -> None:
        for i in range(10_000):
            reservoir.add(float(i % 1000))

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    samples = reservoir.drain()
    assert len(samples) == 512
    assert percentile(samples, 0.95) == pytest.approx(950, abs=60)
    assert reservoir.drain() == []
    assert percentile([], 0.99) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
