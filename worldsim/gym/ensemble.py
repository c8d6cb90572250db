"""An ensemble of worlds as ONE Stable-Baselines3 ``VecEnv``: rows split across several worlds.

An agent trained in one learned world learns that world's errors too: a push a little too
strong, a pole that leans a little to one side, and it leans on them, then fails in the real
game. Model-based RL answers with an ensemble (ME-TRPO, MBPO): every rollout comes from one of
several models, so only what they agree on (what the real game does, if each is close to it) is
worth learning. Here the members are worlds: different checkpoints of one game, or one
checkpoint under different samplers (action guidance sets how hard a push is felt, so a spread
of guidance scales is a spread of dynamics)::

    from worldsim.gym import WorldVectorEnv, to_sb3
    from worldsim.gym.ensemble import concat_sb3
    vec = concat_sb3([to_sb3(WorldVectorEnv(m, num_envs=8)) for m in members])
    PPO("MlpPolicy", vec).learn(50_000)

Rows ``0 .. n0-1`` are the first member's, the next ``n1`` the second's, and so on; every step
steps each member once (one batched engine call each). ``seed(s)`` seeds row ``i`` with ``s + i``
across members, as for one vector env; ``member_of(i)`` tells which member a row belongs to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from worldsim.gym.sb3 import INSTALL_HINT
from worldsim.spaces import ActionSpec


class _EnsembleRows:
    """The ensemble's logic: several SB3 VecEnvs as one; ``.members`` are the wrapped VecEnvs.
    :func:`concat_sb3` mixes it into SB3's ``VecEnv`` (imported only there: SB3 is optional)."""

    num_envs: int
    _seeds: list[Any]
    _options: list[Any]
    reset_infos: list[Any]
    _reset_seeds: Callable[[], None]
    _reset_options: Callable[[], None]

    def __init__(self, members: Sequence[Any]) -> None:
        self.members = list(members)
        self.offsets = np.cumsum([0] + [m.num_envs for m in members])  # member k: rows offsets[k]:offsets[k+1]
        self._actions: np.ndarray | None = None

    def member_of(self, row: int) -> int:
        """The index of the member that steps ``row``."""
        if not 0 <= row < self.num_envs:
            raise IndexError(f"row {row} out of range for {self.num_envs} rows")
        return int(np.searchsorted(self.offsets, row, side="right") - 1)

    def reset(self) -> np.ndarray:
        obs = []
        for k, m in enumerate(self.members):
            lo = int(self.offsets[k])
            seed = self._seeds[lo]
            if seed is not None:
                m.seed(int(seed))  # row lo + i gets seed s + lo + i, as in one vector env
            if self._options[lo]:
                m.set_options(self._options[lo])
            obs.append(m.reset())
        self.reset_infos = [info for m in self.members for info in m.reset_infos]
        self._reset_seeds()
        self._reset_options()
        return np.concatenate(obs)

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions (one per row), got {len(actions)}")
        self._actions = actions

    def step_wait(self) -> Any:
        if self._actions is None:
            raise RuntimeError("step_async() must be called before step_wait()")
        parts = [m.step(self._actions[lo:hi]) for m, lo, hi in zip(self.members, self.offsets, self.offsets[1:])]
        self._actions = None
        obs, rew, done, infos = zip(*parts)
        return np.concatenate(obs), np.concatenate(rew), np.concatenate(done), [i for p in infos for i in p]

    def close(self) -> None:
        for m in self.members:
            m.close()

    def get_images(self) -> list[np.ndarray]:
        return [img for m in self.members for img in m.get_images()]

    def _by_member(self, indices: Any) -> list[tuple[Any, list[int]]]:
        rows = (
            list(range(self.num_envs))
            if indices is None
            else ([int(indices)] if isinstance(indices, (int, np.integer)) else [int(i) for i in indices])
        )
        out: dict[int, list[int]] = {}
        for r in rows:
            k = self.member_of(r)
            out.setdefault(k, []).append(r - int(self.offsets[k]))
        return [(self.members[k], local) for k, local in out.items()]

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [v for m, rows in self._by_member(indices) for v in m.get_attr(attr_name, rows)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        for m, rows in self._by_member(indices):
            m.set_attr(attr_name, value, rows)

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        return [
            v for m, rows in self._by_member(indices) for v in m.env_method(method_name, *args, indices=rows, **kwargs)
        ]

    def env_is_wrapped(self, wrapper_class: Any, indices: Any = None) -> list[bool]:
        return [v for m, rows in self._by_member(indices) for v in m.env_is_wrapped(wrapper_class, rows)]


def concat_sb3(members: Sequence[Any]) -> Any:
    """One SB3 ``VecEnv`` whose rows are the rows of ``members`` (SB3 VecEnvs with equal spaces), in order."""
    try:
        from stable_baselines3.common.vec_env import VecEnv
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    members = list(members)
    if not members:
        raise ValueError("concat_sb3 needs at least one member VecEnv")
    first = members[0]
    for k, m in enumerate(members[1:], start=1):
        if m.observation_space != first.observation_space or m.action_space != first.action_space:
            raise ValueError(
                f"member {k} has observation space {m.observation_space} and action space {m.action_space}, "
                f"member 0 {first.observation_space} and {first.action_space}: an ensemble's members must be "
                "worlds of one game, seen the same way (same channels_first, same wrappers)"
            )

    class EnsembleVecEnv(_EnsembleRows, VecEnv):  # type: ignore[misc]
        """Several SB3 VecEnvs as one; ``.members`` are the wrapped VecEnvs."""

        def __init__(self) -> None:
            _EnsembleRows.__init__(self, members)
            VecEnv.__init__(self, int(self.offsets[-1]), first.observation_space, first.action_space)

    return EnsembleVecEnv()


def mirror_rows(venv: Any, permutation: Sequence[int], rows: Sequence[int] | np.ndarray) -> Any:
    """An SB3 VecEnv wrapper under which the agent sees ``rows`` of ``venv`` in a mirror.

    For a game that looks the same mirrored left-right (CartPole: flip the frame, swap the two
    pushes): on those rows every observation frame is flipped left-right and every action ``a``
    the agent sends is replaced by ``permutation[a]`` (its mirror image) before it reaches the
    world. The world itself runs unchanged; the agent gets a second, mirrored world for free, and
    a world that leans to one side leans to both across the rows, so the agent cannot learn the
    lean. ``venv``'s observations must be frames (N, H, W, 3) or (N, 3, H, W) with a Discrete action
    space; wrap it before reading states off the frames.
    """
    try:
        from stable_baselines3.common.vec_env import VecEnvWrapper
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    perm = ActionSpec.from_space(venv.action_space).mirror_table(permutation)
    mask = np.zeros(venv.num_envs, bool)
    mask[np.asarray(rows, dtype=np.int64)] = True
    shape = venv.observation_space.shape
    axis = -1 if shape[0] == 3 else -2  # (3, H, W): flip W, the last axis; (H, W, 3): W is the second last

    def flip(obs: Any, m: np.ndarray) -> np.ndarray:
        obs = np.array(obs, copy=True)
        obs[m] = np.flip(obs[m], axis=axis)
        return obs

    class MirrorRows(VecEnvWrapper):  # type: ignore[misc]
        def reset(self) -> np.ndarray:
            return flip(self.venv.reset(), mask)

        def step_async(self, actions: np.ndarray) -> None:
            actions = np.array(actions, copy=True)
            actions[mask] = perm[actions[mask]]
            self.venv.step_async(actions)

        def step_wait(self) -> Any:
            obs, rew, done, infos = self.venv.step_wait()
            for i in np.flatnonzero(mask):
                if "terminal_observation" in infos[i]:
                    infos[i]["terminal_observation"] = np.flip(infos[i]["terminal_observation"], axis=axis).copy()
            return flip(obs, mask), rew, done, infos

    return MirrorRows(venv)


__all__ = ["concat_sb3", "mirror_rows"]
