"""``worldsim blend``: a world whose denoiser is a weighted average of two fine-tunes of one world.

Two fine-tunes that start from the same world stay in one basin of the loss, and the straight line
between their weights is usually a path of working networks (WiSE-FT, model soups). When two
fine-tunes err on opposite sides (on CartPole: Self Forcing holds the pole up too long, the
teacher-trained world lets it fall too soon), a point on that line can be closer to the real game
than either end, for no training at all::

    worldsim blend envs/cartpole/cartpole.safetensors runs/cartpole/sf/world.safetensors --weight 0.2 \
        --out blended.safetensors

The output's denoiser is ``(1 - weight) * A + weight * B`` (every floating-point tensor, the heads
included, computed in float64); everything else is A's: the codec (which must be byte-identical in
both, i.e. the same codec under both fine-tunes), the sampler, the reset context and start clips.
The heads are averaged like the rest, so re-fit them on the result (``worldsim train --stage heads``)
before trusting its episode ends. The provenance keeps A's history and gains a ``blend`` entry with
B's path, digest, weight and B's own provenance, so the file says how it was made.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from worldsim import checkpoint as ckpt

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("world", type=Path, help="world A (.safetensors): its sampler, context and codec are kept")
    parser.add_argument(
        "other", type=Path, help="world B: a fine-tune of the same world (same codec and denoiser shape)"
    )
    parser.add_argument("--weight", type=float, required=True, help="B's share in [0, 1]: 0 is A, 1 is B's denoiser")
    parser.add_argument("--out", type=Path, required=True, help="where to write the blended world")


def blend_tensors(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], weight: float, names: tuple[str, str] = ("A", "B")
) -> tuple[dict[str, torch.Tensor], int]:
    """A's tensors with every floating-point ``denoiser.*`` tensor replaced by (1 - w) A + w B.

    Every other tensor (codec, start clips, integer buffers) must be equal in both; returns the
    new tensors and how many were blended. Raises :class:`~worldsim.checkpoint.CheckpointError`
    naming the first difference.
    """
    if isinstance(weight, bool) or not math.isfinite(weight) or not 0.0 <= weight <= 1.0:
        raise ValueError(f"--weight must be a number in [0, 1] (B's share), got {weight!r}")
    na, nb = names
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ckpt.CheckpointError(
            f"{na} and {nb} have different tensors ({', '.join(only[:3])}): not the same kind of world"
        )
    out: dict[str, torch.Tensor] = {}
    blended = 0
    for name, ta in a.items():
        tb = b[name]
        if tuple(ta.shape) != tuple(tb.shape) or ta.dtype != tb.dtype:
            raise ckpt.CheckpointError(
                f"{name}: {na} has {tuple(ta.shape)} {ta.dtype}, {nb} {tuple(tb.shape)} {tb.dtype}: "
                "only fine-tunes of one world (same architecture) can be blended"
            )
        if name.startswith("denoiser.") and ta.is_floating_point():
            out[name] = ((1.0 - weight) * ta.double() + weight * tb.double()).to(ta.dtype)
            blended += 1
        elif torch.equal(ta, tb):
            out[name] = ta
        else:
            part = name.split(".")[0]
            raise ckpt.CheckpointError(
                f"{name} differs between {na} and {nb}: only the denoiser is blended, so the {part} must be the "
                "same in both (fine-tune both from one world, or re-train one on the other's codec)"
            )
    return out, blended


def main(args: argparse.Namespace) -> int:
    from worldsim.engine.world import read_world_file

    (ta, ma, ca), (tb, mb, cb) = (read_world_file(path) for path in (args.world, args.other))
    for field in ("denoiser", "codec", "action_space"):
        if getattr(ca, field) != getattr(cb, field):
            raise SystemExit(
                f"worldsim blend: {args.world} and {args.other} have different {field} configs: "
                "only fine-tunes of one world can be blended"
            )
    try:
        tensors, n = blend_tensors(ta, tb, args.weight, names=(str(args.world), str(args.other)))
    except ValueError as e:  # CheckpointError is a ValueError too: both are the user's to fix
        raise SystemExit(f"worldsim blend: {e}") from e
    provenance: dict[str, Any] = dict(ma.get("provenance", {}))
    provenance[ckpt.provenance_key(provenance, "blend")] = {
        "with": str(args.other),
        "weight": args.weight,
        "with_sha256": mb.get(ckpt.HASH_KEY),
        "base_sha256": ma.get(ckpt.HASH_KEY),
        "tensors_blended": n,
        "with_provenance": mb.get("provenance", {}),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    ckpt.save_file(args.out, tensors, ca, provenance)
    log.info(
        "wrote %s: %d denoiser tensors at %.3g x %s + %.3g x %s",
        args.out,
        n,
        1 - args.weight,
        args.world,
        args.weight,
        args.other,
    )
    return 0
