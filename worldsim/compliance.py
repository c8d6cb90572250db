"""The conformance suite: one world, one seed, one action sequence through every surface.

Every surface (``WorldEnv``, row 0 of ``WorldVectorEnv``, ``RemoteWorld`` over gRPC, the
player's backend) must show the same episodes: the same frames, rewards, ``terminated`` and
``truncated``, at the time limit, after an episode end and after a reset; and must accept or
refuse the same actions with the same message (:mod:`worldsim.episodes` holds the rules).
Like dm_env_rpc's ``compliance/``, any server can be checked: point :func:`run` at its address
and give it the checkpoint it serves::

    from worldsim.compliance import run
    problems = run("my.safetensors", address="host:50051", world="my")   # [] when it conforms

Without an address, :func:`run` serves the checkpoint itself on a loopback port. From a shell::

    python -m worldsim.compliance my.safetensors --address host:50051 --world my
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.spaces import ActionError, ActionSpec

log = logging.getLogger(__name__)

Op = tuple[str, Any]
"""``("reset", seed or None)`` or ``("step", action)``."""


@dataclass
class Transition:
    """What a surface showed after one op (a reset shows a frame only)."""

    frame: np.ndarray
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False


# ---------------------------------------------------------------------------- surfaces
class EnvSurface:
    """A Gymnasium env: ``WorldEnv`` or ``RemoteWorld``."""

    batched = False

    def __init__(self, env: Any) -> None:
        self.env = env

    def reset(self, seed: int | None) -> Transition:
        return Transition(self.env.reset(seed=seed)[0])

    def step(self, action: Any) -> Transition:
        obs, r, term, trunc, _ = self.env.step(action)
        return Transition(obs, float(r), bool(term), bool(trunc))

    def close(self) -> None:
        self.env.close()


class VectorRowSurface:
    """Row 0 of a one-row ``WorldVectorEnv`` in NEXT_STEP mode: after an episode end, ``reset(None)``
    is the autoreset step (which must show the new first frame, reward 0, not done)."""

    batched = True

    def __init__(self, venv: Any) -> None:
        self.venv, self.done = venv, False
        self.spec = ActionSpec.from_space(venv.single_action_space)

    def reset(self, seed: int | None) -> Transition:
        if self.done and seed is None:
            obs, rew, term, trunc, _ = self.venv.step(self.spec.null(1))
            self.done = False
            return Transition(obs[0], float(rew[0]), bool(term[0]), bool(trunc[0]))
        self.done = False
        return Transition(self.venv.reset(seed=seed)[0][0])

    def step(self, action: Any) -> Transition:
        obs, rew, term, trunc, _ = self.venv.step(np.asarray([action]))
        self.done = bool(term[0] or trunc[0])
        return Transition(obs[0], float(rew[0]), bool(term[0]), bool(trunc[0]))

    def close(self) -> None:
        self.venv.close()


class BackendSurface:
    """The player's backend (``worldsim.play.game.LocalBackend`` or ``RemoteBackend``)."""

    batched = False

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def reset(self, seed: int | None) -> Transition:
        return Transition(self.backend.reset(seed=seed))

    def step(self, action: Any) -> Transition:
        frame, r, term, trunc, _ = self.backend.step(action)
        return Transition(frame, float(r), bool(term), bool(trunc))

    def close(self) -> None:
        self.backend.close()


@contextmanager
def surfaces(path: str | Path, address: str, world: str, max_episode_steps: int) -> Iterator[dict[str, Any]]:
    """The four surfaces on the checkpoint ``path`` (served at ``address`` as ``world``), closed after."""
    from worldsim.client import RemoteWorld
    from worldsim.engine.world import WorldModel
    from worldsim.gym import WorldEnv, WorldVectorEnv
    from worldsim.play.game import LocalBackend

    limit = max_episode_steps
    out: dict[str, Any] = {
        "WorldEnv": EnvSurface(WorldEnv(path, max_episode_steps=limit, device="cpu")),
        "WorldVectorEnv[0]": VectorRowSurface(WorldVectorEnv(path, num_envs=1, max_episode_steps=limit, device="cpu")),
        "RemoteWorld": EnvSurface(RemoteWorld(address, world, max_episode_steps=limit)),
        "player": BackendSurface(LocalBackend(WorldModel.load(path, device="cpu"), max_episode_steps=limit)),
    }
    try:
        yield out
    finally:
        for s in out.values():
            s.close()


# ---------------------------------------------------------------------------- episodes
def script(spec: ActionSpec, seed: int = 3, limit: int = 4, actions_seed: int = 0) -> list[Op]:
    """A seeded reset, steps past the time limit (:func:`trace` resets after each episode end), a
    mid-episode seeded reset and a mid-episode ``reset()``; actions sampled with ``actions_seed``."""
    space = spec.to_space()
    space.seed(actions_seed)

    def steps(n: int) -> list[Op]:
        return [("step", space.sample()) for _ in range(n)]

    return [("reset", seed), *steps(limit + 2), ("reset", seed + 4), *steps(2), ("reset", None), *steps(limit)]


def trace(surface: Any, ops: list[Op]) -> list[tuple[str, Transition]]:
    """Play ``ops`` on one surface; a step after an episode end is preceded by ``reset()`` (the
    caller's reset; the vector env's autoreset step), as every surface's user must do."""
    out: list[tuple[str, Transition]] = []
    done = False
    for kind, arg in ops:
        if kind == "step" and done:
            out.append(("reset None (after the end)", surface.reset(None)))
        t = surface.reset(arg) if kind == "reset" else surface.step(arg)
        done = kind == "step" and (t.terminated or t.truncated)
        out.append((f"{kind} {arg!r}", t))
    return out


def compare(traces: dict[str, list[tuple[str, Transition]]]) -> list[str]:
    """Differences from the first surface's trace, one line each (empty: all surfaces agree)."""
    (ref_name, ref), *others = traces.items()
    problems = []
    for name, tr in others:
        if [label for label, _ in tr] != [label for label, _ in ref]:
            problems.append(f"{name} vs {ref_name}: episodes end at different steps")
        for i, ((what, a), (_, b)) in enumerate(zip(ref, tr)):
            where = f"{name} vs {ref_name}: op {i} ({what})"
            if a.frame.shape != b.frame.shape or not np.array_equal(a.frame, b.frame):
                diff = (
                    np.abs(a.frame.astype(int) - b.frame.astype(int)).max() if a.frame.shape == b.frame.shape else "-"
                )
                problems.append(f"{where}: frames differ (max {diff})")
            for field in ("reward", "terminated", "truncated"):
                if getattr(a, field) != getattr(b, field):
                    problems.append(f"{where}: {field} {getattr(b, field)!r} != {getattr(a, field)!r}")
    return problems


def check_episodes(all_surfaces: dict[str, Any], ops: list[Op]) -> list[str]:
    """Play ``ops`` through every surface and compare."""
    return compare({name: trace(s, ops) for name, s in all_surfaces.items()})


# ---------------------------------------------------------------------------- actions
NAN, INF = float("nan"), float("inf")
ACTIONS: dict[str, list[Any]] = {
    "discrete": [0, 1, np.int64(1), 1.0, True, [1], np.array(0), 2, -1, 0.5, NAN, INF, "left", [0, 1], [[0]], None],
    "multi_discrete": [[2, 1], np.array([0, 0]), [1.0, 1.0], [3, 0], [0, -1], [0.5, 1], [NAN, 0], 1, [1, 1, 1], [[1, 1]], "ab"],
    "multi_binary": [[1, 0, 1], [True, False, True], [1.0, 0, 0], [2, 0, 0], [0.5, 0, 0], [NAN, 0, 0], [1, 0], 1, [[1, 0, 1]]],
    "box": [[0.5, -0.5], np.array([0.25, 0.0], np.float32), [1.0, -1.0], [1, 0], [1.5, 0.0], [NAN, 0.0], [INF, 0.0], 0.5, [0.5], [[0.5, 0.5]], "a"],
}  # fmt: skip
"""Good and bad actions per action-space kind, for spaces like :data:`SPACES`."""


def spaces() -> dict[str, Any]:
    """The action space of each kind that :data:`ACTIONS` is written for."""
    import gymnasium as gym

    return {
        "discrete": gym.spaces.Discrete(2),
        "multi_discrete": gym.spaces.MultiDiscrete([3, 2]),
        "multi_binary": gym.spaces.MultiBinary(3),
        "box": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
    }


def outcome(call: Callable[[], Any]) -> str:
    """``"accepted"``, or ``"refused: <message>"`` for an :class:`ActionError`."""
    try:
        call()
    except ActionError as e:
        return f"refused: {e}"
    return "accepted"


def check_actions(all_surfaces: dict[str, Any], actions: list[Any]) -> list[str]:
    """Each action through every surface (inside a live episode): the same decision, and for the
    surfaces that take one action the same message (a vector env's messages speak of its batch)."""
    for s in all_surfaces.values():
        s.reset(0)
    problems = []
    for a in actions:
        seen, ended = {}, []
        for name, s in all_surfaces.items():
            try:
                t = s.step(a)
            except ActionError as e:
                seen[name] = f"refused: {e}"
                continue
            seen[name] = "accepted"
            if t.terminated or t.truncated:
                ended.append(s)
        (ref_name, ref), *others = seen.items()
        for name, got in others:
            same = got.split(":")[0] == ref.split(":")[0] if all_surfaces[name].batched else got == ref
            if not same:
                problems.append(f"action {a!r}: {name} {got!r} but {ref_name} {ref!r}")
        for s in ended:  # the next action goes into a live episode
            s.reset(None)
    return problems


def check_wire_actions(client: Any, session_id: str, spec: ActionSpec, actions: list[Any]) -> list[str]:
    """The server's own check (what a client in another language meets): every action the wire can
    carry, sent as is; the server must decide and word it as :func:`worldsim.episodes.validate_action`."""
    from worldsim.episodes import validate_action
    from worldsim.wire._proto import world_pb2 as pb

    problems = []
    for a in actions:
        msg = _raw_action(a, spec)
        if msg is None:
            continue
        want = outcome(partial(validate_action, spec, a))
        try:
            frame = client.call("Step", pb.StepRequest(session_id=session_id, action=msg))
            got = "accepted"
            if frame.terminated or frame.truncated:  # the next action goes into a live episode
                client.call("Reset", pb.ResetRequest(session_id=session_id))
        except ActionError as e:
            got = f"refused: {e}"
        if got != want:
            problems.append(f"wire action {a!r}: server {got!r}, local {want!r}")
    return problems


def _raw_action(a: Any, spec: ActionSpec) -> Any:
    """``a`` as a ``worldsim.v1.Action`` without any check, or None if the wire cannot carry it."""
    from worldsim.wire._proto import world_pb2 as pb

    try:
        arr = np.asarray(a)
    except ValueError:
        return None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        return None
    if spec.kind == "box":  # a flat list on the wire: only 1-d actions keep their shape
        return pb.Action(continuous=pb.FloatArray(values=arr.astype(np.float64).tolist())) if arr.ndim == 1 else None
    if not np.issubdtype(arr.dtype, np.integer):  # integers only on the wire
        return None
    if spec.kind == "discrete":
        return pb.Action(discrete=int(arr)) if arr.ndim == 0 else None
    return pb.Action(multi=pb.IntArray(values=arr.reshape(-1).tolist())) if arr.ndim == 1 else None


# ---------------------------------------------------------------------------- the suite
def run(
    path: str | Path,
    address: str | None = None,
    world: str = "world",
    max_episode_steps: int = 4,
    kind: str | None = None,
) -> list[str]:
    """Episodes and actions through every surface for the checkpoint ``path``; the problems found.

    ``address``/``world``: a server serving ``path`` as ``world`` (None: one is started here, on a
    loopback port). ``kind``: the action table to use (default: the world's action-space kind).
    """
    from worldsim.engine.world import WorldModel

    spec = WorldModel.load(path, device="cpu").action_spec
    actions = ACTIONS[kind or spec.kind]
    with _server(path, address, world) as (addr, name):
        with surfaces(path, addr, name, max_episode_steps) as all_surfaces:
            ops = script(spec, limit=max_episode_steps)
            problems = check_episodes(all_surfaces, ops)
            problems += check_actions(all_surfaces, actions)
            remote = all_surfaces["RemoteWorld"].env
            remote.reset(seed=0)
            problems += check_wire_actions(remote.client, remote.session_id, spec, actions)
    for p in problems:
        log.warning("conformance: %s", p)
    return problems


@contextmanager
def _server(path: str | Path, address: str | None, world: str) -> Iterator[tuple[str, str]]:
    if address is not None:
        yield address, world
        return
    from worldsim.engine.world import WorldModel
    from worldsim.serve.server import BackgroundServer, ServeConfig

    with BackgroundServer({world: WorldModel.load(path, device="cpu")}, ServeConfig(port=0, max_sessions=4)) as srv:
        yield srv.address, world


def main(argv: list[str] | None = None) -> int:
    """``python -m worldsim.compliance PATH [--address HOST:PORT --world NAME]``: 0 when every surface agrees."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", type=Path, help="the world checkpoint (the one the server serves)")
    p.add_argument("--address", default=None, help="a running server (default: serve PATH on a loopback port)")
    p.add_argument("--world", default="world", help="the name the server serves PATH under")
    p.add_argument("--max-episode-steps", type=int, default=4, help="time limit of the scripted episodes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problems = run(args.path, args.address, args.world, args.max_episode_steps)
    log.info("conformance: %s", f"{len(problems)} problem(s)" if problems else "every surface agrees")
    return 1 if problems else 0


__all__ = [
    "ACTIONS",
    "BackendSurface",
    "EnvSurface",
    "Transition",
    "VectorRowSurface",
    "check_actions",
    "check_episodes",
    "check_wire_actions",
    "compare",
    "run",
    "script",
    "spaces",
    "surfaces",
    "trace",
]


if __name__ == "__main__":
    raise SystemExit(main())
