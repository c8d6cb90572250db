"""The player's game logic, without a window: backends, the real game for compare mode, state.

``PlayerCore`` takes one action per frame and advances the neural world (a local engine or a
remote one) and, in compare mode, the real game in lock step; it keeps the HUD's state and the
recording. The pygame front end (``app.py``) only turns events into calls here and draws what
it returns, so everything here runs and is tested without a window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.play.recorder import Recorder

GAP = 4
"""Pixels between the neural and the real frame in compare mode (keeps 64+4+64 a multiple of 4)."""


class LocalBackend:
    """The engine in this process (one Session row)."""

    remote = False

    def __init__(self, world: Any, seed: int | None = None) -> None:
        self.world = world
        self.session = world.session(batch=1, seed=seed)
        self.spec = world.action_spec
        self.name = str(world.config.name)
        self.fps = float(world.config.fps)
        self.context_frames = int(world.config.context_frames)
        self.image_size = int(world.config.codec.image_size)
        self.last_rtt_ms: float | None = None

    def reset(
        self, seed: int | None = None, frames: np.ndarray | None = None, actions: np.ndarray | None = None
    ) -> np.ndarray:
        return self.session.reset(frames=frames, actions=actions, seed=seed)[0]

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, float]:
        out = self.session.step(np.asarray(action)[None])
        return out.frames[0], float(out.rewards[0]), bool(out.terminated[0]), False, out.latency_ms

    def close(self) -> None:
        pass


class RemoteBackend:
    """A world served by ``worldsim serve`` (``--remote host:port``), through ``RemoteWorld``."""

    remote = True

    def __init__(self, address: str, world: str, seed: int | None = None, token: str | None = None) -> None:
        from worldsim.client import RemoteWorld

        self.env = RemoteWorld(address, world, token=token, seed=seed)
        self.spec = self.env.action_spec
        self.name = world
        info = self.env.world_info
        self.fps = float(info.get("fps") or self.env.metadata["render_fps"])
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


class RealGame:
    """The real game behind a world (a ``WorldDef``-like object: ``make_env``, ``frameskip``,
    ``crop``), its frames preprocessed to the model's size exactly like the recordings."""

    def __init__(self, world_def: Any, size: int = 64) -> None:
        from worldsim.data.frames import preprocess

        self.wd = world_def
        self.env = world_def.make_env()
        self.frameskip = max(1, int(getattr(world_def, "frameskip", 1)))
        crop = getattr(world_def, "crop", None)
        self._pre = lambda: preprocess(self.env.render(), crop, size)
        self.done = False

    def reset(self, seed: int | None, k: int, default_action: Any) -> tuple[np.ndarray, np.ndarray]:
        """Reset and play ``k - 1`` idle steps: K context frames and the actions between them."""
        self.env.reset(seed=seed)
        frames, actions = [self._pre()], [_idle(default_action, 0)]
        for i in range(k - 1):
            a = _idle(default_action, i)
            self._step_raw(a)
            frames.append(self._pre())
            actions.append(a)
        self.done = False
        return np.stack(frames), np.asarray(actions)

    def _step_raw(self, action: Any) -> tuple[float, bool]:
        total, done = 0.0, False
        for _ in range(self.frameskip):
            _, r, term, trunc, _ = self.env.step(action)
            total += float(r)
            done = bool(term or trunc)
            if done:
                break
        return total, done

    def step(self, action: Any) -> tuple[np.ndarray, float, bool]:
        """One frame (``frameskip`` env steps, the action held); a finished game stays frozen."""
        if self.done:
            return self._pre(), 0.0, True
        r, self.done = self._step_raw(action)
        return self._pre(), r, self.done

    def close(self) -> None:
        self.env.close()


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
        real: RealGame | None = None,
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
        """A new episode in both games (the neural one from the real game's first frames)."""
        seed = None if self.seed is None else self.seed + self.episode
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
        s.frame, s.reward, s.terminated, s.latency_ms = frame, reward, term or trunc, latency
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
        """The episode has ended (the model predicted termination, or the real game ended)."""
        return self.state.terminated or self.state.real_done

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
