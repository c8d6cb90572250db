"""The Gymnasium surface on a tiny world: checkers, vector == singles, autoreset modes, SB3."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import worldsim  # noqa: F401  (registers the bundled worlds)
from worldsim.gym import WorldEnv, WorldVectorEnv, make_env, to_sb3
from worldsim.gym.registration import register_world
from worldsim.spaces import ActionError


def test_gymnasium_check_env(tiny_world_path: Path) -> None:
    from gymnasium.utils.env_checker import check_env

    env = WorldEnv(tiny_world_path, max_episode_steps=20)
    check_env(env)
    assert isinstance(env.metadata["render_fps"], int)
    obs, info = env.reset(seed=1)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    obs2, r, term, trunc, info = env.step(1)
    assert type(r) is float and type(term) is bool and type(trunc) is bool
    assert obs2 is not env.step(0)[0]  # fresh arrays
    assert env.render() is None  # no render mode
    cf = WorldEnv(tiny_world_path, channels_first=True)
    assert cf.reset(seed=0)[0].shape == (3, 64, 64)


def test_sb3_check_env(tiny_world_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_checker import check_env

    check_env(WorldEnv(tiny_world_path, max_episode_steps=20), warn=False)


def test_registration_and_make_vec(tiny_world_path: Path) -> None:
    register_world("worldsim/TinyTest-v0", str(tiny_world_path), max_episode_steps=7)
    env = gym.make("worldsim/TinyTest-v0")
    env.reset(seed=0)
    for i in range(7):
        *_, trunc, _ = env.step(i % 2)
    assert trunc
    venv = gym.make_vec("worldsim/TinyTest-v0", num_envs=3, vectorization_mode="vector_entry_point")
    assert isinstance(venv, WorldVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 64, 64, 3)
    assert "worldsim/CartPole-v0" in gym.registry  # the bundled world is registered on import
    assert isinstance(make_env(tiny_world_path), WorldEnv)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    register_world("worldsim/Missing-v0", str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        gym.make("worldsim/Missing-v0")


def test_vector_matches_single_envs(tiny_world_path: Path) -> None:
    """Seeds [s0..s2] in the vector env == single envs seeded s0..s2 (within 1 uint8 level:
    batched and unbatched matmuls may round differently)."""
    seeds, steps = [3, 11, 42], 6
    venv = WorldVectorEnv(tiny_world_path, num_envs=3)
    vobs = [venv.reset(seed=seeds)[0]]
    actions = np.array([[i % 2, (i + 1) % 2, 1] for i in range(steps)])
    vrew = []
    for a in actions:
        o, r, *_ = venv.step(a)
        vobs.append(o)
        vrew.append(r)
    for k, s in enumerate(seeds):
        env = WorldEnv(tiny_world_path)
        sobs = [env.reset(seed=s)[0]]
        srew = []
        for a in actions:
            o, r, *_ = env.step(int(a[k]))
            sobs.append(o)
            srew.append(r)
        diff = np.abs(np.stack(sobs).astype(int) - np.stack(vobs)[:, k].astype(int))
        assert diff.max() <= 1
        np.testing.assert_allclose(srew, np.stack(vrew)[:, k], atol=1e-4)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_autoreset_modes(tiny_world_path: Path, mode: AutoresetMode) -> None:
    venv = WorldVectorEnv(tiny_world_path, num_envs=2, max_episode_steps=3, autoreset_mode=mode)
    venv.reset(seed=0)
    acts = np.array([0, 1])
    for _ in range(2):
        _, _, term, trunc, info = venv.step(acts)
        assert not trunc.any()
    obs, rew, term, trunc, info = venv.step(acts)  # step 3: truncation for both rows
    assert trunc.all() or (term | trunc).all()
    if mode == AutoresetMode.SAME_STEP:
        assert info["_final_obs"].all() and info["final_obs"][0].shape == (64, 64, 3)
        assert (info["frame_index"] == 0).all()  # already the new episode's first frame
        obs, rew, term, trunc, info = venv.step(acts)
        assert not (term | trunc).any() and (info["frame_index"] == 1).all()
    else:
        assert "final_obs" not in info
        obs, rew, term, trunc, info = venv.step(acts)  # the reset step
        assert (rew == 0).all() and not (term | trunc).any() and (info["frame_index"] == 0).all()
        obs, rew, term, trunc, info = venv.step(acts)
        assert (info["frame_index"] == 1).all()


def test_bad_actions(tiny_world_path: Path) -> None:
    env = WorldEnv(tiny_world_path)
    env.reset(seed=0)
    for bad, match in ((5, r"\[0, 1\]"), (float("nan"), "NaN"), ([0, 1], "expected one action")):
        with pytest.raises(ActionError, match=match):
            env.step(bad)
    env.step(1)  # still usable
    venv = WorldVectorEnv(tiny_world_path, num_envs=2)
    venv.reset(seed=0)
    with pytest.raises(ActionError, match="expected 2 actions"):
        venv.step(np.array([0, 1, 1]))


def test_sb3_ppo_through_adapter(tiny_world_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    vec = to_sb3(WorldVectorEnv(tiny_world_path, num_envs=2, max_episode_steps=8))
    model = PPO(
        "CnnPolicy",
        vec,
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        verbose=0,
        seed=0,
        policy_kwargs={"normalize_images": True},
    )
    model.learn(total_timesteps=32)
    obs = vec.reset()
    action, _ = model.predict(obs)
    assert action.shape == (2,)
