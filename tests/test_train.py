"""Training stages on tiny configs: each runs and learns, Self Forcing's gradient truncation,
kill-and-resume, and a two-process gloo DDP run."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.engine.cache import KVCache
from worldsim.testing import FixedSampler, tiny_config, tiny_world, toy_episodes
from worldsim.train.codec_stage import CodecTrainConfig, train_codec
from worldsim.train.data import AlignedEpisode, ClipSampler
from worldsim.train.latents import encode_episodes
from worldsim.train.loop import Dist, seed_everything
from worldsim.train.self_forcing import SelfForcingConfig, rollout, train_self_forcing
from worldsim.train.student import StudentTrainConfig, train_student
from worldsim.train.teacher import TeacherTrainConfig, train_teacher

CPU = torch.device("cpu")


def _losses(run_dir: Path, key: str = "loss") -> list[float]:
    return [json.loads(line)[key] for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def latent_world():  # type: ignore[no-untyped-def]
    world = tiny_world()
    world.requires_grad_(False)
    return world, ClipSampler(encode_episodes(world.codec, toy_episodes(), CPU), clip_len=6, seed=0)


def test_codec_stage_learns(tmp_path: Path) -> None:
    seed_everything(0)
    eps = toy_episodes()
    world, metrics = train_codec(
        CodecTrainConfig(steps=40, batch=8, lr=3e-3), tiny_config(), eps, eps, tmp_path, CPU, Dist()
    )
    losses = _losses(tmp_path)
    assert losses[-1] < losses[0] * 0.7
    assert np.isfinite(metrics["codec_psnr_val"])
    assert (tmp_path / "state.pt").exists()


def test_teacher_policy_actions_null_conditions_on_free_actions_only(
    latent_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """teacher.policy_actions=null: the policy's own actions reach the model as the null action,
    free ones as themselves; the default conditions on all of them."""
    world, _ = latent_world
    eps = [dataclasses.replace(e, free=e.has_action & (np.arange(len(e)) % 2 == 0)) for e in latent_world[1].eps]
    seen: list[torch.Tensor] = []
    forward = type(world.denoiser).forward

    def spy(self, x, t, action, has_action, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(has_action.clone())
        return forward(self, x, t, action, has_action, *a, **k)

    monkeypatch.setattr(type(world.denoiser), "forward", spy)
    for mode in ("condition", "null"):
        seen.clear()
        sampler = ClipSampler(eps, clip_len=6, seed=0)
        cfg = TeacherTrainConfig(steps=2, batch=4, clip_len=6, action_dropout=0.0, policy_actions=mode)
        train_teacher(cfg, copy.deepcopy(world), sampler, tmp_path / mode, CPU, Dist())
        b = ClipSampler(eps, clip_len=6, seed=0).sample(4)
        assert b.free is not None
        want = b.has_action & b.free if mode == "null" else b.has_action
        assert torch.equal(seen[0], want)
    none_free = [dataclasses.replace(e, free=np.zeros(len(e), bool)) for e in eps]
    with caplog.at_level("WARNING", logger="worldsim.train.teacher"):
        cfg = TeacherTrainConfig(steps=1, batch=2, clip_len=6)  # the default: null
        train_teacher(cfg, copy.deepcopy(world), ClipSampler(none_free, 6), tmp_path / "none", CPU, Dist())
    assert any("free" in r.getMessage() and "--explore" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="policy_actions"):
        train_teacher(TeacherTrainConfig(steps=1, policy_actions="drop"), world, sampler, tmp_path / "x", CPU, Dist())


def test_codec_stage_init_keeps_or_replaces_the_denoiser(tmp_path: Path) -> None:
    """--init with codec.steps=0 keeps the codec as it is; its denoiser is kept unless
    codec.fresh_denoiser asks for a new one (a retrain that must not inherit it)."""
    eps = toy_episodes()
    for fresh in (False, True):
        init = tiny_world(seed=3)
        old_codec = {k: v.clone() for k, v in init.codec.state_dict().items()}
        old_den = {k: v.clone() for k, v in init.denoiser.state_dict().items()}
        cfg = CodecTrainConfig(steps=0, fresh_denoiser=fresh)
        world, _ = train_codec(cfg, tiny_config(), eps, eps, tmp_path / str(fresh), CPU, Dist(), init=init)
        assert all(torch.equal(v, old_codec[k]) for k, v in world.codec.state_dict().items())
        same = [torch.equal(v, old_den[k]) for k, v in world.denoiser.state_dict().items() if v.is_floating_point()]
        assert all(same) if not fresh else not all(same)


def test_teacher_stage_learns_fixed_batch(tmp_path: Path, latent_world) -> None:  # type: ignore[no-untyped-def]
    seed_everything(0)
    world, sampler = latent_world
    world = copy.deepcopy(world)
    cfg = TeacherTrainConfig(steps=60, batch=4, clip_len=6, lr=3e-3, warmup=5, save_every=1000)
    train_teacher(cfg, world, FixedSampler(sampler, 4), tmp_path, CPU, Dist())  # type: ignore[arg-type]
    losses = _losses(tmp_path)
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) * 0.8, losses


def test_student_stage_learns_fixed_batch(tmp_path: Path, latent_world) -> None:  # type: ignore[no-untyped-def]
    seed_everything(0)
    world, sampler = latent_world
    student = tiny_world(seed=1)  # another init, so there is something to regress
    cfg = StudentTrainConfig(steps=40, batch=4, clip_len=6, lr=3e-3, warmup=5, ode_batches=1, teacher_steps=4)
    train_student(cfg, student, FixedSampler(sampler, 4), tmp_path, CPU, Dist(), teacher=world.denoiser)  # type: ignore[arg-type]
    losses = _losses(tmp_path)
    assert losses[-1] < losses[0] * 0.8, losses


@pytest.mark.parametrize("mode", ["self", "teacher", "diffusion"])
def test_self_forcing_stage_runs(tmp_path: Path, latent_world, mode: str) -> None:  # type: ignore[no-untyped-def]
    seed_everything(0)
    world, sampler = latent_world
    student, teacher = copy.deepcopy(world), copy.deepcopy(world)
    before = copy.deepcopy(student.denoiser.state_dict())
    cfg = SelfForcingConfig(steps=3, batch=2, clip_len=5, critic_steps=2, save_every=100)
    metrics = train_self_forcing(cfg, student, teacher, sampler, tmp_path, CPU, Dist(), mode=mode)
    assert np.isfinite(metrics["sf_dmd"]) and np.isfinite(metrics["sf_critic"])
    after = student.denoiser.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_self_forcing_critic_learns_fixed_batch(tmp_path: Path, latent_world) -> None:  # type: ignore[no-untyped-def]
    seed_everything(0)
    world, sampler = latent_world
    cfg = SelfForcingConfig(steps=25, batch=2, clip_len=5, critic_steps=1, critic_lr=3e-3, lr=0.0, save_every=100)
    train_self_forcing(cfg, copy.deepcopy(world), copy.deepcopy(world), FixedSampler(sampler, 2), tmp_path, CPU, Dist())  # type: ignore[arg-type]
    c = _losses(tmp_path, "critic")
    assert np.mean(c[-2:]) < np.mean(c[:2]), c


def test_rollout_loss_learns_the_recorded_future_without_a_critic(tmp_path: Path, latent_world) -> None:  # type: ignore[no-untyped-def]
    """``rollout_weight`` alone (``dmd_weight`` 0): the student's own rollout is pulled to the
    recorded clip, with no teacher score and no critic."""
    seed_everything(0)
    world, sampler = latent_world
    student = tiny_world(seed=1)  # another init, so the rollout starts far from the clip
    cfg = SelfForcingConfig(
        steps=30, batch=2, clip_len=5, lr=3e-3, ema=0.0, dmd_weight=0.0, rollout_weight=1.0, save_every=100
    )
    metrics = train_self_forcing(cfg, student, copy.deepcopy(world), FixedSampler(sampler, 2), tmp_path, CPU, Dist())  # type: ignore[arg-type]
    assert "sf_dmd" not in metrics and "sf_critic" not in metrics
    ro = _losses(tmp_path, "rollout")
    assert np.mean(ro[-2:]) < 0.7 * np.mean(ro[:2]), ro


def test_self_forcing_config_refuses_nothing_to_train_and_unknown_policy_actions() -> None:
    with pytest.raises(ValueError, match="rollout_weight"):
        SelfForcingConfig(dmd_weight=0.0, rollout_weight=0.0)
    with pytest.raises(ValueError, match="condition"):
        SelfForcingConfig(policy_actions="ignore")


def test_self_forcing_null_policy_actions_keeps_free_ones_and_frames(latent_world) -> None:  # type: ignore[no-untyped-def]
    from worldsim.train.self_forcing import conditioned

    _, sampler = latent_world
    b = sampler.sample(4)
    b.free = torch.rand(b.has_action.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    assert conditioned(SelfForcingConfig(), b) is b  # "condition": as recorded
    nb = conditioned(SelfForcingConfig(policy_actions="null"), b)
    assert torch.equal(nb.has_action, b.has_action & b.free) and not torch.equal(nb.has_action, b.has_action)
    assert torch.equal(nb.x, b.x) and torch.equal(nb.action, b.action) and torch.equal(nb.terminated, b.terminated)


def test_frame_mse_masks_frames_and_weights_elements() -> None:
    from worldsim.train.losses import frame_mse

    pred, target = torch.zeros(2, 3, 1, 2, 2), torch.ones(2, 3, 1, 2, 2)
    target[:, 2] = 3.0  # frame 2 is 9x worse
    assert torch.isclose(frame_mse(pred, target), torch.tensor(11 / 3))
    mask = torch.tensor([[True, True, False], [True, True, False]])
    assert torch.isclose(frame_mse(pred, target, mask), torch.tensor(1.0))
    weight = torch.ones_like(pred)
    weight[..., 0, 0], target[..., 0, 0] = 3.0, 2.0  # one element 4x worse, weighted 3x: (3*4 + 3) / 6
    assert torch.isclose(frame_mse(pred, target, mask, weight), torch.tensor(2.5))


def test_self_forcing_gradient_only_through_exit_steps(latent_world) -> None:  # type: ignore[no-untyped-def]
    """Per generated frame exactly one denoising pass carries gradient; the cache carries none."""
    world, sampler = latent_world
    student = copy.deepcopy(world.denoiser).train().requires_grad_(True)
    b = sampler.sample(2)
    calls: list[dict] = []

    def pre(module, args, kwargs):  # type: ignore[no-untyped-def]
        calls.append(
            {
                "grad": torch.is_grad_enabled(),
                "write": bool(kwargs.get("ctx") and kwargs["ctx"].write)
                or (len(args) > 4 and args[4] is not None and args[4].write),
                "got_grad": False,
            }
        )

    def post(module, args, kwargs, out):  # type: ignore[no-untyped-def]
        rec = calls[-1]
        if out.v.requires_grad:
            out.v.register_hook(lambda g: rec.__setitem__("got_grad", True))

    h1 = student.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = student.register_forward_hook(post, with_kwargs=True)
    cache = KVCache(student.cfg, world.config.cache, 2)
    context, T = 2, b.has_action.shape[1]
    gen = rollout(student, cache, b, context, world.config.sampler.schedule(), "self", grad=True)
    gen.pow(2).mean().backward()
    h1.remove(), h2.remove()

    writes = [c for c in calls if c["write"]]
    denoise = [c for c in calls if not c["write"]]
    assert len(writes) == T  # context + one clean pass per generated frame
    assert not any(c["grad"] for c in writes)  # context K/V written without gradient
    assert sum(c["grad"] for c in denoise) == T - context  # one exit step per frame
    assert sum(c["got_grad"] for c in denoise) == T - context  # ...and gradient reached exactly those
    assert not cache.k.requires_grad and cache.k.grad_fn is None
    assert all(p.grad is not None for p in student.blocks.parameters())


class _Killed(Exception):
    pass


class KillAfter:
    def __init__(self, sampler: ClipSampler, n: int) -> None:
        self.s, self.n, self.rng = sampler, n, sampler.rng

    def sample(self, batch: int):  # type: ignore[no-untyped-def]
        if self.n == 0:
            raise _Killed
        self.n -= 1
        return self.s.sample(batch)

    def free_share(self) -> float:
        return self.s.free_share()


def test_kill_and_resume_reproduces_loss(tmp_path: Path) -> None:
    eps = encode_episodes(tiny_world().codec, toy_episodes(), CPU)
    cfg = TeacherTrainConfig(steps=6, batch=2, clip_len=6, save_every=3, warmup=2)

    def fresh():  # type: ignore[no-untyped-def]
        seed_everything(0)
        return copy.deepcopy(tiny_world()), ClipSampler(eps, 6, seed=0)

    w, s = fresh()
    train_teacher(cfg, w, s, tmp_path / "a", CPU, Dist())
    full = _losses(tmp_path / "a")
    w, s = fresh()
    with pytest.raises(_Killed):
        train_teacher(cfg, w, KillAfter(s, 4), tmp_path / "b", CPU, Dist())  # type: ignore[arg-type]
    w, s = fresh()  # a new process: fresh model, fresh RNG; state comes from disk
    train_teacher(cfg, w, s, tmp_path / "b", CPU, Dist(), resume=True)
    resumed = json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[-1])
    assert resumed["step"] == 5
    assert resumed["loss"] == pytest.approx(full[-1], rel=1e-6)


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
    torch.set_num_threads(1)
    from worldsim.train.loop import init_distributed

    d = init_distributed()
    seed_everything(0)  # same init on both ranks
    world = tiny_world()
    sampler = ClipSampler(encode_episodes(world.codec, toy_episodes(), CPU), 6, seed=rank)  # different data
    train_teacher(
        TeacherTrainConfig(steps=3, batch=2, clip_len=6, save_every=100), world, sampler, Path(out) / str(rank), CPU, d
    )
    torch.save({k: v.clone() for k, v in world.denoiser.state_dict().items()}, Path(out) / f"w{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_process_gloo_ddp(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "w0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "w1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # gradients were averaged: replicas agree
    assert (tmp_path / "0" / "log.jsonl").exists() and not (tmp_path / "1" / "log.jsonl").exists()


def test_train_data_from_several_recordings_of_one_game(tmp_path: Path) -> None:
    from worldsim.train.data import same_game

    base = {"env_id": "CartPole-v1", "frameskip": 2, "crop": [160, 320, 0, 600], "action_space": {"n": 2}}
    for name, over in (("a", {}), ("b", {}), ("c", {"frameskip": 1})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({**base, **over}))
    assert same_game([tmp_path / "a", tmp_path / "b"], "cartpole")["env_id"] == "CartPole-v1"
    with pytest.raises(ValueError, match="differ in frameskip"):
        same_game([tmp_path / "a", tmp_path / "c"], "cartpole")
    with pytest.raises(ValueError, match="worldsim record cartpole"):
        same_game([tmp_path / "a", tmp_path / "missing"], "cartpole")


def test_mirrored_episodes_flip_frames_and_swap_actions() -> None:
    """--mirror 1,0 (CartPole): frames flipped left-right, pushes swapped, the null first action kept."""
    from worldsim.spaces import ActionSpec
    from worldsim.train.data import mirror_episodes
    from worldsim.train.recipe import parse_mirror

    spec = ActionSpec(kind="discrete", n=2)
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    frames[:, :, 1] = 255  # a bar left of centre
    has = np.array([False, True, True, True])
    ep = AlignedEpisode(frames, np.array([0, 0, 1, 1]), has, np.zeros(4, np.float32), np.zeros(4, bool), has.copy())
    (m,) = mirror_episodes([ep], parse_mirror("1,0"), spec)
    assert (m.frames[:, :, 6] == 255).all() and (m.frames[:, :, 1] == 0).all()
    assert m.actions.tolist() == [0, 1, 0, 0] and m.has_action.tolist() == has.tolist()
    assert m.free is not None and m.free.tolist() == has.tolist() and ep.actions.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="permutation"):
        mirror_episodes([ep], [1, 1], spec)
    with pytest.raises(ValueError, match="Discrete"):
        mirror_episodes([ep], [0], ActionSpec(kind="box", n=1, shape=(1,), low=(-1.0,), high=(1.0,)))
    with pytest.raises(ValueError, match="e.g. 1,0"):
        parse_mirror("left,right")


def test_guidance_stage_distils_the_guided_prediction(tmp_path: Path, latent_world) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from worldsim.train.guidance import GuidanceDistillConfig, GuidanceDistillError, train_guidance

    seed_everything(0)
    world, sampler = latent_world
    world = copy.deepcopy(world)
    cfg = GuidanceDistillConfig(steps=60, batch=4, clip_len=6, lr=3e-3, warmup=5, save_every=1000)
    with pytest.raises(GuidanceDistillError, match="guidance_scale"):  # nothing to distil at 1.0
        train_guidance(cfg, world, FixedSampler(sampler, 4), tmp_path / "none", CPU, Dist())  # type: ignore[arg-type]
    world.config.sampler = dataclasses.replace(world.config.sampler, guidance_scale=3.0)
    out = train_guidance(cfg, world, FixedSampler(sampler, 4), tmp_path, CPU, Dist())  # type: ignore[arg-type]
    losses = _losses(tmp_path)
    # At step 0 the model is its own target: the loss is the guided-vs-conditional gap, (g-1)^2 |v_c - v_u|^2.
    assert losses[0] > 0 and np.mean(losses[-2:]) < losses[0] * 0.5, losses
    assert world.config.sampler.guidance_scale == 1.0 and out["guidance_distilled_scale"] == 3.0


def test_motion_weight_favours_what_moved() -> None:
    """Static clips weigh every element 1 (the plain loss); a moving element of a frame outweighs
    the still ones in proportion to its change, and the weighted loss is a mean within each frame."""
    from worldsim.train.losses import flow_loss, motion_weight

    still = torch.randn(2, 1, 4, 8, 8).expand(2, 3, 4, 8, 8).contiguous()
    assert torch.equal(motion_weight(still, 2.0), torch.ones_like(still))
    moving = still.clone()
    moving[:, 2, 0, 3, 3] += 1.0  # one element moves in the last frame
    w = motion_weight(moving, 2.0)
    assert torch.equal(w[:, :2], torch.ones_like(w[:, :2]))
    assert w[0, 2, 0, 3, 3] > 100 and w[0, 2].sum() == pytest.approx(w[0, 2].numel() + 2.0 * w[0, 2].numel(), rel=1e-4)
    v, eps, x0 = torch.randn_like(moving), torch.randn_like(moving), moving
    assert torch.allclose(flow_loss(v, x0, eps, weight=torch.ones_like(x0)), flow_loss(v, x0, eps))
    err = torch.zeros_like(moving)
    err[:, 2, 0, 3, 3] = 1.0  # the error sits where the motion is: the weighted loss sees it much more
    assert flow_loss(eps - x0 + err, x0, eps, weight=w) > 30 * flow_loss(eps - x0 + err, x0, eps)


def test_motion_frames_free_weighs_only_frames_after_free_actions() -> None:
    from worldsim.train.data import Batch
    from worldsim.train.teacher import TeacherTrainConfig, _motion

    x = torch.randn(2, 4, 3, 4, 4)
    ones = torch.ones(2, 4, dtype=torch.bool)
    free = torch.tensor([[False, True, False, True], [False, False, False, False]])
    b = Batch(
        x, torch.zeros(2, 4, dtype=torch.long), ones, torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.bool), free
    )
    assert _motion(TeacherTrainConfig(), b) is None
    every = _motion(TeacherTrainConfig(motion_weight=2.0), b)
    only = _motion(TeacherTrainConfig(motion_weight=2.0, motion_frames="free"), b)
    assert every is not None and only is not None
    assert torch.equal(only[0, 1], every[0, 1]) and torch.equal(only[0, 3], every[0, 3])
    assert torch.equal(only[0, 2], torch.ones_like(only[0, 2])) and torch.equal(only[1], torch.ones_like(only[1]))
    assert not torch.equal(every[1], torch.ones_like(every[1]))


def test_noise_levels_sampler_draws_only_the_sampler_levels(tmp_path: Path, latent_world) -> None:  # type: ignore[no-untyped-def]
    from worldsim.train.teacher import sample_df_timesteps

    levels = torch.tensor([1.0, 0.75, 0.5, 0.25])
    t = sample_df_timesteps(64, 8, 0.2, CPU, levels)
    assert set(t.unique().tolist()) == {0.0, 1.0, 0.75, 0.5, 0.25}
    assert 0.1 < float((t == 0).float().mean()) < 0.3
    uniform = sample_df_timesteps(64, 8, 0.2, CPU)
    assert len(uniform.unique()) > 100  # the default: every level of the flow
    world, sampler = latent_world
    with pytest.raises(ValueError, match="noise_levels"):
        train_teacher(
            TeacherTrainConfig(steps=1, noise_levels="few"), copy.deepcopy(world), sampler, tmp_path, CPU, Dist()
        )
    cfg = TeacherTrainConfig(steps=2, batch=2, clip_len=6, warmup=1, save_every=1000, noise_levels="sampler")
    train_teacher(cfg, copy.deepcopy(world), sampler, tmp_path, CPU, Dist())
    assert len(_losses(tmp_path)) == 2


def test_teacher_ema_exports_the_average(tmp_path: Path, latent_world) -> None:  # type: ignore[no-untyped-def]
    """One step at decay 0.5: the exported weights are halfway between the start and the step's raw
    weights (kept in state.pt beside the average, for a resume)."""
    world, sampler = latent_world
    w0 = {k: v.clone() for k, v in world.denoiser.state_dict().items()}
    w = copy.deepcopy(world)
    cfg = TeacherTrainConfig(steps=1, batch=2, clip_len=6, warmup=1, save_every=1, ema=0.5)
    train_teacher(cfg, w, FixedSampler(sampler, 2), tmp_path, CPU, Dist())  # type: ignore[arg-type]
    modules = torch.load(tmp_path / "state.pt", weights_only=False)["modules"]
    raw, exported = modules["denoiser"], w.denoiser.state_dict()
    moved = [k for k, v in raw.items() if v.is_floating_point() and not torch.equal(v, w0[k])]
    assert moved
    for k in moved:
        torch.testing.assert_close(exported[k], (w0[k] + raw[k]) / 2)
        torch.testing.assert_close(modules["ema"][k], exported[k])
    with pytest.raises(ValueError, match="teacher.ema"):
        train_teacher(TeacherTrainConfig(steps=1, ema=1.0), copy.deepcopy(world), sampler, tmp_path / "x", CPU, Dist())
