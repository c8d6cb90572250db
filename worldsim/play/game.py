"""The player's game logic, without a window: backends, the real game for compare mode, state.

The pygame front end (``app.py``) only turns events into calls here and draws what it returns,
so everything below is tested headless.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class LocalBackend:
    """The engine in this process (one Session row)."""

    def __init__(self, world: Any, seed: int | None = None) -> None:
        self.world = world
        self.session = world.session(batch=1, seed=seed)
        self.spec = world.action_spec
        self.fps = int(world.config.fps)
        self.context_frames = int(world.config.context_frames)

    def reset(
        self, seed: int | None = None, frames: np.ndarray | None = None, actions: np.ndarray | None = None
    ) -> np.ndarray:
        return self.session.reset(frames=frames, actions=actions, seed=seed)[0]

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, float]:
        out = self.session.step(np.asarray(action)[None] if np.ndim(action) else [action])
        return out.frames[0], float(out.rewards[0]), bool(out.terminated[0]), False, out.latency_ms

    def close(self) -> None:
        pass


class RemoteBackend:
    """A world served by ``worldsim serve`` (``--remote host:port``)."""

    def __init__(self, address: str, world: str, seed: int | None = None, token: str | None = None) -> None:
        from worldsim.client import RemoteWorld

        self.env = RemoteWorld(address, world, token=token, seed=seed)
        self.spec = self.env.spec_
        self.fps = int(self.env.metadata["render_fps"])
        self.context_frames = 0

    def reset(
        self, seed: int | None = None, frames: np.ndarray | None = None, actions: np.ndarray | None = None
    ) -> np.ndarray:
        return self.env.reset(seed=seed)[0]

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, float]:
        obs, r, term, trunc, _ = self.env.step(action)
        return obs, r, term, trunc, self.env.last_latency_ms

    def close(self) -> None:
        self.env.close()


class RealGame:
    """The real game behind a bundled world, preprocessed exactly like the recordings."""

    def __init__(self, world_def: Any) -> None:
        from worldsim.data.frames import preprocess

        self.wd = world_def
        self.env = world_def.make_env()
        self._pre = lambda: preprocess(self.env.render(), world_def.crop)
        self.done = False

    def reset(self, seed: int | None, k: int, default_action: Any) -> tuple[np.ndarray, np.ndarray]:
        """Reset and play ``k - 1`` default steps: K context frames and the actions between them."""
        self.env.reset(seed=seed)
        frames, actions = [self._pre()], [0 if default_action == "alternate" else default_action]
        for i in range(k - 1):
            a = i % 2 if default_action == "alternate" else default_action
            self._step_raw(a)
            frames.append(self._pre())
            actions.append(a)
        self.done = False
        return np.stack(frames), np.asarray(actions)

    def _step_raw(self, action: Any) -> tuple[float, bool]:
        total, done = 0.0, False
        for _ in range(self.wd.frameskip):
            _, r, term, trunc, _ = self.env.step(action)
            total += float(r)
            done = bool(term or trunc)
            if done:
                break
        return total, done

    def step(self, action: Any) -> tuple[np.ndarray, float, bool]:
        if self.done:
            return self._pre(), 0.0, True
        r, self.done = self._step_raw(action)
        return self._pre(), r, self.done

    def close(self) -> None:
        self.env.close()


@dataclass
class PlayerState:
    frame: np.ndarray
    real_frame: np.ndarray | None = None
    frame_index: int = 0
    action: Any = None
    reward: float = 0.0
    terminated: bool = False
    real_done: bool = False
    latency_ms: float = 0.0
    paused: bool = False
    recording: bool = False
    episode_return: float = 0.0
    step_times: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        t = self.step_times[-30:]
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0


class PlayerCore:
    """Actions in, frames out: the neural world (and optionally the real game in lock step)."""

    def __init__(
        self, backend: Any, real: RealGame | None = None, default_action: Any = 0, seed: int | None = None
    ) -> None:
        self.backend, self.real, self.default_action = backend, real, default_action
        self.seed = seed
        self.episode = 0
        self.video: list[np.ndarray] = []
        self.state = PlayerState(frame=np.zeros((64, 64, 3), np.uint8))
        self.reset()

    def reset(self) -> None:
        seed = None if self.seed is None else self.seed + self.episode
        self.episode += 1
        if self.real is not None:
            k = max(1, getattr(self.backend, "context_frames", 1))
            frames, actions = self.real.reset(seed, k, self.default_action)
            frame = self.backend.reset(seed=seed, frames=frames, actions=actions)
            real = frames[-1]
        else:
            frame, real = self.backend.reset(seed=seed), None
        recording = self.state.recording
        self.state = PlayerState(frame=frame, real_frame=real, recording=recording)

    def toggle_pause(self) -> None:
        self.state.paused = not self.state.paused

    def step(self, action: Any) -> bool:
        """Advance both games by one frame (unless paused); False if paused."""
        s = self.state
        if s.paused:
            return False
        frame, reward, term, trunc, latency = self.backend.step(action)
        s.frame, s.reward, s.terminated, s.latency_ms = frame, reward, term or trunc, latency
        s.action, s.frame_index = action, s.frame_index + 1
        s.episode_return += reward
        if self.real is not None:
            s.real_frame, _, s.real_done = self.real.step(action)
        s.step_times.append(time.perf_counter())
        if s.recording:
            self.video.append(self.view())
        return True

    def view(self) -> np.ndarray:
        """What the player sees at model resolution: the neural frame, or neural | real."""
        if self.state.real_frame is None:
            return self.state.frame.copy()
        gap = np.full((self.state.frame.shape[0], 2, 3), 40, np.uint8)
        return np.concatenate([self.state.frame, gap, self.state.real_frame], axis=1)

    def start_recording(self) -> None:
        self.video = [self.view()]
        self.state.recording = True

    def stop_recording(self) -> list[np.ndarray]:
        self.state.recording = False
        out, self.video = self.video, []
        return out

    def close(self) -> None:
        self.backend.close()
        if self.real is not None:
            self.real.close()
