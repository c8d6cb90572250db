"""Where do dreams go? The states a neural world reaches under random play, next to the real game's.

Rolls ``rows`` dreams of the bundled world with uniformly random actions (one batched session),
and as many real episodes under the same kind of play, and reads the game state off both with the
world's own state reader (so both sides are measured the same way, from 64x64 frames). Prints, per
state component, the range each side covers, and when episodes end (the termination head in the
dream, the real game's ``terminated``).

This is how we found why the neural CartPole never ends an episode: its termination head is fine
on real frames, but the dreamed pole never leans past 0.08 rad, while the real game ends at 0.21.

    python examples/dream_states.py --world cartpole --frames 100
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class Args:
    world: str = "cartpole"
    """Bundled world (its checkpoint, real game and state reader)."""
    world_path: str = ""
    """Dream in this checkpoint instead of the bundled one (a world of the same real game)."""
    rows: int = 8
    """Dreams (and real episodes) to roll out."""
    frames: int = 100
    """Frames per rollout (a real episode may end sooner)."""
    seed: int = 0
    """Seed of the sessions, the real episodes and the random actions."""


def dream(args: Args) -> tuple[np.ndarray, list[int]]:
    """States (rows, frames, S) read off the dreamed frames, and each row's first predicted end (-1: none)."""
    import worldsim
    from worldsim.worlds import get_world

    wd = get_world(args.world)
    world = worldsim.WorldModel.load(args.world_path or wd.checkpoint)
    space = world.action_spec.to_space()
    space.seed(args.seed)
    s = world.session(batch=args.rows, seed=args.seed)
    s.reset(seed=list(range(args.seed, args.seed + args.rows)))
    frames, ends = [], [-1] * args.rows
    for t in range(args.frames):
        out = s.step(np.stack([space.sample() for _ in range(args.rows)]))
        frames.append(out.frames)
        for r in np.flatnonzero(out.terminated):
            ends[r] = t + 1 if ends[r] < 0 else ends[r]
    video = np.stack(frames, 1)  # (rows, frames, H, W, 3)
    assert wd.state_reader is not None, f"{args.world} has no state reader"
    return np.stack([wd.state_reader(v) for v in video]), ends


def real(args: Args) -> tuple[list[np.ndarray], list[int]]:
    """States read off the real game's frames (recorder's crop, resize, frameskip) and episode lengths."""
    from worldsim.data import preprocess
    from worldsim.worlds import get_world

    wd = get_world(args.world)
    assert wd.state_reader is not None
    env = wd.make_env()
    env.action_space.seed(args.seed)
    states, lengths = [], []
    for r in range(args.rows):
        env.reset(seed=args.seed + 10_000 + r)
        frames, done, t = [], False, 0
        while not done and t < args.frames:
            a = env.action_space.sample()
            for _ in range(wd.frameskip):  # one world frame = frameskip real steps, action held
                _, _, term, trunc, _ = env.step(a)
                done = term or trunc
                if done:
                    break
            frames.append(preprocess(env.render(), wd.crop))
            t += 1
        states.append(wd.state_reader(np.stack(frames)))
        lengths.append(t if done else -1)
    env.close()
    return states, lengths


def main(args: Args) -> dict[str, object]:
    from worldsim.worlds import get_world

    names = get_world(args.world).state_names
    d_states, d_ends = dream(args)
    r_states, r_ends = real(args)
    r_all = np.concatenate(r_states)
    print(f"{args.rows} rollouts of up to {args.frames} frames, random actions ({args.world})")
    print(f"{'component':<16}{'dream min':>11}{'dream max':>11}{'real min':>11}{'real max':>11}")
    out: dict[str, object] = {"dream_ends": d_ends, "real_ends": r_ends}
    for i, n in enumerate(names):
        with warnings.catch_warnings():  # a component never readable (NaN) prints as nan
            warnings.simplefilter("ignore", RuntimeWarning)
            dmin, dmax = np.nanmin(d_states[..., i]), np.nanmax(d_states[..., i])
            rmin, rmax = np.nanmin(r_all[:, i]), np.nanmax(r_all[:, i])
        print(f"{n:<16}{dmin:>11.3f}{dmax:>11.3f}{rmin:>11.3f}{rmax:>11.3f}")
        out[n] = {"dream": [float(dmin), float(dmax)], "real": [float(rmin), float(rmax)]}
    print("episode end at frame (-1: none within the rollout)")
    print(f"  dream (termination head): {d_ends}")
    print(f"  real game:                {r_ends}")
    return out


if __name__ == "__main__":
    from worldsim.script_args import parse_args

    main(parse_args(Args, __doc__))
