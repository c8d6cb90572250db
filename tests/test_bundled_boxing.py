"""The shipped, trained Boxing world against the real Atari game (``pytest -m slow``; needs ale-py).

Like ``test_bundled.py`` for CartPole: the checkpoint in ``envs/boxing`` loads, predicts real
frames a few steps ahead, moves the player's boxer the way the keys say, and passes the
Gymnasium checker and the headless player. Bounds are floors well below the numbers measured in
``envs/boxing/README.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import worldsim
from worldsim.eval.metrics import psnr
from worldsim.testing import real_episode
from worldsim.worlds import get_world

pytestmark = pytest.mark.slow
pytest.importorskip("ale_py", reason="Boxing needs ale-py: pip install 'worldsim[atari]'")

WORLD = get_world("boxing")
NOOP, UP, RIGHT, LEFT, DOWN = 0, 2, 3, 4, 5


@pytest.fixture(scope="module")
def world() -> Any:
    if not WORLD.checkpoint.exists():
        pytest.fail(f"the bundled world is missing: {WORLD.checkpoint}")
    return worldsim.WorldModel.load(WORLD.checkpoint, device="cpu")


def _real_episode(seed: int, steps: int) -> tuple[np.ndarray, list[int]]:
    """Sticky random play: now and then a new random action, held (like the recorded ``sticky`` policy)."""
    held = [NOOP]

    def sticky(env: Any, rng: np.random.Generator) -> int:
        if rng.random() < 0.2:
            held[0] = int(rng.integers(18))
        return held[0]

    return real_episode(WORLD, seed, steps, sticky)


def test_predicts_the_real_game_a_few_frames_ahead(world: Any) -> None:
    K = world.config.context_frames
    psnr1, psnr10, pos_err = [], [], []
    for seed in range(4):
        s0 = 30  # start 30 frames into the bout
        real, acts = _real_episode(seed, s0 + K + 10)  # real[i + 1] follows acts[i]
        s = world.session(1, seed=seed)
        s.reset(frames=real[s0 : s0 + K], actions=np.array([0, *acts[s0 : s0 + K - 1]]))
        gen = np.stack([s.step([a]).frames[0] for a in acts[s0 + K - 1 : s0 + K + 9]])
        target = real[s0 + K : s0 + K + 10]
        psnr1.append(float(psnr(gen[0], target[0])))
        psnr10.append(float(psnr(gen[9], target[9])))
        pos_err.append(np.nanmean(np.abs(WORLD.state_reader(gen) - WORLD.state_reader(target))))
    assert np.mean(psnr1) > 21.0, psnr1  # measured: mean 24.5 dB at 1 frame, 19.4 at 10, error 8.8
    assert np.mean(psnr10) > 16.5, psnr10
    assert np.nanmean(pos_err) < 13.0, pos_err  # game units (a ring is about 80 wide), both boxers


@pytest.mark.parametrize(("a", "b", "axis"), [(RIGHT, LEFT, 0), (DOWN, UP, 1)])
def test_keys_move_the_players_boxer(world: Any, a: int, b: int, axis: int) -> None:
    """Holding right (down) puts the player's boxer right of (below) where left (up) takes it."""
    real, acts = _real_episode(1, 20)
    K = world.config.context_frames
    ends = []
    for action in (a, b):
        s = world.session(1, seed=0)
        s.reset(frames=real[20 - K + 1 : 21], actions=np.array([0, *acts[20 - K + 1 : 20]]))
        frames = np.stack([s.step([action]).frames[0] for _ in range(10)])
        ends.append(WORLD.state_reader(frames[-3:])[:, axis].mean())  # player_x or player_y
    assert np.isfinite(ends).all()
    assert ends[0] - ends[1] > 15.0, ends  # measured 35 (x) and 51 (y)


def test_gymnasium_checker_and_vector_env() -> None:
    from gymnasium.utils.env_checker import check_env

    env = gym.make("worldsim/Boxing-v0")
    check_env(env.unwrapped, skip_render_check=True)
    vec = gym.make_vec("worldsim/Boxing-v0", num_envs=4, vectorization_mode="vector_entry_point")
    obs, _ = vec.reset(seed=0)
    for _ in range(5):
        obs, rew, term, trunc, _ = vec.step(vec.action_space.sample())
    assert obs.shape == (4, 64, 64, 3) and rew.shape == (4,)
    vec.close()


def test_headless_player_on_the_trained_world(tmp_path: Path) -> None:
    from worldsim.play import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["boxing", "--headless", "--frames", "12", "--compare"])
    args.screenshot = tmp_path / "run.png"
    assert main(args) == 0
    assert (tmp_path / "run.png").stat().st_size > 0
