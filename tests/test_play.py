"""The pygame player, without a screen (SDL dummy driver), on tiny random-weight worlds."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
pygame = pytest.importorskip("pygame")

from worldsim.keys import KeyTracker, fallback_keymap, key_code  # noqa: E402
from worldsim.play import add_arguments, build, load_actions, main  # noqa: E402
from worldsim.play.app import PlayerApp  # noqa: E402
from worldsim.play.game import GAP  # noqa: E402
from worldsim.play.hud import hud_lines  # noqa: E402
from worldsim.play.recorder import Recorder, RecorderError, mp4_available  # noqa: E402
from worldsim.spaces import ActionSpec  # noqa: E402
from worldsim.worlds import WorldDef  # noqa: E402

CARTPOLE = WorldDef(
    name="cartpole",
    env_id="CartPole-v1",
    fps=25,
    frameskip=2,
    crop=(160, 320, 0, 600),
    keymap={"left": 0, "right": 1},
    default_action=0,
)


def _args(world: str, **kw: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([world, "--zoom", "2", "--seed", "0"])
    for k, v in kw.items():
        assert hasattr(args, k), k
        setattr(args, k, v)
    return args


def _key(kind: int, name: str) -> Any:
    return pygame.event.Event(kind, key=key_code(name))


def _post(kind: int, name: str) -> None:
    pygame.event.post(_key(kind, name))


def _spy(core: Any) -> list[Any]:
    """Record every action the core sends to the engine."""
    sent: list[Any] = []
    step = core.backend.step

    def spy(action: Any) -> Any:
        sent.append(np.asarray(action).tolist())
        return step(action)

    core.backend.step = spy
    return sent


def _save(world: Any, path: Path) -> Path:
    world.save(path)
    return path


@pytest.fixture()
def app_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    apps: list[PlayerApp] = []

    def make(world: str, world_def: Any = None, **kw: Any) -> PlayerApp:
        setup = build(_args(world, **kw), world_def=world_def)
        keys = KeyTracker(setup.keymap, setup.core.backend.spec, setup.default_action)
        app = PlayerApp(setup.core, keys, setup.fps, zoom=2, out_dir=tmp_path, title=setup.title)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


# ---------------------------------------------------------------------------- keys
def test_key_tracking_discrete_and_multibinary() -> None:
    keys = KeyTracker({"left": 1, "right": 2, "a": 1}, ActionSpec.from_space(gym.spaces.Discrete(3)), 0)
    assert keys.action() == 0  # nothing held: the default
    keys.handle(_key(pygame.KEYDOWN, "right"))
    assert keys.action() == 2
    keys.handle(_key(pygame.KEYDOWN, "left"))
    assert keys.action() == 1  # the most recently pressed held key wins
    keys.handle(_key(pygame.KEYUP, "left"))
    assert keys.action() == 2  # back to the key still held
    keys.handle(_key(pygame.KEYDOWN, "a"))
    keys.handle(_key(pygame.KEYDOWN, "right"))  # pressed again: on top again
    assert keys.action() == 2 and keys.held_names() == ["a", "right"]
    assert not keys.handle(_key(pygame.KEYDOWN, "p"))  # not mapped: left to the player controls
    keys.release_all()
    assert keys.action() == 0

    alt = KeyTracker({"left": 0, "right": 1}, ActionSpec.from_space(gym.spaces.Discrete(2)), "alternate")
    assert [alt.action() for _ in range(4)] == [1, 0, 1, 0]

    combo = KeyTracker({"a": 0, "b": 2, "c": 1}, ActionSpec.from_space(gym.spaces.MultiBinary(3)))
    assert combo.action().tolist() == [0, 0, 0]
    combo.handle(_key(pygame.KEYDOWN, "a"))
    combo.handle(_key(pygame.KEYDOWN, "b"))
    assert combo.action().tolist() == [1, 0, 1]  # a key combination
    combo.handle(_key(pygame.KEYUP, "a"))
    assert combo.action().tolist() == [0, 0, 1]

    # Chords (Atari-style Discrete(18)): all keys held -> the chord beats its single keys.
    pad = KeyTracker(
        {"up": 2, "right": 3, "space": 1, "up+right": 6, "right+space": 11},
        ActionSpec.from_space(gym.spaces.Discrete(18)),
    )
    pad.handle(_key(pygame.KEYDOWN, "up"))
    assert pad.action() == 2
    pad.handle(_key(pygame.KEYDOWN, "right"))
    assert pad.action() == 6
    pad.handle(_key(pygame.KEYDOWN, "space"))
    assert pad.action() == 11  # two 2-key chords held: the most recently completed one wins
    pad.handle(_key(pygame.KEYUP, "right"))
    assert pad.action() == 1

    with pytest.raises(ValueError, match="out of range"):
        KeyTracker({"left": 5}, ActionSpec.from_space(gym.spaces.Discrete(2)))
    with pytest.raises(ValueError, match="unknown key name"):
        KeyTracker({"nosuchkey": 0}, ActionSpec.from_space(gym.spaces.Discrete(2)))
    assert fallback_keymap(ActionSpec.from_space(gym.spaces.Discrete(2)))["right"] == 1


def test_posted_key_events_change_the_action_sent(tmp_path: Path, app_factory: Any) -> None:
    """Events posted to pygame's queue go through the app loop and change what the engine gets."""
    from worldsim.testing import tiny_world

    path = _save(tiny_world(gym.spaces.Discrete(3)), tmp_path / "d3.safetensors")
    wd = WorldDef(name="d3", env_id="none", keymap={"left": 1, "right": 2}, default_action=0)
    app = app_factory(str(path), world_def=wd)
    sent = _spy(app.core)
    app.tick(pace=False)
    _post(pygame.KEYDOWN, "right")
    app.tick(pace=False)
    _post(pygame.KEYDOWN, "left")
    app.tick(pace=False)
    _post(pygame.KEYUP, "left")
    app.tick(pace=False)
    _post(pygame.KEYUP, "right")
    app.tick(pace=False)
    assert sent == [0, 2, 1, 2, 0]
    assert app.core.state.frame_index == 5 and app.core.state.action == 0

    mb = _save(tiny_world(gym.spaces.MultiBinary(3)), tmp_path / "mb.safetensors")
    app = app_factory(str(mb), world_def=WorldDef(name="mb", env_id="none", keymap={"space": 0, "right": 2}))
    sent = _spy(app.core)
    _post(pygame.KEYDOWN, "space")
    _post(pygame.KEYDOWN, "right")
    app.tick(pace=False)
    _post(pygame.KEYUP, "space")
    app.tick(pace=False)
    assert sent == [[1, 0, 1], [0, 0, 1]]


# ---------------------------------------------------------------------------- controls
def test_reset_pause_hud_screenshot_record_quit(tiny_world_path: Path, tmp_path: Path, app_factory: Any) -> None:
    app = app_factory(str(tiny_world_path))
    core = app.core
    for _ in range(3):
        app.tick(pace=False)
    assert core.state.frame_index == 3 and core.episode == 1

    _post(pygame.KEYDOWN, "p")  # pause: frames stop, the window keeps drawing
    app.tick(pace=False)
    frame = core.state.frame.copy()
    app.tick(pace=False)
    assert core.state.paused and core.state.frame_index == 3 and np.array_equal(core.state.frame, frame)
    _post(pygame.KEYDOWN, "p")
    app.tick(pace=False)
    assert not core.state.paused and core.state.frame_index == 4

    _post(pygame.KEYDOWN, "r")  # reset: a new episode from frame 0 (the tick then plays frame 1)
    app.tick(pace=False)
    assert core.episode == 2 and core.state.frame_index == 1 and core.state.episode_return == core.state.reward

    # F12: a PNG of the window, zoomed, HUD included; H hides the HUD.
    _post(pygame.KEYDOWN, "f12")
    app.tick(pace=False)
    (shot,) = tmp_path.glob("worldsim-tiny-*.png")
    with_hud = pygame.surfarray.array3d(pygame.image.load(str(shot))).swapaxes(0, 1)
    assert with_hud.shape == (128, 128, 3)
    _post(pygame.KEYDOWN, "h")
    app.tick(pace=False)
    bare = pygame.surfarray.array3d(pygame.image.load(str(app.screenshot(tmp_path / "bare.png")))).swapaxes(0, 1)
    assert not app.show_hud
    # Nearest-neighbour zoom of the frame (the bottom has the "saved ..." message for a while).
    assert np.array_equal(bare[:64:2, ::2], core.state.frame[:32])
    assert not np.array_equal(with_hud[:20, :60], bare[:20, :60])  # the HUD was drawn there
    _post(pygame.KEYDOWN, "f1")
    app.tick(pace=False)
    assert app.show_help

    # V starts recording, V stops: a GIF of every frame shown meanwhile (upscaled 4x).
    _post(pygame.KEYDOWN, "v")
    app.tick(pace=False)  # starts with the current frame, then plays one
    assert core.recording and core.state.recording
    for _ in range(3):
        app.tick(pace=False)
    _post(pygame.KEYDOWN, "v")
    app.tick(pace=False)
    assert not core.recording
    (gif,) = tmp_path.glob(f"worldsim-tiny-*{app.video_suffix}")
    import imageio.v3 as iio

    if gif.suffix == ".gif":
        assert iio.imread(gif).shape == (5, 256, 256, 3)
    else:
        assert gif.stat().st_size > 0

    _post(pygame.KEYDOWN, "escape")
    assert app.tick(pace=False) is False and not app.running
    app.running = True
    pygame.event.post(pygame.event.Event(pygame.QUIT))
    assert app.tick(pace=False) is False


def test_hud_lines_say_what_matters(tiny_world_path: Path, app_factory: Any) -> None:
    app = app_factory(str(tiny_world_path))
    app.tick(pace=False)
    app.core.state.latency_ms = 12.3
    text = "\n".join(hud_lines(app.core.state, held=["right"], title="tiny", target_fps=15))
    for part in ("FPS", "/15", "model  12.3 ms", "frame 1", "action 0 (right)", "reward"):
        assert part in text, part
    app.core.toggle_pause()
    assert "PAUSED" in "\n".join(hud_lines(app.core.state))


def test_recorder_gif_and_mp4(tmp_path: Path) -> None:
    frames = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(4)]
    rec = Recorder(tmp_path / "a.gif", fps=10, scale=2)
    assert rec.close() is None and not (tmp_path / "a.gif").exists()  # nothing recorded, nothing written
    rec = Recorder(tmp_path / "b.gif", fps=10, scale=2)
    for f in frames:
        rec.add(f)
    import imageio.v3 as iio

    out = iio.imread(rec.close())
    assert out.shape == (4, 128, 128, 3) and out[2, 0, 0, 0] == 80
    with pytest.raises(RecorderError, match=r"\.gif or \.mp4"):
        Recorder(tmp_path / "c.avi", fps=10)
    if not mp4_available():
        with pytest.raises(RecorderError, match="imageio-ffmpeg"):
            Recorder(tmp_path / "d.mp4", fps=10)
        return
    rec = Recorder(tmp_path / "d.mp4", fps=10, scale=4)
    for f in frames:
        rec.add(f)
    path = rec.close()
    assert path is not None and path.stat().st_size > 0


# ---------------------------------------------------------------------------- compare
def test_compare_mode_steps_both_games_in_lock_step(tiny_world_path: Path, app_factory: Any) -> None:
    """The real CartPole and the neural world get the same keys' actions, frame for frame."""
    from worldsim.data.frames import preprocess

    app = app_factory(str(tiny_world_path), world_def=CARTPOLE, compare=True)
    core, real = app.core, app.core.real
    assert real is not None and core.view().shape == (64, 64 + GAP + 64, 3)
    assert app.screen.get_size() == (2 * (128 + GAP), 128)
    # The neural world started from the real game's first frames.
    assert np.array_equal(core.state.frame, core.state.real_frame)
    assert np.array_equal(core.state.real_frame, preprocess(real.env.render(), CARTPOLE.crop))
    env_steps: list[int] = []
    step_env = real.env.step
    real.env.step = lambda a: (env_steps.append(int(a)), step_env(a))[1]  # type: ignore[method-assign]
    sent = _spy(core)

    x0 = float(real.env.unwrapped.state[0])
    _post(pygame.KEYDOWN, "right")
    for _ in range(4):
        app.tick(pace=False)
    assert sent == [1, 1, 1, 1] and env_steps == [1] * 8  # frameskip 2: two env steps per frame
    assert real.env.unwrapped.state[0] > x0  # the real cart was pushed right
    assert core.state.frame_index == 4
    assert np.array_equal(core.state.real_frame, preprocess(real.env.render(), CARTPOLE.crop))

    _post(pygame.KEYDOWN, "p")  # paused: neither game advances
    app.tick(pace=False)
    assert len(sent) == 4 and len(env_steps) == 8

    _post(pygame.KEYDOWN, "p")
    _post(pygame.KEYUP, "right")
    _post(pygame.KEYDOWN, "left")
    app.tick(pace=False)
    assert sent[-1] == 0 and env_steps[-2:] == [0, 0]

    _post(pygame.KEYDOWN, "r")  # reset both together (the tick then plays one frame in both)
    app.tick(pace=False)
    assert core.episode == 2 and core.state.frame_index == 1 and abs(real.env.unwrapped.state[0]) < 0.1

    # A finished real game freezes; the next frame of the loop waits for R.
    real.done = True
    core.step(0)
    n_sent, n_env = len(sent), len(env_steps)
    assert core.over
    app.tick(pace=False)
    assert (len(sent), len(env_steps)) == (n_sent, n_env)


def test_headless_compare_cartpole_scripted(tiny_world_path: Path, tmp_path: Path) -> None:
    """--compare --headless --policy scripted: the real game's controller drives both games."""
    args = _args(str(tiny_world_path), headless=True, frames=6, compare=True, policy="scripted")
    import worldsim.play as play

    setup = build(args, world_def=CARTPOLE)
    next_action, n = play.action_source(args, setup)
    assert n == 6
    acts = []
    for _ in range(n):
        a = next_action(setup.core)
        acts.append(int(a))
        setup.core.step(a)
    assert set(acts) <= {0, 1} and setup.core.state.frame_index == 6
    setup.core.close()


# ---------------------------------------------------------------------------- CLI
def test_headless_cli_writes_video_and_screenshot(tiny_world_path: Path, tmp_path: Path) -> None:
    import imageio.v3 as iio

    args = _args(str(tiny_world_path), headless=True, frames=8, record=tmp_path / "run.gif")
    args.screenshot = tmp_path / "run.png"
    assert main(args) == 0
    assert iio.imread(tmp_path / "run.gif").shape == (9, 256, 256, 3)  # the first frame + 8 played
    assert pygame.image.load(str(tmp_path / "run.png")).get_size() == (128, 128)

    spec = ActionSpec.from_space(gym.spaces.Discrete(2))
    (tmp_path / "a.txt").write_text("0 1 1  # a comment\n0,1\n")
    (tmp_path / "a.json").write_text(json.dumps([1, 1, 0]))
    np.save(tmp_path / "a.npy", np.array([0, 1, 0, 1], np.int64))
    assert [int(a) for a in load_actions(tmp_path / "a.txt", spec)] == [0, 1, 1, 0, 1]
    assert [int(a) for a in load_actions(tmp_path / "a.json", spec)] == [1, 1, 0]
    with pytest.raises(ValueError):
        load_actions(tmp_path / "a.json", ActionSpec.from_space(gym.spaces.Discrete(1)))
    for name, n in (("a.txt", 5), ("a.npy", 4)):
        rec = tmp_path / f"{name}.gif"
        assert main(_args(str(tiny_world_path), headless=True, actions=tmp_path / name, record=rec)) == 0
        assert iio.imread(rec).shape[0] == n + 1

    # Bad requests fail before playing, with a message.
    assert main(_args(str(tiny_world_path), headless=True, record=tmp_path / "x.avi")) == 2
    assert main(_args(str(tiny_world_path), headless=True, policy="scripted")) == 2
    assert main(_args(str(tiny_world_path), headless=True, compare=True)) == 2  # not a bundled world
    assert main(_args(str(tmp_path / "missing.safetensors"), headless=True)) == 2


def test_cli_entry_point(tiny_world_path: Path, tmp_path: Path) -> None:
    from worldsim.cli import main as cli

    assert not (Path(__file__).parents[1] / "worldsim" / "play.py").exists()
    shot = tmp_path / "cli.png"
    rc = cli(["play", str(tiny_world_path), "--headless", "--frames", "3", "--screenshot", str(shot), "--zoom", "3"])
    assert rc == 0 and pygame.image.load(str(shot)).get_size() == (192, 192)


def test_no_display_says_so(
    tiny_world_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert main(_args("cartpole")) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no display" in err and "--headless --frames 300 --record out." in err

    # A display that looks available but SDL cannot open a window on.
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")

    def refuse(*a: Any, **k: Any) -> None:
        raise pygame.error("x11 not available")

    monkeypatch.setattr(pygame.display, "set_mode", refuse)
    assert main(_args(str(tiny_world_path))) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "x11 not available" in err and "--headless" in err


def test_remote_world(tiny_world_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("grpc")
    from worldsim.engine.world import WorldModel
    from worldsim.serve.server import BackgroundServer, ServeConfig

    with BackgroundServer({"tiny": WorldModel.load(tiny_world_path, device="cpu")}, ServeConfig(port=0)) as srv:
        gif = tmp_path / "remote.gif"
        assert main(_args("tiny", remote=srv.address, headless=True, frames=4, record=gif)) == 0
        import imageio.v3 as iio

        assert iio.imread(gif).shape[0] == 5
        # Compare mode over gRPC: the remote world starts from the real game's frames.
        setup = build(_args("tiny", remote=srv.address, compare=True), world_def=CARTPOLE)
        core = setup.core
        assert np.array_equal(core.state.frame, core.state.real_frame)
        core.step(1)
        assert core.state.frame_index == 1 and core.state.rtt_ms is not None
        core.close()


def test_interactive_loop_is_paced_and_quits_cleanly(tiny_world_path: Path, tmp_path: Path, app_factory: Any) -> None:
    """run(): one frame per 1/fps while the model keeps up; closing the window ends it, recording saved."""
    import time

    app = app_factory(str(tiny_world_path))
    app.fps = 40.0
    app.toggle_recording(tmp_path / "live.gif")
    pygame.time.set_timer(pygame.event.Event(pygame.QUIT), 400, loops=1)
    t0 = time.perf_counter()
    app.run()
    elapsed = time.perf_counter() - t0
    n = app.core.state.frame_index
    assert 0.35 < elapsed < 2.0 and 4 <= n <= 40 * elapsed + 2  # paced: never faster than 40 fps
    assert not app.core.recording and (tmp_path / "live.gif").stat().st_size > 0
