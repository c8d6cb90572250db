"""Recording real games: round trip, clips inside episodes, state readers, bad input, resume."""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from worldsim.data import ClipDataset, load_episodes, read_manifest
from worldsim.data import record as record_mod
from worldsim.data.frames import preprocess
from worldsim.data.record import RecordConfig, RecordError, config_for, record
from worldsim.worlds import get_world


def _args(**kw: object) -> argparse.Namespace:
    base = dict(out=None, episodes=None, policy=None, seed=None, max_steps=None, frameskip=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_record_reload_and_clips(tmp_path: Path) -> None:
    cfg = config_for("cartpole", _args(out=tmp_path / "cp", episodes=4, max_steps=30))
    manifest = record(cfg, progress=False)
    assert manifest["episodes"] == 4 and manifest["frames"] == sum(
        len(e) + 1 for e in load_episodes(tmp_path / "cp", None)
    )
    assert manifest["action_space"]["kind"] == "discrete"
    eps = load_episodes(tmp_path / "cp", split=None)
    assert sorted(e.episode_id for e in eps) == [0, 1, 2, 3]
    for e in eps:
        assert e.frames.shape == (len(e) + 1, 64, 64, 3) and e.frames.dtype == np.uint8
        assert e.terminated[-1] or e.truncated[-1]
        assert not e.terminated[:-1].any()
    # The same recipe gives the same data (reproducible).
    again = record(config_for("cartpole", _args(out=tmp_path / "cp2", episodes=4, max_steps=30)), progress=False)
    assert again["frames"] == manifest["frames"]
    e2 = load_episodes(tmp_path / "cp2", split=None)
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(eps, e2))

    ds = ClipDataset(tmp_path / "cp", clip_len=5, split=None)
    assert len(ds) == sum(max(0, len(e) + 1 - 5 + 1) for e in eps)
    by_id = {e.episode_id: e for e in eps}
    for i in range(len(ds)):
        item = ds[i]
        e_idx, s = ds.index[i]
        ep = ds.episodes[e_idx]
        assert s + 5 <= len(ep) + 1  # never crosses the episode end
        assert np.array_equal(item["frames"].numpy(), ep.frames[s : s + 5])
        assert bool(item["has_action"][0]) == (s > 0) and item["has_action"][1:].all()
        if s > 0:
            assert int(item["actions"][0]) == int(ep.actions[s - 1])
        assert int(item["actions"][1]) == int(ep.actions[s])
        assert bool(item["terminated"][-1]) == bool(s + 4 == len(ep) and ep.terminated[-1])
    assert set(by_id) == {0, 1, 2, 3}


def test_record_breakout_two_episodes(tmp_path: Path) -> None:
    pytest.importorskip("ale_py")
    manifest = record(config_for("breakout", _args(out=tmp_path / "br", episodes=2, max_steps=40)), progress=False)
    eps = load_episodes(tmp_path / "br", split=None)
    assert manifest["episodes"] == 2 and manifest["action_space"]["n"] == 4
    ds = ClipDataset(tmp_path / "br", clip_len=8, split=None)
    for i in range(0, len(ds), 5):
        e_idx, s = ds.index[i]
        assert s + 8 <= len(ds.episodes[e_idx]) + 1
    assert all(e.frames.shape[1:] == (64, 64, 3) for e in eps)


def test_breakout_state_reader_bound() -> None:
    """Paddle and ball read off 64x64 frames: mean error < 0.3 px, p99 < 1 px (when visible)."""
    pytest.importorskip("ale_py")
    world = get_world("breakout")
    env = world.make_env()
    env.reset(seed=0)
    from worldsim.data.policies import make_policy

    policy = make_policy("scripted", env, np.random.default_rng(0))
    est, truth = [], []
    for _ in range(200):
        _, _, term, trunc, _ = env.step(policy(env, None))
        est.append(world.state_reader(preprocess(env.render(), world.crop)[None])[0])  # type: ignore[misc]
        truth.append(world.true_state(env))  # type: ignore[misc]
        if term or trunc:
            break
    env.close()
    err = np.abs(np.array(est) - np.array(truth))
    for c in range(3):
        ok = np.isfinite(err[:, c])
        assert ok.mean() > 0.5
        assert err[ok, c].mean() < 0.3 and np.percentile(err[ok, c], 99) < 1.0


def test_splits_are_fixed_and_disjoint(tmp_path: Path) -> None:
    record(config_for("cartpole", _args(out=tmp_path / "cp", episodes=6, max_steps=5, policy="random")), progress=False)
    ids = {s: {e.episode_id for e in load_episodes(tmp_path / "cp", s)} for s in ("train", "val", "test")}
    assert all(ids.values())
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert ids == {s: {e.episode_id for e in load_episodes(tmp_path / "cp", s)} for s in ids}


def test_cartpole_state_reader_bound() -> None:
    """Read off 64x64 frames: cart x mean error < 0.01 (p99 < 0.05), pole angle mean < 0.01 rad (p99 < 0.05)."""
    world = get_world("cartpole")
    env = world.make_env()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    frames, truth = [], []
    for _ in range(150):
        state = np.array([rng.uniform(-2.3, 2.3), 0.0, rng.uniform(-0.2, 0.2), 0.0])
        env.unwrapped.state = state
        frames.append(preprocess(env.render(), world.crop))
        truth.append(world.true_state(env))
    env.close()
    assert world.state_reader is not None
    err = np.abs(world.state_reader(np.stack(frames)) - np.stack(truth))
    assert np.isfinite(err).all()
    assert err.mean(0)[0] < 0.01 and np.percentile(err[:, 0], 99) < 0.05
    assert err.mean(0)[1] < 0.01 and np.percentile(err[:, 1], 99) < 0.05


class _NoRender(gym.Env):
    metadata = {"render_modes": ["human"]}
    observation_space = gym.spaces.Discrete(1)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode


def test_bad_input_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="cannot make env"):
        record(RecordConfig(env_id="NoSuchGame-v9", out=tmp_path / "x", episodes=1), progress=False)
    gym.register("WorldsimTestNoRender-v0", entry_point=_NoRender)
    with pytest.raises(RecordError, match="cannot render rgb_array"):
        record(RecordConfig(env_id="WorldsimTestNoRender-v0", out=tmp_path / "y", episodes=1), progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RecordError, match="cannot write"):
        record(RecordConfig(env_id="CartPole-v1", out=blocker / "sub", episodes=1), progress=False)
    # The CLI turns these into one line and exit code 2.
    assert record_mod.main(_args(target="NoSuchGame-v9", out=tmp_path / "z")) == 2


def test_interrupted_recording_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_mod, "SHARD_BYTES", 1)  # one shard per episode
    out = tmp_path / "cp"
    real = record_mod.record_episode
    calls = {"n": 0}

    def dying(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(record_mod, "record_episode", dying)
    cfg = config_for("cartpole", _args(out=out, episodes=4, max_steps=10))
    with pytest.raises(KeyboardInterrupt):
        record(cfg, progress=False)
    assert read_manifest(out)["episodes"] == 2
    (out / "shard-00002.npz.junk.tmp").write_bytes(b"partial")  # a half-written shard from a crash
    monkeypatch.setattr(record_mod, "record_episode", real)
    manifest = record(cfg, progress=False)
    assert manifest["episodes"] == 4
    assert sorted(e.episode_id for e in load_episodes(out, None)) == [0, 1, 2, 3]
    fresh = record(config_for("cartpole", _args(out=tmp_path / "fresh", episodes=4, max_steps=10)), progress=False)
    assert fresh["frames"] == manifest["frames"]
