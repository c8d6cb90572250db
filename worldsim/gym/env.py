"""``WorldEnv``: a neural world as a Gymnasium ``Env``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from worldsim.engine.world import WorldModel
from worldsim.gym.core import StepCore, load_world


class WorldEnv(gym.Env):
    """A learned world model stepped like the game it learned.

    ## Description
    Every step the world's causal diffusion model generates the next 64x64 frame from the
    frames so far (a rolling KV cache) and the action, in a few denoising steps; its heads
    predict the reward and whether the episode ended.

    ## Action Space
    The real game's own action space (for CartPole ``Discrete(2)``: 0 pushes left, 1 right),
    restored from the checkpoint's action spec.

    ## Observation Space
    ``Box(0, 255, (64, 64, 3), uint8)``: the generated RGB frame; ``(3, 64, 64)`` with
    ``channels_first=True``.

    ## Rewards
    The reward head's prediction for entering the new frame, as a Python ``float``: the real
    game's reward summed over the frames the world skips (CartPole: about +2 a frame).

    ## Starting State
    ``reset`` feeds the world ``context_frames`` real frames: one of the start clips shipped in
    the checkpoint, or ``options["frames"]`` (``(K, 64, 64, 3)`` uint8, with optional
    ``options["actions"]``, one per frame). The clip and the diffusion noise of the whole episode
    come from an engine seed drawn from ``self.np_random``, so ``reset(seed=s)`` replays exactly.
    The first observation is the last context frame.

    ## Episode End
    ``terminated`` by the world's end rule on its termination head (:mod:`worldsim.engine.ends`:
    the probability over the last ``term_window`` frames above ``term_threshold``; CartPole: the
    pole fell or the cart left the screen), or where ``end_rule(frames)`` says so
    when one is given (e.g. ``get_world("cartpole").frames_done``: the game's bounds read off the
    generated frame, the rule ``worldsim eval`` also ends world episodes with). ``truncated`` once
    ``max_episode_steps`` steps were taken, whatever ``terminated`` says, as Gymnasium's
    ``TimeLimit`` does (:mod:`worldsim.episodes`, the rule every surface shares). The default
    limit (``max_episode_steps=None``) is a bundled world's ``max_episode_steps`` (CartPole:
    500), else 1000 (``worldsim.episodes.DEFAULT_MAX_EPISODE_STEPS``), so a world that never
    learned to end its episodes still ends them; 0 means no limit. ``gym.make`` of a registered
    world counts the steps with its ``TimeLimit`` wrapper instead.

    ## Arguments
    ``WorldEnv(world="cartpole", render_mode=None, max_episode_steps=None (the default limit), channels_first=False,
    latency_in_info=False, end_rule=None, device=None, dtype=None)``: ``world`` is a bundled world's name, a
    checkpoint path or a loaded :class:`~worldsim.engine.WorldModel` (shared, not copied).

    ## Info
    ``frame_index``: frames generated since the reset. The wall time of each step is in
    ``env.unwrapped.last_latency_ms``; ``latency_in_info=True`` also puts it in info as
    ``latency_ms`` (off by default: Gymnasium's ``check_env`` asserts that two identically seeded
    steps return *equal* infos, which wall-clock time never is).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array", "human"], "render_fps": 15}

    def __init__(
        self,
        world: str | Path | WorldModel = "cartpole",
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        channels_first: bool = False,
        latency_in_info: bool = False,
        end_rule: Callable[[np.ndarray], np.ndarray] | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        model = load_world(world, device, dtype)
        self.core = StepCore(
            model,
            1,
            max_episode_steps=max_episode_steps,
            channels_first=channels_first,
            autoreset_mode=None,
            latency_in_info=latency_in_info,
            end_rule=end_rule,
        )
        self.metadata = {**self.metadata, "render_fps": int(model.config.fps)}
        self.render_mode = render_mode
        self.action_space = model.action_spec.to_space()
        self.observation_space = gym.spaces.Box(0, 255, self.core.obs_shape, np.uint8)
        self._window: Any = None
        self._clock: Any = None

    @property
    def world(self) -> WorldModel:
        return self.core.world

    @property
    def last_latency_ms(self) -> float:
        """Wall time of the last step (or reset), in milliseconds."""
        return self.core.last_latency_ms

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """New episode. ``options``: ``{"frames": (K, 64, 64, 3) uint8, "actions": (K, ...)}`` to
        start from given context frames instead of one of the world's start clips."""
        super().reset(seed=seed)
        t0 = time.perf_counter()
        self.core.episodes.set_rng(0, self.np_random)  # the engine seed is drawn from self.np_random
        options = options or {}
        frames = options.get("frames")
        obs = self.core.reset_rows(
            [0],
            frames=None if frames is None else np.asarray(frames),
            actions=options.get("actions"),
        )
        self.core.last_latency_ms = (time.perf_counter() - t0) * 1e3
        if self.render_mode == "human":
            self.render()
        return obs[0], self.core.row_info(self.core.info(self.core.last_latency_ms), 0)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, rew, term, trunc, info = self.core.step(self.core.validate_one(action))
        if self.render_mode == "human":
            self.render()
        return obs[0], float(rew[0]), bool(term[0]), bool(trunc[0]), self.core.row_info(info, 0)

    def render(self) -> np.ndarray | None:
        """``rgb_array``: the current frame (64, 64, 3) uint8 (always channel-last); ``human``: a
        pygame window (6x zoom) paced at ``metadata["render_fps"]``."""
        frame = self.core.session.frames[0].copy()
        if self.render_mode == "rgb_array":
            return frame
        if self.render_mode == "human":
            self._render_human(frame)
        return None

    def _render_human(self, frame: np.ndarray, zoom: int = 6) -> None:
        try:
            import pygame
        except ImportError as e:
            raise gym.error.DependencyNotInstalled(
                "render_mode='human' needs pygame, which is not installed: pip install pygame"
            ) from e
        if self._window is None:
            pygame.init()
            pygame.display.init()
            pygame.display.set_caption(f"worldsim: {self.world.config.name}")
            self._window = pygame.display.set_mode((frame.shape[1] * zoom, frame.shape[0] * zoom))
            self._clock = pygame.time.Clock()
        surf = pygame.surfarray.make_surface(frame.swapaxes(0, 1))
        self._window.blit(pygame.transform.scale(surf, self._window.get_size()), (0, 0))
        pygame.event.pump()
        pygame.display.flip()
        self._clock.tick(self.metadata["render_fps"])

    def close(self) -> None:
        if self._window is not None:
            import pygame

            pygame.display.quit()
            self._window = None
