"""The Gymnasium surface on a tiny world: checkers, vector == singles, autoreset modes, SB3."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import worldsim  # noqa: F401  (registers the bundled worlds)
from worldsim.gym import WorldEnv, WorldVectorEnv, make_env, make_vec_env, to_sb3
from worldsim.gym.registration import register_world
from worldsim.spaces import ActionError


def test_import_worldsim_registers_without_torch() -> None:
    code = (
        "import sys, worldsim, gymnasium as gym; "
        "assert 'torch' not in sys.modules, 'import worldsim imported torch'; "
        "assert 'worldsim/CartPole-v0' in gym.registry"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gymnasium_check_env(tiny_world_path: Path) -> None:
    from gymnasium.utils.env_checker import check_env

    # check_env compares the infos of two identically seeded steps: wall-clock latency never matches.
    # Made through gym.make so that check_env also builds it in every render mode (human: SDL dummy).
    register_world("worldsim/TinyCheck-v0", tiny_world_path, max_episode_steps=20)
    check_env(gym.make("worldsim/TinyCheck-v0").unwrapped, skip_render_check=False)
    check_env(WorldEnv(tiny_world_path), skip_render_check=True)  # the default env passes too
    with pytest.raises(AssertionError, match="info"):  # opting into wall-clock latency in info cannot
        check_env(WorldEnv(tiny_world_path, latency_in_info=True), skip_render_check=True)
    env = WorldEnv(tiny_world_path, max_episode_steps=20, render_mode="rgb_array", latency_in_info=True)
    assert isinstance(env.metadata["render_fps"], int)
    obs, info = env.reset(seed=1)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and info["frame_index"] == 0
    obs2, r, term, trunc, info = env.step(1)
    assert type(r) is float and type(term) is bool and type(trunc) is bool
    assert info["frame_index"] == 1 and type(info["latency_ms"]) is float and info["latency_ms"] > 0
    np.testing.assert_array_equal(env.render(), obs2)
    obs3 = env.step(0)[0]
    assert obs3 is not obs2 and not np.shares_memory(obs3, obs2)  # fresh arrays
    assert WorldEnv(tiny_world_path).render() is None  # no render mode
    cf = WorldEnv(tiny_world_path, channels_first=True)
    assert cf.reset(seed=0)[0].shape == (3, 64, 64) and cf.observation_space.shape == (3, 64, 64)
    np.testing.assert_array_equal(cf.reset(seed=1)[0].transpose(1, 2, 0), env.reset(seed=1)[0])


def test_sb3_check_env(tiny_world_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_checker import check_env

    check_env(WorldEnv(tiny_world_path, max_episode_steps=20), warn=True)


def test_seeded_reset_and_context_frames(tiny_world_path: Path) -> None:
    env = WorldEnv(tiny_world_path)
    a = [env.reset(seed=5)[0]] + [env.step(i % 2)[0] for i in range(3)]
    b = [env.reset(seed=5)[0]] + [env.step(i % 2)[0] for i in range(3)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    ctx = np.full((2, 64, 64, 3), 7, np.uint8)
    obs, _ = env.reset(seed=0, options={"frames": ctx, "actions": [0, 1]})
    np.testing.assert_array_equal(obs, ctx[-1])
    venv = WorldVectorEnv(tiny_world_path, num_envs=3)
    obs, info = venv.reset(seed=0)
    per_row = np.stack([np.full((2, 64, 64, 3), v, np.uint8) for v in (10, 20, 30)])
    obs2, info2 = venv.reset(options={"frames": per_row, "reset_mask": np.array([True, False, True])})
    assert (obs2[0] == 10).all() and (obs2[2] == 30).all()
    np.testing.assert_array_equal(obs2[1], obs[1])  # row 1 was not reset
    assert info2["_frame_index"].tolist() == [True, False, True]


def test_registration_and_make_vec(tiny_world_path: Path) -> None:
    register_world("worldsim/TinyTest-v0", tiny_world_path, max_episode_steps=7)
    env = gym.make("worldsim/TinyTest-v0")
    assert env.spec is not None and env.spec.max_episode_steps == 7
    env.reset(seed=0)
    truncs = [env.step(i % 2)[3] for i in range(7)]
    assert truncs == [False] * 6 + [True]
    venv = gym.make_vec("worldsim/TinyTest-v0", num_envs=3, vectorization_mode="vector_entry_point")
    assert isinstance(venv, WorldVectorEnv) and venv.core.max_episode_steps == 7
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 64, 64, 3)
    spec = gym.registry["worldsim/CartPole-v0"]  # the bundled world is registered on import
    assert spec.vector_entry_point is not None and spec.kwargs == {"world": "cartpole"}
    assert isinstance(make_env(tiny_world_path), WorldEnv)
    assert make_vec_env(tiny_world_path, 2).num_envs == 2


def test_default_time_limit(tiny_world_path: Path) -> None:
    """A world of your own ends its episodes after 1000 steps unless told otherwise; a bundled one
    after its WorldDef's limit; gym.make counts with its TimeLimit wrapper, the env then none."""
    from worldsim.episodes import DEFAULT_MAX_EPISODE_STEPS, default_max_episode_steps
    from worldsim.worlds import get_world

    assert WorldEnv(tiny_world_path).core.max_episode_steps == DEFAULT_MAX_EPISODE_STEPS == 1000
    assert WorldEnv(tiny_world_path, max_episode_steps=0).core.max_episode_steps == 0  # no limit
    assert WorldVectorEnv(tiny_world_path, num_envs=2).core.max_episode_steps == 1000
    assert default_max_episode_steps("cartpole") == get_world("cartpole").max_episode_steps
    with pytest.raises(ValueError, match="max_episode_steps"):
        WorldEnv(tiny_world_path, max_episode_steps=-1)
    register_world("worldsim/TinyDefault-v0", tiny_world_path)
    env = gym.make("worldsim/TinyDefault-v0")
    assert env.spec is not None and env.spec.max_episode_steps == 1000
    assert env.unwrapped.core.max_episode_steps == 0  # type: ignore[attr-defined]
    env = WorldEnv(tiny_world_path, max_episode_steps=2)
    env.reset(seed=0)
    assert [env.step(0)[3] for _ in range(3)] == [False, True, True]  # TimeLimit's rule, also past the limit


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    register_world("worldsim/Missing-v0", tmp_path / "nope.safetensors")  # registering reads nothing
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        gym.make("worldsim/Missing-v0")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        gym.make_vec("worldsim/Missing-v0", num_envs=2, vectorization_mode="vector_entry_point")


def test_vector_matches_single_envs(tiny_world_path: Path) -> None:
    """Seeds [s0..s2] in the vector env == single envs seeded s0..s2: same start clip, same noise,
    frames within 1 uint8 level (batched and unbatched matmuls may round differently)."""
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
            so, sr, *_ = env.step(int(a[k]))
            sobs.append(so)
            srew.append(sr)
        diff = np.abs(np.stack(sobs).astype(int) - np.stack(vobs)[:, k].astype(int))
        assert diff.max() <= 1
        np.testing.assert_allclose(srew, np.stack(vrew)[:, k], atol=1e-4)
    # seed=int means rows seed + i, as in gymnasium's vector envs
    np.testing.assert_array_equal(venv.reset(seed=3)[0][0], WorldEnv(tiny_world_path).reset(seed=3)[0])
    np.testing.assert_array_equal(venv.reset(seed=3)[0][1], WorldEnv(tiny_world_path).reset(seed=4)[0])


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_autoreset_modes(tiny_world_path: Path, mode: AutoresetMode) -> None:
    """Episodes end by truncation at step 3 (row 1) and 5 (row 0, reset later)."""
    venv = WorldVectorEnv(tiny_world_path, num_envs=2, max_episode_steps=3, autoreset_mode=mode)
    assert venv.metadata["autoreset_mode"] == mode
    venv.reset(seed=0)
    acts = np.array([0, 1])
    for _ in range(2):
        _, _, term, trunc, info = venv.step(acts)
        assert not (term | trunc).any()
    obs, rew, term, trunc, info = venv.step(acts)  # step 3: both rows truncated
    assert trunc.all() and not term.any()
    if mode == AutoresetMode.SAME_STEP:
        assert info["_final_obs"].all() and info["final_obs"][0].shape == (64, 64, 3)
        assert info["final_info"]["frame_index"].tolist() == [3, 3] and info["_final_info"].all()
        assert not np.array_equal(info["final_obs"][1], obs[1])  # obs is already the new episode's
        assert (info["frame_index"] == 0).all()
        obs, rew, term, trunc, info = venv.step(acts)
        assert not (term | trunc).any() and "final_obs" not in info and (info["frame_index"] == 1).all()
    else:
        assert "final_obs" not in info and (info["frame_index"] == 3).all()
        obs, rew, term, trunc, info = venv.step(acts)  # the reset step: actions ignored
        assert (rew == 0).all() and not (term | trunc).any() and (info["frame_index"] == 0).all()
        obs, rew, term, trunc, info = venv.step(acts)
        assert (info["frame_index"] == 1).all()


def test_autoreset_replays_a_seeded_single_env(tiny_world_path: Path) -> None:
    """After an autoreset a row continues like a single env after its second reset() (same np_random)."""
    venv = WorldVectorEnv(tiny_world_path, num_envs=1, max_episode_steps=2, autoreset_mode="SameStep")
    venv.reset(seed=9)
    venv.step([1])
    obs, *_ = venv.step([1])  # truncated: autoreset in the same step
    env = WorldEnv(tiny_world_path, max_episode_steps=2)
    env.reset(seed=9)
    env.step(1)
    env.step(1)
    np.testing.assert_array_equal(obs[0], env.reset()[0])


def test_bad_actions(tiny_world_path: Path) -> None:
    env = WorldEnv(tiny_world_path)
    env.reset(seed=0)
    bad_cases = (
        (5, r"\[0, 1\]"),
        (-1, r"\[0, 1\]"),
        (float("nan"), "NaN"),
        (0.5, "integers"),
        ([0, 1], "expected one action"),
        ("left", "numeric"),
    )
    for bad, match in bad_cases:
        with pytest.raises(ActionError, match=match):
            env.step(bad)
    assert isinstance(ActionError("x"), ValueError)
    _, _, _, _, info = env.step(np.int64(1))  # still usable; numpy scalars are fine
    assert info["frame_index"] == 1  # failed steps did not count
    venv = WorldVectorEnv(tiny_world_path, num_envs=2)
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.array([0, 1]))
    venv.reset(seed=0)
    with pytest.raises(ActionError, match="expected 2 actions"):
        venv.step(np.array([0, 1, 1]))
    with pytest.raises(ActionError, match="NaN"):
        venv.step(np.array([0.0, np.nan]))
    assert venv.step(np.array([0, 1]))[4]["frame_index"].tolist() == [1, 1]


def test_human_render_headless(tiny_world_path: Path) -> None:
    pytest.importorskip("pygame")  # conftest sets SDL_VIDEODRIVER=dummy
    env = WorldEnv(tiny_world_path, render_mode="human")
    env.metadata["render_fps"] = 1000
    env.reset(seed=0)
    assert env.step(0)[0].shape == (64, 64, 3) and env.render() is None
    env.close()


def test_sb3_ppo_through_adapter(tiny_world_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    venv = WorldVectorEnv(tiny_world_path, num_envs=2, max_episode_steps=5)
    vec = to_sb3(venv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    vec.seed(0)
    obs = vec.reset()
    assert obs.shape == (2, 64, 64, 3) and obs.dtype == np.uint8
    returns: list[list[float]] = [[], []]
    for _ in range(5):
        obs, rew, done, infos = vec.step(np.array([0, 1]))
        returns[0].append(float(rew[0]))
    assert rew.dtype == np.float32 and done.all()
    assert infos[0]["TimeLimit.truncated"] and infos[0]["terminal_observation"].shape == (64, 64, 3)
    assert infos[0]["frame_index"] == 5 and vec.reset_infos[0]["frame_index"] == 0
    ep = infos[0]["episode"]  # what SB3's Monitor writes: SB3 logs ep_rew_mean without a VecMonitor
    assert ep["l"] == 5 and ep["t"] >= 0 and ep["r"] == pytest.approx(sum(returns[0]), abs=1e-4)
    model = PPO("CnnPolicy", vec, n_steps=16, batch_size=16, n_epochs=1, verbose=0, seed=0)
    model.learn(total_timesteps=32)  # SB3 adds VecTransposeImage for channel-last images
    assert len(model.ep_info_buffer) >= 2 and all(e["l"] == 5 for e in model.ep_info_buffer)
    action, _ = model.predict(vec.reset())
    assert action.shape == (2,)


def test_end_rule_ends_episodes(tiny_world_path: Path) -> None:
    """end_rule: an episode also ends where the rule says so on the generated frame (terminated, then
    autoreset), in the single and the vector env; CartPole's frames_done reads the game's bounds."""
    from worldsim.worlds import get_world

    calls: list[int] = []

    def second_row(frames: np.ndarray) -> np.ndarray:
        calls.append(len(frames))
        return np.array([False, True][: len(frames)])

    venv = WorldVectorEnv(tiny_world_path, num_envs=2, end_rule=second_row, max_episode_steps=0)
    venv.reset(seed=0)
    _, _, term, trunc, _ = venv.step(np.array([0, 1]))
    assert term.tolist() == [False, True] and not trunc.any() and calls == [2]
    _, rew, term, _, info = venv.step(np.array([0, 1]))  # NEXT_STEP: row 1 restarts, frame_index 0
    assert info["frame_index"].tolist() == [2, 0] and rew[1] == 0.0
    env = WorldEnv(tiny_world_path, end_rule=lambda f: np.ones(len(f), bool))
    env.reset(seed=0)
    assert env.step(0)[2] is True
    bad = WorldEnv(tiny_world_path, end_rule=lambda f: np.ones(3, bool))
    bad.reset(seed=0)
    with pytest.raises(ValueError, match="end_rule returned shape"):
        bad.step(0)
    cp = get_world("cartpole")
    real = cp.make_env()
    real.reset(seed=0)
    from worldsim.data import preprocess

    start = preprocess(real.render(), cp.crop)[None]
    assert cp.frames_done(start).tolist() == [False]  # the pole upright, the cart in the middle
    with pytest.raises(ValueError, match="no state_reader"):
        dataclasses.replace(cp, state_done=None).frames_done(start)


def test_script_args_from_dataclass() -> None:
    """Example scripts' flags come from their Args dataclass, with the field docstrings as help."""
    from dataclasses import dataclass

    from worldsim.script_args import field_docs, parse_args

    @dataclass
    class Args:
        total_timesteps: int = 10
        """PPO steps."""
        render: bool = False
        """Show a window."""
        name: str = "x"

    assert field_docs(Args) == {"total_timesteps": "PPO steps.", "render": "Show a window."}
    a = parse_args(Args, argv=["--total-timesteps", "7", "--render"])
    assert a == Args(total_timesteps=7, render=True, name="x")
    with pytest.raises(SystemExit):
        parse_args(Args, argv=["--total-timesteps", "seven"])
