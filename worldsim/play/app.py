"""The pygame front end: window, keys, HUD, pacing; and the headless mode.

Keys: the world's key map plays; R resets, P pauses, H toggles the HUD, F1 shows the keys,
F12 saves a PNG screenshot, V starts/stops recording (GIF or MP4), ESC quits.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.play.game import PlayerCore
from worldsim.play.keys import KeyTracker
from worldsim.play.video import write_video

log = logging.getLogger(__name__)


def has_display() -> bool:
    if os.environ.get("SDL_VIDEODRIVER") in ("dummy", "offscreen"):
        return True
    if os.name == "posix" and os.uname().sysname == "Linux":
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class PlayerApp:
    def __init__(
        self,
        core: PlayerCore,
        keys: KeyTracker,
        fps: int,
        zoom: int = 6,
        smooth: bool = False,
        video_suffix: str = ".gif",
        out_dir: Path = Path("."),
    ) -> None:
        import pygame

        self.pg = pygame
        self.core, self.keys, self.fps, self.zoom, self.smooth = core, keys, fps, zoom, smooth
        self.video_suffix, self.out_dir = video_suffix, out_dir
        self.show_hud, self.show_help, self.running = True, False, True
        self.messages: list[tuple[str, float]] = []
        pygame.init()
        w, h = core.view().shape[1] * zoom, core.view().shape[0] * zoom
        self.screen = pygame.display.set_mode((w, h))
        pygame.display.set_caption("worldsim")
        self.font = pygame.font.Font(None, max(16, 3 * zoom))
        self.clock = pygame.time.Clock()

    # ------------------------------------------------------------------ events
    def handle(self, event: Any) -> None:
        pg = self.pg
        if event.type == pg.QUIT:
            self.running = False
        elif self.keys.handle(event):
            return
        elif event.type == pg.KEYDOWN:
            if event.key == pg.K_ESCAPE:
                self.running = False
            elif event.key == pg.K_r:
                self.core.reset()
                self.keys.release_all()
                self.say("reset")
            elif event.key == pg.K_p:
                self.core.toggle_pause()
                self.say("paused" if self.core.state.paused else "resumed")
            elif event.key == pg.K_h:
                self.show_hud = not self.show_hud
            elif event.key == pg.K_F1:
                self.show_help = not self.show_help
            elif event.key == pg.K_F12:
                self.screenshot()
            elif event.key == pg.K_v:
                self.toggle_recording()

    def say(self, text: str) -> None:
        self.messages.append((text, time.monotonic() + 2.0))
        log.info(text)

    def screenshot(self, path: str | Path | None = None) -> Path:
        p = Path(path) if path else self.out_dir / time.strftime("worldsim-%Y%m%d-%H%M%S.png")
        self.draw()
        self.pg.image.save(self.screen, str(p))
        self.say(f"screenshot {p}")
        return p

    def toggle_recording(self, path: str | Path | None = None) -> Path | None:
        if not self.core.state.recording:
            self.core.start_recording()
            self.say("recording")
            return None
        frames = self.core.stop_recording()
        p = Path(path) if path else self.out_dir / time.strftime(f"worldsim-%Y%m%d-%H%M%S{self.video_suffix}")
        up = [np.repeat(np.repeat(f, 4, 0), 4, 1) for f in frames]
        write_video(p, up, self.fps)
        self.say(f"saved {p}")
        return p

    # ------------------------------------------------------------------ drawing
    def draw(self) -> None:
        pg, s = self.pg, self.core.state
        view = self.core.view()
        surf = pg.surfarray.make_surface(view.swapaxes(0, 1))
        size = self.screen.get_size()
        surf = pg.transform.smoothscale(surf, size) if self.smooth else pg.transform.scale(surf, size)
        self.screen.blit(surf, (0, 0))
        lines: list[str] = []
        if self.show_hud:
            lines += [
                f"FPS {s.fps:5.1f}   model {s.latency_ms:5.1f} ms",
                f"frame {s.frame_index}   action {s.action}",
                f"reward {s.reward:+.2f}   return {s.episode_return:.1f}",
            ]
            if s.terminated:
                lines.append("episode over (model) - R to reset")
            if s.real_done:
                lines.append("real game over")
            if s.paused:
                lines.append("PAUSED (P)")
            if s.recording:
                lines.append("REC (V to stop)")
        if self.show_help:
            lines += (
                ["keys:"] + self.keys.describe() + ["R reset  P pause  H hud", "F12 screenshot  V record  ESC quit"]
            )
        now = time.monotonic()
        self.messages = [(m, t) for m, t in self.messages if t > now]
        lines += [m for m, _ in self.messages]
        if lines:
            h = self.font.get_linesize()
            w = max(self.font.size(t)[0] for t in lines) + 12
            box = pg.Surface((w, h * len(lines) + 8), pg.SRCALPHA)
            box.fill((0, 0, 0, 150))
            self.screen.blit(box, (4, 4))
            for i, t in enumerate(lines):
                self.screen.blit(self.font.render(t, True, (255, 255, 120)), (10, 8 + i * h))
        if self.core.real is not None:
            half = self.screen.get_size()[0] // 2
            for text, x in (("neural", 8), ("real", half + 8)):
                img = self.font.render(text, True, (255, 80, 80))
                self.screen.blit(img, (x, self.screen.get_size()[1] - img.get_height() - 6))
        pg.display.flip()

    # ------------------------------------------------------------------ loops
    def run(self) -> None:
        """Interactive: pace at the world's fps; the model runs as fast as it can in between."""
        while self.running:
            for event in self.pg.event.get():
                self.handle(event)
            if not self.running:
                break
            self.core.step(self.keys.action())
            self.draw()
            self.clock.tick(self.fps)
        if self.core.state.recording:
            self.toggle_recording()

    def run_headless(self, actions: list[Any], record: Path | None, screenshot: Path | None) -> None:
        if record is not None:
            self.core.start_recording()
        for a in actions:
            for event in self.pg.event.get():
                self.handle(event)
            self.core.step(a)
            if self.core.state.terminated:
                self.core.reset()
        self.draw()
        if record is not None:
            self.toggle_recording(record)
        if screenshot is not None:
            self.screenshot(screenshot)

    def close(self) -> None:
        self.pg.display.quit()
        self.core.close()
