"""The pygame player, headless (SDL dummy driver), on a tiny world."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
pygame = pytest.importorskip("pygame")

from worldsim.play import build, main  # noqa: E402
from worldsim.play.app import PlayerApp  # noqa: E402
from worldsim.play.keys import KeyTracker  # noqa: E402
from worldsim.spaces import ActionSpec  # noqa: E402


def _args(world: str, **kw: object) -> argparse.Namespace:
    base = dict(
        world=world,
        remote=None,
        token=None,
        zoom=2,
        smooth=False,
        seed=0,
        fps=None,
        compare=False,
        headless=True,
        frames=6,
        actions=None,
        record=None,
        screenshot=None,
        video_format="gif",
        device="cpu",
    )
    base.update(kw)
    return argparse.Namespace(**base)


def _key(kind: int, name: str) -> pygame.event.Event:
    return pygame.event.Event(kind, key=pygame.key.key_code(name))


def test_key_events_change_the_action() -> None:
    pygame.init()
    import gymnasium as gym

    keys = KeyTracker(
        {"left": 0, "right": 1}, ActionSpec.from_space(gym.spaces.Discrete(2)), default_action="alternate"
    )
    idle = [keys.action() for _ in range(4)]
    assert idle == [1, 0, 1, 0]  # nothing held: alternate (CartPole's "neutral")
    keys.handle(_key(pygame.KEYDOWN, "right"))
    assert keys.action() == 1 and keys.action() == 1
    keys.handle(_key(pygame.KEYDOWN, "left"))
    assert keys.action() == 0  # the most recent held key wins
    keys.handle(_key(pygame.KEYUP, "left"))
    assert keys.action() == 1
    keys.handle(_key(pygame.KEYUP, "right"))
    assert keys.action() in (0, 1) and not keys.held
    combo = KeyTracker({"a": 0, "b": 2}, ActionSpec.from_space(gym.spaces.MultiBinary(3)))
    combo.handle(_key(pygame.KEYDOWN, "a"))
    combo.handle(_key(pygame.KEYDOWN, "b"))
    assert combo.action().tolist() == [1, 0, 1]


def test_app_keys_reset_pause_screenshot_record(tiny_world_path: Path, tmp_path: Path) -> None:
    core, _, default, fps = build(_args(str(tiny_world_path)))
    pygame.init()
    keys = KeyTracker({"left": 0, "right": 1}, core.backend.spec, default)
    app = PlayerApp(core, keys, fps, zoom=2, out_dir=tmp_path)
    # Posted events go through the app like a real keyboard.
    pygame.event.post(_key(pygame.KEYDOWN, "right"))
    for event in pygame.event.get():
        app.handle(event)
    assert keys.action() == 1
    for _ in range(3):
        core.step(keys.action())
    assert core.state.frame_index == 3 and core.state.action == 1
    app.handle(_key(pygame.KEYDOWN, "p"))
    assert core.state.paused and core.step(1) is False and core.state.frame_index == 3
    app.handle(_key(pygame.KEYDOWN, "p"))
    app.handle(_key(pygame.KEYDOWN, "r"))
    assert core.state.frame_index == 0 and not keys.held
    shot = app.screenshot(tmp_path / "shot.png")
    assert pygame.image.load(str(shot)).get_size() == (128, 128)
    app.handle(_key(pygame.KEYDOWN, "v"))
    for _ in range(4):
        core.step(0)
    gif = app.toggle_recording(tmp_path / "clip.gif")
    assert gif is not None and gif.stat().st_size > 0
    import imageio.v3 as iio

    assert iio.imread(gif).shape[0] == 5  # the first view + 4 steps
    app.handle(_key(pygame.KEYDOWN, "escape"))
    assert not app.running
    app.close()


def test_compare_mode_lock_step(tiny_world_path: Path) -> None:
    """The real CartPole and the neural world advance together, one action each per frame."""
    from worldsim.engine import WorldModel
    from worldsim.play.game import LocalBackend, PlayerCore, RealGame
    from worldsim.worlds import get_world

    wd = get_world("cartpole")
    core = PlayerCore(
        LocalBackend(WorldModel.load(tiny_world_path), seed=0), real=RealGame(wd), default_action="alternate", seed=0
    )
    assert core.view().shape == (64, 130, 3)
    x0 = float(core.real.env.unwrapped.state[0])
    for _ in range(5):
        core.step(1)  # push right
    assert core.state.frame_index == 5
    assert core.real.env.unwrapped.state[0] > x0  # the real cart moved right: it got the same actions
    core.toggle_pause()
    s = core.real.env.unwrapped.state.copy()
    core.step(1)
    assert np.array_equal(core.real.env.unwrapped.state, s)  # paused: neither advances
    core.close()


def test_headless_cli_writes_video_and_screenshot(tiny_world_path: Path, tmp_path: Path) -> None:
    rc = main(_args(str(tiny_world_path), frames=8, record=tmp_path / "run.gif", screenshot=tmp_path / "run.png"))
    assert rc == 0 and (tmp_path / "run.gif").stat().st_size > 0 and (tmp_path / "run.png").exists()
    actions = tmp_path / "acts.txt"
    actions.write_text("0 1 1 0")
    assert main(_args(str(tiny_world_path), actions=actions, screenshot=tmp_path / "b.png")) == 0


def test_no_display_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(_args("cartpole", headless=False)) == 1
    err = capsys.readouterr().err
    assert "no display" in err and "--headless" in err
    os.environ["SDL_VIDEODRIVER"] = "dummy"
