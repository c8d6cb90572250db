"""The player's game logic, without a window: backends, the real game for compare mode, state.

``PlayerCore`` takes one action per frame and advances the neural world (a local engine or a
remote one) and, in compare mode, the real game in lock step; it keeps the HUD's state and the
recording. The pygame front end (``app.py``) only turns events into calls here and draws what
it returns, so everything here runs and is tested without a window.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.episodes import EpisodeTracker, resolve_max_episode_steps, validate_action
from worldsim.play.recorder import Recorder
from worldsim.real import GameSpec, RealGame

GAP = 4
"""Pixels between the neural and the real frame in compare mode (keeps 64+4+64 a multiple of 4)."""


class LocalBackend:
    """The engine in this process: one Session row, with the episode rules every surface shares
    (:mod:`worldsim.episodes`: seeds, time limit, action validation), so ``reset(seed=s)`` and the
    steps after it show what ``WorldEnv`` shows. ``max_episode_steps``: None is the world's
    default limit, 0 none."""

    remote = False

    def __init__(self, world: Any, seed: int | None = None, max_episode_steps: int | None = None) -> None:
        self.world = world
        self.session = world.session(batch=1, seed=0)  # reseeded by every reset
        self.spec = world.action_spec
        self.name = str(world.config.name)
        self.fps = float(world.config.fps)
        self.context_frames = int(world.config.context_frames)
        self.image_size = int(world.config.codec.image_size)
        self.episodes = EpisodeTracker(1, resolve_max_episode_steps(max_episode_steps, self.name))
        self.last_rtt_ms: float | None = None

    def reset(
        self, seed: int | None = None, frames: np.ndarray | None = None, actions: np.ndarray | None = None
    ) -> np.ndarray:
        """A new episode (``seed`` reseeds the row's ``np_random``, None continues it); its first frame."""
        engine_seeds = self.episodes.begin([0], [seed])
        return self.session.reset(frames=frames, actions=actions, seed=engine_seeds, rows=[0])[0]

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, float]:
        """(frame, reward, terminated, truncated, model latency in ms); ActionError for a bad action."""
        a = validate_action(self.spec, action)
        out = self.session.step(a[None])
        truncated = self.episodes.record(out.rewards, out.terminated)
        return out.frames[0], float(out.rewards[0]), bool(out.terminated[0]), bool(truncated[0]), out.latency_ms

    def close(self) -> None:
        pass


class RemoteBackend:
    """A world served by ``worldsim serve`` (``--remote host:port``), through an open
    :class:`~worldsim.client.RemoteWorld` (``worldsim.play.build`` opens it)."""

    remote = True

    def __init__(self, env: Any) -> None:
        self.env = env
        self.spec = env.action_spec
        self.name = env.world_name
        info = env.world_info
        self.fps = float(info.get("fps") or env.metadata["render_fps"])
        self.context_frames = int(info.get("context_frames") or 0)
        self.image_size = int(info["observation_shape"][0])
        self.last_rtt_ms: float | None = None

    def reset(
        self, seed: int | None = None, frames: np.ndarray | None = None, actions: np.ndarray | None = None
    ) -> np.ndarray:
        options = None if frames is None else {"frames": frames, "actions": actions}
        return self.env.reset(seed=seed, options=options)[0]

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, float]:
        t0 = time.perf_counter()
        obs, r, term, trunc, _ = self.env.step(action)
        self.last_rtt_ms = (time.perf_counter() - t0) * 1e3
        return obs, float(r), bool(term), bool(trunc), float(self.env.last_latency_ms)

    def close(self) -> None:
        self.env.close()


class CompareGame:
    """The real game beside the neural one (compare mode): :class:`worldsim.real.RealGame` for a
    ``WorldDef``-like object, its frames at the model's size; frozen once its episode ends."""

    def __init__(self, world_def: Any, size: int = 64, action_spec: Any = None) -> None:
        spec = dataclasses.replace(GameSpec.from_world(world_def), size=size)
        self.game = RealGame(spec, action_spec, getattr(world_def, "true_state", None))

    @property
    def env(self) -> Any:
        """The Gymnasium env (scripted policies read its state)."""
        return self.game.env

    @property
    def done(self) -> bool:
        return self.game.done

    @done.setter
    def done(self, value: bool) -> None:
        self.game.done = value

    def reset(self, seed: int | None, k: int, default_action: Any) -> tuple[np.ndarray, np.ndarray]:
        """Reset and play ``k - 1`` idle frames: K context frames and the actions between them."""
        frames, actions = [self.game.reset(seed)], [_idle(default_action, 0)]
        for i in range(k - 1):
            a = _idle(default_action, i)
            if not self.game.done:
                self.game.step(a)
            frames.append(self.game.frame())
            actions.append(a)
        self.game.done = False
        return np.stack(frames), np.asarray(actions)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool]:
        """One frame (``frameskip`` env steps, the action held); a finished game stays frozen."""
        if self.game.done:
            return self.game.frame(), 0.0, True
        out = self.game.step(action)
        return self.game.frame(), out.reward, out.done

    def close(self) -> None:
        self.game.close()


def _idle(default_action: Any, i: int) -> Any:
    return i % 2 if default_action == "alternate" else default_action


@dataclass
class PlayerState:
    """Everything the HUD shows."""

    frame: np.ndarray
    real_frame: np.ndarray | None = None
    frame_index: int = 0
    action: Any = None
    reward: float = 0.0
    episode_return: float = 0.0
    terminated: bool = False
    truncated: bool = False
    real_reward: float = 0.0
    real_return: float = 0.0
    real_done: bool = False
    latency_ms: float = 0.0
    rtt_ms: float | None = None
    paused: bool = False
    recording: bool = False
    step_times: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Frames per second actually played, over the last 30 frames."""
        t = self.step_times[-30:]
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0


class PlayerCore:
    """Actions in, frames out: the neural world and, in compare mode, the real game in lock step."""

    def __init__(
        self,
        backend: Any,
        real: CompareGame | None = None,
        default_action: Any = 0,
        seed: int | None = None,
        record_scale: int = 4,
    ) -> None:
        self.backend, self.real, self.default_action = backend, real, default_action
        self.seed, self.record_scale = seed, record_scale
        self.episode = 0
        self.recorder: Recorder | None = None
        size = getattr(backend, "image_size", 64)
        self.state = PlayerState(frame=np.zeros((size, size, 3), np.uint8))
        self.reset()

    # ------------------------------------------------------------------ game
    def reset(self) -> None:
        """A new episode in both games (the neural one from the real game's first frames).

        The first episode is seeded with ``seed``; later ones continue from it, as
        ``env.reset(seed=s)`` then ``env.reset()`` do, so a seeded session replays exactly."""
        seed = self.seed if self.episode == 0 else None
        self.episode += 1
        if self.real is not None:
            k = max(1, int(getattr(self.backend, "context_frames", 1) or 1))
            frames, actions = self.real.reset(seed, k, self.default_action)
            frame = self.backend.reset(seed=seed, frames=frames, actions=actions)
            real = frames[-1]
        else:
            frame, real = self.backend.reset(seed=seed), None
        self.state = PlayerState(
            frame=frame, real_frame=real, recording=self.recorder is not None, paused=self.state.paused
        )
        self._record()

    def toggle_pause(self) -> bool:
        self.state.paused = not self.state.paused
        return self.state.paused

    def step(self, action: Any) -> bool:
        """Advance both games by one frame with ``action``; False (nothing happens) if paused."""
        s = self.state
        if s.paused:
            return False
        frame, reward, term, trunc, latency = self.backend.step(action)
        s.frame, s.reward, s.terminated, s.truncated, s.latency_ms = frame, reward, term, trunc, latency
        s.rtt_ms = getattr(self.backend, "last_rtt_ms", None)
        s.action, s.frame_index = action, s.frame_index + 1
        s.episode_return += reward
        if self.real is not None:
            s.real_frame, s.real_reward, s.real_done = self.real.step(action)
            s.real_return += s.real_reward
        s.step_times.append(time.perf_counter())
        del s.step_times[:-60]
        self._record()
        return True

    @property
    def over(self) -> bool:
        """The episode has ended (the model predicted termination, the time limit, or the real game ended)."""
        return self.state.terminated or self.state.truncated or self.state.real_done

    def view(self) -> np.ndarray:
        """What the player sees at model resolution: the neural frame, or neural | gap | real."""
        if self.state.real_frame is None:
            return self.state.frame.copy()
        gap = np.full((self.state.frame.shape[0], GAP, 3), 48, np.uint8)
        return np.concatenate([self.state.frame, gap, self.state.real_frame], axis=1)

    # ------------------------------------------------------------------ recording
    @property
    def recording(self) -> bool:
        return self.recorder is not None

    def start_recording(self, path: str | Path, fps: float) -> None:
        """Record from the current frame on, to ``path`` (.gif or .mp4)."""
        if self.recorder is not None:
            self.stop_recording()
        self.recorder = Recorder(path, fps, self.record_scale)
        self.state.recording = True
        self._record()

    def stop_recording(self) -> Path | None:
        """Finish the file; its path (None if nothing was recording)."""
        rec, self.recorder = self.recorder, None
        self.state.recording = False
        return rec.close() if rec is not None else None

    def _record(self) -> None:
        if self.recorder is not None:
            self.recorder.add(self.view())

    def close(self) -> None:
        self.stop_recording()
        self.backend.close()
        if self.real is not None:
            self.real.close()
