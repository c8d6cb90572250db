"""Action specs: a JSON-serialisable description of a world's Gymnasium action space.

A world checkpoint stores its :class:`ActionSpec`, so the engine, the Gymnasium env, the gRPC
service and the pygame player all agree on what an action is without importing the real game.

Canonical batched action arrays (what :meth:`ActionSpec.validate` returns):

==================  ===========================  =========
space               batch array shape            dtype
==================  ===========================  =========
``Discrete(n)``     ``(B,)``                     int64
``MultiDiscrete``   ``(B, k)``                   int64
``MultiBinary(n)``  ``(B, n)``                   int64 (0/1)
``Box(shape)``      ``(B, prod(shape))``         float32
==================  ===========================  =========
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

Kind = Literal["discrete", "multi_discrete", "multi_binary", "box"]


class ActionError(ValueError):
    """An action does not fit the world's action space (shape, type, range or NaN)."""


@dataclass(frozen=True)
class ActionSpec:
    """What an action is for one world. Build it with :meth:`from_space`."""

    kind: Kind
    n: int = 0  # discrete: number of actions; multi_binary: number of bits; box: flat size
    nvec: tuple[int, ...] = ()  # multi_discrete only
    shape: tuple[int, ...] = ()  # box / multi_binary original shape
    low: tuple[float, ...] = field(default=())  # box only, flattened
    high: tuple[float, ...] = field(default=())  # box only, flattened
    start: int = 0  # discrete only: gymnasium's Discrete(n, start=...)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_space(cls, space: Any) -> ActionSpec:
        """Describe a ``gymnasium.spaces`` action space (Discrete, MultiDiscrete, MultiBinary, Box)."""
        from gymnasium import spaces

        if isinstance(space, spaces.Discrete):
            return cls(kind="discrete", n=int(space.n), start=int(space.start))
        if isinstance(space, spaces.MultiDiscrete):
            nvec = tuple(int(v) for v in np.asarray(space.nvec).reshape(-1))
            return cls(kind="multi_discrete", n=len(nvec), nvec=nvec)
        if isinstance(space, spaces.MultiBinary):
            shape = tuple(int(s) for s in np.atleast_1d(space.n))
            return cls(kind="multi_binary", n=int(np.prod(shape)), shape=shape)
        if isinstance(space, spaces.Box):
            low = np.broadcast_to(space.low, space.shape).astype(np.float64).reshape(-1)
            high = np.broadcast_to(space.high, space.shape).astype(np.float64).reshape(-1)
            if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
                raise ActionError("Box action spaces must be bounded to be learned (got infinite low/high)")
            return cls(
                kind="box",
                n=int(np.prod(space.shape)),
                shape=tuple(int(s) for s in space.shape),
                low=tuple(float(x) for x in low),
                high=tuple(float(x) for x in high),
            )
        raise ActionError(f"unsupported action space {space!r}: use Discrete, MultiDiscrete, MultiBinary or Box")

    def to_space(self) -> Any:
        """The equivalent ``gymnasium.spaces`` object."""
        from gymnasium import spaces

        if self.kind == "discrete":
            return spaces.Discrete(self.n, start=self.start)
        if self.kind == "multi_discrete":
            return spaces.MultiDiscrete(np.array(self.nvec, dtype=np.int64))
        if self.kind == "multi_binary":
            return spaces.MultiBinary(list(self.shape) if len(self.shape) > 1 else self.n)
        low = np.array(self.low, dtype=np.float32).reshape(self.shape)
        high = np.array(self.high, dtype=np.float32).reshape(self.shape)
        return spaces.Box(low=low, high=high, dtype=np.float32)

    # ------------------------------------------------------------------ serialisation
    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> ActionSpec:
        d = json.loads(text) if isinstance(text, str) else dict(text)
        for key in ("nvec", "shape", "low", "high"):
            d[key] = tuple(d.get(key, ()))
        return cls(**d)

    # ------------------------------------------------------------------ arrays
    @property
    def width(self) -> int:
        """Number of numbers in one canonical action (1 for Discrete)."""
        return 1 if self.kind == "discrete" else self.n

    @property
    def per_action_shape(self) -> tuple[int, ...]:
        """Shape of ONE canonical action (without the batch dimension)."""
        return () if self.kind == "discrete" else (self.n,)

    def null(self, batch: int) -> np.ndarray:
        """A batch of neutral actions (action 0 / all zeros / box centre)."""
        if self.kind == "box":
            centre = (np.array(self.low) + np.array(self.high)) / 2.0
            return np.tile(centre.astype(np.float32), (batch, 1))
        if self.kind == "discrete":
            return np.full((batch,), self.start, dtype=np.int64)
        return np.zeros((batch, self.n), dtype=np.int64)

    def validate(self, actions: Any, batch: int | None = None) -> np.ndarray:
        """Check a batch of actions and return it in canonical form.

        Raises :class:`ActionError` naming the problem for a wrong shape, a wrong type, an
        out-of-range value or a NaN. ``batch`` is the expected batch size (``None``: any). One
        action (not a batch) is checked by :func:`worldsim.episodes.validate_action`.
        """
        arr = as_array(actions, "actions")
        b = "B" if batch is None else str(batch)
        if self.kind == "discrete":
            arr = arr.reshape(-1) if arr.ndim == 2 and arr.shape[1] == 1 else arr
            if arr.ndim != 1:
                raise ActionError(
                    f"expected a batch of {self.describe()} actions of shape ({b},), got shape {arr.shape}"
                )
        else:
            if arr.ndim > 2 and tuple(arr.shape[1:]) == tuple(self.shape):  # a batch of (B, *shape)
                arr = arr.reshape(arr.shape[0], -1)
            if arr.ndim != 2 or arr.shape[1] != self.n:
                raise ActionError(
                    f"expected a batch of {self.describe()} actions of shape ({b}, {self.n}), got shape {arr.shape}"
                )
        if batch is not None and arr.shape[0] != batch:
            raise ActionError(f"expected {batch} actions (one per row), got {arr.shape[0]}")
        return self.check_values(arr)

    def mirror_table(self, perm: Any) -> np.ndarray:
        """A mirror of a Discrete game as a lookup table: action ``a`` becomes ``table[a]`` in the
        mirror (CartPole: ``[1, 0]``, the pushes swap). Used by ``worldsim train --mirror``,
        ``worldsim.gym.ensemble.mirror_rows`` and symmetric agents; raises ``ValueError`` naming
        the fix for anything but a permutation of the actions."""
        if self.kind != "discrete":
            raise ValueError(f"a mirror needs a Discrete action space, this one is {self.kind}")
        table = np.asarray(perm, dtype=np.int64).reshape(-1)
        if sorted(table.tolist()) != list(range(self.n)):
            raise ValueError(
                f"mirror {table.tolist()} is not a permutation of the {self.n} actions: list each action "
                "once, the one it becomes in the mirror (e.g. 1,0 for CartPole's two pushes)"
            )
        return table

    def describe(self) -> str:
        """The space as Gymnasium prints it, e.g. ``Discrete(2)`` or ``Box(-1.0, 1.0, (2,), float32)``."""
        return str(self.to_space())

    def check_values(self, arr: np.ndarray, one: bool = False) -> np.ndarray:
        """Type, NaN and range checks of a canonically shaped batch; returns it with the canonical dtype.

        Integer spaces accept integral floats (``1.0``) and refuse fractions; ``one``: the batch
        holds the caller's single action, and messages quote it as the caller passed it.
        """
        got = arr[0].tolist() if one else arr.tolist()
        noun = "action" if one else "actions"
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ActionError(f"{self.describe()} {noun} must be numeric, got {got!r} (dtype {arr.dtype})")
        if np.issubdtype(arr.dtype, np.number) and not np.all(np.isfinite(arr)):
            raise ActionError(f"{self.describe()} {noun} must be finite, got {got!r} (NaN or infinity)")
        if self.kind == "box":
            arr = arr.astype(np.float32)
            low, high = np.array(self.low, np.float32), np.array(self.high, np.float32)
            if np.any(arr < low - 1e-6) or np.any(arr > high + 1e-6):
                raise ActionError(f"{self.describe()} {noun} must lie in [{self.low}, {self.high}]: {got!r} is outside")
            return arr
        if np.issubdtype(arr.dtype, np.floating) and np.any(arr != np.round(arr)):
            raise ActionError(f"{self.describe()} {noun} must be integers, got {got!r}")
        arr = arr.astype(np.int64)
        if self.kind == "discrete":
            if np.any(arr < self.start) or np.any(arr >= self.start + self.n):
                lo, hi = self.start, self.start + self.n - 1
                raise ActionError(f"{self.describe()} {noun} must be in [{lo}, {hi}], got {got!r}")
        elif self.kind == "multi_discrete":
            if np.any(arr < 0) or np.any(arr >= np.array(self.nvec)):
                raise ActionError(f"{self.describe()} {noun} must be in [0, nvec={list(self.nvec)}), got {got!r}")
        elif np.any((arr != 0) & (arr != 1)):
            raise ActionError(f"{self.describe()} {noun} must be 0 or 1, got {got!r}")
        return arr


def as_array(value: Any, noun: str) -> np.ndarray:
    """``np.asarray(value)``, or :class:`ActionError` for what is not an array of numbers (ragged lists, objects)."""
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged lists etc.
        raise ActionError(f"{noun} could not be read as an array: {value!r} ({e})") from e
    if arr.dtype == object:
        raise ActionError(f"{noun} must be numbers, got {value!r} (objects, or a ragged list?)")
    return arr
