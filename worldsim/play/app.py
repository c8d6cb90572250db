"""The pygame front end: window, events, drawing, pacing; and the headless loop.

Keys: the world's key map plays; R resets, P pauses, H toggles the HUD, F1 shows the keys,
F12 saves a PNG screenshot, V starts/stops recording (MP4 if an ffmpeg backend is installed,
else GIF), ESC or closing the window quits. All game logic is in :class:`PlayerCore`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worldsim.keys import KeyTracker
from worldsim.play.game import GAP, PlayerCore
from worldsim.play.hud import draw_panel, help_lines, hud_lines
from worldsim.play.recorder import default_video_suffix

log = logging.getLogger(__name__)


class NoDisplay(RuntimeError):
    """SDL cannot open a window here."""


class PlayerApp:
    """A window showing ``core.view()`` zoomed, with the HUD; keys go to ``keys`` or the controls."""

    def __init__(
        self,
        core: PlayerCore,
        keys: KeyTracker,
        fps: float,
        zoom: int = 6,
        smooth: bool = False,
        video_suffix: str | None = None,
        out_dir: str | Path = ".",
        title: str = "",
    ) -> None:
        import pygame

        self.pg = pygame
        self.core, self.keys, self.fps = core, keys, float(fps)
        self.zoom, self.smooth = max(1, int(zoom)), smooth
        self.video_suffix = video_suffix or default_video_suffix()
        self.out_dir, self.title = Path(out_dir), title
        self.show_hud, self.show_help, self.running = True, False, True
        self.scripted: str | None = None  # headless: where the actions come from (the HUD shows it)
        self.messages: list[tuple[str, float]] = []
        pygame.display.init()
        pygame.font.init()
        h, w = core.view().shape[:2]
        try:
            self.screen = pygame.display.set_mode((w * self.zoom, h * self.zoom))
        except pygame.error as e:
            pygame.display.quit()
            raise NoDisplay(str(e)) from None
        caption = f"worldsim - {title}" if title else "worldsim"
        pygame.display.set_caption(caption + ("  (neural | real)" if core.real is not None else ""))
        self.font = pygame.font.Font(None, max(14, round(3.4 * self.zoom)))
        self.clock = pygame.time.Clock()
        for name in keys.shadowed_controls:
            log.warning("the world's key map uses %r: that player control is not available", name)

    # ------------------------------------------------------------------ events
    def handle(self, event: Any) -> None:
        pg = self.pg
        if event.type == pg.QUIT:
            self.running = False
        elif event.type == getattr(pg, "WINDOWFOCUSLOST", -1):
            self.keys.release_all()  # the KEYUPs of keys held now would go to another window
        elif self.keys.handle(event):
            return
        elif event.type == pg.KEYDOWN:
            if event.key == pg.K_ESCAPE:
                self.running = False
            elif event.key == pg.K_r:
                self.core.reset()
                self.say("reset")
            elif event.key == pg.K_p:
                self.say("paused" if self.core.toggle_pause() else "resumed")
            elif event.key == pg.K_h:
                self.show_hud = not self.show_hud
            elif event.key == pg.K_F1:
                self.show_help = not self.show_help
            elif event.key == pg.K_F12:
                self.screenshot()
            elif event.key == pg.K_v:
                self.toggle_recording()

    def say(self, text: str, seconds: float = 2.0) -> None:
        """A message shown for a few seconds."""
        self.messages.append((text, time.monotonic() + seconds))
        log.info(text)

    # ------------------------------------------------------------------ actions
    def _stamp(self, suffix: str) -> Path:
        name = self.title or "world"
        return self.out_dir / f"worldsim-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{self.core.state.frame_index}{suffix}"

    def screenshot(self, path: str | Path | None = None) -> Path:
        """Save the window as it looks (HUD included) to a PNG."""
        p = Path(path) if path else self._stamp(".png")
        p.parent.mkdir(parents=True, exist_ok=True)
        self.draw()
        self.pg.image.save(self.screen, str(p))
        self.say(f"saved {p}")
        return p

    def toggle_recording(self, path: str | Path | None = None) -> Path | None:
        """Start recording (to ``path`` or a timestamped file), or stop and return the file."""
        if not self.core.recording:
            p = Path(path) if path else self._stamp(self.video_suffix)
            try:
                self.core.start_recording(p, self.fps or self.core.backend.fps)
            except RuntimeError as e:
                self.say(f"cannot record: {e}", 4.0)
                return None
            self.say(f"recording to {p}")
            return None
        out = self.core.stop_recording()
        if out is not None:
            self.say(f"saved {out}")
        return out

    # ------------------------------------------------------------------ drawing
    def draw(self) -> None:
        pg, s = self.pg, self.core.state
        surf = pg.surfarray.make_surface(self.core.view().swapaxes(0, 1))
        size = self.screen.get_size()
        surf = pg.transform.smoothscale(surf, size) if self.smooth else pg.transform.scale(surf, size)
        self.screen.blit(surf, (0, 0))
        if self.core.real is not None:
            w, h = size
            y = h - self.font.get_linesize() - 14
            for text, x in (("neural", 4), ("real game", (w + GAP * self.zoom) // 2 + 4)):
                draw_panel(self.screen, self.font, [text], (x, y), color=(255, 150, 120))
        if self.show_hud:
            target = self.fps if self.fps > 0 and not self.scripted else 0.0
            held = [self.scripted] if self.scripted else self.keys.held_names()
            lines = hud_lines(s, held=held, title=self.title, target_fps=target)
            if s.rtt_ms is not None:
                lines[1] += f"  net {s.rtt_ms:4.0f} ms"
            draw_panel(self.screen, self.font, lines, (4, 4))
        if self.show_help:
            draw_panel(self.screen, self.font, help_lines(self.keys.describe()), (size[0] - 4, 4), align_right=True)
        now = time.monotonic()
        self.messages = [(m, t) for m, t in self.messages if t > now]
        if self.messages:
            lines = [m for m, _ in self.messages[-3:]]
            below = self.font.get_linesize() + 18 if self.core.real is not None else 4  # the labels
            y = size[1] - (len(lines) * self.font.get_linesize() + 10) - below
            draw_panel(self.screen, self.font, lines, (4, max(4, y)), color=(170, 230, 255))
        pg.display.flip()

    # ------------------------------------------------------------------ loops
    def tick(self, pace: bool = True) -> bool:
        """One frame: events, one step with the keys' action (unless paused or over), draw, pace.

        False once the player has quit.
        """
        for event in self.pg.event.get():
            self.handle(event)
        if not self.running:
            return False
        action = self.keys.action()
        if not self.core.over:
            self.core.step(action)
        self.draw()
        if pace:
            # The model ran during this frame; tick() waits out the rest of 1/fps (if any).
            if self.fps > 0:
                self.clock.tick(self.fps)
            else:
                self.clock.tick()
        return True

    def run(self) -> None:
        """Interactive play until ESC or the window is closed (or Ctrl-C)."""
        if not self.keys.bindings:
            log.warning("no keys for this world's %s actions: it plays its idle action", self.keys.spec.kind)
        try:
            while self.tick():
                pass
        except KeyboardInterrupt:
            pass
        if self.core.recording:
            self.toggle_recording()

    def run_headless(
        self,
        next_action: Callable[[PlayerCore], Any],
        frames: int,
        record: Path | None = None,
        screenshot: Path | None = None,
        source: str = "scripted",
    ) -> Path | None:
        """Play ``frames`` frames with ``next_action(core)`` (a new episode when one ends), as fast
        as the model goes; write the video and/or a final screenshot (HUD included, the held keys
        shown as ``(source)``: the policy or actions file the actions come from)."""
        self.scripted = source
        if record is not None:
            self.core.start_recording(record, self.fps or self.core.backend.fps)
        for _ in range(frames):
            for event in self.pg.event.get():
                self.handle(event)
            if self.core.over:
                self.core.reset()
            self.core.step(next_action(self.core))
        out = self.core.stop_recording() if record is not None else None
        if screenshot is not None:
            self.screenshot(screenshot)
        return out

    def close(self) -> None:
        if self.core.recording:
            self.core.stop_recording()
        self.pg.display.quit()
        self.core.close()
