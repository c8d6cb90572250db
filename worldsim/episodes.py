"""Episodes and actions, the same on every surface (Gymnasium env and vector env, gRPC sessions, player).

The engine (:class:`~worldsim.engine.Session`) knows frames, rewards and predicted terminations;
everything that makes those into *episodes* lives here, once:

- **Seeds.** ``reset(seed=s)`` gives a row Gymnasium's ``np_random`` for ``s``; each new episode
  draws its engine seed (which start clip, the diffusion noise) from it with :func:`engine_seed`.
  So ``reset(seed=3)`` shows the same first frame through ``WorldEnv``, row 0 of
  ``WorldVectorEnv``, ``RemoteWorld`` and the player, and ``reset()`` afterwards continues the
  same sequence. :func:`row_seeds` spreads one seed over rows as Gymnasium's vector envs do.
- **Time limit.** :func:`truncated` is Gymnasium's ``TimeLimit`` rule: ``truncated`` is True
  once ``max_episode_steps`` steps were taken, *whatever* ``terminated`` says (both may be
  True; ``gym.make`` of a registered world applies the same wrapper). ``max_episode_steps=None``
  means :func:`default_max_episode_steps`; 0 means no limit.
- **Done and autoreset.** :class:`EpisodeTracker` counts each row's steps and return and marks
  it done at ``terminated or truncated``. With ``autoreset=True`` (Gymnasium's ``NEXT_STEP``) the
  step after a row's end resets that row instead of stepping it.
- **Episode statistics.** At an episode end, :meth:`EpisodeTracker.episode_info` gives the
  ``{"r", "l", "t"}`` dict Stable-Baselines3's ``Monitor`` writes (``t``: seconds since the
  tracker was made), so SB3 logs ``ep_rew_mean`` without a ``VecMonitor``.
- **Actions.** :func:`validate_action` checks ONE action, :func:`validate_actions` a batch of
  them, with the same decision and wording everywhere (the value checks are
  :meth:`worldsim.spaces.ActionSpec.check_values`). The rules: one action has the space's shape
  (Discrete: a scalar, or one number in a list); integer spaces accept integral floats
  (``1.0``) and refuse fractions; NaN, infinity and out-of-range values are refused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.utils import seeding

from worldsim.spaces import ActionError, ActionSpec, as_array

DEFAULT_MAX_EPISODE_STEPS = 1000
"""Time limit of a world that is not bundled (a bundled world's is its ``WorldDef.max_episode_steps``)."""


# ---------------------------------------------------------------------------- seeds
def row_seeds(seed: int | Sequence[int | None] | None, n: int) -> list[int | None]:
    """Per-row seeds, as Gymnasium's vector envs spread them: None -> all None, ``s`` -> ``s + i``,
    a sequence -> itself (its length must be ``n``)."""
    if seed is None:
        return [None] * n
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    seeds = [None if s is None else int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} rows")
    return seeds


def np_random(seed: int | None = None) -> np.random.Generator:
    """Gymnasium's ``np_random`` for ``seed`` (None: fresh entropy), as ``Env.reset(seed=...)`` makes it."""
    rng, _ = seeding.np_random(seed)
    return rng


def engine_seed(rng: np.random.Generator) -> int:
    """The engine seed of a new episode (start clip and noise), drawn from the row's ``np_random``."""
    return int(rng.integers(2**31 - 1))


# ---------------------------------------------------------------------------- time limit
def default_max_episode_steps(world_name: str | None) -> int:
    """A bundled world's ``max_episode_steps``, else :data:`DEFAULT_MAX_EPISODE_STEPS`.

    ``world_name``: the name a world is stored under (``WorldConfig.name``) or given on the
    command line (``"cartpole"``)."""
    if world_name:
        try:
            from worldsim.worlds import get_world, list_worlds

            if world_name in list_worlds():
                return int(get_world(world_name).max_episode_steps)
        except (FileNotFoundError, ImportError, KeyError):
            pass
    return DEFAULT_MAX_EPISODE_STEPS


def resolve_max_episode_steps(max_episode_steps: int | None, world_name: str | None) -> int:
    """None -> the world's default limit; 0 -> 0 (no limit); otherwise itself (must be >= 0)."""
    if max_episode_steps is None:
        return default_max_episode_steps(world_name)
    if max_episode_steps < 0:
        raise ValueError(f"max_episode_steps must be >= 0 (0: no limit) or None (the default), got {max_episode_steps}")
    return int(max_episode_steps)


def truncated(elapsed: np.ndarray | int, max_episode_steps: int) -> np.ndarray:
    """Gymnasium's ``TimeLimit`` rule: the limit is reached (whatever ``terminated`` says); 0: no limit."""
    e = np.asarray(elapsed)
    return e >= max_episode_steps if max_episode_steps > 0 else np.zeros(e.shape, dtype=bool)


# ---------------------------------------------------------------------------- the tracker
class EpisodeTracker:
    """Episode bookkeeping for ``num_rows`` rows: seeds, elapsed steps, returns, done, autoreset.

    The caller resets rows in the engine with the seeds :meth:`begin` returns and reports each
    engine step to :meth:`record`::

        seeds = tracker.begin(rows, seeds=[3])      # engine seeds, from the rows' np_random
        session.reset(seed=seeds, rows=rows)
        out = session.step(actions)
        truncated = tracker.record(out.rewards, out.terminated)
    """

    def __init__(self, num_rows: int, max_episode_steps: int = 0, autoreset: bool = False) -> None:
        if num_rows < 1:
            raise ValueError(f"num_rows must be >= 1, got {num_rows}")
        if max_episode_steps < 0:
            raise ValueError(f"max_episode_steps must be >= 0 (0: no limit), got {max_episode_steps}")
        self.num_rows = num_rows
        self.max_episode_steps = max_episode_steps
        self.autoreset = autoreset
        self.rngs: list[np.random.Generator | None] = [None] * num_rows
        self.elapsed = np.zeros(num_rows, dtype=np.int64)
        self.returns = np.zeros(num_rows, dtype=np.float64)
        self.done = np.zeros(num_rows, dtype=bool)
        self.started = np.zeros(num_rows, dtype=bool)
        self.t0 = time.perf_counter()
        self._episode_t0 = np.full(num_rows, self.t0)

    def seed(self, rows: Sequence[int], seeds: Sequence[int | None]) -> None:
        """Give rows Gymnasium's ``np_random`` for their seeds (None keeps a row's generator)."""
        for r, s in zip(rows, seeds):
            if s is not None:
                self.rngs[int(r)] = np_random(int(s))

    def set_rng(self, row: int, rng: np.random.Generator) -> None:
        """Use ``rng`` (for example ``Env.np_random``) as the row's generator."""
        self.rngs[row] = rng

    def rng(self, row: int) -> np.random.Generator:
        """The row's generator; fresh entropy on a first unseeded reset, as Gymnasium does."""
        rng = self.rngs[row]
        if rng is None:
            rng = self.rngs[row] = np_random()
        return rng

    def begin(self, rows: Sequence[int] | np.ndarray, seeds: Sequence[int | None] | None = None) -> list[int]:
        """New episodes in ``rows`` (after seeding them with ``seeds``); their engine seeds."""
        rows = [int(r) for r in rows]
        if seeds is not None:
            self.seed(rows, seeds)
        out = [engine_seed(self.rng(r)) for r in rows]
        self.elapsed[rows], self.returns[rows] = 0, 0.0
        self.done[rows], self.started[rows] = False, True
        self._episode_t0[rows] = time.perf_counter()
        return out

    def pending_resets(self) -> np.ndarray:
        """``autoreset`` (NEXT_STEP): the rows whose episode ended last step, to reset instead of step."""
        return np.flatnonzero(self.done) if self.autoreset else np.zeros(0, dtype=np.int64)

    def record(
        self, rewards: np.ndarray, terminated: np.ndarray, rows: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """One engine step of ``rows`` (all by default): count it, add the rewards; ``truncated``."""
        idx = np.arange(self.num_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        if not self.started[idx].all():
            raise RuntimeError("call reset() before step()")
        self.elapsed[idx] += 1
        self.returns[idx] += np.asarray(rewards, dtype=np.float64)
        trunc = truncated(self.elapsed[idx], self.max_episode_steps)
        self.done[idx] = np.asarray(terminated, dtype=bool) | trunc
        return trunc

    def episode_info(self, row: int) -> dict[str, float | int]:
        """The ended (or current) episode of ``row`` as SB3's ``Monitor`` reports it: return ``r``,
        length ``l``, and ``t``, seconds since the tracker was made."""
        return {
            "r": round(float(self.returns[row]), 6),
            "l": int(self.elapsed[row]),
            "t": round(time.perf_counter() - self.t0, 6),
        }


# ---------------------------------------------------------------------------- actions
def validate_action(spec: ActionSpec, action: Any) -> np.ndarray:
    """ONE action -> its canonical form (shape ``spec.per_action_shape``), or :class:`ActionError`
    whose message speaks of one action. The rules are in the module docstring."""
    a = as_array(action, "the action")
    want = spec.per_action_shape
    shapes = {want, tuple(spec.shape)} if spec.kind != "discrete" and spec.shape else {want}
    if spec.kind == "discrete":
        shapes.add((1,))
    if a.shape not in shapes:
        what = "a scalar" if want == () else f"shape {want}"
        raise ActionError(f"expected one action ({what}) for {spec.describe()}, got {a.tolist()!r} of shape {a.shape}")
    return spec.check_values(a.reshape(1, *want), one=True)[0]


def validate_actions(spec: ActionSpec, actions: Any, num: int) -> np.ndarray:
    """A batch of ``num`` actions (one per row) -> canonical ``(num, ...)``; messages speak of the batch."""
    return spec.validate(actions, batch=num)


__all__ = [
    "DEFAULT_MAX_EPISODE_STEPS",
    "EpisodeTracker",
    "default_max_episode_steps",
    "engine_seed",
    "np_random",
    "resolve_max_episode_steps",
    "row_seeds",
    "truncated",
    "validate_action",
    "validate_actions",
]
