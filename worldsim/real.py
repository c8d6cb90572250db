"""The real game behind a world: the one module that makes and steps the Gymnasium env.

Everything that plays the real game (recording, evaluation, the player's compare view, tests)
goes through :class:`RealGame`, so a recorded frame, an evaluated frame and a played frame are
made the same way:

- the env: ``gym.make(env_id, render_mode="rgb_array", max_episode_steps=max_steps * frameskip,
  **env_kwargs)`` (ALE games registered here, the one place it happens);
- one *frame* = ``frameskip`` env steps with the action held, rewards summed, stopping at an
  episode end (:meth:`RealGame.step`);
- the frame itself: the render cropped and area-resized to 64x64 by
  :func:`worldsim.data.frames.preprocess` (:meth:`RealGame.frame`);
- branching: :meth:`RealGame.snapshot` / :meth:`RealGame.restore`. Classic-control envs keep
  their state in a float ``unwrapped.state`` (copied, with the env's ``np_random`` state and
  CartPole's ``steps_beyond_terminated``); ALE envs via ``ale.cloneState(include_rng=True)``;
  any other env returns None (replay from the seed instead, :meth:`RealGame.replay_actions`).
  The time limit's elapsed-step count is saved and restored too.

Typical use::

    game = RealGame.from_world(get_world("cartpole"))       # or RealGame.from_manifest(manifest)
    frame = game.reset(seed=0)                               # (64, 64, 3) uint8
    step = game.step(1)                                      # Step(reward, terminated, truncated)
    frame = game.frame()
    snap = game.snapshot(); game.step(0); game.restore(snap) # back to the same state

Actions: with an :class:`~worldsim.spaces.ActionSpec` given, :meth:`RealGame.step` takes the
*canonical* actions the world uses (converted by :func:`env_action`); without one, what the env's
``step`` takes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from worldsim.spaces import ActionSpec

log = logging.getLogger(__name__)

Crop = tuple[int, int, int, int]


class RealGameError(RuntimeError):
    """The real game cannot be made or branched as asked (the message says how to fix it)."""


@dataclass(frozen=True)
class GameSpec:
    """How the real game is made and framed: what a recording's manifest or a ``WorldDef`` says."""

    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    frameskip: int = 1
    """Env steps per frame (the action held, rewards summed)."""
    crop: Crop | None = None
    """(top, bottom, left, right) of the render, before the resize."""
    max_steps: int | None = 500
    """Frames after which the env's time limit truncates (None: the env's own limit)."""
    size: int = 64
    """Side of the square frames."""

    @classmethod
    def from_world(cls, world_def: Any, max_steps: int | None = None) -> GameSpec:
        """From a bundled ``WorldDef``; ``max_steps`` defaults to its recording recipe's."""
        return cls(
            world_def.env_id,
            dict(world_def.env_kwargs),
            int(world_def.frameskip),
            tuple(world_def.crop) if world_def.crop is not None else None,  # type: ignore[arg-type]
            int(world_def.record.max_episode_steps) if max_steps is None else max_steps,
        )

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> GameSpec:
        """From a ``worldsim record`` manifest (env_id, env_kwargs, frameskip, crop, max_steps)."""
        if "env_id" not in manifest:
            raise RealGameError("the manifest has no env_id: is it a `worldsim record` data set's manifest.json?")
        crop = manifest.get("crop")
        return cls(
            manifest["env_id"],
            dict(manifest.get("env_kwargs") or {}),
            int(manifest.get("frameskip", 1)),
            tuple(int(c) for c in crop) if crop is not None else None,  # type: ignore[arg-type]
            int(manifest.get("max_steps", 500)),
        )


class Step(NamedTuple):
    """One frame's outcome."""

    reward: float
    terminated: bool
    truncated: bool

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


@dataclass
class Snapshot:
    """A branch point of the real game (see :meth:`RealGame.snapshot`)."""

    kind: str  # "vector" | "ale"
    state: Any
    rng: Any
    extra: Any
    elapsed: Any


def leave_signals_to_python() -> None:
    """Keep SDL from taking SIGTERM: call before an env that renders through pygame is made.

    A pygame renderer (every classic-control env's ``rgb_array``) initialises SDL, which installs
    its own SIGTERM handler wherever the signal still has the default action, and turns the signal
    into a window event nobody reads: the process no longer stops on ``kill`` or a scheduler's
    timeout (``worldsim record`` ran to its last episode). ``SDL_NO_SIGNAL_HANDLERS=1`` leaves
    signals to Python, unless the user set the variable."""
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")


def make_env(spec: GameSpec) -> Any:
    """The Gymnasium env rendering ``rgb_array``; :class:`RealGameError` naming the fix if not."""
    import gymnasium as gym

    leave_signals_to_python()

    if spec.env_id.startswith("ALE/"):
        try:
            import ale_py
        except ImportError as e:
            raise RealGameError("Atari games need ale-py: pip install 'worldsim[atari]'") from e
        gym.register_envs(ale_py)
    limit: dict[str, Any] = {} if spec.max_steps is None else {"max_episode_steps": spec.max_steps * spec.frameskip}
    try:
        env = gym.make(spec.env_id, render_mode="rgb_array", **limit, **spec.env_kwargs)
    except gym.error.Error as e:
        raise RealGameError(f"cannot make env {spec.env_id!r}: {e}") from e
    except (TypeError, ImportError) as e:
        raise RealGameError(f"cannot make env {spec.env_id!r} with render_mode='rgb_array': {e}") from e
    modes = env.metadata.get("render_modes", [])
    if env.render_mode != "rgb_array" or "rgb_array" not in modes:
        env.close()
        raise RealGameError(f"env {spec.env_id!r} cannot render rgb_array (its render modes: {modes})")
    return env


def env_action(spec: ActionSpec, a: Any) -> Any:
    """A canonical action -> what the Gymnasium env's ``step`` takes."""
    if spec.kind == "discrete":
        return int(np.asarray(a).reshape(()))
    arr = np.asarray(a).reshape(spec.shape or (spec.n,))
    return arr.astype(np.float32) if spec.kind == "box" else arr.astype(np.int64)


class RealGame:
    """The real game, stepped frame by frame exactly as it was recorded (see the module doc).

    ``action_spec``: actions given to :meth:`step` are canonical actions of this spec (None: env
    actions). ``true_state``: env -> state vector from the game's internals (a ``WorldDef``'s).
    """

    def __init__(
        self,
        spec: GameSpec,
        action_spec: ActionSpec | None = None,
        true_state: Callable[[Any], np.ndarray] | None = None,
    ) -> None:
        self.spec = spec
        self.action_spec = action_spec
        self.frameskip = max(1, int(spec.frameskip))
        self.env = make_env(spec)
        self._true_state = true_state
        self.done = False
        self.env.reset(seed=0)  # some envs only have their state after a reset
        u: Any = self.env.unwrapped
        state = getattr(u, "state", None)
        self.kind = (
            "vector"
            if isinstance(state, np.ndarray) and np.issubdtype(state.dtype, np.floating)
            else "ale"
            if hasattr(u, "ale")
            else "replay"
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_world(
        cls, world_def: Any, action_spec: ActionSpec | None = None, max_steps: int | None = None
    ) -> RealGame:
        """The real game of a bundled world (``worldsim.worlds.get_world(name)``), with its reader's
        ``true_state``; ``max_steps`` defaults to the recording recipe's."""
        return cls(GameSpec.from_world(world_def, max_steps), action_spec, getattr(world_def, "true_state", None))

    @classmethod
    def from_manifest(
        cls,
        manifest: dict[str, Any],
        action_spec: ActionSpec | None = None,
        true_state: Callable[[Any], np.ndarray] | None = None,
    ) -> RealGame:
        """The real game a recording was made from (its ``manifest.json`` as a dict)."""
        return cls(GameSpec.from_manifest(manifest), action_spec, true_state)

    # ------------------------------------------------------------------ playing
    @property
    def can_snapshot(self) -> bool:
        """:meth:`snapshot` returns a real branch point (else None: replay instead)."""
        return self.kind in ("vector", "ale")

    @property
    def can_perturb(self) -> bool:
        """The state is a float vector that :meth:`perturb` can nudge."""
        return self.kind == "vector"

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset the env; the first frame."""
        self.env.reset(seed=seed)
        self.done = False
        return self.frame()

    def frame(self) -> np.ndarray:
        """The current frame, (size, size, 3) uint8, made as the recorder makes it."""
        from worldsim.data.frames import preprocess

        img = self.env.render()
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[-1] != 3:
            raise RealGameError(f"env rendered {type(img).__name__} {getattr(img, 'shape', '')}, not an RGB array")
        return preprocess(img, self.spec.crop, self.spec.size)

    def step(self, action: Any) -> Step:
        """One frame: ``frameskip`` env steps with the action held (stopping at an episode end),
        rewards summed. Stepping a finished game raises; :meth:`reset` or :meth:`restore` first."""
        if self.done:
            raise RealGameError("the real game's episode has ended: reset() or restore() before stepping")
        a = action if self.action_spec is None else env_action(self.action_spec, action)
        total, term, trunc = 0.0, False, False
        for _ in range(self.frameskip):
            _, r, term, trunc, _ = self.env.step(a)
            total += float(r)
            if term or trunc:
                break
        self.done = bool(term or trunc)
        return Step(total, bool(term), bool(trunc))

    def replay_actions(self, seed: int | None, actions: Sequence[Any]) -> bool:
        """Reset with ``seed`` and play ``actions`` (one per frame); False if the episode ended
        before the last one (the replay then stopped there)."""
        self.reset(seed)
        for j, a in enumerate(actions):
            if self.step(a).done and j < len(actions) - 1:
                return False
        return True

    def true_state(self) -> np.ndarray | None:
        """The state from the game's internals (None without a ``true_state`` function)."""
        return None if self._true_state is None else np.asarray(self._true_state(self.env), np.float64)

    # ------------------------------------------------------------------ branching
    def snapshot(self) -> Snapshot | None:
        """The current state, to :meth:`restore` later; None if this env cannot be snapshotted."""
        u: Any = self.env.unwrapped
        elapsed = self._elapsed()
        rng = getattr(u, "_np_random", None)
        rng_state = None if rng is None else rng.bit_generator.state
        if self.kind == "vector":
            return Snapshot("vector", np.array(u.state, copy=True), rng_state, _beyond(u), elapsed)
        if self.kind == "ale":
            return Snapshot("ale", u.ale.cloneState(include_rng=True), rng_state, None, elapsed)
        return None

    def restore(self, snap: Snapshot) -> None:
        """Back to a :meth:`snapshot`'s state (the episode is live again if it was then)."""
        if snap is None:
            raise RealGameError(f"{self.spec.env_id} cannot be snapshotted: replay from the seed (replay_actions)")
        u: Any = self.env.unwrapped
        if snap.kind == "vector":
            u.state = np.array(snap.state, copy=True)
            if hasattr(u, "steps_beyond_terminated"):
                u.steps_beyond_terminated = snap.extra
        else:
            u.ale.restoreState(snap.state)
        if snap.rng is not None and getattr(u, "_np_random", None) is not None:
            u._np_random.bit_generator.state = snap.rng
        if snap.elapsed is not None:
            self.env.set_wrapper_attr("_elapsed_steps", snap.elapsed)
        self.done = False

    def perturb(self, delta: np.ndarray) -> None:
        """Add ``delta`` to a classic-control state vector (:attr:`can_perturb`)."""
        if not self.can_perturb:
            raise RealGameError(f"{self.spec.env_id} has no float state vector to perturb")
        u: Any = self.env.unwrapped
        u.state = np.asarray(u.state, np.float64) + delta

    def _elapsed(self) -> Any:
        try:
            return self.env.get_wrapper_attr("_elapsed_steps")
        except AttributeError:
            return None

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> RealGame:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _beyond(u: Any) -> Any:
    return getattr(u, "steps_beyond_terminated", None)


def frames_match(a: np.ndarray, b: np.ndarray, tol: int = 1) -> bool:
    """Two frames agree within ``tol`` per pixel value (rounding of the area resize)."""
    return bool(np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= tol)
