"""Worker processes that never outlive the run that started them, and torch's thread count.

A ``ProcessPoolExecutor`` worker waits on its task queue forever: when the parent is killed with
SIGKILL it has no chance to shut the pool down, and the workers stay behind as orphans. Each worker
made here watches its parent and exits as soon as it is gone, however the run ended.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ProcessPoolExecutor

import torch

PARENT_POLL_SECONDS = 0.5


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool of ``workers`` processes that exit within a second of their parent's death."""
    return ProcessPoolExecutor(workers, initializer=_exit_with_parent)


def _exit_with_parent() -> None:
    # The parent is whichever process forked this one (ours, or a fork server that exits with ours);
    # an orphan is adopted by another process, so a changed parent id means the parent is gone.
    parent = os.getppid()

    def watch() -> None:
        while True:
            threading.Event().wait(PARENT_POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="molgen-parent-watch", daemon=True).start()


def set_threads(threads: int | None = None) -> int:
    """Give torch ``threads`` intra-op threads (default: every core this process may run on) and
    return the count. The CLI also makes idle OpenMP threads sleep instead of spin (see
    ``molgen.cli``): spinning threads are what starve a run on a machine shared with other jobs."""
    count = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    torch.set_num_threads(count)
    return count
