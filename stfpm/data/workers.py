"""Data-loading worker processes that never outlive the process that started them.

A worker forked by a DataLoader notices a dead parent only at its next poll, and then, at exit, waits for a queue
thread that can never finish: a predict.py killed by a scheduler (SIGKILL, out of memory, preemption) would leave
its workers behind for good, each holding its share of memory. On Linux each worker asks the kernel to kill it when
its parent dies; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the parent died before the request took effect
        os._exit(1)


def worker_init(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: the worker dies with its parent; then Lightning's seeding of the worker,
    where ``seed_everything(workers=True)`` asked for it (Lightning adds it only to loaders without one)."""
    _die_with_parent()
    if os.environ.get("PL_SEED_WORKERS") == "1":
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
