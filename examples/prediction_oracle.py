"""What PSNR @h could a CartPole world reach on the card's held-out play? A reference.

`worldsim eval FILE --data data/cartpole --split test --episodes 25 --horizons 1,10,50` gives the
world the first 4 frames of each held-out episode (the recording bot's balanced play, with its
exploration) and then the recorded actions, and scores each predicted frame against the recorded
one. This script replaces the world by the observer of `end_timing_oracle.py`: the game's exact
physics, but only the frames' information (the state reader's cart x and pole angle on the 4
context frames and the context actions, fitted to a full state through gymnasium's CartPole, with
or without the reset distribution as a prior). The physics then plays the recorded actions from the
fitted state, each frame is rendered and preprocessed as the recorder does, and scored as the eval
scores a world's frames (the same episodes, horizons and PSNR; episodes that end before a horizon do
not count there). "true state" replays the episode from its reset seed: its frames are the
recording's own (PSNR capped at 100 dB), a check of the pipeline.

The question it answers: is the PSNR @10 target (25 dB) something the real dynamics reach from what
4 frames tell, or does open-loop replay of a balancing controller's actions pull any state error
apart within 10 frames (the pole is unstable), so that PSNR @10 favours a damped world?

    python examples/prediction_oracle.py --data data/cartpole --episodes 25
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Args:
    data: str = "data/cartpole"
    """The recording whose held-out episodes to predict (the card's: `data/cartpole`)."""
    split: str = "test"
    """Its split (`worldsim eval --split`)."""
    episodes: int = 25
    """Held-out episodes, the longest first (`worldsim eval --episodes`)."""
    horizons: str = "1,2,4,6,8,10,15,20,30,50"
    """Comma-separated horizons to print."""
    context: int = 4
    """Real context frames (the shipped world's context_frames)."""


def predict(phys, real, reader, ep, context: int, state: np.ndarray | None, prior: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The frames after the context, (L + 1 - context, 64, 64, 3) uint8, from the true ``state`` at
    the last context frame or, when None, from a state fitted to the context frames."""
    from end_timing_oracle import fit

    if state is None:
        reads = reader(ep.frames[:context]).astype(np.float64)
        s = fit(phys, reads, ep.actions[1:context].reshape(-1), prior)
        for a in ep.actions[1:context].reshape(-1):
            s, _ = phys.frame(s, int(a))
    else:
        s = state
    out = []
    for a in ep.actions[context:].reshape(-1):
        s, _ = phys.frame(s, int(a))
        out.append(real.frame())
    return np.stack(out)


def scores(args: Args) -> dict[str, dict[int, list[float]]]:
    """PSNR per horizon (the episodes that reach it) of each observer: "true state", "fit", "fit +
    reset prior"."""
    from end_timing_oracle import Physics

    from worldsim.eval.episodes import load_eval_episodes
    from worldsim.eval.evaluate import Game
    from worldsim.fidelity import psnr
    from worldsim.real import RealGame
    from worldsim.worlds import get_world

    eps, spec, manifest = load_eval_episodes(args.data, args.split, args.episodes)
    game = Game.from_world(get_world(manifest.get("world", "cartpole")))
    real = RealGame.from_manifest(manifest, spec, game.true_state)
    phys = Physics(real)
    assert game.reader is not None
    K = args.context
    rows: dict[str, list[list[float]]] = {"true state": [], "fit": [], "fit + reset prior": []}
    for ep in eps:
        if len(ep) <= K:
            continue
        real.replay_actions(ep.seed, ep.actions[1:K])
        truth = np.array(real.env.unwrapped.state, np.float64)  # the full state (true_state: the readable part)
        for name, state, prior in (
            ("true state", truth, False),
            ("fit", None, False),
            ("fit + reset prior", None, True),
        ):
            frames = predict(phys, real, game.reader, ep, K, state, prior)
            rows[name].append(psnr(frames, ep.frames[K:]).tolist())
    H = [int(h) for h in args.horizons.split(",")]
    return {k: {h: [r[h - 1] for r in v if len(r) >= h] for h in H} for k, v in rows.items()}


def main(args: Args) -> None:
    res = scores(args)
    print(f"PSNR (dB) of the physics observer's frames, mean (median) over the held-out episodes of {args.data}")
    print("| horizon | episodes | " + " | ".join(res) + " |")
    print("|---|---|" + "---|" * len(res))
    for h, vals in res["fit"].items():
        if vals:
            cells = [f"{np.mean(r[h]):.1f} ({np.median(r[h]):.1f})" for r in res.values()]
            print(f"| {h} | {len(vals)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    from worldsim.script_args import parse_args

    main(parse_args(Args, __doc__))
