"""``worldsim grow``: a deeper world that starts as exactly the same function (block expansion).

Training a bigger world from scratch costs hours on a CPU; growing a trained one keeps what it
knows. New transformer blocks are inserted at even intervals, each a copy of the block before it
with its residual gates zeroed (the rows of its adaLN-Zero ``ada`` layer that produce the
attention and MLP gates): a gated-off block adds exactly zero, so the grown world makes the same
frames as the original, bit for bit, and the copy's weights give the gates a useful
gradient from the first step of a fine-tune (LLaMA Pro's block expansion; DiT's adaLN-Zero init)::

    worldsim grow envs/cartpole/cartpole.safetensors --depth 8 --out grown.safetensors
    worldsim train cartpole --stage finetune --init grown.safetensors --data data/cartpole ...

Everything but the denoiser's block list is kept (codec, heads, sampler, start clips). A deeper
denoiser costs proportionally more per pass: measure with ``worldsim bench FILE``. The
provenance gains a ``grow`` entry (old and new depth, where the copies went).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from worldsim import checkpoint as ckpt

log = logging.getLogger(__name__)

PREFIX = "denoiser.blocks."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("world", type=Path, help="the world to grow (.safetensors)")
    parser.add_argument("--depth", type=int, required=True, help="the new number of transformer blocks (> current)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the grown world")


def insertion_plan(depth: int, new_depth: int) -> list[int]:
    """For each block of the grown denoiser, the index of the old block it copies.

    The ``new_depth - depth`` copies (at most one per block) go after evenly spaced old blocks,
    the last one included: 6 -> 8 gives ``[0, 1, 2, 2, 3, 4, 5, 5]``."""
    if depth < 1 or not depth < new_depth <= 2 * depth:
        raise ValueError(
            f"--depth must be more than the world's {depth} blocks and at most twice that, got {new_depth} "
            "(grow in rounds, fine-tuning between them, to go further)"
        )
    extra = new_depth - depth
    after = {(i + 1) * depth // extra - 1 for i in range(extra)}  # distinct, since extra <= depth
    plan: list[int] = []
    for i in range(depth):
        plan += [i, i] if i in after else [i]
    return plan


def grow_tensors(tensors: dict[str, torch.Tensor], dim: int, plan: list[int]) -> dict[str, torch.Tensor]:
    """The world's tensors with ``denoiser.blocks.*`` rebuilt by ``plan``; a block repeated in the
    plan is gated off in its second and later copies (its ``ada`` gate rows zeroed)."""
    out = {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}
    seen: set[int] = set()
    for new, old in enumerate(plan):
        copy = old in seen
        seen.add(old)
        src = f"{PREFIX}{old}."
        names = [k for k in tensors if k.startswith(src)]
        if not names:
            raise ckpt.CheckpointError(f"the world has no block {old}: its denoiser is not the depth it says")
        for name in names:
            t = tensors[name].clone()
            if copy and name.endswith((".ada.weight", ".ada.bias")):
                # ada's output is (shift1, scale1, gate1, shift2, scale2, gate2), each dim wide
                t[2 * dim : 3 * dim] = 0
                t[5 * dim : 6 * dim] = 0
            out[f"{PREFIX}{new}." + name[len(src) :]] = t
    return out


def main(args: argparse.Namespace) -> int:
    from worldsim.engine.world import read_world_file

    tensors, meta, config = read_world_file(args.world)
    den = config.denoiser
    try:
        plan = insertion_plan(den.depth, args.depth)
        grown = grow_tensors(tensors, den.dim, plan)
    except ValueError as e:  # CheckpointError too
        raise SystemExit(f"worldsim grow: {e}") from e
    new_config = dataclasses.replace(config, denoiser=dataclasses.replace(den, depth=args.depth))
    provenance: dict[str, Any] = dict(meta.get("provenance", {}))
    provenance[ckpt.provenance_key(provenance, "grow")] = {
        "from": str(args.world),
        "from_sha256": meta.get(ckpt.HASH_KEY),
        "depth": [den.depth, args.depth],
        "copies_of": plan,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    ckpt.save_file(args.out, grown, new_config, provenance)
    log.info("wrote %s: %d -> %d blocks (copies of %s, gated off)", args.out, den.depth, args.depth, plan)
    return 0
