"""Keyboard -> action, from key events (held keys are tracked from KEYDOWN/KEYUP, never polled).

A key map maps pygame key names (``"left"``, ``"space"``, ``"a"``, ``"left shift"``) to actions;
a name may also be a chord, keys joined by ``+`` (``"up+right"``, ``"right+space"``).

- Discrete worlds: among the entries whose keys are all held, the chord with the most keys wins,
  then the one pressed most recently; so with single keys only, the most recently pressed key
  that is still held wins. ``"alternate"`` as the idle action alternates 0 and 1 (CartPole has
  no "do nothing": pushing left and right in turn is its closest thing to letting go).
- MultiBinary worlds: every held entry sets its bit (its value is a bit index), so combinations
  of keys press combinations of buttons.
- Box worlds: a value ``"AXIS+"`` / ``"AXIS-"`` (``"0+"``: the first axis up) pushes that axis
  from the idle action towards its high / low bound by ``magnitude`` (1: all the way; 0.5:
  half-way); held keys add up (left and right together cancel), released axes return to idle.
- MultiDiscrete worlds: a value ``"DIM:VALUE"`` (``"1:2"``) sets that dimension while held (the
  most recently pressed key of a dimension wins); the other dimensions stay at idle.

Nothing held plays the idle action: the declared one (``--idle``, the world file's controls, a
bundled world's ``default_action``), else :func:`default_idle`. A world without a key map gets
:func:`default_keymap` (arrows first, then digits / letter rows).
"""

from __future__ import annotations

import ast
import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from worldsim.spaces import ActionSpec

CONTROL_KEYS = ("escape", "r", "p", "h", "v", "f1", "f12")
"""Keys the player itself uses; a world's key map should not claim them."""
BOX_KEYS = (("left", "right"), ("down", "up"), ("a", "d"), ("s", "w"), ("j", "l"), ("k", "i"))
"""Key pairs (minus, plus) of a Box world's axes 0, 1, 2, ...: arrows first."""
ROWS = ("1234567890", "qwetyuio", "asdfgjkl", "zxcbnm")
"""Keys of a MultiDiscrete world's dimensions 0-3, one row each (the player's keys left out)."""


def default_keymap(spec: ActionSpec) -> dict[str, Any]:
    """Keys for a world without a key map, arrows before digits.

    Discrete: 2 actions left / right; 3 actions left = first, down = middle, right = last (the
    left / none / right layout of MountainCar and Acrobot); number keys 0-9 for the first ten.
    MultiBinary: 0-9 press bits 0-9. Box: left / right move axis 0, down / up axis 1, then
    a/d, s/w, j/l, k/i. MultiDiscrete: left / right set dimension 0 to its first / last value,
    down / up dimension 1; the rows 1-0, q-o, a-l, z-m pick any value of dimensions 0-3.
    """
    keys: dict[str, Any] = {}
    if spec.kind == "discrete":
        if spec.n == 2:
            keys.update({"left": spec.start, "right": spec.start + 1})
        elif spec.n == 3:
            keys.update({"left": spec.start, "down": spec.start + 1, "right": spec.start + 2})
        keys.update({str(i): spec.start + i for i in range(min(spec.n, 10))})
    elif spec.kind == "multi_binary":
        keys.update({str(i): i for i in range(min(spec.n, 10))})
    elif spec.kind == "box":
        for axis, (minus, plus) in enumerate(BOX_KEYS[: spec.n]):
            keys.update({minus: f"{axis}-", plus: f"{axis}+"})
    elif spec.kind == "multi_discrete":
        for dim, (lo, hi) in enumerate((("left", "right"), ("down", "up"))[: spec.n]):
            keys.update({lo: f"{dim}:0", hi: f"{dim}:{spec.nvec[dim] - 1}"})
        for dim, row in enumerate(ROWS[: spec.n]):
            keys.update({k: f"{dim}:{v}" for v, k in zip(range(spec.nvec[dim]), row)})
    return keys


fallback_keymap = default_keymap  # the name the player used before Box and MultiDiscrete keys


def default_idle(spec: ActionSpec) -> Any:
    """The action with no key held when the world declares none.

    Discrete(3): the middle action (left / none / right); other Discrete: the first (ALE's NOOP);
    MultiBinary: all zeros; Box: the centre of the space (zero for a symmetric range);
    MultiDiscrete: per dimension the middle value of a 3-value one, else 0.
    """
    if spec.kind == "discrete":
        return spec.start + 1 if spec.n == 3 else spec.start
    if spec.kind == "box":
        return spec.null(1)[0]
    if spec.kind == "multi_discrete":
        return np.array([1 if n == 3 else 0 for n in spec.nvec], dtype=np.int64)
    return np.zeros(spec.n, dtype=np.int64)


def parse_keymap(text: str) -> dict[str, Any]:
    """``--keys``: a JSON object, or ``KEY=VALUE,KEY=VALUE`` (``left=0,right=2``; Box ``a=0-,d=0+``;
    MultiDiscrete ``q=1:2``); integer values become ints."""
    text = text.strip()
    if text.startswith("{"):
        try:
            out = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--keys: not a JSON object ({e})") from None
        return dict(out)
    keymap: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.rpartition("=")
        if not sep or not key.strip():
            raise ValueError(f"--keys expects KEY=ACTION pairs separated by commas (left=0,right=2), got {item!r}")
        v = value.strip()
        keymap[key.strip()] = int(v) if v.lstrip("-").isdigit() else v
    return keymap


def parse_idle(text: str, spec: ActionSpec) -> Any:
    """``--idle``: the action with no key held (``1``, ``[0.0]``, ``[1, 0]``), checked against ``spec``."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        raise ValueError(f"--idle expects an action such as 1 or [0.0], got {text!r}") from None
    return spec.validate([value])[0]


def controls_for(
    spec: ActionSpec,
    stored: dict[str, Any] | None = None,
    world_def: Any = None,
    keys: str | None = None,
    idle: str | None = None,
    magnitude: float | None = None,
) -> dict[str, Any]:
    """The controls to play with: ``--keys`` / ``--idle`` / ``--magnitude`` over the world file's
    stored controls over a bundled world's key map and ``default_action`` over the defaults."""
    stored = stored or {}
    wd_keys = dict(world_def.keymap) if world_def is not None and getattr(world_def, "keymap", None) else None
    keymap = parse_keymap(keys) if keys else stored.get("keymap") or wd_keys or default_keymap(spec)
    if idle is not None:
        idle_action: Any = parse_idle(idle, spec)
    elif stored.get("idle") is not None:
        idle_action = stored["idle"]
    elif world_def is not None and getattr(world_def, "default_action", None) is not None:
        idle_action = world_def.default_action
    else:
        idle_action = default_idle(spec)
    mag = float(magnitude if magnitude is not None else stored.get("magnitude", 1.0))
    return {"keymap": keymap, "idle": _jsonable(idle_action), "magnitude": mag}


def _jsonable(value: Any) -> Any:
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


def key_code(name: str) -> int:
    """pygame's key code for a key name (``"left"``, ``"space"``, ``"a"``, ``"left shift"``)."""
    import pygame

    with warnings.catch_warnings():
        # SDL resolves key names without pygame.init(), which would also open the audio device.
        warnings.filterwarnings("ignore", message=".*pygame.init.*")
        try:
            return int(pygame.key.key_code(name.strip()))
        except ValueError:
            raise ValueError(f"unknown key name {name.strip()!r} in the key map") from None


@dataclass(frozen=True)
class Binding:
    name: str
    codes: frozenset[int]
    action: Any


def _binding_value(name: str, value: Any, spec: ActionSpec) -> Any:
    """A key map value checked against ``spec`` (Box: ``(axis, sign)``; MultiDiscrete: ``(dim, value)``)."""
    if spec.kind == "box":
        text = str(value).strip()
        if len(text) < 2 or text[-1] not in "+-" or not text[:-1].isdigit() or int(text[:-1]) >= spec.n:
            raise ValueError(f"key {name!r}: a Box({spec.n}) key moves an axis: '0+' or '0-' (axes 0-{spec.n - 1})")
        return int(text[:-1]), 1.0 if text[-1] == "+" else -1.0
    if spec.kind == "multi_discrete":
        dim, _, v = str(value).partition(":")
        if not (dim.strip().isdigit() and v.strip().isdigit()) or int(dim) >= spec.n or int(v) >= spec.nvec[int(dim)]:
            raise ValueError(f"key {name!r}: a MultiDiscrete{list(spec.nvec)} key sets a dimension: 'DIM:VALUE'")
        return int(dim), int(v)
    if spec.kind == "multi_binary" and not 0 <= int(value) < spec.n:
        raise ValueError(f"key {name!r}: bit {value} out of range for MultiBinary({spec.n})")
    if spec.kind == "discrete" and not spec.start <= int(value) < spec.start + spec.n:
        raise ValueError(f"key {name!r}: action {value} out of range for Discrete({spec.n})")
    return value


class KeyTracker:
    """Held keys in press order -> the action to send this frame.

    ``default_action``: the idle action (None: :func:`default_idle`); ``magnitude``: how far a
    Box key pushes its axis from idle towards the bound, in (0, 1].
    """

    def __init__(
        self, keymap: dict[str, Any], spec: ActionSpec, default_action: Any = None, magnitude: float = 1.0
    ) -> None:
        if not 0 < magnitude <= 1:
            raise ValueError(f"key magnitude must be in (0, 1], got {magnitude}")
        self.spec = spec
        self.magnitude = float(magnitude)
        self.default = default_idle(spec) if default_action is None else default_action
        if spec.kind in ("box", "multi_discrete"):
            self.default = spec.validate([np.asarray(self.default)])[0]
        self.bindings: list[Binding] = []
        self.names: dict[int, str] = {}  # every key code any binding uses -> its name
        for name, a in keymap.items():
            parts = [p for p in name.split("+") if p.strip()] if name.strip() != "+" else [name]
            codes = [key_code(p) for p in parts]
            self.bindings.append(Binding(name, frozenset(codes), _binding_value(name, a, spec)))
            self.names.update({c: p.strip() for c, p in zip(codes, parts)})
        self.held: list[int] = []  # mapped key codes, in press order
        self._tick = 0

    @property
    def shadowed_controls(self) -> list[str]:
        """Player controls the key map takes over (the world's key wins)."""
        return [n for n in self.names.values() if n.lower() in CONTROL_KEYS]

    def handle(self, event: Any) -> bool:
        """Feed a pygame event; True if it was a mapped key (consumed)."""
        import pygame

        if event.type not in (pygame.KEYDOWN, pygame.KEYUP) or event.key not in self.names:
            return False
        if event.type == pygame.KEYDOWN:
            if event.key in self.held:
                self.held.remove(event.key)  # a repeated press moves it to the top
            self.held.append(event.key)
        elif event.key in self.held:
            self.held.remove(event.key)
        return True

    def release_all(self) -> None:
        """Forget held keys (when the window loses focus and KEYUPs would be lost)."""
        self.held.clear()

    def active(self) -> list[Binding]:
        """Bindings whose keys are all held, the winner last (Discrete)."""
        order = {c: i for i, c in enumerate(self.held)}
        on = [b for b in self.bindings if b.codes <= order.keys()]
        return sorted(on, key=lambda b: (len(b.codes), max(order[c] for c in b.codes)))

    def action(self) -> Any:
        """The action to send this frame."""
        self._tick += 1
        on = self.active()
        kind = self.spec.kind
        if kind == "multi_binary":
            bits = np.zeros(self.spec.n, dtype=np.int64)
            if not on and isinstance(self.default, (list, tuple, np.ndarray)):
                bits[:] = np.asarray(self.default, dtype=np.int64).reshape(-1)
            for b in on:
                bits[int(b.action)] = 1
            return bits
        if kind == "box":
            return self._box(on)
        if kind == "multi_discrete":
            out = np.array(self.default, dtype=np.int64)
            for b in on:  # the winner last: it overwrites its dimension
                out[b.action[0]] = b.action[1]
            return out
        if on:
            return on[-1].action
        if self.default == "alternate":
            return self.spec.start + self._tick % 2
        return self.default

    def _box(self, on: list[Binding]) -> np.ndarray:
        idle = np.asarray(self.default, dtype=np.float64)
        low, high = np.asarray(self.spec.low), np.asarray(self.spec.high)
        push = np.zeros_like(idle)
        for b in on:
            axis, sign = b.action
            push[axis] += sign
        out = np.where(
            push > 0, idle + push * self.magnitude * (high - idle), idle + push * self.magnitude * (idle - low)
        )
        return np.clip(out, low, high).astype(np.float32)

    def held_names(self) -> list[str]:
        return [self.names[c] for c in self.held]

    def describe(self) -> list[str]:
        """One line per action: the keys that produce it."""
        by_action: dict[str, list[str]] = {}
        for b in self.bindings:
            if self.spec.kind == "box":
                label = f"axis {b.action[0]} {'+' if b.action[1] > 0 else '-'}"
            elif self.spec.kind == "multi_discrete":
                label = f"dimension {b.action[0]} = {b.action[1]}"
            else:
                label = f"bit {b.action}" if self.spec.kind == "multi_binary" else f"action {b.action}"
            by_action.setdefault(label, []).append(b.name)
        lines = [f"{' / '.join(keys)}: {label}" for label, keys in by_action.items()]
        if isinstance(self.default, np.ndarray):
            idle = str(np.round(self.default, 3).tolist())
        else:
            idle = "alternate 0/1" if self.default == "alternate" else str(self.default)
        return [*lines, f"(no key): {idle}"]
