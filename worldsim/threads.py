"""``--threads N``: the torch CPU threads of any command that computes (one helper for all of them).

``worldsim.cli`` adds the flag to every command in :data:`COMMANDS` and applies it before the
command runs, so ``worldsim eval|play|serve|bench|record|train --threads 1`` leaves the other
cores to whatever else runs on the machine. Without it torch takes one thread per core.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

COMMANDS = ("record", "data-check", "train", "eval", "bench", "play", "serve")
"""The subcommands that run torch (record: its data diagnostic)."""


def single_threaded_numpy() -> None:
    """One OpenBLAS thread for numpy (``OPENBLAS_NUM_THREADS=1`` unless set), before numpy loads.

    numpy's BLAS serves small products: the recorder's 64x64 area resize is two of them per frame.
    Threaded, they cost 48 ms a CartPole frame when another process keeps a core busy (1.6 ms on
    one thread), so recording ran at 30 frames/s instead of 280. Torch's threads are separate
    (:func:`set_threads`). Without effect once numpy is imported (set the variable yourself then).
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def add_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads`` unless the command already has it."""
    if any("--threads" in a.option_strings for a in parser._actions):
        return
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: one per core)"
    )


def set_threads(n: int | None) -> None:
    """Use ``n`` torch CPU threads (None or 0: torch's default); ValueError for a negative count."""
    if not n:
        return
    if n < 0:
        raise ValueError(f"--threads must be >= 1, got {n}")
    import torch

    torch.set_num_threads(int(n))
    log.debug("torch uses %d CPU threads", n)


_TORCH_THREAD: ThreadPoolExecutor | None = None
_TORCH_THREAD_LOCK = threading.Lock()


def torch_thread() -> ThreadPoolExecutor:
    """The one thread that runs torch in a process that has several (``worldsim serve``, the gRPC
    bench): every served world's engine steps here, and the worlds are loaded here.

    Why one: torch's CPU kernels use OpenMP, and GNU libgomp gives every thread that starts a
    parallel region its own team of workers. Once a second team exists, libgomp counts more
    threads than cores and stops spinning between regions, so a batch-1 step (hundreds of tiny
    regions) runs at half speed: measured 22 -> 10 frames/s on the 2-core machine after any
    other thread had run one torch op. One torch thread per process keeps one team.
    """
    global _TORCH_THREAD
    with _TORCH_THREAD_LOCK:
        if _TORCH_THREAD is None:
            import torch

            # OpenMP's thread count is per thread: the new thread uses the creator's (``--threads``).
            n = torch.get_num_threads()
            _TORCH_THREAD = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="worldsim-torch", initializer=torch.set_num_threads, initargs=(n,)
            )
        return _TORCH_THREAD


def on_torch_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run on :func:`torch_thread` (directly when already there)."""
    if threading.current_thread().name.startswith("worldsim-torch"):
        return fn(*args, **kwargs)
    return torch_thread().submit(fn, *args, **kwargs).result()
