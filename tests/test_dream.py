"""Agents trained in the dream: ensembles of worlds, mirrors, end rules, the example scripts."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import worldsim  # noqa: F401  (registers the bundled worlds)
from worldsim.gym import WorldVectorEnv, to_sb3


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
    guidance = [m.venv.core.session.step_guidance[0] for m in vec.venv.venv.members]
    assert guidance == [1.5, 1.0] and vec.num_envs == 4
    vec.close()
    res = mod.main(args)
    assert np.isfinite(res["dream_trained"]) and res["real_random"] > 0
    with pytest.raises(SystemExit, match="split evenly"):
        mod.members(dataclasses.replace(args, num_envs=3))
    sym = dataclasses.replace(args, mirror="1,0", mirror_rows=True, num_envs=4)
    vec = mod.make_dream(sym)  # odd rows of each member seen in a mirror
    model, _ = mod.train(vec, sym)
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


def test_held_out_selection(tiny_world_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--select-in: snapshots scored in a world the agent does not train in, every N steps and at the
    end; the best one is the agent returned; dream_returns counts each row's first episode."""
    pytest.importorskip("stable_baselines3")
    from worldsim.gym.dream import dream_returns

    mod = load_example("dream_to_real", monkeypatch)
    sel = tmp_path / "sel"
    args = mod.Args(
        world_path=str(tiny_world_path), obs="state", total_timesteps=48, num_envs=2, n_steps=8,
        max_episode_steps=4, eval_episodes=2, select_in=f"{tiny_world_path}@guidance_scale=1.5",
        select_every=16, select_episodes=3, select_dir=str(sel), json_out=str(tmp_path / "r.json"),
    )  # fmt: skip
    vec = mod.make_dream(args)
    model, history = mod.train(vec, args)
    steps = [h["step"] for h in history]
    assert steps == sorted(steps) and len(steps) >= 3 and steps[-1] == 48
    assert (sel / "best.zip").exists() and all(Path(h["path"]).exists() for h in history)
    assert json.loads((sel / "selection.json").read_text()) == history
    best = max(history, key=lambda h: h["held_out_return"])
    again = dream_returns(vec, mod.greedy(model), 4, seed=7)
    assert again.shape == (4,) and (again <= 4 * 2).all()  # 4 frames x frameskip 2 at most
    assert dream_returns(vec, mod.greedy(model), 4, seed=7).tolist() == again.tolist()  # same starts
    vec.close()
    from stable_baselines3 import PPO

    chosen = PPO.load(sel / "best.zip")
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    assert (chosen.predict(obs, deterministic=True)[0] == model.predict(obs, deterministic=True)[0]).all()
    assert best["held_out_return"] == max(h["held_out_return"] for h in history)
    res = mod.main(args)
    assert json.loads((tmp_path / "r.json").read_text())["held_out_selection"] and np.isfinite(res["real_trained"])


def test_dream_states_example_runs(tiny_world_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/dream_states.py on a tiny world: dream and real rollouts, a range per state component."""
    mod = load_example("dream_states", monkeypatch)
    res = mod.main(mod.Args(world_path=str(tiny_world_path), rows=2, frames=6))
    assert len(res["dream_ends"]) == 2 and len(res["real_ends"]) == 2
    lo, hi = res["pole_angle"]["real"]
    assert -0.5 < lo <= hi < 0.5  # the real game's pole, read off real frames


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


def test_end_timing_oracle_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/end_timing_oracle.py: from the true state the physics times every real end; from
    the state fitted to the reader's readings of the context frames, nearly every one."""
    mod = load_example("end_timing_oracle", monkeypatch)
    res = mod.run(mod.Args(episodes=12, frames=30), seed=0)
    assert res["true state"] == 1.0
    assert res["fit"] >= 0.75 and res["fit + reset prior"] >= 0.75, res


def test_prediction_oracle_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/prediction_oracle.py: from the true state the physics reproduces the recorded frames
    exactly (the pipeline's check); from the state fitted to 4 context frames it stays close early on."""
    import argparse

    from worldsim.data.record import config_for, record

    load_example("end_timing_oracle", monkeypatch)  # the observer it builds on
    mod = load_example("prediction_oracle", monkeypatch)
    out = tmp_path / "rec"
    rec = argparse.Namespace(out=out, episodes=6, policy="scripted", seed=3, max_steps=20, frameskip=None)
    record(config_for("cartpole", rec), progress=False)
    res = mod.scores(mod.Args(data=str(out), split="train", episodes=3, horizons="1,5,12"))
    assert all(v and min(v) == 100.0 for v in res["true state"].values()), res["true state"]
    assert np.mean(res["fit"][1]) > 30 and np.mean(res["fit + reset prior"][1]) > 30, res


def test_end_timing_spread_example(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/end_timing_spread.py: a world that ends every episode where the real game does has
    no error of either kind; one whose draws scatter around the real end has only sampling error;
    and the bundled world's ends over two draws are frames of the episode (or "never")."""
    mod = load_example("end_timing_spread", monkeypatch)
    args = mod.Args(episodes=8, frames=20, draws=2)
    real = np.array([2, 5, 7, 10, 14])
    mod.report(args, real, np.stack([real, real]))
    out = capsys.readouterr().out
    assert "timed per draw 1.000, 1.000" in out and "squared error 0.0 = systematic 0.0 + sampling 0.0" in out
    mod.report(args, real, np.stack([real - 3, real + 3]))
    out = capsys.readouterr().out
    assert "timed per draw 0.000, 0.000" in out and "= systematic 0.0 + sampling 9.0" in out
    r, w = mod.ends(args)
    assert w.shape == (2, len(r)) and len(r) > 0
    assert ((w >= 1) & (w <= args.frames + 1)).all() and ((r >= 1) & (r <= args.frames)).all()
