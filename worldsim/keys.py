"""Keyboard -> action, from key events (held keys are tracked from KEYDOWN/KEYUP, never polled).

A key map maps pygame key names (``"left"``, ``"space"``, ``"a"``, ``"left shift"``) to actions;
a name may also be a chord, keys joined by ``+`` (``"up+right"``, ``"right+space"``).

- Discrete worlds: among the entries whose keys are all held, the chord with the most keys wins,
  then the one pressed most recently; so with single keys only, the most recently pressed key
  that is still held wins. Nothing held: the world's ``default_action``. ``"alternate"``
  alternates 0 and 1 (CartPole has no "do nothing": pushing left and right in turn is its
  closest thing to letting go).
- MultiBinary worlds: every held entry sets its bit (its value is a bit index), so combinations
  of keys press combinations of buttons. Nothing held: all zeros (or ``default_action`` if it is
  a bit vector).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from worldsim.spaces import ActionSpec

CONTROL_KEYS = ("escape", "r", "p", "h", "v", "f1", "f12")
"""Keys the player itself uses; a world's key map should not claim them."""


def fallback_keymap(spec: ActionSpec) -> dict[str, Any]:
    """Keys for a world without a key map: arrows for 2 actions, else number keys 0-9."""
    if spec.kind == "discrete":
        keys = {str(i): spec.start + i for i in range(min(spec.n, 10))}
        if spec.n == 2:
            keys.update({"left": spec.start, "right": spec.start + 1})
        return keys
    if spec.kind == "multi_binary":
        return {str(i): i for i in range(min(spec.n, 10))}
    return {}


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


class KeyTracker:
    """Held keys in press order -> the action to send this frame."""

    def __init__(self, keymap: dict[str, Any], spec: ActionSpec, default_action: Any = 0) -> None:
        if spec.kind not in ("discrete", "multi_binary") and keymap:
            raise ValueError(f"keyboard play supports Discrete and MultiBinary worlds, not {spec.kind}")
        self.spec = spec
        self.default = default_action
        self.bindings: list[Binding] = []
        self.names: dict[int, str] = {}  # every key code any binding uses -> its name
        for name, a in keymap.items():
            parts = [p for p in name.split("+") if p.strip()] if name.strip() != "+" else [name]
            codes = [key_code(p) for p in parts]
            if spec.kind == "multi_binary" and not 0 <= int(a) < spec.n:
                raise ValueError(f"key {name!r}: bit {a} out of range for MultiBinary({spec.n})")
            if spec.kind == "discrete" and not spec.start <= int(a) < spec.start + spec.n:
                raise ValueError(f"key {name!r}: action {a} out of range for Discrete({spec.n})")
            self.bindings.append(Binding(name, frozenset(codes), a))
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
        if self.spec.kind == "multi_binary":
            bits = np.zeros(self.spec.n, dtype=np.int64)
            if not on and isinstance(self.default, (list, tuple, np.ndarray)):
                bits[:] = np.asarray(self.default, dtype=np.int64).reshape(-1)
            for b in on:
                bits[int(b.action)] = 1
            return bits
        if on:
            return on[-1].action
        if self.spec.kind not in ("discrete", "multi_binary"):  # no keys: the neutral action
            return self.spec.null(1)[0]
        if self.default == "alternate":
            return self.spec.start + self._tick % 2
        return self.default

    def held_names(self) -> list[str]:
        return [self.names[c] for c in self.held]

    def describe(self) -> list[str]:
        """One line per action: the keys that produce it."""
        by_action: dict[str, list[str]] = {}
        for b in self.bindings:
            label = f"bit {b.action}" if self.spec.kind == "multi_binary" else f"action {b.action}"
            by_action.setdefault(label, []).append(b.name)
        lines = [f"{' / '.join(keys)}: {label}" for label, keys in by_action.items()]
        idle = "alternate 0/1" if self.default == "alternate" else str(self.default)
        return [*lines, f"(no key): {idle}"]
