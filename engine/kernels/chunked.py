"""Element-wise numpy work in cache-sized chunks, spread over a small thread pool.

A kernel that makes several passes over a large array (cast, scale, round, clamp, store) runs them
chunk by chunk, so that each pass reads what the previous one left in the core's cache instead of
main memory. numpy releases the GIL inside its loops, so large arrays also split over threads;
small ones stay on the calling thread, where a thread hand-off would cost more than it saves.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import pathlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

# Elements per chunk. Each numpy call costs ~1 us of Python overhead and a kernel makes up to ten
# per chunk, so chunks are large; their buffers (a few per kernel, 512 KB each as float32) still
# stay in L2/L3 cache. Measured on the 4M-element QuantizeV2/Dequantize benchmarks: 2^16 spends
# ~10% more time than 2^17-2^18.
CHUNK = 1 << 17
# Below this many elements one thread does the work.
PARALLEL_MIN = 1 << 18


def usable_cpus(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container limited to two of the host's 64 cores has `os.cpu_count()` 64)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, period = pathlib.Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


THREADS = min(4, usable_cpus())

# Multiply-adds below which a matrix product runs on one BLAS thread. OpenBLAS hands products far
# smaller to all its threads; a hand-off costs more than it saves there, and on a shared machine,
# where the second thread waits for a core, far more (and its idle threads spin on, taking the
# core from the thread that has work). Measured with numpy's OpenBLAS on 2 busy cores: 1.8M
# multiply-adds 0.08 ms on one thread, 12-20 ms on two; 32M (a Basic Pitch convolution's GEMM)
# 2.8 ms, 16 ms; 134M 3.2 ms, 17 ms; 1.07G 65-94 ms, 47-55 ms: two win from a few 1e8.
# Calibrating Basic Pitch (whole command): 1.4-2.3 s at 2^24, 0.9-1.4 s on one thread.
GEMM_PARALLEL_MIN = 1 << 28

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_local = threading.local()
_filled: dict[tuple, np.ndarray] = {}


def _forget_pool() -> None:
    """In a forked child: the parent's threads are not there, so the pool starts anew when needed."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def for_chunks(n: int, worker: Callable[[], Callable[[int, int], None]],
               chunk: int | None = None) -> None:
    """Run step(start, stop) over [0, n) in chunks, on several threads when n is large.

    `worker()` is called once per thread and returns that thread's `step`, so that it can set up
    its work buffers once rather than per chunk. A step must only write its own part of the
    output. Floating-point warnings are silenced: NaN and infinity flow through as in
    TensorFlow's kernels.
    """
    chunk = chunk or CHUNK
    count = -(-n // chunk)
    if n == 0:      # an empty tensor: no step would see an element (and a min() of none fails)
        return
    if n < PARALLEL_MIN or THREADS == 1 or count < 2:
        with np.errstate(all="ignore"):
            step = worker()
            for start in range(0, n, chunk):
                step(start, min(start + chunk, n))
        return
    job = _Job(worker, n, chunk, count)
    for _ in range(min(THREADS, count) - 1):
        _executor().submit(job.work)
    job.work()              # the calling thread works too, and may well do it all
    job.finished.wait()
    if job.error is not None:
        raise job.error


class _Job:
    """Chunks handed out one at a time to whichever thread asks next.

    On a shared machine a helper thread may not get a core for a whole scheduler time slice; the
    other threads then take its chunks instead of waiting for it, and nobody waits for a helper
    that has not started (it finds no chunks left and returns).
    """

    def __init__(self, worker, n: int, chunk: int, count: int):
        self.worker, self.n, self.chunk, self.count = worker, n, chunk, count
        self.next = itertools.count()          # next() is atomic under the GIL
        self.lock = threading.Lock()
        self.done = 0
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def work(self) -> None:
        step = None
        with np.errstate(all="ignore"):       # errstate is per thread
            while (index := next(self.next)) < self.count:
                try:
                    if self.error is None:
                        step = step or self.worker()
                        start = index * self.chunk
                        step(start, min(start + self.chunk, self.n))
                except BaseException as error:  # noqa: BLE001  (re-raised by the caller)
                    self.error = error
                finally:
                    with self.lock:
                        self.done += 1
                        if self.done == self.count:
                            self.finished.set()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(THREADS - 1, 1),
                                       thread_name_prefix="gtt-kernels")
        return _pool


def buffer(dtype, total: int, slot: int = 0) -> np.ndarray:
    """A work buffer for chunks of an array of `total` elements (slice it to each chunk's length).

    Buffers are the calling thread's own and live on between calls (one per dtype and `slot`;
    a worker asking for two of one dtype gives them different slots): freshly allocated memory
    costs a page fault per 4 KB page on first touch, which on a busy VM is as slow as the work.
    """
    dtype = np.dtype(dtype)
    size = max(1, min(CHUNK, total))
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    array = buffers.get((dtype, slot))
    if array is None or array.size < size:
        array = buffers[(dtype, slot)] = np.empty(max(size, min(CHUNK, 1 << 16)), dtype=dtype)
    return array[:size]


def scratch(shape, dtype, slot: str) -> np.ndarray:
    """A temporary array of `shape` (uninitialized), reusing the calling thread's memory for
    `slot` from earlier calls, as `buffer` does, when it is at most 64 MB."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    if size * dtype.itemsize > 64 << 20:
        return np.empty(shape, dtype)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    array = buffers.get((dtype, slot))
    if array is None or array.size < size:
        array = buffers[(dtype, slot)] = np.empty(size, dtype=dtype)
    return array[:size].reshape(shape)


def filled(value, dtype, total: int) -> np.ndarray:
    """A read-only array of copies of value, long enough for every chunk of an array of `total`
    elements (slice it to each chunk's length).

    numpy's maximum/minimum/fmax/fmin run their SIMD loops only when both operands are contiguous
    arrays; with a scalar operand they are several times slower than the arithmetic around them.
    """
    dtype = np.dtype(dtype)
    scalar = np.asarray(value, dtype=dtype)
    size = max(1, min(CHUNK, total))
    key = (dtype, scalar.tobytes())
    array = _filled.get(key)
    if array is None or array.size < size:
        if len(_filled) > 64:
            _filled.clear()
        array = np.full(size, scalar, dtype=dtype)
        array.flags.writeable = False
        _filled[key] = array
    return array


_blas_libraries: list | None = None


def matmul(a: np.ndarray, b: np.ndarray, **kwargs) -> np.ndarray:
    """np.matmul(a, b, **kwargs) of two matrices, on one BLAS thread when the product has fewer
    than GEMM_PARALLEL_MIN multiply-adds."""
    global _blas_libraries
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] * a.shape[1] * b.shape[-1] >= GEMM_PARALLEL_MIN:
        return np.matmul(a, b, **kwargs)
    if _blas_libraries is None:
        _blas_libraries = openblas_libraries()
    before = [library.get_num_threads() for library in _blas_libraries]
    for library in _blas_libraries:
        library.set_num_threads(1)
    try:
        return np.matmul(a, b, **kwargs)
    finally:
        for library, threads in zip(_blas_libraries, before):
            library.set_num_threads(threads)


class _OpenBlas:
    """The thread count of one loaded OpenBLAS, through the functions it exports for that."""

    def __init__(self, get, set_):
        self.get_num_threads = get
        set_.argtypes = [ctypes.c_int]
        self.set_num_threads = set_


def openblas_libraries() -> list[_OpenBlas]:
    """Every OpenBLAS this process has loaded (numpy's wheels bundle one, its symbols prefixed
    `scipy_openblas_` and suffixed `64_` for 64-bit ints); none where another BLAS is used, or
    where /proc/self/maps does not tell (outside Linux): products then keep the BLAS's threads."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = sorted({line.split(None, 5)[5].strip() for line in maps
                            if line.count(" ") >= 5 and "openblas" in line.rsplit("/", 1)[-1].lower()})
    except (OSError, IndexError):
        return []
    found = []
    for path in paths:
        try:
            library = ctypes.CDLL(path)     # already loaded: this only takes another reference
        except OSError:
            continue
        for prefix, suffix in itertools.product(("scipy_openblas_", "openblas_"), ("64_", "")):
            get = getattr(library, f"{prefix}get_num_threads{suffix}", None)
            set_ = getattr(library, f"{prefix}set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                found.append(_OpenBlas(get, set_))
                break
    return found


def use_one_thread() -> None:
    """Run every kernel of this process on the calling thread, BLAS products too: for a worker
    process, when as many workers as cores share the work."""
    global THREADS, _blas_libraries
    THREADS = 1
    for library in openblas_libraries():
        library.set_num_threads(1)
    _blas_libraries = []        # each product then has no thread count to switch
