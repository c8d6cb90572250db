"""Recording real games: round trip, clips inside episodes, reproducibility, bad input, resume."""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import worldsim.data.episodes as episodes_mod
import worldsim.data.record as record_mod
from worldsim.data import ClipDataset, action_spec, load_episodes, read_manifest
from worldsim.data.policies import PolicyError
from worldsim.data.record import RecordConfig, RecordError, config_for, record


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = dict(out=None, episodes=None, policy=None, seed=None, max_steps=None, frameskip=None)
    base.update(kw)
    return argparse.Namespace(**base)


def _check_clips(root: Path, clip_len: int) -> None:
    """Every clip lies inside one episode and is aligned as the training code expects."""
    eps = {e.episode_id: e for e in load_episodes(root, split=None)}
    ds = ClipDataset(root, clip_len=clip_len, split=None)
    assert len(ds) == sum(max(0, len(e) + 2 - clip_len) for e in eps.values())
    null = action_spec(root).null(1)[0]
    for i in range(len(ds)):
        item = ds[i]
        e, s = (int(v) for v in ds.index[i])
        ep = ds.episodes[e]
        assert s + clip_len <= len(ep) + 1  # never crosses the episode end
        assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (clip_len, 64, 64, 3)
        assert np.array_equal(item["frames"].numpy(), ep.frames[s : s + clip_len])
        for j in range(clip_len):
            t = s + j  # frame index in the episode
            assert bool(item["has_action"][j]) == (t > 0)
            if t == 0:
                assert np.array_equal(item["actions"][j].numpy(), null) and float(item["rewards"][j]) == 0.0
                assert not item["terminated"][j]
            else:  # the action, reward and end that came with entering frame t
                assert np.array_equal(item["actions"][j].numpy(), ep.actions[t - 1])
                assert float(item["rewards"][j]) == float(ep.rewards[t - 1])
                assert bool(item["terminated"][j]) == bool(ep.terminated[t - 1])


def _check_episodes(root: Path, n: int) -> None:
    manifest = read_manifest(root)
    eps = load_episodes(root, split=None)
    assert sorted(e.episode_id for e in eps) == list(range(n))
    assert manifest["episodes"] == n and manifest["frames"] == sum(len(e) + 1 for e in eps)
    for e in eps:
        assert e.frames.shape == (len(e) + 1, 64, 64, 3) and e.frames.dtype == np.uint8
        assert e.rewards.dtype == np.float32 and e.actions.dtype == np.int64 and e.actions.shape == (len(e),)
        assert e.terminated[-1] or e.truncated[-1]  # every episode ends with an end
        assert not (e.terminated[:-1] | e.truncated[:-1]).any()  # and only there


def test_cartpole_record_reload_and_clips(tmp_path: Path) -> None:
    out = tmp_path / "cp"
    manifest = record(config_for("cartpole", _args(out=out, episodes=2, max_steps=30)), progress=False)
    assert manifest["world"] == "cartpole" and manifest["action_space"]["kind"] == "discrete"
    assert manifest["record_fps"] > 0 and {"gymnasium", "numpy", "ale_py"} <= set(manifest["versions"])
    _check_episodes(out, 2)
    _check_clips(out, clip_len=6)
    # Works through DataLoader worker processes (nothing unpicklable is held).
    loader = torch.utils.data.DataLoader(ClipDataset(out, 6, split=None), batch_size=4, num_workers=2)
    batch = next(iter(loader))
    assert batch["frames"].shape == (4, 6, 64, 64, 3) and batch["has_action"].shape == (4, 6)


def test_boxing_record_reload_and_clips(tmp_path: Path) -> None:
    pytest.importorskip("ale_py")
    out = tmp_path / "bx"
    manifest = record(config_for("boxing", _args(out=out, episodes=2, max_steps=25)), progress=False)
    assert manifest["action_space"]["kind"] == "discrete" and manifest["action_space"]["n"] == 18
    _check_episodes(out, 2)
    _check_clips(out, clip_len=8)


def test_cartpole_recipe_reproduces_its_data_set(tmp_path: Path) -> None:
    """`worldsim record cartpole` gives exactly the episodes the bundled world was trained on
    (action checksums of its first episodes, taken from that data set), twice in a row."""
    expected = [(91, 2446381615), (73, 1102261192), (102, 371934083), (102, 2328039155)]
    for name in ("a", "b"):
        record(config_for("cartpole", _args(out=tmp_path / name, episodes=4, max_steps=40)), progress=False)
    a, b = (load_episodes(tmp_path / n, split=None) for n in "ab")
    assert all(np.array_equal(x.frames, y.frames) and np.array_equal(x.actions, y.actions) for x, y in zip(a, b))
    for ep, (full_len, crc) in zip(a, expected):
        assert len(ep) == min(full_len, 40)
        assert zlib.crc32(ep.actions.astype("<i8").tobytes()) == crc


def test_a_registered_policy_records_and_is_reproducible(tmp_path: Path) -> None:
    """register_policy: your own bot (e.g. an agent trained in the dream) records like a built-in
    one, exploration mixed in; built-in names are refused, unknown names listed."""
    from worldsim.data.policies import Exploration, register_policy

    seen: list[tuple[int, ...]] = []

    def factory(env, rng):  # type: ignore[no-untyped-def]
        def lean(env, frame):  # type: ignore[no-untyped-def]  # acts on the frame only
            seen.append(frame.shape)
            return int(frame[..., 0].mean() > 200)

        return lean

    register_policy("frame-bot", factory)
    with pytest.raises(PolicyError, match="built-in"):
        register_policy("random", factory)
    cfg = RecordConfig("CartPole-v1", tmp_path / "a", episodes=3, policies=(("frame-bot", 1.0),), max_steps=20)
    cfg = RecordConfig(**{**vars(cfg), "explore": Exploration(epsilon_range=(0.3, 0.3))})
    record(cfg, progress=False)
    record(RecordConfig(**{**vars(cfg), "out": tmp_path / "b"}), progress=False)
    a, b = (load_episodes(tmp_path / n, split=None) for n in "ab")
    assert seen and set(seen) == {(64, 64, 3)}
    assert all(np.array_equal(x.actions, y.actions) for x, y in zip(a, b))
    with pytest.raises(RecordError, match="frame-bot"):
        record(RecordConfig("CartPole-v1", tmp_path / "c", episodes=1, policies=(("nobody", 1.0),)), progress=False)


def test_splits_are_fixed_disjoint_and_never_empty(tmp_path: Path) -> None:
    out = tmp_path / "cp"
    record(config_for("cartpole", _args(out=out, episodes=6, max_steps=5, policy="random")), progress=False)
    ids = {s: {e.episode_id for e in load_episodes(out, s)} for s in ("train", "val", "test")}
    assert all(ids.values())
    assert ids["train"] | ids["val"] | ids["test"] == set(range(6))
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    manifest = read_manifest(out)
    assert {s: set(manifest["splits"][s]) for s in ids} == ids
    with pytest.raises(ValueError, match="split"):
        load_episodes(out, "training")


class _NoRgb(gym.Env):
    metadata = {"render_modes": ["human"]}
    observation_space = gym.spaces.Discrete(1)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode


@pytest.mark.filterwarnings("ignore:.*render_mode")
def test_bad_input_gives_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RecordError, match="cannot make env 'NoSuchGame-v9'"):
        record(RecordConfig(env_id="NoSuchGame-v9", out=tmp_path / "a", episodes=1), progress=False)
    gym.register("WorldsimTestNoRgb-v0", entry_point=_NoRgb)
    with pytest.raises(RecordError, match="cannot render rgb_array"):
        record(RecordConfig(env_id="WorldsimTestNoRgb-v0", out=tmp_path / "b", episodes=1), progress=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RecordError, match="cannot write to"):
        record(RecordConfig(env_id="CartPole-v1", out=blocker / "data", episodes=1), progress=False)
    with pytest.raises(RecordError, match="no scripted policy"):
        record(RecordConfig(env_id="Acrobot-v1", out=tmp_path / "c", policies=(("scripted", 1.0),)), progress=False)
    assert not any(tmp_path.glob("*/shard-*")) and not any(tmp_path.glob("*/manifest.json"))
    # The command turns each into one line on stderr and exit code 2 (no traceback).
    for target, out in (("NoSuchGame-v9", tmp_path / "d"), ("WorldsimTestNoRgb-v0", tmp_path / "e")):
        assert record_mod.main(_args(target=target, out=out)) == 2
    assert record_mod.main(_args(target="cartpole", out=blocker / "data")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("worldsim record: ") for line in err)
    assert "Traceback" not in "\n".join(err)


def test_interrupted_recording_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_mod, "SHARD_BYTES", 1)  # one shard per episode
    out = tmp_path / "cp"
    real = record_mod.record_episode
    calls = {"n": 0}

    def interrupted_at_third(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(record_mod, "record_episode", interrupted_at_third)
    cfg = config_for("cartpole", _args(out=out, episodes=5, max_steps=10))
    with pytest.raises(KeyboardInterrupt):
        record(cfg, progress=False)
    assert read_manifest(out)["episodes"] == 2
    # What a hard kill can leave: a half-written temp shard, and a shard renamed into place
    # just before the manifest would have listed it. Neither may be taken for data.
    (out / "shard-00002.npz.x1y2.tmp").write_bytes(b"half a shard")
    (out / "shard-00002.npz").write_bytes(b"not listed in the manifest")
    monkeypatch.setattr(record_mod, "record_episode", real)
    manifest = record(cfg, progress=False)
    assert manifest["episodes"] == 5 and len(manifest["shards"]) == 5
    assert not list(out.glob("*.tmp"))
    fresh = record(config_for("cartpole", _args(out=tmp_path / "fresh", episodes=5, max_steps=10)), progress=False)
    resumed, once = load_episodes(out, None), load_episodes(tmp_path / "fresh", None)
    assert [e.episode_id for e in resumed] == [0, 1, 2, 3, 4] and fresh["frames"] == manifest["frames"]
    assert all(
        np.array_equal(a.frames, b.frames) and np.array_equal(a.actions, b.actions) for a, b in zip(resumed, once)
    )
    # A rerun of a finished recording does nothing; a different recipe is refused.
    assert record(cfg, progress=False)["shards"] == manifest["shards"]
    with pytest.raises(RecordError, match="frameskip"):
        record(config_for("cartpole", _args(out=out, episodes=5, max_steps=10, frameskip=3)), progress=False)


def test_crash_while_writing_a_shard_leaves_no_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cp"

    def savez_dies_halfway(f, **arrays):  # type: ignore[no-untyped-def]
        f.write(b"PK\x03\x04 half of a zip")
        raise OSError("disk full")

    monkeypatch.setattr(episodes_mod.np, "savez", savez_dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        record(config_for("cartpole", _args(out=out, episodes=2, max_steps=5)), progress=False)
    assert sorted(p.name for p in out.iterdir()) == []  # no shard, no temp file, no manifest


def test_shards_stay_under_the_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_mod, "SHARD_BYTES", 40 * 64 * 64 * 3)  # 40 frames a shard
    manifest = record(
        config_for("cartpole", _args(out=tmp_path / "cp", episodes=6, max_steps=12, policy="scripted")), progress=False
    )
    assert len(manifest["shards"]) > 1
    assert all(s["frames"] <= 40 for s in manifest["shards"])
    assert json.loads((tmp_path / "cp" / "manifest.json").read_text())["frames"] == manifest["frames"]


def test_human_policy_keys_and_escape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyboard recording (headless pygame): a held key is the action; Escape keeps finished episodes."""
    pygame = pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    script = iter([[pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RIGHT)], [], [], [], [], []])
    escape = [pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE)]
    monkeypatch.setattr(pygame.event, "get", lambda: next(script, escape))
    out = tmp_path / "human"
    manifest = record(config_for("cartpole", _args(out=out, episodes=3, max_steps=4, policy="human")), progress=False)
    assert manifest["episodes"] == 1 and manifest["shards"][0]["policies"] == ["human"]
    (ep,) = load_episodes(out, split=None)
    assert ep.actions.tolist() == [1, 1, 1, 1]  # "right" held from the first frame


def test_human_policy_needs_a_display(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(PolicyError, match="needs a display"):
        record(config_for("cartpole", _args(out=tmp_path / "h", episodes=1, policy="human")), progress=False)
    assert record_mod.main(_args(target="cartpole", out=tmp_path / "h", episodes=1, policy="human")) == 2


def test_sigterm_stops_a_recording_and_keeps_its_finished_episodes(tmp_path: Path) -> None:
    """SDL (the pygame renderer behind CartPole's frames) takes SIGTERM where it has the default
    action and turns it into an event nobody reads: `kill` and schedulers' timeouts did not stop a
    recording. The CLI routes SIGTERM through the Ctrl-C path instead."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "rec"
    cmd = [sys.executable, "-m", "worldsim.cli", "record", "cartpole", "--out", str(out), "--episodes", "2000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SDL_NO_SIGNAL_HANDLERS", None)
    proc = subprocess.Popen(cmd + ["--no-check"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        seen, deadline = "", time.monotonic() + 60
        while "frames=" not in seen and time.monotonic() < deadline:  # an episode is finished
            char = proc.stderr.read(1)
            assert char, f"recording ended before an episode: {seen[-500:]}"
            seen += char
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130, "SIGTERM did not stop the recording"
        tail = proc.stderr.read()
        assert "interrupted; finished episodes are in" in tail, tail[-500:]
        assert 1 <= sum(len(s["episode_ids"]) for s in read_manifest(out)["shards"]) < 2000
    finally:
        if proc.poll() is None:
            proc.kill()
