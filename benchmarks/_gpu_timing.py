"""Timing a run on a GPU: the device drained at the ends of a window of steps, the share of it with no kernel
running (a CUDA-activity profile), and peak memory. Used by ``benchmarks/gpu.py``."""

from __future__ import annotations

import gc
import math
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepWindow:
    """Wall time per step and the share of it with no kernel on the GPU, over steps (first, last].

    Called after every optimizer step. At ``first`` the device is drained and a CUDA-activity profiler
    started; at ``last`` drained again and stopped. Kernel intervals are merged, so overlapping streams count
    once. Without CUDA only the wall time is measured.
    """

    def __init__(self, device: torch.device, first: int, last: int):
        self.device, self.first, self.last = device, first, last
        self.profiler, self.started = None, None
        self.ms_per_step: float | None = None
        self.idle_share: float | None = None
        self.error: str | None = None

    def __call__(self, step: int, *_):
        if step == self.first:
            sync(self.device)
            if self.device.type == "cuda":
                try:
                    self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
                    self.profiler.start()
                except Exception as error:  # a machine without CUPTI still gives the wall time
                    self.profiler, self.error = None, f"{type(error).__name__}: {error}"
            self.started = time.perf_counter()
        elif step == self.last and self.started is not None:
            sync(self.device)
            wall = time.perf_counter() - self.started
            self.ms_per_step = 1000 * wall / (self.last - self.first)
            if self.profiler is not None:
                self.profiler.stop()
                busy = busy_seconds(self.profiler)
                if busy > 0:
                    self.idle_share = max(0.0, 1 - busy / wall)
                else:  # no kernel events recorded: say so rather than report a GPU idle all the time
                    self.error = "the profiler recorded no CUDA kernels"


def busy_seconds(profiler) -> float:
    """Seconds in which at least one kernel, copy or memset ran on the GPU."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in profiler.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
    busy, end = 0.0, -math.inf
    for start, stop in spans:
        if start > end:
            busy += stop - start
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
    return busy / 1e6  # microseconds


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    gc.collect()  # a finished run's optimizer and activations, before the next run's peak is measured
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
