"""Recording policies: who presses the buttons while ``worldsim record`` runs a real game.

- ``random``: uniform over the action space;
- ``sticky``: a random action held for a random number of frames, as a player holds keys;
- ``scripted``: a per-game controller that reads the game's internals (CartPole: a PD
  controller on the pole with kicks, so data has balanced play, recoveries and failures;
  Boxing: closes in on the opponent and punches from above or below);
- ``observed``: the world's closed-loop controller (``WorldDef.controllers``) acting on the
  state its reader reads off the recorded frames, i.e. on exactly what the world will see. Its
  actions then say nothing about the game that the frames do not: a controller that reads the
  game's internals (``scripted``) pushes right *because* the pole is falling right faster than
  the pixels show, and a world trained on that learns "right means falling right", the wrong
  sign (a confounder). Mixed with exploration (which keeps the actions from being a function
  of the frames), it gives long balanced play whose actions can be learned from;
- ``human``: the keyboard in a pygame window, through the world's key map (any game: the
  default key map of its action space, or ``--keys``).

A policy is made per episode by :func:`make_policy` and called once per recorded frame as
``policy(env, frame) -> action`` (``frame`` is the last recorded 64x64 frame). All randomness
comes from the seeded ``np.random.Generator`` it is given, so a recording is reproducible.
:func:`register_policy` adds your own by name, e.g. an agent trained in the dream whose real
episodes fine-tune the world (a DIAMOND round; ``examples/dream_to_real.py --collect-out``).

**Exploration** (:class:`Exploration`, :func:`explore`) is mixed into any of them: actions that
do not depend on the game's state replace the policy's on a per-episode share of frames, and
"branching" episodes hand over to random play from a varied state until the episode ends. A
world learns what an action does only from frames where the action is not already given away
by the picture: a recording made by a good controller alone teaches the controller, not the
game (``worldsim.data.diagnostic`` measures this).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from worldsim.display import has_display

log = logging.getLogger(__name__)

Policy = Callable[[Any, np.ndarray], Any]
"""(real env, last recorded frame) -> action."""
POLICIES = ("random", "sticky", "scripted", "observed", "human")
PolicyFactory = Callable[[Any, np.random.Generator], Policy]
"""(real env, the episode's generator) -> the episode's policy."""
_REGISTERED: dict[str, PolicyFactory] = {}


def register_policy(name: str, factory: PolicyFactory) -> None:
    """Make ``name`` a recording policy (``RecordConfig.policies``) in this process.

    ``factory(env, rng)`` is called once per episode and returns ``policy(env, frame) -> action``.
    Let it act on ``frame`` (what the world will see), not on ``env``'s internals: a bot that
    reads what the frames do not show teaches the world a confounder (see ``observed`` above)."""
    if name in POLICIES:
        raise PolicyError(f"{name!r} is a built-in policy: register yours under another name")
    if not callable(factory):
        raise PolicyError(f"register_policy({name!r}, ...) needs a callable factory(env, rng) -> policy")
    _REGISTERED[name] = factory


def policy_names() -> tuple[str, ...]:
    """The built-in policies and the registered ones."""
    return (*POLICIES, *_REGISTERED)


@dataclass(frozen=True)
class Exploration:
    """State-independent exploration mixed into a recording policy, per episode.

    Each episode draws its share ``epsilon`` of exploratory frames uniformly from
    ``epsilon_range``; on such a frame a uniformly random action replaces the policy's and is
    held for a geometric number of frames (mean ``hold``: 1 = a fresh random action per frame).
    With probability ``branch`` the episode instead *branches*: the policy plays (with its
    epsilon) for ``branch_after`` frames (drawn uniformly from the range), then only random
    actions (held as above) are played until the episode ends, so the data shows what every
    action does from the varied states a good policy reaches, falls included. ``epsilon_range
    = (1, 1)`` is fully random play. The default is no exploration.
    """

    epsilon_range: tuple[float, float] = (0.0, 0.0)
    """Per-episode share of exploratory frames, drawn uniformly from [low, high] (within [0, 1])."""
    hold: float = 1.0
    """Mean number of frames an exploratory action is held (>= 1)."""
    branch: float = 0.0
    """Probability that an episode branches into random play."""
    branch_after: tuple[int, int] = (0, 200)
    """Frames of policy play before a branch, drawn uniformly from [low, high]."""

    def __post_init__(self) -> None:
        lo, hi = self.epsilon_range
        if not (0.0 <= lo <= hi <= 1.0):
            raise PolicyError(f"epsilon_range must satisfy 0 <= low <= high <= 1, got {self.epsilon_range}")
        if self.hold < 1.0:
            raise PolicyError(f"hold is a mean number of frames, >= 1; got {self.hold}")
        if not 0.0 <= self.branch <= 1.0:
            raise PolicyError(f"branch is a probability in [0, 1], got {self.branch}")
        if not 0 <= self.branch_after[0] <= self.branch_after[1]:
            raise PolicyError(f"branch_after must be 0 <= low <= high, got {self.branch_after}")

    @property
    def active(self) -> bool:
        return self.epsilon_range[1] > 0.0 or self.branch > 0.0

    def plan(self, rng: np.random.Generator) -> dict[str, Any]:
        """This episode's draw: ``{"epsilon": float, "branch_at": int | None}``."""
        lo, hi = self.epsilon_range
        epsilon = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
        branch_at = (
            int(rng.integers(self.branch_after[0], self.branch_after[1] + 1)) if rng.random() < self.branch else None
        )
        return {"epsilon": round(epsilon, 6), "branch_at": branch_at}

    def to_json(self) -> dict[str, Any]:
        return {
            "epsilon_range": list(self.epsilon_range),
            "hold": self.hold,
            "branch": self.branch,
            "branch_after": list(self.branch_after),
        }


FREE_POLICIES = ("random", "sticky")
"""Policies whose actions never depend on the game's state: every action they record is free."""


class Explored:
    """``policy`` with exploratory actions mixed in as ``plan`` (from :meth:`Exploration.plan`) says;
    :attr:`free` tells whether the last action was an exploratory one (made by :func:`explore`)."""

    def __init__(self, policy: Policy, space: Any, rng: np.random.Generator, plan: dict[str, Any], hold: float):
        import copy

        self.policy, self.rng, self.hold = policy, rng, hold
        self.sampler = copy.deepcopy(space)
        self.sampler.seed(int(rng.integers(2**31)))
        self.epsilon, self.branch_at = float(plan["epsilon"]), plan["branch_at"]
        self.t, self.left, self.action, self.free = 0, 0, None, False

    def __call__(self, env: Any, frame: np.ndarray) -> Any:
        t, self.t = self.t, self.t + 1
        own = self.policy(env, frame)
        if self.left > 0:
            self.left -= 1
            return self.action
        branched = self.branch_at is not None and t >= self.branch_at
        self.free = bool(branched or self.rng.random() < self.epsilon)
        if self.free:
            self.action = self.sampler.sample()
            self.left = int(self.rng.geometric(1.0 / self.hold)) - 1
            return self.action
        return own


def explore(policy: Policy, space: Any, rng: np.random.Generator, plan: dict[str, Any], hold: float = 1.0) -> Explored:
    """``policy`` with exploratory actions mixed in as ``plan`` (from :meth:`Exploration.plan`) says.

    The random actions come from a copy of ``space`` seeded from ``rng``, so they are uniform
    over any Gymnasium space and independent of the game's state; the policy is still called
    on every frame (its own random stream, and any state it keeps, stay as without exploration).
    A held exploratory action stays free (``Explored.free``) for every frame it is held.
    """
    return Explored(policy, space, rng, plan, hold)


class PolicyError(ValueError):
    """A policy cannot be used here (unknown name, no scripted controller, no display, ...)."""


class StopRecording(Exception):
    """The human player closed the window or pressed Escape: stop after the finished episodes."""


def make_policy(
    name: str, env: Any, rng: np.random.Generator, world: Any = None, keyboard: Keyboard | None = None
) -> Policy:
    """The policy ``name`` for one episode of ``env``.

    ``world`` is the bundled world's ``WorldDef`` (for the human policy's key map), ``keyboard``
    an open :class:`Keyboard` to reuse across episodes (made on first use otherwise).
    """
    space = env.action_space
    space.seed(int(rng.integers(2**31)))
    if name == "random":
        return lambda env, frame: space.sample()
    if name == "sticky":
        return _sticky(space, rng)
    if name == "scripted":
        return _scripted(env, rng)
    if name == "observed":
        return _observed(world)
    if name == "human":
        return (keyboard or Keyboard(world, space, fps=env.metadata.get("render_fps") or 15)).policy
    if name in _REGISTERED:
        return _REGISTERED[name](env, rng)
    raise PolicyError(f"unknown policy {name!r}: use one of {', '.join(policy_names())}")


def _sticky(space: Any, rng: np.random.Generator, mean_hold: float = 6.0) -> Policy:
    """Each sampled action is held for a geometric number of frames (mean ``mean_hold``)."""
    state = {"left": 0, "action": space.sample()}

    def sticky(env: Any, frame: np.ndarray) -> Any:
        if state["left"] <= 0:
            state["action"], state["left"] = space.sample(), int(rng.geometric(1 / mean_hold))
        state["left"] -= 1
        return state["action"]

    return sticky


def _observed(world: Any) -> Policy:
    """The world's first controller on the state read off the last two recorded frames."""
    if world is None or not getattr(world, "controllers", None) or world.state_reader is None:
        raise PolicyError(
            "the observed policy needs a bundled world with a state reader and a closed-loop controller "
            "(WorldDef.state_reader, WorldDef.controllers); use scripted, random, sticky or human"
        )
    controller, reader = next(iter(world.controllers.values())), world.state_reader
    state: dict[str, Any] = {"prev": None}

    def observed(env: Any, frame: np.ndarray) -> Any:
        now = np.asarray(reader(frame[None]), np.float64)  # (1, K)
        prev = now if state["prev"] is None else state["prev"]
        state["prev"] = now
        action = np.asarray(controller(np.stack([prev, now], axis=1)))[0]
        return action.item() if action.ndim == 0 else action

    return observed


# ---------------------------------------------------------------------------- scripted controllers
def game_name(env: Any) -> str:
    """``"CartPole"`` for ``CartPole-v1``, ``"Boxing"`` for ``ALE/Boxing-v5``."""
    spec_id = env.spec.id if env.spec is not None else ""
    return spec_id.split("/")[-1].split("-")[0]


def _scripted(env: Any, rng: np.random.Generator) -> Policy:
    game = game_name(env)
    if game not in SCRIPTED:
        raise PolicyError(
            f"no scripted policy for {env.spec.id if env.spec else env!r} "
            f"(scripted games: {', '.join(SCRIPTED)}); use random, sticky or human"
        )
    return SCRIPTED[game](rng)


def cartpole_controller(rng: np.random.Generator) -> Policy:
    """Balance with a PD controller on the pole (state from ``env.unwrapped.state``).

    Per episode a target cart position and a decision noise ``sigma`` (drawn from 0.1-0.5: the
    push goes right when ``u + N(0, sigma) > 0``, so near balance, where ``u`` is small, either
    push is likely and the action is not given away by the picture; far from it the controller
    is decisive); per frame a 1% chance of a kick (one key held for 2-3 frames, knocking the
    pole off balance) and a 5% chance of a random press. With the cartpole recipe (2 env steps
    a frame) most episodes without exploration balance for all 250 frames with recoveries along
    the way; the others fall after a kick or a press.
    """
    target = float(rng.uniform(-0.8, 0.8))
    sigma = float(rng.uniform(0.1, 0.5))
    state = {"burst": 0, "burst_action": 0}

    def cartpole(env: Any, frame: np.ndarray) -> int:
        x, x_dot, theta, theta_dot = env.unwrapped.state
        if state["burst"] > 0:
            state["burst"] -= 1
            return state["burst_action"]
        if rng.random() < 0.01:  # a kick starts with the next frame
            state["burst"], state["burst_action"] = int(rng.integers(2, 4)), int(rng.integers(2))
        if rng.random() < 0.05:
            return int(rng.integers(2))
        u = 10.0 * theta + 2.0 * theta_dot + 0.3 * (x - target) + 0.6 * x_dot
        return int(u + sigma * rng.standard_normal() > 0)

    return cartpole


# Boxing's 18 actions by (vertical, horizontal, fire); vertical -1 is up, horizontal +1 is right.
_BOXING_ACTIONS = {
    (0, 0, 0): 0, (0, 0, 1): 1, (-1, 0, 0): 2, (0, 1, 0): 3, (0, -1, 0): 4, (1, 0, 0): 5,
    (-1, 1, 0): 6, (-1, -1, 0): 7, (1, 1, 0): 8, (1, -1, 0): 9, (-1, 0, 1): 10, (0, 1, 1): 11,
    (0, -1, 1): 12, (1, 0, 1): 13, (-1, 1, 1): 14, (-1, -1, 1): 15, (1, 1, 1): 16, (1, -1, 1): 17,
}  # fmt: skip
BOXING_RAM = {"player_x": 32, "player_y": 34, "enemy_x": 33, "enemy_y": 35}
"""RAM addresses of the boxers' positions (Anand et al. 2019, AtariARI)."""


def boxing_controller(rng: np.random.Generator) -> Policy:
    """Close in on the opponent and punch from above or below (a level punch is blocked).

    Per episode a preferred horizontal gap and vertical offset; per frame a 2% chance to switch
    between attacking from above and below and a 10% chance of a random action. Against the
    game's CPU boxer it wins a 500-frame episode by about 10 points (2 to 17 in a sample of six).
    """
    gap = float(rng.uniform(16, 22))
    offset = float(rng.uniform(8, 16))
    state = {"side": 1}

    def boxing(env: Any, frame: np.ndarray) -> int:
        ram = env.unwrapped.ale.getRAM().astype(np.int64)
        dx = int(ram[BOXING_RAM["enemy_x"]] - ram[BOXING_RAM["player_x"]])
        dy = int(ram[BOXING_RAM["enemy_y"]] - ram[BOXING_RAM["player_y"]])
        if rng.random() < 0.02:
            state["side"] = -state["side"]
        if rng.random() < 0.1:
            return int(rng.integers(18))
        x_err = dx - (gap if dx >= 0 else -gap)
        y_err = dy - state["side"] * offset
        horizontal = int(np.sign(x_err)) if abs(x_err) > 2 else 0
        vertical = int(np.sign(y_err)) if abs(y_err) > 2 else 0
        fire = int(abs(abs(dx) - gap) < 8 and 5 < abs(dy) < 28 and rng.random() < 0.7)
        return _BOXING_ACTIONS[(vertical, horizontal, fire)]

    return boxing


SCRIPTED: dict[str, Callable[[np.random.Generator], Policy]] = {
    "CartPole": cartpole_controller,
    "Boxing": boxing_controller,
}
"""Scripted controllers by game name (the env id without namespace and version)."""


# ---------------------------------------------------------------------------- human
class Keyboard:
    """A pygame window showing the recorded frames; held keys become actions (:mod:`worldsim.keys`).

    Keys follow ``worldsim play``: ``keys`` / ``idle`` / ``magnitude`` (the ``--keys``, ``--idle``,
    ``--key-magnitude`` flags) over a bundled world's key map and ``default_action`` over
    :func:`worldsim.keys.default_keymap` / :func:`~worldsim.keys.default_idle`, so any action
    space can be recorded by hand (Box: left / right along the first axis, down / up the
    second). Escape or closing the window raises :class:`StopRecording`.
    """

    zoom = 6

    def __init__(
        self,
        world: Any,
        action_space: Any,
        keys: str | None = None,
        idle: str | None = None,
        magnitude: float | None = None,
        fps: float = 15,
    ) -> None:
        self.check(world)
        import pygame

        from worldsim.keys import KeyTracker, controls_for
        from worldsim.spaces import ActionSpec

        spec = ActionSpec.from_space(action_space)
        ctl = controls_for(spec, None, world, keys, idle, magnitude)
        self.keys = KeyTracker(ctl["keymap"], spec, ctl["idle"], ctl["magnitude"])
        pygame.init()
        self._pygame = pygame
        self.fps = float(world.fps) if world is not None else float(fps)
        self.screen = pygame.display.set_mode((64 * self.zoom, 64 * self.zoom))
        name = getattr(world, "name", None) or "game"
        pygame.display.set_caption(f"worldsim record {name}: {', '.join(ctl['keymap'])}; Esc stops")
        self.clock = pygame.time.Clock()
        log.info("recording by keyboard: %s", "; ".join(self.keys.describe()))

    @staticmethod
    def check(world: Any = None) -> None:
        """Raise :class:`PolicyError` if keyboard recording cannot work here (no display)."""
        if not has_display():
            raise PolicyError("the human policy needs a display (DISPLAY is not set); use random, sticky or scripted")

    def policy(self, env: Any, frame: np.ndarray) -> Any:
        pygame = self._pygame
        for event in pygame.event.get():
            if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                raise StopRecording
            self.keys.handle(event)
        big = np.repeat(np.repeat(frame, self.zoom, 0), self.zoom, 1)
        self.screen.blit(pygame.surfarray.make_surface(big.swapaxes(0, 1)), (0, 0))
        pygame.display.flip()
        self.clock.tick(self.fps)
        return self.keys.action()

    def close(self) -> None:
        self._pygame.display.quit()
