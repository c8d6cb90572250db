"""``worldsim record <world or env id> --out DIR``: record a real Gymnasium game.

Any env that renders ``rgb_array`` works (Atari ``ALE/...`` ids through ale-py). Frames are
cropped (bundled worlds define a crop) and area-resampled to 64x64 by
:func:`worldsim.data.frames.preprocess`. Episode ``i`` is reset with seed ``seed + i`` and gets
its own random generator seeded the same way, which picks its policy by the recipe's shares and
drives the policy; a recording is therefore reproducible, and a resumed one continues exactly
where the interrupted one stopped (episodes already in finished shards are skipped).

Python use::

    from worldsim.data.record import RecordConfig, record
    manifest = record(RecordConfig(env_id="CartPole-v1", out=Path("data/cp"), episodes=10, policies=(("scripted", 1.0),)))
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.data.episodes import Episode, read_manifest, split_of, write_manifest, write_shard
from worldsim.data.policies import (
    FREE_POLICIES,
    SCRIPTED,
    Exploration,
    Keyboard,
    StopRecording,
    explore,
    game_name,
    make_policy,
    policy_names,
)
from worldsim.real import GameSpec, RealGame, RealGameError
from worldsim.spaces import ActionError, ActionSpec

log = logging.getLogger(__name__)

SHARD_BYTES = 64 * 2**20
"""A shard is closed before it would grow past this (an episode larger than this gets its own)."""
RECIPE_KEYS = ("env_id", "env_kwargs", "crop", "frameskip", "max_steps", "seed", "policies", "explore")
"""Manifest fields that must match for a recording to be resumed or extended."""


class RecordError(RuntimeError):
    """The env cannot be recorded (unknown id, no rgb_array rendering, unwritable output, ...)."""


@dataclass
class RecordConfig:
    """What to record, where, and how."""

    env_id: str
    out: Path
    episodes: int = 200
    """Episodes in total (a resumed recording stops at this count)."""
    policies: tuple[tuple[str, float], ...] = (("random", 1.0),)
    """(policy, share of episodes) pairs."""
    explore: Exploration = field(default_factory=Exploration)
    """State-independent exploration mixed into every policy (see :class:`Exploration`)."""
    seed: int = 0
    """Episode i is reset with seed + i."""
    max_steps: int = 500
    """Steps after which an episode is truncated (an episode has at most max_steps + 1 frames)."""
    frameskip: int = 1
    """Env steps per recorded frame (the action is repeated, rewards summed)."""
    crop: tuple[int, int, int, int] | None = None
    """(top, bottom, left, right) of the rendered frame, before the 64x64 resize."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    world: Any = None
    """The bundled world's ``WorldDef`` (None for a plain env id)."""
    fps: int | None = None
    """Frames per second the recording is meant to be played at (stored in the manifest; the
    world trained on it plays at this rate). None: the game's ``metadata["render_fps"]`` divided
    by the env steps one frame covers (:func:`game_fps`)."""
    keys: str | None = None
    """Human policy: ``--keys`` (see :func:`worldsim.keys.parse_keymap`); None: the default."""
    idle: str | None = None
    """Human policy: ``--idle``, the action with no key held; None: the default."""
    key_magnitude: float | None = None
    """Human policy on a Box game: how far a key pushes its axis (0, 1]; None: 1."""


# ---------------------------------------------------------------------------- the env
def open_game(cfg: RecordConfig) -> RealGame:
    """The real game (:class:`worldsim.real.RealGame`: ``rgb_array`` rendering, frameskip, the crop
    and 64x64 resize), its time limit at ``max_steps`` frames so that the env's own limit never cuts
    an episode before ``--max-steps`` does; :class:`RecordError` if it cannot be had."""
    try:
        return RealGame(GameSpec(cfg.env_id, dict(cfg.env_kwargs), cfg.frameskip, cfg.crop, cfg.max_steps))
    except RealGameError as e:
        raise RecordError(str(e)) from e


def game_fps(env: Any, frameskip: int) -> int:
    """The real game's frames per second at ``frameskip`` env steps a frame: its
    ``metadata["render_fps"]`` divided by the env steps a recorded frame covers (ALE's own
    frameskip included); 15 for a game that declares none."""
    render_fps = (getattr(env, "metadata", None) or {}).get("render_fps")
    if not render_fps:
        log.warning("%s declares no metadata['render_fps']: recording at 15 fps (--fps sets it)", env)
        return 15
    inner = getattr(env.unwrapped, "_frameskip", 1)
    inner = inner if isinstance(inner, int) and inner > 0 else 1
    return max(1, round(float(render_fps) / (frameskip * inner)))


# ---------------------------------------------------------------------------- one episode
def episode_policy(cfg: RecordConfig, episode_id: int) -> tuple[str, np.random.Generator]:
    """The policy name of episode ``episode_id`` and the generator that then drives it."""
    rng = np.random.default_rng(cfg.seed + episode_id)
    names = [p for p, _ in cfg.policies]
    shares = np.array([s for _, s in cfg.policies], dtype=np.float64)
    return names[int(rng.choice(len(names), p=shares / shares.sum()))], rng


def exploration_plan(cfg: RecordConfig, episode_id: int) -> tuple[np.random.Generator, dict[str, Any] | None]:
    """Episode ``episode_id``'s exploration draw and the generator that then drives it.

    A stream of its own (seeded by the episode's seed and a tag), so exploration leaves the
    policy's random stream untouched; None when the recording has no exploration."""
    rng = np.random.default_rng([cfg.seed + episode_id, 0x5EED])
    return rng, (cfg.explore.plan(rng) if cfg.explore.active else None)


def record_episode(
    game: RealGame, cfg: RecordConfig, episode_id: int, spec: ActionSpec, keyboard: Keyboard | None = None
) -> Episode:
    """Play and record one episode (at most ``cfg.max_steps`` frames after the reset frame)."""
    seed = cfg.seed + episode_id
    name, rng = episode_policy(cfg, episode_id)
    first = game.reset(seed)
    env = game.env
    policy = make_policy(name, env, rng, cfg.world, keyboard)
    xrng, plan = exploration_plan(cfg, episode_id)
    if plan is not None:
        policy = explore(policy, env.action_space, xrng, plan, cfg.explore.hold)
    frames, actions, rewards, terminated, truncated, free = [first], [], [], [], [], []
    for step in range(cfg.max_steps):
        action = policy(env, frames[-1])
        free.append(name in FREE_POLICIES or bool(getattr(policy, "free", False)))
        out = game.step(action)  # frameskip env steps, the action held, rewards summed
        frames.append(game.frame())
        actions.append(spec.validate([action])[0])
        rewards.append(out.reward)
        terminated.append(out.terminated)
        truncated.append(out.truncated or (step == cfg.max_steps - 1 and not out.terminated))
        if out.done:
            break
    return Episode(
        frames=np.stack(frames),
        actions=np.stack(actions),
        rewards=np.array(rewards, np.float32),
        terminated=np.array(terminated, bool),
        truncated=np.array(truncated, bool),
        seed=seed,
        episode_id=episode_id,
        free=np.array(free, bool),
    )


# ---------------------------------------------------------------------------- the data set
def package_versions() -> dict[str, str]:
    """Versions of what shapes the recorded pixels and dynamics."""
    out = {"python": platform.python_version()}
    for dist in ("gymnasium", "ale-py", "numpy", "pygame", "worldsim"):
        try:
            out[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _recipe(cfg: RecordConfig) -> dict[str, Any]:
    return _as_json(
        {
            "env_id": cfg.env_id,
            "env_kwargs": cfg.env_kwargs,
            "crop": cfg.crop,
            "frameskip": cfg.frameskip,
            "max_steps": cfg.max_steps,
            "seed": cfg.seed,
            "policies": [list(p) for p in cfg.policies],
            "explore": cfg.explore.to_json() if cfg.explore.active else None,
        }
    )


def _new_manifest(cfg: RecordConfig, spec: ActionSpec) -> dict[str, Any]:
    return {
        **_recipe(cfg),
        "world": getattr(cfg.world, "name", None),
        "action_space": json.loads(spec.to_json()),
        "fps": cfg.fps,
        "frame_shape": [64, 64, 3],
        "split_seed": 0,
        "versions": package_versions(),
        "shards": [],
        "episodes": 0,
        "frames": 0,
    }


def _prepare_output(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RecordError(f"cannot write to {out}: {e.strerror or e}") from e
    for p in out.glob("*.tmp"):  # left by a writer that was killed mid-shard: never part of the data
        if p.name.startswith(("shard-", "manifest.json")):
            log.info("removing %s, left by an interrupted recording", p.name)
            p.unlink()


def _existing_manifest(out: Path, cfg: RecordConfig) -> dict[str, Any] | None:
    """The manifest of an earlier recording into ``out`` (None if there is none), if its recipe matches."""
    try:
        manifest = read_manifest(out)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RecordError(f"cannot read {out / 'manifest.json'}: {e}") from e
    recipe = _recipe(cfg)
    for key in RECIPE_KEYS:
        if manifest.get(key) != recipe[key]:
            raise RecordError(
                f"{out} holds a recording with {key}={manifest.get(key)!r}, not {recipe[key]!r}: "
                "record into another folder (or delete it to start over)"
            )
    return manifest


class _ShardWriter:
    """Collects finished episodes and writes them as shards, updating the manifest after each."""

    def __init__(self, out: Path, manifest: dict[str, Any], policy_of: dict[int, str], plan_of: dict[int, Any]) -> None:
        self.out, self.manifest, self.policy_of, self.plan_of = out, manifest, policy_of, plan_of
        self.pending: list[Episode] = []
        self.frames_this_run = 0
        self.t0 = time.perf_counter()

    @property
    def pending_bytes(self) -> int:
        return sum(e.frames.nbytes for e in self.pending)

    def add(self, ep: Episode) -> None:
        if self.pending and self.pending_bytes + ep.frames.nbytes > SHARD_BYTES:
            self.flush()
        self.pending.append(ep)
        self.frames_this_run += len(ep) + 1
        if self.pending_bytes >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        m, eps = self.manifest, self.pending
        self.pending = []  # a failed write is not retried: its episodes are recorded again on resume
        name = f"shard-{len(m['shards']):05d}.npz"
        write_shard(self.out / name, eps)
        size = (self.out / name).stat().st_size
        m["shards"].append(
            {
                "file": name,
                "episode_ids": [e.episode_id for e in eps],
                "frames": int(sum(len(e) + 1 for e in eps)),
                "bytes": int(size),
                "seeds": [e.seed for e in eps],
                "policies": [self.policy_of[e.episode_id] for e in eps],
                "explore": [self.plan_of.get(e.episode_id) for e in eps],
                "steps": [len(e) for e in eps],
                "terminated": [bool(e.terminated[-1]) if len(e) else False for e in eps],
            }
        )
        ids = [i for s in m["shards"] for i in s["episode_ids"]]
        m["episodes"] = len(ids)
        m["frames"] = sum(s["frames"] for s in m["shards"])
        m["record_fps"] = round(self.frames_this_run / max(time.perf_counter() - self.t0, 1e-9), 1)
        assign = split_of(ids, seed=m.get("split_seed", 0))  # exactly what load_episodes computes
        m["splits"] = {s: sorted(i for i, v in assign.items() if v == s) for s in ("train", "val", "test")}
        write_manifest(self.out, m)
        log.debug("wrote %s: %d episodes, %.1f MB", name, len(eps), size / 2**20)


def record(cfg: RecordConfig, progress: bool = True) -> dict[str, Any]:
    """Record (or continue recording) ``cfg.episodes`` episodes into ``cfg.out``; returns the manifest.

    Raises :class:`RecordError` for an env that cannot be recorded or an output that cannot be
    written. On ``KeyboardInterrupt`` the finished episodes are saved before it propagates.
    """
    from tqdm import tqdm

    out = Path(cfg.out)
    names = {name for name, _ in cfg.policies}
    if names - set(policy_names()):
        unknown = sorted(names - set(policy_names()))[0]
        raise RecordError(f"unknown policy {unknown!r}: use one of {', '.join(policy_names())} (or register_policy)")
    game = open_game(cfg)
    env = game.env
    try:
        if "scripted" in names and game_name(env) not in SCRIPTED:
            raise RecordError(f"no scripted policy for {cfg.env_id} (only {', '.join(SCRIPTED)}): use random or sticky")
        if "human" in names:
            Keyboard.check(cfg.world)
        if cfg.fps is None:
            cfg = replace(cfg, fps=game_fps(env, cfg.frameskip))
        spec = ActionSpec.from_space(env.action_space)
        manifest = _existing_manifest(out, cfg) or _new_manifest(cfg, spec)
        done = {i for s in manifest["shards"] for i in s["episode_ids"]}
        todo = [i for i in range(cfg.episodes) if i not in done]
        if todo:  # a finished recording may live on read-only storage
            _prepare_output(out)
        policy_of = {i: episode_policy(cfg, i)[0] for i in todo}
        keyboard = None
        if "human" in policy_of.values():
            keyboard = Keyboard(
                cfg.world, env.action_space, cfg.keys, cfg.idle, cfg.key_magnitude, float(cfg.fps or 15)
            )
    except BaseException:
        game.close()
        raise
    if not todo:
        game.close()
        log.info("%s already holds %d episodes (%d frames): nothing to do", out, len(done), manifest["frames"])
        return manifest
    if done:
        log.info("resuming %s: %d episodes stored, %d to go", out, len(done), len(todo))
    writer = _ShardWriter(out, manifest, policy_of, {i: exploration_plan(cfg, i)[1] for i in todo})
    bar = tqdm(total=cfg.episodes, initial=len(done), desc=f"record {cfg.env_id}", unit="ep", disable=not progress)
    try:
        for i in todo:
            ep = record_episode(game, cfg, i, spec, keyboard)
            writer.add(ep)
            bar.set_postfix(frames=manifest["frames"] + sum(len(e) + 1 for e in writer.pending), refresh=False)
            bar.update(1)
    except StopRecording:
        log.info("stopped by the player; the unfinished episode is dropped")
    except ActionError as e:
        raise RecordError(f"the policy produced an invalid action: {e}") from e
    finally:
        writer.flush()  # finished episodes are kept even when interrupted
        bar.close()
        game.close()
        if keyboard is not None:
            keyboard.close()
    log.info(
        "%s: %d episodes, %d frames (%.0f frames/s recorded)",
        out,
        manifest["episodes"],
        manifest["frames"],
        manifest.get("record_fps", 0.0),
    )
    return manifest


# ---------------------------------------------------------------------------- CLI (worldsim.data.record_cli)
def __getattr__(name: str) -> Any:
    """``config_for``, ``add_arguments`` and ``main`` live in :mod:`worldsim.data.record_cli`."""
    if name in ("config_for", "add_arguments", "main"):
        from worldsim.data import record_cli

        return getattr(record_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
