"""``worldsim sampler``: show a world file's sampler, or write the file with sampler fields changed.

``worldsim eval --sampler FIELD=VALUE`` measures a sampler without touching the file; once a value
wins (CartPole's action guidance, say), this bakes it in, so every surface (play, the Gymnasium
envs, the server) samples with it::

    worldsim sampler runs/cartpole/finetune/world.safetensors                  # show
    worldsim sampler runs/cartpole/finetune/world.safetensors --set guidance_scale=1.5 --out tuned.safetensors

The weights are copied byte for byte (verified first); the file's provenance gains a
``sampler`` entry (``sampler-2`` for a second change, ...) with the old and the new values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

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


def main(args: argparse.Namespace) -> int:
    from worldsim.engine.world import WorldConfig, upgrade_config

    tensors, meta = ckpt.load_file(args.world)
    ckpt.verify_tensors(tensors, meta, args.world)
    try:
        config = ckpt.from_jsonable(WorldConfig, upgrade_config(meta["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{args.world}: config metadata is missing or invalid: {e}") from e
    old = config.sampler
    if not args.sets:
        print(json.dumps(dataclasses.asdict(old), indent=2))
        return 0
    new = old.with_overrides(args.sets)  # a bad value fails here (SamplerConfig checks), before any write
    config.sampler = new
    provenance = dict(meta.get("provenance", {}))
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
    log.info("wrote %s with sampler %s", out, json.dumps(changed))
    return 0
