"""The shipped, trained CartPole world through every surface, against the real game (``pytest -m slow``).

The default suite uses tiny random-weight worlds; these check that the trained checkpoint in
``envs/cartpole`` behaves like CartPole: it loads, predicts real frames a few steps ahead, obeys
the actions, and passes the Gymnasium / SB3 checkers, the gRPC service and the headless player.
Bounds are sanity floors well below the measured numbers in ``envs/cartpole/README.md``.
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

WORLD = get_world("cartpole")


@pytest.fixture(scope="module")
def world() -> Any:
    if not WORLD.checkpoint.exists():
        pytest.fail(f"the bundled world is missing: {WORLD.checkpoint}")
    return worldsim.WorldModel.load(WORLD.checkpoint, device="cpu")


def _balance(env: Any, rng: np.random.Generator) -> int:
    """A balancing controller (the recorded data is mostly such play)."""
    x, x_dot, theta, theta_dot = env.unwrapped.state
    return int(theta + 0.5 * theta_dot + 0.05 * x_dot > 0)


def _real_episode(seed: int, steps: int) -> tuple[np.ndarray, list[int]]:
    return real_episode(WORLD, seed, steps, _balance)


def test_predicts_the_real_game_a_few_frames_ahead(world: Any) -> None:
    K = world.config.context_frames
    psnr1, psnr10, angle_err = [], [], []
    for seed in range(8):  # frame 10's PSNR varies 18-35 dB between episodes: a mean over 4 was too noisy a floor
        real, acts = _real_episode(seed, K + 10)  # real[i + 1] follows acts[i]
        s = world.session(1, seed=seed)
        s.reset(frames=real[:K], actions=np.array([0, *acts[: K - 1]]))
        gen = np.stack([s.step([a]).frames[0] for a in acts[K - 1 : K + 9]])  # frames K .. K+9
        target = real[K : K + 10]
        psnr1.append(float(psnr(gen[0], target[0])))
        psnr10.append(float(psnr(gen[9], target[9])))
        angle_err.append(np.abs(WORLD.state_reader(gen)[:, 1] - WORLD.state_reader(target)[:, 1]).mean())
    assert np.mean(psnr1) > 26.0, psnr1
    assert np.mean(psnr10) > 20.0, psnr10
    assert np.nanmean(angle_err) < 0.1, angle_err  # radians, mean over the 10 frames and 8 episodes


def test_actions_move_the_cart(world: Any) -> None:
    """Holding right moves the cart right of where holding left takes it, as in the real game."""
    xs = {}
    K = world.config.context_frames
    for a in (0, 1):
        s = world.session(1, seed=0)
        real, acts = _real_episode(0, K - 1)
        s.reset(frames=real[:K], actions=np.array([0, *acts]))
        frames = np.stack([s.step([a]).frames[0] for _ in range(8)])
        xs[a] = WORLD.state_reader(frames)[:, 0]
    assert np.isfinite(xs[0]).all() and np.isfinite(xs[1]).all()
    assert xs[1][-1] - xs[0][-1] > 0.05, (xs[0], xs[1])


def test_gymnasium_and_sb3_checkers() -> None:
    from gymnasium.utils.env_checker import check_env

    env = gym.make("worldsim/CartPole-v0")
    check_env(env.unwrapped, skip_render_check=True)
    sb3 = pytest.importorskip("stable_baselines3.common.env_checker")
    sb3.check_env(gym.make("worldsim/CartPole-v0").unwrapped, warn=True)
    vec = gym.make_vec("worldsim/CartPole-v0", num_envs=4, vectorization_mode="vector_entry_point")
    obs, _ = vec.reset(seed=0)
    for _ in range(5):
        obs, rew, term, trunc, _ = vec.step(vec.action_space.sample())
    assert obs.shape == (4, 64, 64, 3) and rew.shape == (4,)
    vec.close()


def test_grpc_session_matches_in_process(world: Any) -> None:
    from worldsim.client import RemoteWorld
    from worldsim.gym import WorldEnv
    from worldsim.serve.server import BackgroundServer

    with BackgroundServer({"cartpole": world}) as srv:
        remote = RemoteWorld(srv.address, "cartpole")
        obs_r, _ = remote.reset(seed=5)
        local = WorldEnv(world)
        obs_l, _ = local.reset(seed=5)
        assert obs_r.shape == obs_l.shape == (64, 64, 3)
        for i in range(20):  # the world now ends episodes (the pole falls): reset after an end, as a client must
            r = remote.step(i % 2)
            assert r[0].shape == (64, 64, 3) and np.isfinite(r[1])
            if r[2] or r[3]:
                remote.reset()
        remote.close()


def test_headless_player_on_the_trained_world(tmp_path: Path) -> None:
    import imageio.v3 as iio

    from worldsim.play import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["cartpole", "--headless", "--frames", "12", "--policy", "scripted", "--compare"])
    args.record = tmp_path / "run.gif"
    args.screenshot = tmp_path / "run.png"
    assert main(args) == 0
    video = iio.imread(tmp_path / "run.gif")
    # the first frame, one per step, plus the first frame of each new episode: the retrained world's
    # pole can fall (or the real game beside it end) within 12 frames
    assert 13 <= video.shape[0] <= 13 + 12 and (tmp_path / "run.png").stat().st_size > 0
