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
