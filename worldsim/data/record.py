"""``worldsim record <world or env id> --out DIR``: record a real Gymnasium game.

Any env that renders ``rgb_array`` works (Atari ``ALE/...`` ids through ale-py). Frames are
cropped (bundled worlds define a crop) and area-resampled to 64x64. Episode ``i`` is reset with
seed ``seed + i`` and its policy is chosen by the recipe's shares with the same seed, so a
recording is reproducible and a resumed one continues exactly where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.data.episodes import Episode, read_manifest, write_manifest, write_shard
from worldsim.data.frames import preprocess
from worldsim.data.policies import make_policy
from worldsim.spaces import ActionSpec

log = logging.getLogger(__name__)

SHARD_BYTES = 64 * 2**20


class RecordError(RuntimeError):
    """The env cannot be recorded (unknown id, no rgb_array rendering, unwritable output)."""


@dataclass
class RecordConfig:
    env_id: str
    out: Path
    episodes: int = 200
    policies: tuple[tuple[str, float], ...] = (("random", 1.0),)
    seed: int = 0
    max_steps: int = 500
    frameskip: int = 1
    crop: tuple[int, int, int, int] | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    world: Any = None  # the WorldDef, for bundled worlds
    fps: int = 15


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("gymnasium", "numpy", "ale_py", "worldsim"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            pass
    return out


def make_env(cfg: RecordConfig) -> Any:
    import gymnasium as gym

    if cfg.env_id.startswith("ALE/"):
        try:
            import ale_py

            gym.register_envs(ale_py)
        except ImportError as e:
            raise RecordError("Atari games need ale-py: pip install 'worldsim[atari]'") from e
    try:
        env = gym.make(cfg.env_id, render_mode="rgb_array", **cfg.env_kwargs)
    except gym.error.Error as e:
        raise RecordError(f"cannot make env {cfg.env_id!r}: {e}") from e
    except TypeError as e:
        raise RecordError(f"env {cfg.env_id!r} does not accept render_mode='rgb_array': {e}") from e
    if env.render_mode != "rgb_array" or "rgb_array" not in env.metadata.get("render_modes", []):
        env.close()
        raise RecordError(
            f"env {cfg.env_id!r} cannot render rgb_array (render modes: {env.metadata.get('render_modes')})"
        )
    return env


def _frame(env: Any, crop: Any) -> np.ndarray:
    f = env.render()
    if not isinstance(f, np.ndarray) or f.ndim != 3:
        raise RecordError(f"env rendered {type(f).__name__}, not an RGB array")
    return preprocess(f, crop)


def record_episode(env: Any, cfg: RecordConfig, episode_id: int, spec: ActionSpec) -> Episode:
    seed = cfg.seed + episode_id
    rng = np.random.default_rng(seed)
    names = [p for p, _ in cfg.policies]
    shares = np.array([s for _, s in cfg.policies], dtype=np.float64)
    policy_name = names[int(rng.choice(len(names), p=shares / shares.sum()))]
    env.reset(seed=seed)
    policy = make_policy(policy_name, env, rng, cfg.world)
    frames, actions, rewards, term, trunc = [_frame(env, cfg.crop)], [], [], [], []
    for step in range(cfg.max_steps):
        a = policy(env, frames[-1])
        r_sum, done_t, done_tr = 0.0, False, False
        for _ in range(cfg.frameskip):
            _, r, done_t, done_tr, _ = env.step(a)
            r_sum += float(r)
            if done_t or done_tr:
                break
        frames.append(_frame(env, cfg.crop))
        actions.append(spec.validate([a])[0])
        rewards.append(r_sum)
        term.append(bool(done_t))
        trunc.append(bool(done_tr) or (step == cfg.max_steps - 1 and not done_t))
        if done_t or done_tr:
            break
    return Episode(
        np.stack(frames),
        np.stack(actions),
        np.array(rewards, np.float32),
        np.array(term),
        np.array(trunc),
        seed,
        episode_id,
    )


def record(cfg: RecordConfig, progress: bool = True) -> dict[str, Any]:
    """Record (or continue recording) ``cfg.episodes`` episodes into ``cfg.out``; returns the manifest."""
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RecordError(f"cannot write to {out}: {e.strerror or e}") from e
    env = make_env(cfg)
    spec = ActionSpec.from_space(env.action_space)
    try:
        manifest = read_manifest(out)
        if manifest["env_id"] != cfg.env_id:
            raise RecordError(f"{out} holds a recording of {manifest['env_id']}, not {cfg.env_id}")
    except FileNotFoundError:
        manifest = {
            "env_id": cfg.env_id,
            "env_kwargs": cfg.env_kwargs,
            "world": getattr(cfg.world, "name", None),
            "action_space": json_spec(spec),
            "fps": cfg.fps,
            "frame_shape": [64, 64, 3],
            "crop": cfg.crop,
            "frameskip": cfg.frameskip,
            "max_steps": cfg.max_steps,
            "seed": cfg.seed,
            "split_seed": 0,
            "policies": [list(p) for p in cfg.policies],
            "versions": _versions(),
            "shards": [],
            "episodes": 0,
            "frames": 0,
        }
    done = {i for s in manifest["shards"] for i in s["episode_ids"]}
    todo = [i for i in range(cfg.episodes) if i not in done]
    if not todo:
        log.info("%s already holds %d episodes", out, len(done))
        return manifest
    from tqdm import tqdm

    bar = tqdm(total=cfg.episodes, initial=len(done), desc=f"record {cfg.env_id}", disable=not progress, unit="ep")
    pending: list[Episode] = []
    t0, n_frames = time.perf_counter(), 0

    def flush() -> None:
        nonlocal pending
        if not pending:
            return
        name = f"shard-{len(manifest['shards']):05d}.npz"
        write_shard(out / name, pending)
        manifest["shards"].append(
            {
                "file": name,
                "episode_ids": [e.episode_id for e in pending],
                "frames": int(sum(len(e) + 1 for e in pending)),
            }
        )
        manifest["episodes"] = sum(len(s["episode_ids"]) for s in manifest["shards"])
        manifest["frames"] = sum(s["frames"] for s in manifest["shards"])
        manifest["record_fps"] = round(n_frames / max(time.perf_counter() - t0, 1e-9), 1)
        write_manifest(out, manifest)
        pending = []

    try:
        for i in todo:
            ep = record_episode(env, cfg, i, spec)
            pending.append(ep)
            n_frames += len(ep) + 1
            bar.update(1)
            bar.set_postfix(frames=manifest["frames"] + sum(len(e) + 1 for e in pending), refresh=False)
            if sum(e.frames.nbytes for e in pending) >= SHARD_BYTES:
                flush()
        flush()
    finally:
        bar.close()
        env.close()
    log.info(
        "recorded %d episodes, %d frames into %s (%.0f frames/s)",
        manifest["episodes"],
        manifest["frames"],
        out,
        manifest.get("record_fps", 0),
    )
    return manifest


def json_spec(spec: ActionSpec) -> dict[str, Any]:
    import json

    return json.loads(spec.to_json())


def config_for(target: str, args: argparse.Namespace) -> RecordConfig:
    """A bundled world's recipe (overridable by flags), or any Gymnasium env id."""
    from worldsim.worlds import get_world, list_worlds

    if target in list_worlds():
        w = get_world(target)
        r = w.record
        return RecordConfig(
            env_id=w.env_id,
            out=args.out or Path("data") / w.name,
            episodes=args.episodes or r.episodes,
            policies=((args.policy, 1.0),) if args.policy else r.policies,
            seed=r.seed if args.seed is None else args.seed,
            max_steps=args.max_steps or r.max_episode_steps,
            frameskip=args.frameskip or w.frameskip,
            crop=w.crop,
            env_kwargs=dict(w.env_kwargs),
            world=w,
            fps=w.fps,
        )
    if args.out is None:
        raise RecordError("--out is required when recording an env id that is not a bundled world")
    return RecordConfig(
        env_id=target,
        out=args.out,
        episodes=args.episodes or 100,
        policies=((args.policy or "random", 1.0),),
        seed=args.seed or 0,
        max_steps=args.max_steps or 500,
        frameskip=args.frameskip or 1,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="a bundled world (cartpole) or any Gymnasium env id (e.g. ALE/Pong-v5)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default data/<world>)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes in total (resumes up to this count)")
    parser.add_argument("--policy", choices=("random", "sticky", "scripted", "human"), default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="truncate episodes after this many frames")
    parser.add_argument("--frameskip", type=int, default=None, help="env steps per recorded frame")


def main(args: argparse.Namespace) -> int:
    try:
        record(config_for(args.target, args))
    except (RecordError, ValueError) as e:
        print(f"worldsim record: {e}", file=sys.stderr)
        return 2
    return 0
