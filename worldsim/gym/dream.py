"""Training an agent inside learned worlds: read states, dream episode ends, scores, held-out selection.

What ``examples/dream_to_real.py`` (and any user's own dream-to-real loop) needs beyond the
vector env, for a game whose :class:`~worldsim.worlds.WorldDef` has a state reader:

- :func:`read_state_vec`: an SB3 ``VecEnv`` whose observations are the states read off each
  dreamed frame (a fixed, untrained feature extractor: PPO learns in minutes on a CPU);
- :func:`end_rule`: dream episodes also end where the read state crosses the game's own bounds,
  or tighter ones (a safety margin for the variables the worlds get least right);
- :func:`dream_returns`: each row's first episode, scored without the bias to short episodes
  of "the first N episodes that end";
- :func:`held_out_selection`: an SB3 callback that scores the agent every ``every`` steps in a
  world it does not train in (an ensemble member held out) and keeps every snapshot and the best.
  A held-out world is the only judge the agent cannot have exploited: its returns in the
  training worlds keep rising while the real game's fall (measured on the CartPole card).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.gym.sb3 import INSTALL_HINT

log = logging.getLogger(__name__)

Reader = Callable[[np.ndarray], np.ndarray]
Policy = Callable[[np.ndarray], np.ndarray]


def read_states(reader: Reader, frames: np.ndarray) -> np.ndarray:
    """(N, 64, 64, 3) uint8 frames -> (N, K) float32 states; an unreadable component reads as 0."""
    return np.nan_to_num(np.asarray(reader(frames), np.float32))


def read_state_vec(venv: Any, reader: Reader | None) -> Any:
    """An SB3 ``VecEnv`` wrapper: each (channel-last) frame replaced by the state read off it,
    ``terminal_observation`` too. Raises ``ValueError`` when the world has no reader."""
    try:
        import gymnasium as gym
        from stable_baselines3.common.vec_env import VecEnvWrapper
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    if reader is None:
        raise ValueError("this world has no state reader (WorldDef.state_reader): observe pixels instead")
    read: Reader = reader

    class ReadStateVecEnv(VecEnvWrapper):  # type: ignore[misc]
        def __init__(self) -> None:
            k = read_states(read, np.full((1, 64, 64, 3), 255, np.uint8)).shape[1]
            super().__init__(venv, observation_space=gym.spaces.Box(-np.inf, np.inf, (k,), np.float32))

        def reset(self) -> np.ndarray:
            return read_states(read, np.asarray(self.venv.reset()))

        def step_wait(self):  # type: ignore[no-untyped-def]
            obs, rew, done, infos = self.venv.step_wait()
            for info in infos:
                if "terminal_observation" in info:
                    info["terminal_observation"] = read_states(read, info["terminal_observation"][None])[0]
            return read_states(read, np.asarray(obs)), rew, done, infos

    return ReadStateVecEnv()


def parse_bounds(spec: str, names: tuple[str, ...]) -> list[tuple[int, float, float]]:
    """``'NAME=LOW:HIGH;...'`` -> [(component index, low, high)]; ``ValueError`` naming the format."""
    out = []
    for item in filter(None, (i.strip() for i in spec.split(";"))):
        name, _, rng = item.partition("=")
        lo, _, hi = rng.partition(":")
        try:
            out.append((list(names).index(name.strip()), float(lo), float(hi)))
        except ValueError:
            raise ValueError(f"bounds item {item!r}: use NAME=LOW:HIGH with NAME one of {list(names)}") from None
    return out


def end_rule(world: Any, game_bounds: bool = True, bounds: str = "") -> Callable[[np.ndarray], np.ndarray] | None:
    """A dream episode end on frames (for ``WorldVectorEnv(end_rule=...)``): the game's own bounds
    (``world.frames_done``) and/or tighter ``bounds`` ('NAME=LOW:HIGH;...' on the read state);
    ``None`` when neither is asked for. ``world`` is a :class:`~worldsim.worlds.WorldDef`."""
    rules: list[Callable[[np.ndarray], np.ndarray]] = [world.frames_done] if game_bounds else []
    if bounds:
        if world.state_reader is None:
            raise ValueError(f"bounds {bounds!r}: {world.name} has no state reader")
        idx, lo, hi = (np.array(v) for v in zip(*parse_bounds(bounds, world.state_names)))
        reader = world.state_reader

        def outside(frames: np.ndarray) -> np.ndarray:
            s = read_states(reader, frames)[:, idx]
            return np.asarray((s < lo).any(1) | (s > hi).any(1))

        rules.append(outside)
    if not rules:
        return None
    return lambda frames: np.logical_or.reduce([np.asarray(r(frames), bool) for r in rules])


def dream_returns(vec: Any, policy: Policy, episodes: int, seed: int | None = None) -> np.ndarray:
    """Returns of ``episodes`` episodes of ``policy`` in an SB3 ``VecEnv``: each row's first
    ``ceil(episodes / num_envs)`` episodes (so long episodes count as much as short ones), from
    ``vec.seed(seed)`` starts when ``seed`` is given (the same starts for every call)."""
    if seed is not None:
        vec.seed(seed)
    n = vec.num_envs
    quota = -(-episodes // n)
    per_row: list[list[float]] = [[] for _ in range(n)]
    obs, ep_ret = vec.reset(), np.zeros(n)
    while any(len(r) < quota for r in per_row):
        obs, rew, done, _ = vec.step(policy(obs))
        ep_ret += rew
        for i in np.flatnonzero(done):
            per_row[i].append(float(ep_ret[i]))
            ep_ret[i] = 0.0
    return np.array([r[k] for k in range(quota) for r in per_row][:episodes])


def held_out_selection(vec: Any, out_dir: str | Path, every: int, episodes: int = 16, seed: int = 12_345) -> Any:
    """An SB3 callback: every ``every`` steps (and at the end) score the agent's greedy policy
    over ``episodes`` episodes in ``vec`` (a world the agent does not train in, same observation
    pipeline), save the snapshot as ``out_dir/step-N.zip`` and the best so far as ``best.zip``;
    ``out_dir/selection.json`` lists every score. ``.best_path`` is the best snapshot (or None)."""
    try:
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    if every <= 0:
        raise ValueError(f"every={every}: score the agent every N > 0 steps")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    class HeldOutSelection(BaseCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.vec = vec  # the held-out world (the caller closes it)
            self.history: list[dict[str, Any]] = []
            self.best, self._next = -np.inf, every
            self.best_path: Path | None = None

        def _on_step(self) -> bool:
            if self.num_timesteps >= self._next:
                self._next = self.num_timesteps + every
                self.score()
            return True

        def _on_training_end(self) -> None:
            if not self.history or self.history[-1]["step"] != self.num_timesteps:
                self.score()

        def score(self) -> None:
            policy = lambda o: self.model.predict(o, deterministic=True)[0]  # noqa: E731
            returns = dream_returns(vec, policy, episodes, seed)
            path = out / f"step-{self.num_timesteps}.zip"
            self.model.save(path)
            mean = float(returns.mean())
            if mean > self.best:
                self.best, self.best_path = mean, out / "best.zip"
                self.model.save(out / "best.zip")
            self.history.append({"step": self.num_timesteps, "held_out_return": mean, "path": str(path)})
            (out / "selection.json").write_text(json.dumps(self.history, indent=2))
            log.info("step %d: held-out world return %.1f (best %.1f)", self.num_timesteps, mean, self.best)

    return HeldOutSelection()
