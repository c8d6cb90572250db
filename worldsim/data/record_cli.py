"""``worldsim record`` flags -> :class:`~worldsim.data.record.RecordConfig` -> :func:`~worldsim.data.record.record`.

    worldsim record cartpole                                    # a bundled world's recipe
    worldsim record Pendulum-v1 --out data/pendulum --episodes 50 --policy sticky
    worldsim record Pendulum-v1 --out data/pendulum --policy human --keys a=0-,d=0+ --key-magnitude 0.5

Frame rate: ``--fps`` or the game's ``metadata["render_fps"]`` divided by ``--frameskip`` (a
bundled world's own); both are stored in the manifest and become the trained world's.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from worldsim.data.policies import POLICIES, Exploration, PolicyError
from worldsim.data.record import RecordConfig, RecordError, record

log = logging.getLogger(__name__)


def config_for(target: str, args: argparse.Namespace) -> RecordConfig:
    """A bundled world's recipe (flags override it) or, for any other name, a Gymnasium env id."""
    from worldsim.worlds import get_world, list_worlds

    if target in list_worlds():
        w = get_world(target)
        r = w.record
        return RecordConfig(
            env_id=w.env_id,
            out=Path(args.out) if args.out else Path("data") / w.name,
            episodes=args.episodes or r.episodes,
            policies=((args.policy, 1.0),) if args.policy else r.policies,
            # Play by hand is recorded as played: the recipe's exploration only with --explore.
            explore=_exploration(args, Exploration() if args.policy == "human" else r.explore),
            seed=r.seed if args.seed is None else args.seed,
            max_steps=args.max_steps or r.max_episode_steps,
            frameskip=args.frameskip or w.frameskip,
            crop=w.crop,
            env_kwargs=dict(w.env_kwargs),
            world=w,
            fps=getattr(args, "fps", None) or w.fps,
            **_keys(args),
        )
    if args.out is None:
        raise RecordError(f"{target!r} is not a bundled world ({', '.join(list_worlds())}): give --out for an env id")
    return RecordConfig(
        env_id=target,
        out=Path(args.out),
        episodes=args.episodes or 100,
        policies=((args.policy or "random", 1.0),),
        explore=_exploration(args, Exploration()),
        seed=args.seed or 0,
        max_steps=args.max_steps or 500,
        frameskip=args.frameskip or 1,
        fps=getattr(args, "fps", None),
        **_keys(args),
    )


def _keys(args: argparse.Namespace) -> dict[str, Any]:
    """The human policy's key flags as RecordConfig fields."""
    return {k: getattr(args, k, None) for k in ("keys", "idle", "key_magnitude")}


def _check(cfg: RecordConfig) -> None:
    """The data diagnostic on the finished recording (stored in its manifest), its summary logged."""
    from worldsim.data.diagnostic import check_folder

    log.info("data diagnostic (action predictability, state coverage); --no-check skips it")
    diag = check_folder(Path(cfg.out), cfg.world)
    for line in diag.summary().splitlines():
        (log.warning if line.startswith("WARNING") else log.info)("%s", line)


def _exploration(args: argparse.Namespace, default: Exploration) -> Exploration:
    """The recipe's exploration with the --explore / --explore-hold / --branch flags applied."""
    eps = getattr(args, "explore", None)
    fields: dict[str, Any] = {}
    if eps is not None:
        lo, _, hi = str(eps).partition(",")
        try:
            fields["epsilon_range"] = (float(lo), float(hi or lo))
        except ValueError:
            raise RecordError(f"--explore takes EPS or LOW,HIGH (shares of frames in [0, 1]), got {eps!r}") from None
    if getattr(args, "explore_hold", None) is not None:
        fields["hold"] = args.explore_hold
    if getattr(args, "branch", None) is not None:
        fields["branch"] = args.branch
    if not fields:
        return default
    try:
        return Exploration(**{**default.__dict__, **fields})
    except PolicyError as e:
        raise RecordError(str(e)) from e


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="a bundled world (cartpole, boxing) or any Gymnasium env id (e.g. ALE/Pong-v5)")
    parser.add_argument("--out", type=Path, default=None, help="data set folder (default data/<world>)")
    parser.add_argument("--episodes", type=_positive, default=None, help="episodes in total (a rerun resumes)")
    parser.add_argument("--policy", choices=POLICIES, default=None, help="one policy for all episodes")
    parser.add_argument("--seed", type=int, default=None, help="episode i is reset with seed + i")
    parser.add_argument(
        "--max-steps",
        type=_positive,
        default=None,
        help="truncate episodes after this many steps (recorded frames after the first; default 500)",
    )
    parser.add_argument(
        "--frameskip", type=_positive, default=None, help="env steps per recorded frame, the action held (default 1)"
    )
    parser.add_argument(
        "--fps",
        type=_positive,
        default=None,
        help="frames per second of the recording and the world trained on it "
        "(default: the game's metadata['render_fps'] / frameskip)",
    )
    parser.add_argument("--keys", default=None, metavar="MAP", help="--policy human: key map (see worldsim play)")
    parser.add_argument("--idle", default=None, metavar="ACTION", help="--policy human: action with no key held")
    parser.add_argument(
        "--key-magnitude", type=float, default=None, metavar="M", help="--policy human, Box games: key push (0, 1]"
    )
    parser.add_argument(
        "--explore",
        default=None,
        metavar="EPS|LOW,HIGH",
        help="per-episode share of frames where a random action replaces the policy's, drawn from [LOW, HIGH] "
        "(1 = fully random play; default: the world's recipe, else 0; --policy human: 0)",
    )
    parser.add_argument("--explore-hold", type=float, default=None, help="mean frames a random action is held")
    parser.add_argument(
        "--branch", type=float, default=None, help="share of episodes that switch to random play part-way through"
    )
    parser.add_argument("--no-check", action="store_true", help="skip the data diagnostic after recording")


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config_for(args.target, args)
    except RecordError as e:
        print(f"worldsim record: {e}", file=sys.stderr)
        return 2
    try:
        record(cfg)
        if not getattr(args, "no_check", False):
            _check(cfg)
    except (RecordError, PolicyError) as e:
        print(f"worldsim record: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"worldsim record: interrupted; finished episodes are in {cfg.out}, rerun to continue", file=sys.stderr)
        return 130
    return 0
