"""Process figures (memory, CPU, threads, fds, disk) and a bounded latency estimator."""

from __future__ import annotations

import math
import os
import random
import threading
import time
from pathlib import Path
from typing import Optional

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_memory_limit(root: Path = CGROUP_ROOT) -> Optional[int]:
    """cgroup v2 ``memory.max`` in bytes, or None when absent or ``max``."""
    text = _read(root / "memory.max")
    if text is None or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def cgroup_cpu_allotment(root: Path = CGROUP_ROOT) -> Optional[float]:
    """cgroup v2 ``cpu.max`` as a number of CPUs (quota / period), or None when unlimited."""
    text = _read(root / "cpu.max")
    if text is None:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if period > 0 and quota > 0 else None


class ProcessFigures:
    """Reads this process's figures; ``cpu_ratio`` is the CPU time used since the previous
    reading divided by the wall time and the allotment (cgroup ``cpu.max``, else the core
    count)."""

    def __init__(self, disk_path: str = "/", cgroup_root: Path = CGROUP_ROOT) -> None:
        self.process = psutil.Process(os.getpid())
        self.disk_path = disk_path
        self.memory_limit = cgroup_memory_limit(cgroup_root) or psutil.virtual_memory().total
        self.cpu_allotment = cgroup_cpu_allotment(cgroup_root) or float(psutil.cpu_count() or 1)
        self._last_cpu = self._cpu_seconds()
        self._last_wall = time.monotonic()

    def _cpu_seconds(self) -> float:
        t = self.process.cpu_times()
        return float(t.user + t.system)

    def cpu_ratio(self) -> Optional[float]:
        cpu, wall = self._cpu_seconds(), time.monotonic()
        d_cpu, d_wall = cpu - self._last_cpu, wall - self._last_wall
        self._last_cpu, self._last_wall = cpu, wall
        if d_wall <= 0:
            return None
        return min(1.0, max(0.0, d_cpu / (d_wall * self.cpu_allotment)))

    def read(self) -> dict[str, object]:
        p = self.process
        out: dict[str, object] = {
            "memory_used_bytes": int(p.memory_info().rss),
            "memory_limit_bytes": int(self.memory_limit),
            "cpu_ratio": self.cpu_ratio(),
            "threads": int(p.num_threads()),
        }
        try:
            out["open_fds"] = int(p.num_fds())
        except (AttributeError, psutil.Error):
            out["open_fds"] = None
        try:
            out["disk_used_ratio"] = min(1.0, max(0.0, psutil.disk_usage(self.disk_path).percent / 100.0))
        except OSError:
            out["disk_used_ratio"] = None
        return out


class LatencyReservoir:
    """Latencies of one interval in a bounded reservoir (Vitter's algorithm R): percentiles
    without keeping every sample. ``add`` is a lock, a counter and at most one list write."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._samples: list[float] = []
        self._seen = 0
        self._lock = threading.Lock()
        self._random = random.Random()

    def add(self, value: float) -> None:
        with self._lock:
            self._seen += 1
            if len(self._samples) < self.capacity:
                self._samples.append(value)
            else:
                i = self._random.randrange(self._seen)
                if i < self.capacity:
                    self._samples[i] = value

    def drain(self) -> list[float]:
        """The samples kept since the last drain, sorted; the reservoir starts over."""
        with self._lock:
            samples, self._samples, self._seen = self._samples, [], 0
        samples.sort()
        return samples


def percentile(sorted_samples: list[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (q in 0..1) of sorted samples, None when there are none."""
    if not sorted_samples:
        return None
    rank = max(1, math.ceil(q * len(sorted_samples)))
    return sorted_samples[rank - 1]
