"""Keyboard -> action, from key events (held keys are tracked, not polled).

Discrete worlds: the most recently pressed key that is still held wins; with nothing held the
world's default action is sent (``"alternate"`` alternates 0 and 1, CartPole's closest thing to
"do nothing"). MultiBinary worlds: every held key sets its bit, so combinations work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worldsim.spaces import ActionSpec


class KeyTracker:
    def __init__(self, keymap: dict[str, Any], spec: ActionSpec, default_action: Any = 0) -> None:
        import pygame

        self.spec = spec
        self.default = default_action
        self.by_code: dict[int, Any] = {pygame.key.key_code(name): a for name, a in keymap.items()}
        self.names = {pygame.key.key_code(name): name for name in keymap}
        self.held: list[int] = []  # key codes in press order
        self._tick = 0

    def handle(self, event: Any) -> bool:
        """Feed a pygame event; True if it was a mapped key."""
        import pygame

        if event.type not in (pygame.KEYDOWN, pygame.KEYUP) or event.key not in self.by_code:
            return False
        if event.type == pygame.KEYDOWN and event.key not in self.held:
            self.held.append(event.key)
        elif event.type == pygame.KEYUP and event.key in self.held:
            self.held.remove(event.key)
        return True

    def release_all(self) -> None:
        self.held.clear()

    def action(self) -> Any:
        """The action to send this frame."""
        self._tick += 1
        if self.spec.kind == "multi_binary":
            bits = np.zeros(self.spec.n, dtype=np.int64)
            for code in self.held:
                bits[int(self.by_code[code])] = 1
            return bits
        if self.held:
            return self.by_code[self.held[-1]]
        if self.default == "alternate":
            return self._tick % 2
        return self.default

    def describe(self) -> list[str]:
        return [f"{self.names[c]:>8} -> {a}" for c, a in self.by_code.items()]
