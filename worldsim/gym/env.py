"""``WorldEnv``: a neural world as a Gymnasium ``Env``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from worldsim.engine.world import WorldModel
from worldsim.gym.core import StepCore, load_world
from worldsim.spaces import ActionError


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
    The reward head's prediction for entering the new frame, as a Python ``float``.

    ## Starting State
    ``reset`` feeds the world ``context_frames`` real frames: one of the start clips shipped in
    the checkpoint, drawn with ``self.np_random``, or ``options["frames"]`` (``(K, 64, 64, 3)``
    uint8, with optional ``options["actions"]``).

    ## Episode End
    ``terminated`` when the termination head's probability passes the world's threshold;
    ``truncated`` after ``max_episode_steps`` steps.

    ## Arguments
    ``WorldEnv(world="cartpole", render_mode=None, max_episode_steps=None, channels_first=False,
    device=None, dtype=None)``: ``world`` is a bundled world's name, a checkpoint path or a loaded
    :class:`~worldsim.engine.WorldModel` (shared, not copied).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array", "human"], "render_fps": 15}

    def __init__(
        self,
        world: str | Path | WorldModel = "cartpole",
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        channels_first: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        model = load_world(world, device, dtype)
        self.core = StepCore(model, 1, max_episode_steps, channels_first)
        self.metadata = {**self.metadata, "render_fps": int(model.config.fps)}
        self.render_mode = render_mode
        self.action_space = model.action_spec.to_space()
        self.observation_space = gym.spaces.Box(0, 255, self.core.obs_shape, np.uint8)
        self._window: Any = None
        self._clock: Any = None

    @property
    def world(self) -> WorldModel:
        return self.core.world

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.core.np_randoms[0] = self.np_random
        options = dict(options or {})
        if options.get("frames") is not None:
            options["frames"] = np.asarray(options["frames"])[None]
            if options.get("actions") is not None:
                options["actions"] = np.asarray(options["actions"])[None]
        obs, info = self.core.reset_rows([0], options)
        if self.render_mode == "human":
            self.render()
        return obs[0], {k: v[0] for k, v in info.items()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.asarray(action)
        spec = self.world.action_spec
        if a.shape != spec.per_action_shape and not (spec.kind == "discrete" and a.shape == (1,)):
            raise ActionError(
                f"expected one action of shape {spec.per_action_shape} for {self.action_space}, got shape {a.shape}"
            )
        batch = a.reshape(1, *spec.per_action_shape)
        obs, rew, term, trunc, info = self.core.step(batch)
        if self.render_mode == "human":
            self.render()
        return obs[0], float(rew[0]), bool(term[0]), bool(trunc[0]), {k: v[0].item() for k, v in info.items()}

    def render(self) -> np.ndarray | None:
        frame = self.core.session.frames[0].copy()
        if self.render_mode == "rgb_array":
            return frame
        if self.render_mode == "human":
            self._render_human(frame)
        return None

    def _render_human(self, frame: np.ndarray, zoom: int = 6) -> None:
        try:
            import pygame
        except ImportError as e:  # pragma: no cover - pygame is a dependency
            raise gym.error.DependencyNotInstalled("pygame is not installed: pip install pygame") from e
        if self._window is None:
            pygame.init()
            pygame.display.init()
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
