"""Re-fitting the reward / termination heads on a frozen backbone (``worldsim train --stage heads``)."""

from __future__ import annotations

import pytest
import torch

from worldsim.testing import tiny_world, toy_episodes
from worldsim.train.latents import encode_episodes
from worldsim.train.loop import seed_everything

CPU = torch.device("cpu")


def test_fit_heads_learns_episode_ends_backbone_untouched() -> None:
    """Heads re-fit on frozen features: a visible end-of-episode frame becomes predictable, the backbone stays."""
    from worldsim.train.heads import HeadFitConfig, fit_heads

    seed_everything(0)
    world = tiny_world()
    world.requires_grad_(False)
    eps = toy_episodes(n=16, length=24)
    for e in eps:  # the terminal frame shows a red bar: something the features can see
        e.frames[-1, 0:12] = (220, 20, 20)
    lat = encode_episodes(world.codec, eps, CPU)
    backbone = {k: v.clone() for k, v in world.denoiser.state_dict().items() if "_head" not in k}
    cfg = HeadFitConfig(steps=1500, batch=256, lr=3e-3, clip_len=6)
    m = fit_heads(cfg, world.denoiser, lat[:-4], lat[-4:], CPU)
    assert m["heads_kept"] == 1.0
    assert m["heads_loss"] < m["before_loss"] * 0.5, m
    assert m["heads_true_ends"] == 4 and m["before_end_recall"] == 0.0, m
    assert m["heads_end_recall"] >= 0.75 and m["heads_end_precision"] >= 0.75, m
    after = world.denoiser.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in backbone.items())


def test_heads_see_episode_ends_after_as_few_frames_as_a_session_starts_from() -> None:
    """With min_history K, every window's last frame is judged again after K+1 .. clip_len-1 frames,
    so an end that comes soon after a session's K real frames is in the heads' training data."""
    from worldsim.train.heads import HeadFitConfig, _windows, features

    world = tiny_world()
    lat = encode_episodes(world.codec, toy_episodes(n=3, length=24), CPU)  # 25 frames, the last terminal
    cfg = HeadFitConfig(clip_len=6)
    full = features(world.denoiser, lat, cfg, CPU)
    short = features(world.denoiser, lat, cfg, CPU, min_history=3)
    wins = len(_windows(lat, 6))
    assert len(short) == len(full) + wins * 2  # lengths 4 and 5: one more judged frame each
    assert int(full.terminated.sum()) == 3 and int(short.terminated.sum()) == 3 * 3
    # The terminal frame judged after 4 frames is the causal forward of exactly those 4 frames.
    e = lat[0]
    x = torch.from_numpy(e.frames[-4:])[None]
    out = world.denoiser(
        x, torch.zeros(1, 4), torch.from_numpy(e.actions[-4:])[None], torch.from_numpy(e.has_action[-4:])[None]
    )
    assert any(torch.allclose(out.pooled[0, -1], row, atol=1e-5) for row in short.pooled[short.terminated])


def test_fit_heads_can_fit_the_termination_head_alone() -> None:
    from worldsim.train.heads import HeadFitConfig, fit_heads

    world = tiny_world()
    world.requires_grad_(False)
    lat = encode_episodes(world.codec, toy_episodes(n=6, length=24), CPU)
    reward = {k: v.clone() for k, v in world.denoiser.reward_head.state_dict().items()}
    term = {k: v.clone() for k, v in world.denoiser.term_head.state_dict().items()}
    m = fit_heads(
        HeadFitConfig(steps=50, batch=64, clip_len=6, which="termination"), world.denoiser, lat[:-2], lat[-2:], CPU
    )
    assert m["heads_kept"] == 1.0
    assert all(torch.equal(v, world.denoiser.reward_head.state_dict()[k]) for k, v in reward.items())
    assert not all(torch.equal(v, world.denoiser.term_head.state_dict()[k]) for k, v in term.items())
    with pytest.raises(ValueError, match="heads.which"):
        fit_heads(HeadFitConfig(which="rewards"), world.denoiser, lat, lat, CPU)
