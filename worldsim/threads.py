"""``--threads N``: the torch CPU threads of any command that computes (one helper for all of them).

``worldsim.cli`` adds the flag to every command in :data:`COMMANDS` and applies it before the
command runs, so ``worldsim eval|play|serve|bench|record|train --threads 1`` leaves the other
cores to whatever else runs on the machine. Without it torch takes one thread per core.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

COMMANDS = ("record", "data-check", "train", "eval", "bench", "play", "serve")
"""The subcommands that run torch (record: its data diagnostic)."""


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
