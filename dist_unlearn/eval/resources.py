"""Wall time and peak memory of a block of code.

    with measure_resources() as usage:
        result = unlearn(...)
    usage.as_dict()  # {"wall_time_s": ..., "peak_rss_bytes": ..., ...}

Peak host memory is the largest resident set size (RSS) of this process seen by a sampling thread (every
``interval`` seconds, plus at entry and exit), so a spike shorter than the interval can be missed. The
process-lifetime peak ``ru_maxrss`` cannot be reset, so it is only reported as ``max_rss_lifetime_bytes``.
On CUDA the allocator's exact peak (``torch.cuda.max_memory_allocated``, reset at entry) is reported too.
Memory of Ray worker processes is not included (the distributed engine reports its own).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident set size of this process now (``/proc/self/statm``, else psutil)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        import psutil

        return int(psutil.Process().memory_info().rss)


@dataclass
class ResourceUsage:
    """Measurements of one block (filled in when the block exits).

    Attributes:
        wall_time_s: elapsed wall-clock seconds (``time.perf_counter``).
        cpu_time_s: CPU seconds of this process (user + system, all threads).
        rss_start_bytes: RSS at entry.
        peak_rss_bytes: largest sampled RSS during the block.
        peak_rss_increase_bytes: ``peak_rss_bytes - rss_start_bytes``.
        max_rss_lifetime_bytes: ``ru_maxrss`` of the process (peak since it started).
        cuda_peak_allocated_bytes: peak CUDA memory allocated during the block, None without CUDA.
    """

    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    rss_start_bytes: int = 0
    peak_rss_bytes: int = 0
    peak_rss_increase_bytes: int = 0
    max_rss_lifetime_bytes: int = 0
    cuda_peak_allocated_bytes: int | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


class _Sampler(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(name="dist-unlearn-rss-sampler", daemon=True)
        self.interval = interval
        self.peak = current_rss_bytes()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.peak = max(self.peak, current_rss_bytes())


@contextmanager
def measure_resources(*, interval: float = 0.01, cuda: bool | None = None) -> Iterator[ResourceUsage]:
    """Measure wall time, CPU time and peak memory of the ``with`` block.

    Args:
        interval: seconds between RSS samples.
        cuda: also record the CUDA allocator peak (default: when CUDA is initialised and available).

    Yields:
        A :class:`ResourceUsage`, filled in when the block exits (also when it raises).
    """
    usage = ResourceUsage()
    use_cuda = torch.cuda.is_available() if cuda is None else cuda
    if use_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sampler = _Sampler(interval)
    usage.rss_start_bytes = sampler.peak
    cpu0, t0 = time.process_time(), time.perf_counter()
    sampler.start()
    try:
        yield usage
    finally:
        if use_cuda:
            torch.cuda.synchronize()
        usage.wall_time_s = time.perf_counter() - t0
        usage.cpu_time_s = time.process_time() - cpu0
        sampler.stop.set()
        sampler.join()
        usage.peak_rss_bytes = max(sampler.peak, current_rss_bytes())
        usage.peak_rss_increase_bytes = usage.peak_rss_bytes - usage.rss_start_bytes
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        usage.max_rss_lifetime_bytes = int(maxrss if sys.platform == "darwin" else maxrss * 1024)
        if use_cuda:
            usage.cuda_peak_allocated_bytes = int(torch.cuda.max_memory_allocated())
