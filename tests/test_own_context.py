"""Own-context clips (``teacher.own_context``): the rollout is the engine's, the window's context is
the world's own frames, and a fine-tune with them learns and resumes."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.engine.sampler import SamplerConfig
from worldsim.testing import tiny_world, toy_episodes
from worldsim.train.compile import TrainForward
from worldsim.train.data import ClipSampler
from worldsim.train.latents import encode_episodes
from worldsim.train.loop import Dist, seed_everything
from worldsim.train.own_context import own_context_loss, own_rollout
from worldsim.train.teacher import TeacherTrainConfig, train_teacher

CPU = torch.device("cpu")
GUIDED = SamplerConfig(guidance_scale=2.0, guidance_steps=1)


@pytest.mark.parametrize("cache_noise", [0.0, 0.1])
def test_own_rollout_is_what_a_session_generates(cache_noise: float) -> None:
    """Same start frames, actions and noise seed: the training rollout and a session's frames agree
    (guidance on the first step, the cache rolling past its window, own frames re-noised or not)."""
    world = tiny_world(sampler=dataclasses.replace(GUIDED, cache_noise=cache_noise))
    ep = toy_episodes(1, length=12)[0]
    K, G = world.config.context_frames, 9  # 9 > the tiny cache's 5 slots
    lat = encode_episodes(world.codec, [ep], CPU)[0]
    b = ClipSampler([lat], K + G, seed=0).sample(1)
    s = int(np.flatnonzero([np.array_equal(lat.frames[i : i + K], b.x[0, :K].numpy()) for i in range(13 - K)])[0])
    sess = world.session(batch=1, seed=7)
    sess.reset(frames=ep.frames[s : s + K][None], actions=ep.actions[s : s + K][None])
    frames = np.stack([sess.step(ep.actions[s + i : s + i + 1]).frames[0] for i in range(K, K + G)])
    gen = own_rollout(world.denoiser, b, K, world.config.sampler, world.config.cache, torch.Generator().manual_seed(7))
    mine = world.codec.decode(gen[0])
    diff = np.abs(mine.numpy().astype(int) - frames.astype(int))
    assert gen.shape == (1, G, *lat.frames.shape[1:])
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_own_context_window_attends_to_generated_frames_not_recorded_ones() -> None:
    """A window cut after the real context sees the generated frames as its history: changing them
    changes the loss; changing the recorded frames before the window does not."""
    world = tiny_world()
    lat = encode_episodes(world.codec, toy_episodes(2), CPU)
    K, W = world.config.context_frames, 6
    b = ClipSampler(lat, K + 8, seed=0).sample(2)
    gen = torch.randn(2, 8, *b.x.shape[2:])
    cond = b.has_action
    fwd = TrainForward(world.denoiser, False)

    def loss(bb, g):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        return float(own_context_loss(fwd, bb, g, cond, W, offset=K + 8 - W))

    base = loss(b, gen)
    other = copy.copy(b)
    other.x = b.x.clone()
    other.x[:, : K + 8 - W] += 1.0  # recorded frames before the window
    assert loss(other, gen) == pytest.approx(base, rel=1e-6)
    assert abs(loss(b, gen + 0.5) - base) > 1e-4


class _Killed(Exception):
    pass


def test_finetune_with_own_context_learns_and_resumes_exactly(tmp_path: Path) -> None:
    """Half the clips own-context: the loss falls on the toy game, and a run killed after a
    checkpoint and resumed logs the uninterrupted run's losses (the own clips' RNG is saved too)."""
    eps = encode_episodes(tiny_world().codec, toy_episodes(6, length=30), CPU)
    cfg = TeacherTrainConfig(steps=40, batch=4, clip_len=6, lr=3e-3, warmup=5, save_every=20, own_context=0.5)

    def fresh():  # type: ignore[no-untyped-def]
        seed_everything(0)
        return copy.deepcopy(tiny_world(sampler=GUIDED)), ClipSampler(eps, 6, seed=0)

    w, s = fresh()
    train_teacher(cfg, w, s, tmp_path / "a", CPU, Dist())
    full = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert np.mean([r["loss"] for r in full[-2:]]) < np.mean([r["loss"] for r in full[:1]]), full
    w, s = fresh()
    real = s.sample

    def killing(batch: int):  # type: ignore[no-untyped-def]
        if len(list((tmp_path / "b").glob("state.pt"))) and killing.n >= 22:  # type: ignore[attr-defined]
            raise _Killed
        killing.n += 1  # type: ignore[attr-defined]
        return real(batch)

    killing.n = 0  # type: ignore[attr-defined]
    s.sample = killing  # type: ignore[method-assign]
    with pytest.raises(_Killed):
        train_teacher(cfg, w, s, tmp_path / "b", CPU, Dist())
    w, s = fresh()  # a new process: state from disk
    train_teacher(cfg, w, s, tmp_path / "b", CPU, Dist(), resume=True)
    resumed = json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[-1])
    assert resumed["step"] == full[-1]["step"]
    assert resumed["loss"] == pytest.approx(full[-1]["loss"], rel=1e-6)


@pytest.mark.parametrize("share", [1.0, 0.9, -0.1])
def test_own_context_share_must_leave_plain_clips(tmp_path: Path, share: float) -> None:
    """A share that leaves no plain clip in the batch (or is not a share) is refused with the fix."""
    eps = encode_episodes(tiny_world().codec, toy_episodes(2), CPU)
    cfg = TeacherTrainConfig(steps=1, batch=4, clip_len=6, own_context=share)
    with pytest.raises(ValueError, match="lower own_context"):
        train_teacher(cfg, tiny_world(), ClipSampler(eps, 6, seed=0), tmp_path, CPU, Dist())
