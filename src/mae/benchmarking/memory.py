"""Peak memory of a measured region (model, optimizer state, activations), in MiB.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated at the
start (tensors only; the caching allocator's reserve is not counted).

CPU: the process's resident-set high-water mark (``VmHWM`` of ``/proc/self/status``) minus the resident set at
the start, after freed heap memory was handed back to the system (``malloc_trim``) and the high-water mark was
reset (writing ``5`` to ``/proc/self/clear_refs``, Linux >= 4.0). This measures each region on its own even when
regions run one after another in one process. Where the mark cannot be reset, ``ru_maxrss`` is used instead;
it never decreases, so a region smaller than an earlier one reads as 0 (``method`` says which was used).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import resource
from pathlib import Path
from types import TracebackType

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager: ``peak_mb`` is the region's peak memory once it exits; ``method`` names the measure."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0
        self.method = ""
        self._start = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "cuda.max_memory_allocated"
            return self
        _trim_heap()
        rss = _status_kib("VmRSS")
        if rss is not None and _reset_high_water_mark():
            self._start, self.method = rss * 1024, "VmHWM-after-reset"
        else:
            self._start, self.method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss-delta"
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "VmHWM-after-reset":
            peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_mb = max(peak - self._start, 0) / 2**20
