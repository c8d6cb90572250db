"""Keys for every action space (worldsim.keys), world names from game ids, the --threads helper."""

from __future__ import annotations

import argparse
import os

import gymnasium as gym
import numpy as np
import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
pygame = pytest.importorskip("pygame")

from worldsim.keys import (  # noqa: E402
    KeyTracker,
    controls_for,
    default_idle,
    default_keymap,
    key_code,
    parse_keymap,
)
from worldsim.spaces import ActionSpec  # noqa: E402


def _spec(space: gym.Space) -> ActionSpec:  # type: ignore[type-arg]
    return ActionSpec.from_space(space)


def _press(keys: KeyTracker, kind: int, name: str) -> None:
    assert keys.handle(pygame.event.Event(kind, key=key_code(name)))


def test_default_keymap_and_idle_arrows_first() -> None:
    d3 = _spec(gym.spaces.Discrete(3))
    assert list(default_keymap(d3))[:3] == ["left", "down", "right"]  # arrows before digits
    assert default_keymap(d3)["right"] == 2 and default_idle(d3) == 1  # left / none / right
    d6 = _spec(gym.spaces.Discrete(6))
    assert "left" not in default_keymap(d6) and default_keymap(d6)["5"] == 5 and default_idle(d6) == 0
    box = _spec(gym.spaces.Box(-2.0, 2.0, (2,)))
    assert default_keymap(box) == {"left": "0-", "right": "0+", "down": "1-", "up": "1+"}
    assert default_idle(box).tolist() == [0.0, 0.0]
    md = _spec(gym.spaces.MultiDiscrete([3, 2]))
    assert default_keymap(md)["right"] == "0:2" and default_idle(md).tolist() == [1, 0]


def test_box_keys_push_axes_by_the_magnitude_and_release_to_idle() -> None:
    spec = _spec(gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32)))
    keys = KeyTracker(default_keymap(spec), spec, None, magnitude=0.5)
    assert keys.action().tolist() == [0.0, 0.5]  # the centre
    _press(keys, pygame.KEYDOWN, "left")
    assert keys.action().tolist() == [-1.0, 0.5]
    _press(keys, pygame.KEYDOWN, "up")
    assert keys.action().tolist() == [-1.0, 0.75]
    _press(keys, pygame.KEYDOWN, "right")  # left and right together cancel
    assert keys.action().tolist() == [0.0, 0.75]
    for k in ("left", "up", "right"):
        _press(keys, pygame.KEYUP, k)
    assert keys.action().tolist() == [0.0, 0.5]
    gas = KeyTracker({"up": "1+"}, spec, [0.0, 0.0])  # a declared neutral: no gas
    _press(gas, pygame.KEYDOWN, "up")
    assert gas.action().tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="'0\\+' or '0-'"):
        KeyTracker({"a": 1}, spec)
    with pytest.raises(ValueError, match="magnitude"):
        KeyTracker({}, spec, None, magnitude=0)
    assert any("axis 0 -" in line for line in KeyTracker(default_keymap(spec), spec).describe())


def test_multi_discrete_keys_set_their_dimension() -> None:
    spec = _spec(gym.spaces.MultiDiscrete([3, 4]))
    keys = KeyTracker(default_keymap(spec), spec)
    assert keys.action().tolist() == [1, 0]
    _press(keys, pygame.KEYDOWN, "left")
    _press(keys, pygame.KEYDOWN, "e")  # row q-w-e: dimension 1, value 2
    assert keys.action().tolist() == [0, 2]
    _press(keys, pygame.KEYDOWN, "3")  # row 1-2-3: dimension 0, value 2 (pressed last: wins)
    assert keys.action().tolist() == [2, 2]
    with pytest.raises(ValueError, match="DIM:VALUE"):
        KeyTracker({"a": "0:3"}, spec)


def test_keys_from_the_command_line_over_the_world_file() -> None:
    spec = _spec(gym.spaces.Discrete(3))
    assert parse_keymap("a=0, d=2,space=1") == {"a": 0, "d": 2, "space": 1}
    assert parse_keymap('{"left": "0-"}') == {"left": "0-"}
    with pytest.raises(ValueError, match="KEY=ACTION"):
        parse_keymap("left")
    stored = {"keymap": {"a": 0}, "idle": 2, "magnitude": 1.0}
    assert controls_for(spec, stored) == stored
    ctl = controls_for(spec, stored, keys="b=1", idle="0")
    assert ctl["keymap"] == {"b": 1} and ctl["idle"] == 0
    assert controls_for(spec)["idle"] == 1


def test_world_name_from_the_game_id_and_threads() -> None:
    import torch

    from worldsim import threads
    from worldsim.train.cli import name_from_env_id

    assert name_from_env_id("Pendulum-v1") == "pendulum"
    assert name_from_env_id("ALE/Pong-v5") == "pong"
    assert name_from_env_id("MountainCarContinuous-v0") == "mountaincarcontinuous"
    parser = argparse.ArgumentParser()
    threads.add_argument(parser)
    threads.add_argument(parser)  # once only
    before = torch.get_num_threads()
    try:
        threads.set_threads(parser.parse_args(["--threads", "1"]).threads)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match=">= 1"):
        threads.set_threads(-1)


def test_human_recording_of_a_box_game_without_a_bundled_world(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`worldsim record Pendulum-v1 --policy human`: the default keys push the torque; --key-magnitude halves it."""
    from worldsim.data import load_episodes
    from worldsim.data.record import RecordConfig, record

    right = [pygame.event.Event(pygame.KEYDOWN, key=key_code("right"))]
    up = [pygame.event.Event(pygame.KEYUP, key=key_code("right"))]
    for magnitude, expected in ((None, [2.0, 2.0, 0.0]), (0.5, [1.0, 1.0, 0.0])):
        script = iter([right, [], up])
        monkeypatch.setattr(pygame.event, "get", lambda s=script: next(s, []))
        out = tmp_path / f"pendulum-{magnitude}"
        cfg = RecordConfig(
            env_id="Pendulum-v1", out=out, episodes=1, max_steps=3, policies=(("human", 1.0),), key_magnitude=magnitude
        )
        manifest = record(cfg, progress=False)
        assert manifest["fps"] == 30  # Pendulum's metadata["render_fps"]
        (ep,) = load_episodes(out, split=None)
        assert ep.actions.reshape(-1).tolist() == expected
