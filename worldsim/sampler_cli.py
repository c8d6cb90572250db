"""``worldsim sampler``: show a world file's sampler, or write the file with sampler fields changed.

``worldsim eval --sampler FIELD=VALUE`` measures a sampler without touching the file; once a value
wins (CartPole's action guidance, say), this bakes it in, so every surface (play, the Gymnasium
envs, the server) samples with it::

    worldsim sampler runs/cartpole/finetune/world.safetensors                  # show
    worldsim sampler runs/cartpole/finetune/world.safetensors --set guidance_scale=1.5 --out tuned.safetensors

The weights are copied byte for byte (verified first); the file's provenance gains a
``sampler`` entry (``sampler-2`` for a second change, ...) with the old and the new values.

``--context-frames N --data DIR`` changes how many real frames a session starts from (the
world's reset context, ``WorldConfig.context_frames``) and replaces its start clips by the first N
frames of DIR's recorded episodes (validation then training episodes, as training picks them); a
``context`` provenance entry records it. More context lets the world read velocities off more
frames; it needs no training when the world was trained on clips longer than N (the causal
denoiser has seen every position up to its cache's capacity)::

    worldsim sampler envs/cartpole/cartpole.safetensors --context-frames 4 --data data/cartpole --out ctx4.safetensors

``--cache-window N`` keeps N past frames in the rolling KV cache instead of the trained window
(``CacheConfig.window``): a frame attends over ``N + 1`` frames of keys, so a smaller window is a
cheaper frame. It needs no training when N is at most the window the world was trained with: a
causal denoiser trained on clips of ``window + 1`` frames has seen every frame of a clip attend
over 1 .. window past frames, and a full cache of N frames looks to it like frame N + 1 of a clip.
What it costs in prediction and control is a question for ``worldsim eval``; a ``cache`` provenance
entry records the change (and the trained window, which bounds later changes)::

    worldsim sampler envs/cartpole/cartpole.safetensors --cache-window 3 --out cartpole-w3.safetensors

``--term-threshold P`` sets the termination probability above which a frame ends the episode
(``WorldConfig.term_threshold``, 0.5 unless changed; every step reports the probability as
``StepResult.p_terminated``). Lower ends episodes sooner; measure it with ``worldsim eval`` first
(CartPole at 0.4: the ends timed 77.1% of 800 against 76.4% at 0.5, its card). A ``threshold``
provenance entry records the change::

    worldsim sampler envs/cartpole/cartpole.safetensors --term-threshold 0.4 --out cartpole-t40.safetensors

``--term-window N`` makes the end rule read the row's last N frames: a frame ends the episode
when ``1 - prod(1 - p)`` over them is above the threshold (``WorldConfig.term_window``, 1 unless
changed; :mod:`worldsim.engine.ends`). The same ``threshold`` provenance entry records it::

    worldsim sampler envs/cartpole/cartpole.safetensors --term-window 4 --term-threshold 0.7 --out cartpole-w4.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from worldsim import checkpoint as ckpt

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("world", type=Path, help="a world checkpoint (.safetensors)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        dest="sets",
        help="change a sampler field, e.g. guidance_scale=1.5 or 'timesteps=(1.0, 0.75, 0.5, 0.25)' (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write here (default: the input file, in place)")
    parser.add_argument(
        "--context-frames",
        type=int,
        default=None,
        metavar="N",
        help="real frames a session starts from (the reset context); needs --data for the new start clips",
    )
    parser.add_argument(
        "--data", type=Path, nargs="+", default=None, metavar="DIR", help="recorded data: the start clips' source"
    )
    parser.add_argument(
        "--cache-window",
        type=int,
        default=None,
        metavar="N",
        help="past frames in the rolling KV cache (at most the trained window; fewer = a cheaper frame)",
    )
    parser.add_argument(
        "--term-threshold",
        type=float,
        default=None,
        metavar="P",
        help="termination probability above which a frame ends the episode (0 < P < 1)",
    )
    parser.add_argument(
        "--term-window",
        type=int,
        default=None,
        metavar="N",
        help="frames the end rule reads: 1 - prod(1 - p) over the last N frames against the threshold (1: the frame alone)",
    )


def main(args: argparse.Namespace) -> int:
    from worldsim.engine.world import read_world_file

    tensors, meta, config = read_world_file(args.world)
    old = config.sampler
    context = getattr(args, "context_frames", None)
    window = getattr(args, "cache_window", None)
    threshold = getattr(args, "term_threshold", None)
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise SystemExit(f"--term-threshold {threshold}: must be strictly between 0 and 1 (a probability)")
    term_window = getattr(args, "term_window", None)
    if term_window is not None and term_window < 1:
        raise SystemExit(f"--term-window {term_window}: must be >= 1 frame")
    ends = threshold is not None or term_window is not None
    if not args.sets and context is None and window is None and not ends:
        shown = {
            **dataclasses.asdict(old),
            "context_frames": config.context_frames,
            "cache_window": config.cache.window,
            "term_threshold": config.term_threshold,
            "term_window": config.term_window,
        }
        print(json.dumps(shown, indent=2))
        return 0
    new = old.with_overrides(args.sets)  # a bad value fails here (SamplerConfig checks), before any write
    provenance = dict(meta.get("provenance", {}))
    if context is not None:
        provenance[ckpt.provenance_key(provenance, "context")] = _set_context(args, config, tensors, context)
    if window is not None:
        provenance[ckpt.provenance_key(provenance, "cache")] = _set_window(config, provenance, window)
    if ends:
        provenance[ckpt.provenance_key(provenance, "threshold")] = {
            "from": config.term_threshold,
            "to": config.term_threshold if threshold is None else threshold,
            "window_from": config.term_window,
            "window_to": config.term_window if term_window is None else term_window,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        config.term_threshold = config.term_threshold if threshold is None else threshold
        config.term_window = config.term_window if term_window is None else term_window
    if args.sets:
        config.sampler = new
        provenance[ckpt.provenance_key(provenance, "sampler")] = {
            "from": ckpt.to_jsonable(old),
            "to": ckpt.to_jsonable(new),
            "set": list(args.sets),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    out = args.out or args.world
    ckpt.save_file(out, tensors, config, provenance)
    before = dataclasses.asdict(old)
    changed = {k: v for k, v in dataclasses.asdict(new).items() if before[k] != v}
    log.info(
        "wrote %s with sampler %s, context %d frames, cache window %d, end threshold %.3g over %d frame(s)",
        out,
        json.dumps(changed),
        config.context_frames,
        config.cache.window,
        config.term_threshold,
        config.term_window,
    )
    return 0


def _set_context(args: argparse.Namespace, config: Any, tensors: dict[str, Any], k: int) -> dict[str, Any]:
    """Set ``config.context_frames`` to ``k`` and ``tensors``' start clips to k-frame clips of ``args.data``."""
    import torch

    from worldsim.train.cli import start_clips
    from worldsim.train.data import load_aligned

    if not args.data:
        raise SystemExit("worldsim sampler --context-frames needs --data DIR: the start clips come from a recording")
    if not 1 <= k <= config.cache.capacity:
        raise SystemExit(f"--context-frames {k}: must be in 1..{config.cache.capacity} (the world's cache capacity)")
    eps, spec = load_aligned(args.data, "val")
    train, _ = load_aligned(args.data, "train")
    if spec != config.action_space:
        raise SystemExit(f"--data {args.data[0]} acts in {spec}, the world in {config.action_space}: not the same game")
    frames, actions = start_clips(eps + train, k)
    if len(frames) == 0:
        raise SystemExit(f"--data: no recorded episode has {k} frames")
    size = config.codec.image_size
    if tuple(frames.shape[2:]) != (size, size, 3):
        raise SystemExit(f"--data frames are {tuple(frames.shape[2:])}, the world's {(size, size, 3)}")
    old = config.context_frames
    config.context_frames = k
    tensors["start.frames"] = frames.to(torch.uint8)
    tensors["start.actions"] = actions.to(tensors["start.actions"].dtype)
    return {
        "from": old,
        "to": k,
        "data": [str(d) for d in args.data],
        "start_clips": len(frames),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def trained_window(config: Any, provenance: dict[str, Any]) -> int:
    """The cache window a world was trained with: what the first ``cache`` provenance entry (the
    first ``--cache-window``) recorded as ``trained_window``, else its config's."""
    first = provenance.get("cache")
    return int(first["trained_window"]) if isinstance(first, dict) else int(config.cache.window)


def _set_window(config: Any, provenance: dict[str, Any], n: int) -> dict[str, Any]:
    """Set ``config.cache.window`` to ``n`` (1 .. the trained window)."""
    trained = trained_window(config, provenance)
    if not 1 <= n <= trained:
        raise SystemExit(
            f"--cache-window {n}: must be in 1..{trained}, the window this world was trained with "
            "(a longer one shows the denoiser key offsets it never saw in training)"
        )
    old = config.cache.window
    config.cache = dataclasses.replace(config.cache, window=n)
    return {"from": old, "to": n, "trained_window": trained, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
