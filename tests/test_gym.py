"""The Gymnasium surface on a tiny world: checkers, vector == singles, autoreset modes, SB3."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_mirror_rows(tiny_world_path: Path) -> None:
    """mirror_rows: the mirrored rows' frames flipped left-right and their actions permuted before the
    world; the other rows untouched; a non-permutation refused."""
    pytest.importorskip("stable_baselines3")
    from worldsim.gym.ensemble import mirror_rows

    plain = to_sb3(WorldVectorEnv(tiny_world_path, num_envs=2))
    mirrored = mirror_rows(to_sb3(WorldVectorEnv(tiny_world_path, num_envs=2)), [1, 0], [1])
    plain.seed(3)
    mirrored.seed(3)
    p0, m0 = plain.reset(), mirrored.reset()
    np.testing.assert_array_equal(m0[0], p0[0])
    np.testing.assert_array_equal(m0[1], p0[1][:, ::-1])
    p1 = plain.step(np.array([0, 1]))[0]
    m1 = mirrored.step(np.array([0, 0]))[0]  # row 1's 0 reaches the world as 1
    np.testing.assert_allclose(m1[0].astype(int), p1[0].astype(int), atol=1)
    np.testing.assert_allclose(m1[1].astype(int), p1[1][:, ::-1].astype(int), atol=1)
    with pytest.raises(ValueError, match="not a permutation"):
        mirror_rows(plain, [0, 0], [1])


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


def load_example(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """examples/<name>.py as a module (registered in sys.modules: its dataclasses look their module up)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    spec.loader.exec_module(mod)
    return mod


def test_ensemble_vec_env_rows_and_seeds(tiny_world_path: Path) -> None:
    """concat_sb3: rows in member order, seeded as one vector env (row i gets s + i), episodes end per
    member (different limits), row-indexed attributes reach the right member; mismatched spaces refused."""
    pytest.importorskip("stable_baselines3")
    from worldsim.gym.ensemble import concat_sb3

    a, b = WorldVectorEnv(tiny_world_path, num_envs=2, max_episode_steps=3), WorldVectorEnv(tiny_world_path, num_envs=1)
    ens = concat_sb3([to_sb3(a), to_sb3(b)])
    one = to_sb3(WorldVectorEnv(tiny_world_path, num_envs=3))
    ens.seed(5)
    one.seed(5)
    obs, ref = ens.reset(), one.reset()
    assert obs.shape == (3, 64, 64, 3) and [ens.member_of(i) for i in range(3)] == [0, 0, 1]
    np.testing.assert_allclose(obs.astype(int), ref.astype(int), atol=2)  # same seeds: same start frames
    for _ in range(3):
        obs, rew, done, infos = ens.step(np.array([0, 1, 1]))
    assert done.tolist() == [True, True, False] and infos[0]["TimeLimit.truncated"] and "episode" not in infos[2]
    assert ens.get_attr("num_envs") == [2, 2, 1] and ens.get_attr("num_envs", indices=[2]) == [1]
    with pytest.raises(ValueError, match="one per row"):
        ens.step(np.array([0, 1]))
    with pytest.raises(IndexError):
        ens.member_of(3)
    other = to_sb3(WorldVectorEnv(tiny_world_path, num_envs=1, channels_first=True))
    with pytest.raises(ValueError, match="same channels_first"):
        concat_sb3([to_sb3(b), other])
    ens.close()


@pytest.mark.parametrize("obs", ["pixels", "state"])
def test_dream_to_real_example_runs(
    tiny_world_path: Path, monkeypatch: pytest.MonkeyPatch, obs: str, tmp_path: Path
) -> None:
    """examples/dream_to_real.py end to end on a tiny world (PPO in the dream, scored in CartPole-v1),
    from stacked frames and from the state read off them."""
    pytest.importorskip("stable_baselines3")
    mod = load_example("dream_to_real", monkeypatch)
    out = tmp_path / "d2r.json"
    collect = dict(collect_out=str(tmp_path / "agent-data"), collect_episodes=2, save_agent=str(tmp_path / "a.zip"))
    collect["sampler"] = "guidance_scale=1.5;"  # the dream's sampler overridden (';'-separated, empty items ok)
    args = mod.Args(
        world_path=str(tiny_world_path), obs=obs, total_timesteps=16, num_envs=2, max_episode_steps=5,
        eval_episodes=2, json_out=str(out), **(collect if obs == "state" else {}),
    )  # fmt: skip
    res = mod.main(args)
    returns = {"dream_trained", "dream_random", "real_trained", "real_random"}
    assert returns <= set(res) and all(np.isfinite(res[k]) for k in returns) and res["real_random"] > 0
    assert json.loads(out.read_text())["args"]["obs"] == obs
    if obs == "state":  # a DIAMOND round's data: real episodes played by the agent, exploration mixed in
        from worldsim.data import load_episodes, read_manifest

        manifest = read_manifest(tmp_path / "agent-data")
        assert manifest["episodes"] == 2 and "dream-agent" in json.dumps(manifest)
        assert all(len(e) <= 5 for e in load_episodes(tmp_path / "agent-data", split=None))
        assert (tmp_path / "a.zip").exists()
        with pytest.raises(ValueError, match="expected FIELD=VALUE"):
            mod.make_dream(dataclasses.replace(args, sampler="no_such_field=1"))


def test_dream_to_real_ensemble(tiny_world_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--ensemble: the rows split over two worlds (one checkpoint under two samplers), PPO runs on both."""
    pytest.importorskip("stable_baselines3")
    mod = load_example("dream_to_real", monkeypatch)
    ensemble = f"{tiny_world_path}@guidance_scale=1.5|{tiny_world_path}"
    args = mod.Args(
        ensemble=ensemble, obs="state", total_timesteps=16, num_envs=4, max_episode_steps=5, eval_episodes=2
    )
    assert mod.members(args) == [(str(tiny_world_path), "guidance_scale=1.5"), (str(tiny_world_path), "")]
    vec = mod.make_dream(args)
    guidance = [m.venv.core.session.guidance_scale for m in vec.venv.venv.members]
    assert guidance == [1.5, 1.0] and vec.num_envs == 4
    vec.close()
    res = mod.main(args)
    assert np.isfinite(res["dream_trained"]) and res["real_random"] > 0
    with pytest.raises(SystemExit, match="split evenly"):
        mod.members(dataclasses.replace(args, num_envs=3))
    sym = dataclasses.replace(args, mirror="1,0", mirror_rows=True, num_envs=4)
    vec = mod.make_dream(sym)  # odd rows of each member seen in a mirror
    model = mod.train(vec, sym)
    obs = np.random.default_rng(0).normal(size=(64, vec.observation_space.shape[0])).astype(np.float32)
    act = mod.greedy(model)  # symmetric: the mirrored observation gets the mirrored action
    assert (act(-obs) == 1 - act(obs)).all()
    vec.close()
    with pytest.raises(SystemExit, match="not a permutation"):
        mod.train(mod.make_dream(sym), dataclasses.replace(sym, mirror="0,0"))
    agent = tmp_path / "agent.zip"  # a saved agent scored again, in the real game only
    mod.main(dataclasses.replace(args, save_agent=str(agent)))
    again = mod.main(
        dataclasses.replace(
            args, load_agent=str(agent), total_timesteps=0, real_only=True, json_out=str(tmp_path / "r.json")
        )
    )
    record = json.loads((tmp_path / "r.json").read_text())
    returns = record["real_trained_returns"]
    assert "dream_trained" not in again and len(returns) == 2 and len(record["real_final_states"][0]) == 2
    assert again["real_full_episodes"] == sum(r >= 10 for r in returns)  # the limit: 5 frames x frameskip 2


def test_dream_end_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """dream_to_real --end-bounds: ends where a read variable leaves its bounds (ORed with the game's
    own bounds under --end-rule); bad items are refused with the format."""
    mod = load_example("dream_to_real", monkeypatch)
    from worldsim.data import preprocess
    from worldsim.worlds import get_world

    cp = get_world("cartpole")
    real = cp.make_env()
    real.reset(seed=0)
    start = preprocess(real.render(), cp.crop)[None]  # cart near x = 0, pole upright
    args = mod.Args(obs="state")
    assert mod.end_rule(args) is None
    assert mod.end_rule(dataclasses.replace(args, end_bounds="cart_x=-1.2:1.2"))(start).tolist() == [False]
    assert mod.end_rule(dataclasses.replace(args, end_bounds="cart_x=0.5:1.2"))(start).tolist() == [True]
    both = mod.end_rule(dataclasses.replace(args, end_rule=True, end_bounds="pole_angle=-1:1"))
    assert both(np.concatenate([start, start])).tolist() == [False, False]
    for bad in ("cart_y=-1:1", "cart_x=1", "cart_x"):
        with pytest.raises(SystemExit, match="NAME=LOW:HIGH"):
            mod.end_rule(dataclasses.replace(args, end_bounds=bad))


def test_dream_states_example_runs(tiny_world_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/dream_states.py on a tiny world: dream and real rollouts, a range per state component."""
    mod = load_example("dream_states", monkeypatch)
    res = mod.main(mod.Args(world_path=str(tiny_world_path), rows=2, frames=6))
    assert len(res["dream_ends"]) == 2 and len(res["real_ends"]) == 2
    lo, hi = res["pole_angle"]["real"]
    assert -0.5 < lo <= hi < 0.5  # the real game's pole, read off real frames


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


def test_mirror_policy(tiny_world_path: Path, tmp_path: Path) -> None:
    """MirrorPolicy: pi(perm[a] | mirror(o)) == pi(a | o) and V(mirror(o)) == V(o) for any weights,
    as state negation and as a frame flip; a plain agent made symmetric keeps its weights, and the
    saved agent loads back as the same symmetric policy."""
    pytest.importorskip("stable_baselines3")
    import torch
    from stable_baselines3 import PPO

    from worldsim.gym.symmetric import MirrorPolicy, make_symmetric

    venv = to_sb3(WorldVectorEnv(tiny_world_path, num_envs=2))
    model = PPO(MirrorPolicy, venv, n_steps=4, batch_size=8, policy_kwargs=dict(action_perm=[1, 0], obs_mirror="flip"))
    obs = torch.rand(5, *venv.observation_space.shape)
    pol = model.policy
    with torch.no_grad():
        p, pm = (pol.get_distribution(o).distribution.probs for o in (obs, torch.flip(obs, dims=(-1,))))
        assert torch.allclose(pm[:, [1, 0]], p, atol=1e-6)
        assert torch.allclose(pol.predict_values(obs), pol.predict_values(torch.flip(obs, dims=(-1,))), atol=1e-5)
        values, logp, _ = pol.evaluate_actions(obs, torch.tensor([0, 1, 0, 1, 1]))
        assert torch.allclose(logp, p[torch.arange(5), [0, 1, 0, 1, 1]].log(), atol=1e-5)
    model.learn(8)  # trains through the mixture
    path = tmp_path / "sym.zip"
    model.save(path)
    again = PPO.load(path)
    assert isinstance(again.policy, MirrorPolicy) and again.policy.action_perm == [1, 0]
    x = obs.numpy()
    assert (again.predict(x, deterministic=True)[0] == model.predict(x, deterministic=True)[0]).all()

    plain = PPO("MlpPolicy", venv, n_steps=4, batch_size=8)
    weights = {k: v.clone() for k, v in plain.policy.state_dict().items()}
    sym = make_symmetric(plain, [1, 0], "negate")
    assert isinstance(sym.policy, MirrorPolicy)
    assert all(torch.equal(weights[k], v) for k, v in sym.policy.state_dict().items())
    s = torch.randn(7, *venv.observation_space.shape)  # any odd read-out
    with torch.no_grad():
        q, qm = (sym.policy.get_distribution(o).distribution.probs for o in (s, -s))
    assert torch.allclose(qm[:, [1, 0]], q, atol=1e-6)
    with pytest.raises(ValueError, match="not a permutation"):
        PPO(MirrorPolicy, venv, policy_kwargs=dict(action_perm=[0, 0]))
    with pytest.raises(ValueError, match="obs_mirror"):
        PPO(MirrorPolicy, venv, policy_kwargs=dict(action_perm=[1, 0], obs_mirror="upside-down"))
