"""The heads-up display: what it says (pure functions of the player's state) and drawing it."""

from __future__ import annotations

from typing import Any

import numpy as np

HELP_CONTROLS = ["R reset   P pause   H hud", "F1 keys   F12 screenshot", "V record   ESC quit"]


def format_action(action: Any) -> str:
    if action is None:
        return "-"
    a = np.asarray(action)
    if a.ndim == 0:
        return str(a.item())
    return "".join(str(int(x)) for x in a.reshape(-1)) if a.dtype.kind in "iub" else np.array2string(a, precision=2)


def hud_lines(state: Any, *, held: list[str] | None = None, title: str = "", target_fps: float = 0.0) -> list[str]:
    """HUD text for a :class:`~worldsim.play.game.PlayerState`."""
    keys = "+".join(held) if held else "idle"
    pace = f"/{target_fps:g}" if target_fps else ""
    lines = [
        f"{title}  frame {state.frame_index}" if title else f"frame {state.frame_index}",
        f"FPS {state.fps:4.1f}{pace}  model {state.latency_ms:5.1f} ms",
        f"action {format_action(state.action)} ({keys})",
        f"reward {state.reward:+.2f}  return {state.episode_return:+.1f}",
    ]
    if state.real_frame is not None:
        lines.append(f"real reward {state.real_reward:+.2f}  return {state.real_return:+.1f}")
    if state.terminated:
        lines.append("EPISODE OVER (model) - R resets")
    elif state.truncated:
        lines.append("TIME LIMIT - R resets")
    if state.real_done:
        lines.append("REAL GAME OVER - R resets")
    if state.paused:
        lines.append("PAUSED - P resumes")
    if state.recording:
        lines.append("REC - V stops")
    return lines


def help_lines(key_lines: list[str]) -> list[str]:
    return ["keys:", *key_lines, *HELP_CONTROLS]


def draw_panel(
    surface: Any,
    font: Any,
    lines: list[str],
    pos: tuple[int, int] = (4, 4),
    color: tuple[int, int, int] = (255, 255, 140),
    align_right: bool = False,
) -> None:
    """A translucent box with one text line per row, at ``pos`` (top-left, or top-right)."""
    import pygame

    if not lines:
        return
    pad, h = 5, font.get_linesize()
    w = max(font.size(t)[0] for t in lines) + 2 * pad
    box = pygame.Surface((w, h * len(lines) + 2 * pad), pygame.SRCALPHA)
    box.fill((0, 0, 0, 165))
    x = pos[0] - w if align_right else pos[0]
    surface.blit(box, (x, pos[1]))
    for i, text in enumerate(lines):
        surface.blit(font.render(text, True, color), (x + pad, pos[1] + pad + i * h))
