"""State readers against the games' true state, on recorded 64x64 frames.

Each test records two scripted episodes, replays them in the real game from their seeds and
actions (both games are deterministic), and compares what the world's reader reads off each
recorded frame with the game's internal state at that frame.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from worldsim.data import load_episodes
from worldsim.data.record import config_for, record
from worldsim.worlds import WorldDef, get_world


def _read_and_true(world: WorldDef, root: Path) -> tuple[np.ndarray, np.ndarray]:
    assert world.state_reader is not None and world.true_state is not None
    env = world.make_env(max_episode_steps=100_000)
    read, true = [], []
    for ep in load_episodes(root, split=None):
        env.reset(seed=ep.seed)
        states = [world.true_state(env)]
        for action in ep.actions:
            for _ in range(world.frameskip):
                _, _, terminated, _, _ = env.step(int(action))
                if terminated:
                    break
            states.append(world.true_state(env))
        read.append(world.state_reader(ep.frames))
        true.append(np.stack(states))
    env.close()
    return np.concatenate(read), np.concatenate(true)


def _record(world: str, out: Path, max_steps: int) -> None:
    args = argparse.Namespace(out=out, episodes=2, policy="scripted", seed=3, max_steps=max_steps, frameskip=None)
    record(config_for(world, args), progress=False)


def test_cartpole_reader_bound(tmp_path: Path) -> None:
    """Cart x within 0.05 (mean < 0.01) of the truth, pole angle within 0.03 rad (mean < 0.01)."""
    world = get_world("cartpole")
    _record("cartpole", tmp_path, max_steps=120)
    read, true = _read_and_true(world, tmp_path)
    assert world.state_names == ("cart_x", "pole_angle") and read.shape == true.shape
    err = np.abs(read - true)
    assert np.isfinite(err).all()
    assert err[:, 0].max() < 0.05 and err[:, 0].mean() < 0.01, err[:, 0].max()
    assert err[:, 1].max() < 0.03 and err[:, 1].mean() < 0.01, err[:, 1].max()


def test_boxing_reader_bound(tmp_path: Path) -> None:
    """Both boxers' positions within 8 game units of the RAM's (mean < 1.5, p99 < 6).

    A game unit is a screen pixel: 0.57 (x) and 0.39 (y) pixels of the 64x64 frame; the ring is
    about 80 units wide. The error is mostly a punching arm pulling on the sprite's centre.
    """
    pytest.importorskip("ale_py")
    world = get_world("boxing")
    _record("boxing", tmp_path, max_steps=150)
    read, true = _read_and_true(world, tmp_path)
    assert world.state_names == ("player_x", "player_y", "enemy_x", "enemy_y") and read.shape == true.shape
    err = np.abs(read - true)
    assert np.isfinite(err).mean() > 0.99  # both boxers are (almost) always visible
    err = err[np.isfinite(err).all(1)]
    assert (err.max(0) < 8).all() and (err.mean(0) < 1.5).all(), err.max(0)
    assert (np.percentile(err, 99, axis=0) < 6).all()
