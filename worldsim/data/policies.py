"""Recording policies. All randomness comes from the seeded ``np.random.Generator`` they get.

- ``random``: uniform over the action space;
- ``sticky``: a random action held for a random number of frames, as a player holds keys;
- ``scripted``: a per-world controller (CartPole: a PD controller that balances, with random
  bursts so recoveries and failures are in the data too);
- ``human``: the keyboard in a pygame window, through the world's key map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Policy = Callable[[Any, np.ndarray], Any]  # (env, last frame) -> action


def make_policy(name: str, env: Any, rng: np.random.Generator, world: Any = None) -> Policy:
    space = env.action_space
    space.seed(int(rng.integers(2**31)))
    if name == "random":
        return lambda env, frame: space.sample()
    if name == "sticky":
        state = {"left": 0, "action": space.sample()}

        def sticky(env: Any, frame: np.ndarray) -> Any:
            if state["left"] <= 0:
                state["action"], state["left"] = space.sample(), int(rng.geometric(1 / 6))
            state["left"] -= 1
            return state["action"]

        return sticky
    if name == "scripted":
        return _scripted(env, rng)
    if name == "human":
        return _human(env, world)
    raise ValueError(f"unknown policy {name!r}: random, sticky, scripted or human")


def _scripted(env: Any, rng: np.random.Generator) -> Policy:
    spec_id = env.spec.id if env.spec is not None else ""
    if "Breakout" in spec_id:
        return _breakout(rng)
    if not spec_id.startswith("CartPole"):
        raise ValueError(f"no scripted policy for {spec_id!r}: use random, sticky or human")
    # Per episode: a target cart position, a gain jitter, and random bursts.
    target = float(rng.uniform(-0.8, 0.8))
    state = {"burst": 0, "burst_action": 0}

    def cartpole(env: Any, frame: np.ndarray) -> int:
        x, x_dot, theta, theta_dot = env.unwrapped.state
        if state["burst"] > 0:
            state["burst"] -= 1
            return state["burst_action"]
        if rng.random() < 0.01:  # a short burst of one held key: the pole gets pushed off balance
            state["burst"], state["burst_action"] = int(rng.integers(2, 4)), int(rng.integers(2))
        if rng.random() < 0.05:  # occasional single random presses
            return int(rng.integers(2))
        u = 10.0 * theta + 2.0 * theta_dot + 0.3 * (x - target) + 0.6 * x_dot
        return int(u > 0)

    return cartpole


def _human(env: Any, world: Any) -> Policy:
    import os

    if not os.environ.get("DISPLAY") and os.environ.get("SDL_VIDEODRIVER") != "dummy":
        raise RuntimeError("the human policy needs a display (no DISPLAY set)")
    if world is None or not world.keymap:
        raise ValueError("the human policy needs a bundled world with a key map")
    import pygame

    pygame.init()
    screen = pygame.display.set_mode((384, 384))
    clock = pygame.time.Clock()
    keys = {pygame.key.key_code(k): a for k, a in world.keymap.items()}

    def human(env: Any, frame: np.ndarray) -> Any:
        pygame.event.pump()
        pressed = pygame.key.get_pressed()
        action = world.default_action
        for code, a in keys.items():
            if pressed[code]:
                action = a
        surf = pygame.surfarray.make_surface(np.repeat(np.repeat(frame, 6, 0), 6, 1).swapaxes(0, 1))
        screen.blit(surf, (0, 0))
        pygame.display.flip()
        clock.tick(world.fps)
        return action

    return human


def _breakout(rng: np.random.Generator) -> Policy:
    """Follow the ball with the paddle (positions from RAM), with an offset and some noise."""
    offset = float(rng.uniform(-8, 8))

    def breakout(env: Any, frame: np.ndarray) -> int:
        ram = env.unwrapped.ale.getRAM()
        paddle, ball_x, ball_y = int(ram[72]), int(ram[99]), int(ram[101])
        if ball_y == 0 or rng.random() < 0.03:
            return 1  # FIRE: serve the ball
        if rng.random() < 0.1:
            return int(rng.integers(4))
        target = ball_x + offset - 40  # RAM paddle x is offset from the ball's coordinate frame
        if paddle < target - 4:
            return 2
        if paddle > target + 4:
            return 3
        return 0

    return breakout
