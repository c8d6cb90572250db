"""`worldsim eval`: metrics on known inputs, in-memory rollouts, the real game's replay, and the
command end to end on a tiny world and a tiny recorded CartPole data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from worldsim.eval.metrics import (
    PSNR_CAP,
    correlation,
    end_precision_recall,
    frechet_distance,
    psnr,
    sign_agreement,
    ssim,
)


def _frames(seed: int = 0, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- metrics
def test_psnr_known_values() -> None:
    a = _frames()
    assert np.all(psnr(a, a) == PSNR_CAP)  # identical: the documented cap, not inf
    grey = np.full((2, 64, 64, 3), 128, np.uint8)
    # A known noise level: a +-8 checkerboard has MSE exactly 64.
    checker = ((np.indices((64, 64)).sum(0) % 2) * 16 - 8)[None, :, :, None]
    noisy = (grey.astype(int) + checker).astype(np.uint8)
    np.testing.assert_allclose(psnr(grey, noisy), 10 * np.log10(255**2 / 64))
    # A known shift: every pixel off by 10 -> MSE 100.
    np.testing.assert_allclose(psnr(grey, grey + 10), 10 * np.log10(255**2 / 100))
    # Arbitrary frames: the formula.
    b = np.clip(a.astype(int) + 5, 0, 255).astype(np.uint8)
    mse = ((a.astype(float) - b) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(psnr(a, b), 10 * np.log10(255**2 / mse))
    assert psnr(a.reshape(1, 3, 64, 64, 3), b.reshape(1, 3, 64, 64, 3)).shape == (1, 3)


def test_ssim_known_values() -> None:
    a = _frames()
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim(a, a, channels="rgb"), 1.0, atol=1e-12)
    # Flat frames of levels p and q: only the luminance term is left, (2pq + C1) / (p^2 + q^2 + C1).
    c1 = (0.01 * 255) ** 2
    p, q = 100.0, 140.0
    fp, fq = np.full((1, 64, 64, 3), p, np.uint8), np.full((1, 64, 64, 3), q, np.uint8)
    np.testing.assert_allclose(ssim(fp, fq), (2 * p * q + c1) / (p * p + q * q + c1), rtol=1e-9)
    noisy = np.clip(a.astype(int) + np.random.default_rng(1).normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert np.all(ssim(a, noisy) < 0.9)
    shifted = np.roll(a, 3, axis=2)  # a known shift of a noise image leaves ~no structure in common
    assert np.all(np.abs(ssim(a, shifted)) < 0.1)
    assert ssim(a.reshape(1, 3, 64, 64, 3), shifted.reshape(1, 3, 64, 64, 3)).shape == (1, 3)


def test_ssim_matches_a_direct_window_sum() -> None:
    """The separable-matrix filter equals an explicit 11x11 Gaussian window at every position."""
    from worldsim.eval.metrics import _filter

    x = np.random.default_rng(2).random((1, 20, 17))
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    direct = np.array([[(x[0, i : i + 11, j : j + 11] * w).sum() for j in range(7)] for i in range(10)])
    np.testing.assert_allclose(_filter(x)[0], direct, rtol=1e-12)


def _fake_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without scipy installed, a stand-in ``scipy.linalg.sqrtm`` (complex, like scipy's) exercises that path."""
    import sys
    import types

    try:
        import scipy.linalg  # noqa: F401
    except ImportError:

        def sqrtm(m: np.ndarray) -> np.ndarray:
            w, v = np.linalg.eig(m)
            return (v * np.sqrt(w.astype(complex))) @ np.linalg.inv(v)

        linalg = types.ModuleType("scipy.linalg")
        linalg.sqrtm = sqrtm  # type: ignore[attr-defined]
        scipy = types.ModuleType("scipy")
        scipy.linalg = linalg  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "scipy", scipy)
        monkeypatch.setitem(sys.modules, "scipy.linalg", linalg)


@pytest.mark.parametrize("method", ["eig", "scipy", "auto"])
def test_frechet_distance_known_values(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if method == "scipy":
        _fake_scipy(monkeypatch)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4))
    assert frechet_distance(x, x, method=method) == pytest.approx(0.0, abs=1e-6)
    mu = np.array([1.0, 2.0, 0.0, -1.0])
    assert frechet_distance(x, x + mu, method=method) == pytest.approx(float((mu**2).sum()), rel=1e-6)
    # Whitened to covariance exactly I, scaled by 2 (covariance 4I): trace term = D (1 + 4 - 2*2) = D.
    xc = x - x.mean(0)
    xw = xc @ np.linalg.inv(np.linalg.cholesky(np.cov(xc, rowvar=False)).T)
    assert frechet_distance(xw, 2 * xw, method=method) == pytest.approx(4.0, rel=1e-6)
    # Fewer samples than dimensions (singular covariances) stays finite and >= 0.
    few = rng.normal(size=(5, 16))
    assert 0 <= frechet_distance(few, few + 1, method=method) < np.inf


def test_control_and_end_metrics() -> None:
    assert sign_agreement(np.array([1.0, -2, 3]), np.array([2.0, -1, -1])) == pytest.approx(2 / 3)
    assert np.isnan(sign_agreement(np.array([1.0]), np.array([0.0])))  # ~0 real changes are left out
    assert correlation(np.arange(5.0), 2 * np.arange(5.0)) == pytest.approx(1.0)
    assert np.isnan(correlation(np.ones(5), np.arange(5.0)))
    pred = np.array([[0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]], bool)
    real = np.array([[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
    window = np.ones_like(pred)
    window[2, 4:] = False  # row 2's prediction falls outside the scored window
    r = end_precision_recall(pred, real, window, tol=2)
    # Row 0: one run (frames 2-3) within 2 of the end at 4 -> correct; row 1: a false end.
    assert r["predicted_ends"] == 2 and r["real_ends"] == 1
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == pytest.approx(1.0)
    assert np.isnan(end_precision_recall(pred[1:2], real[1:2], window[1:2])["recall"])
    always = end_precision_recall(np.ones((1, 6), bool), real[:1], window[:1])  # ends the episode at once
    assert always["predicted_ends"] == 1 and always["precision"] == 0.0 and always["recall"] == 0.0


def test_buckets_and_summaries() -> None:
    from worldsim.eval.stats import buckets_for, control_summary, target_check

    assert buckets_for([1, 10, 50, 200, 1000], 200) == [(1, 10), (11, 50), (51, 200)]
    assert buckets_for([1, 10], 12) == [(1, 10), (11, 12)]
    assert buckets_for([1], 1) == [(1, 1)]
    # Two probes x two actions, one component; the real game: +1 / -1 around a drift of +5.
    real = np.array([[[6.0], [4.0]], [[6.0], [4.0]]])
    model = np.array([[[5.1], [4.9]], [[5.1], [4.9]]])  # right drift, tiny but right-signed action effect
    c = control_summary(model, real, ["x"])["x"]
    assert c["sign_agreement"] == 1.0 and c["effect_sign_agreement"] == 1.0 and c["pairs"] == 4
    flipped = control_summary(model[:, ::-1], real, ["x"])["x"]
    assert flipped["sign_agreement"] == 1.0 and flipped["effect_sign_agreement"] == 0.0
    t = target_check(np.array([0.1, 0.1, 0.5]), np.array([0.1, 0.1, 0.1]), np.array([3, 3, 3]))
    assert t["first_frame_above_2x"] == 3 and t["share_within_2x"] == pytest.approx(2 / 3)


def test_probe_actions_for_other_spaces() -> None:
    import gymnasium as gym

    from worldsim.eval.control import probe_actions
    from worldsim.spaces import ActionSpec

    mb = probe_actions(ActionSpec.from_space(gym.spaces.MultiBinary(3)), n_sampled=4, seed=1)
    assert mb.shape == (5, 3) and (mb[0] == 0).all() and set(np.unique(mb)) <= {0, 1}
    box = probe_actions(ActionSpec.from_space(gym.spaces.Box(-1, 1, (2,))), n_sampled=3, seed=1)
    assert box.shape == (4, 2) and (box[0] == 0).all() and np.abs(box).max() <= 1
    np.testing.assert_array_equal(probe_actions(ActionSpec.from_space(gym.spaces.Discrete(3, start=1))), [1, 2, 3])


# ---------------------------------------------------------------------------- rollouts in memory
def _episodes(lengths: list[int], seed: int = 0) -> list:
    from worldsim.eval.episodes import EvalEpisode

    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        frames = np.full((n, 64, 64, 3), 255, np.uint8)
        x = rng.integers(8, 48, n)
        for j in range(n):
            frames[j, 40:48, x[j] : x[j] + 8] = 0
        acts = rng.integers(0, 2, n)
        term = np.zeros(n, bool)
        term[-1] = i == 0  # the first episode really ends; the others are truncated
        out.append(EvalEpisode(frames, acts, np.ones(n, np.float32), term, seed=None, episode_id=i))
    return out


def test_rollout_in_memory(tiny_world) -> None:  # type: ignore[no-untyped-def]
    from worldsim.eval.episodes import reference
    from worldsim.eval.rollout import rollout
    from worldsim.eval.stats import buckets_for, summarize

    eps = _episodes([12, 9, 5])  # episode 0 ends (terminated) on horizon 10
    K, H = tiny_world.config.context_frames, 10
    ref = reference(eps, K, H, tol=2)
    np.testing.assert_array_equal(ref.valid.sum(1), [10, 7, 3])  # short episodes: what there is
    np.testing.assert_array_equal(ref.window.sum(1), [10, 7, 3])  # episode 0 fills the horizon anyway
    a = rollout(tiny_world, eps, H, seed=3, batch=2)
    b = rollout(tiny_world, eps, H, seed=3, batch=2)
    c = rollout(tiny_world, eps, H, seed=3, batch=1)
    np.testing.assert_array_equal(a.frames, b.frames)  # deterministic given the seed
    assert np.abs(a.frames.astype(int) - c.frames.astype(int)).max() <= 2  # same noise whatever the batch
    np.testing.assert_array_equal(a.stepped, ref.valid)
    assert a.frames[2, 3:].max() == 0  # rows stop once their episode has no more frames
    res = summarize(ref, a, None, None, (), None, [1, 10], buckets_for([1, 10], H))
    assert len(res.curves["psnr"]) == H and set(res.at) == {"1", "10"}
    assert res.buckets["1-10"]["frames"] == 20
    assert res.episode_end["real_ends"] == 1 and res.reward_mae >= 0
    # A later common start (another model with more context frames) keeps the alignment.
    d = rollout(tiny_world, eps, 4, start=K + 1, seed=3)
    assert d.stepped.sum(1).tolist() == [4, 4, 2]


def test_noise_draws_average_the_runs_of_other_seeds(tiny_world) -> None:  # type: ignore[no-untyped-def]
    """--noise-draws 2 at seed s scores each episode's rollouts at seeds s + i and s + i + E: its
    PSNR curve is the mean of two one-draw runs at seeds s and s + E, its episode counts theirs."""
    import dataclasses

    from worldsim.eval.evaluate import Game, HeldOut, evaluate
    from worldsim.eval.markdown import rollout_tables
    from worldsim.eval.results import EvalConfig
    from worldsim.real import GameSpec

    eps = _episodes([12, 9, 7])
    game = Game(GameSpec(env_id="CartPole-v1"))
    # One row a session: the same noise seed gives the same frames bit for bit in every run.
    cfg = EvalConfig("own", horizon=6, horizons=(1, 6), batch=1, seed=5, control=False, divergence=False)
    cfg = dataclasses.replace(cfg, control_states=0, random_episodes=0, closed_loop_episodes=0)

    def run(**kw: int):  # type: ignore[no-untyped-def]
        held = HeldOut(list(eps), tiny_world.action_spec, {})
        return evaluate(dataclasses.replace(cfg, **kw), {"w": tiny_world}, held, game)

    one, other, both = run(), run(seed=5 + len(eps)), run(noise_draws=2)
    curve = lambda ev: np.array(ev.scores["w"].curves["psnr"])  # noqa: E731
    assert not np.array_equal(curve(one), curve(other))  # other noise, other frames: the test can fail
    np.testing.assert_allclose(curve(both), (curve(one) + curve(other)) / 2, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(both.n_per_horizon, one.n_per_horizon)
    assert "2 noise draws" in rollout_tables(both)


# ---------------------------------------------------------------------------- a recorded data set
@pytest.fixture(scope="module")
def cartpole_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 short scripted CartPole episodes in the recorder's on-disk format (1 test, 1 val, 1 train)."""
    from worldsim.data.record import RecordConfig, record
    from worldsim.worlds import get_world

    wd = get_world("cartpole")
    out = tmp_path_factory.mktemp("data") / "cartpole"
    cfg = RecordConfig(
        env_id=wd.env_id,
        out=out,
        episodes=3,
        policies=(("scripted", 1.0),),
        max_steps=24,
        frameskip=wd.frameskip,
        crop=wd.crop,
        world=wd,
        fps=wd.fps,
    )
    record(cfg, progress=False)
    return out


def test_real_game_replays_and_branches(cartpole_data: Path, tiny_world) -> None:  # type: ignore[no-untyped-def]
    from worldsim.eval.control import probe_actions
    from worldsim.eval.divergence import real_divergence
    from worldsim.eval.episodes import load_eval_episodes
    from worldsim.eval.probes import at_frames, control_probe, pick_probes, real_control
    from worldsim.real import RealGame
    from worldsim.worlds import get_world

    wd = get_world("cartpole")
    reader = wd.state_reader
    assert reader is not None
    eps, spec, manifest = load_eval_episodes(cartpole_data, "test", 2)
    assert sorted(e.split for e in eps) == ["test", "val"]  # 1 test episode: topped up from val
    game = RealGame.from_manifest(manifest, spec, wd.true_state)
    assert game.kind == "vector" and game.can_perturb
    probes = pick_probes(eps, 1, 3, 2, seed=0)
    actions = probe_actions(spec)
    np.testing.assert_array_equal(actions, [0, 1])
    real_d, held, checks = real_control(game, eps, probes, actions, reader, k=3)
    assert checks["replay_ok"] == len(probes) and checks["branch_ok"] == checks["branch_checked"] == len(probes)
    assert real_d.shape == (len(probes), 2, 2) and held.shape == (len(probes), 2) and held.max() == 3
    assert np.all(real_d[:, 1, 0] > real_d[:, 0, 0])  # pushing right moves the cart right of pushing left
    every = control_probe(tiny_world, eps, probes, actions, reader, k=3)
    assert every.shape == (len(probes), 2, 3, 2)
    changes = np.arange(2 * 2 * 3 * 2, dtype=float).reshape(2, 2, 3, 2)  # (P, A, k, S)
    picked = at_frames(changes, np.array([[3, 1], [0, 2]]))  # the real game ended early / failed to replay
    np.testing.assert_array_equal(picked[0], [changes[0, 0, 2], changes[0, 1, 0]])
    assert np.isnan(picked[1, 0]).all() and np.array_equal(picked[1, 1], changes[1, 1, 1])
    div = real_divergence(game, eps, 2, 10, reader, eps=1e-4)
    game.close()
    assert div is not None and div["replay_frames_ok"] == div["replay_frames_checked"] > 0
    assert np.all(div["true"][:5] < 1e-2)  # a 1e-4 nudge stays small over a few frames
    assert div["reader_error"][0] < 0.05  # the cart reader is good to a few hundredths of a unit


def test_eval_end_to_end(tmp_path: Path, tiny_world_path: Path, cartpole_data: Path) -> None:
    from worldsim.cli import main

    out = tmp_path / "eval"
    argv = ["eval", str(tiny_world_path), str(tiny_world_path), "--world", "cartpole", "--names", "a,b"]
    argv += ["--data", str(cartpole_data), "--episodes", "2", "--horizon", "12", "--horizons", "1,10"]
    argv += ["--control-states", "3", "--control-frames", "2", "--random-episodes", "3", "--random-frames", "5"]
    argv += ["--closed-loop-episodes", "2", "--closed-loop-frames", "4"]
    argv += ["--out", str(out), "--seed", "0", "--device", "cpu", "--control-k", "3", "--probes", "2"]
    assert main(argv) == 0
    assert main(argv) == 2  # never over an existing report without --force (refused before any work)

    def no_nan(token: str) -> float:
        raise AssertionError(f"results.json holds a bare {token}")

    res = json.loads((out / "results.json").read_text(), parse_constant=no_nan)
    a, b = res["models"]["a"], res["models"]["b"]
    assert len(a["curves"]["psnr"]) == 12 and set(a["at"]) == {"1", "10"}
    assert a["curves"]["psnr"] == b["curves"]["psnr"]  # the same checkpoint and seed: the same numbers
    assert res["meta"]["episodes"] == 2 and len(res["n_per_horizon"]) == 12
    floor = res["codec_reconstruction"]["codec reconstruction"]  # one codec shared by both: one floor row
    assert len(floor["curves"]["psnr"]) == 12 and floor["at"]["1"]["psnr"] is not None
    assert {"cart_x_err", "pole_angle_err"} <= set(a["curves"])
    assert set(a["fd_codec_latents"]) == {"1-10", "11-12"} and a["fd_codec_latents"]["1-10"] >= 0
    # Random weights draw no readable pole; the real game's side is all there.
    assert a["control"]["probes"] == 4 and "effect_correlation" in a["control"]["cart_x"]
    assert np.isfinite(np.array(res["control_raw"]["real"], float)).all()
    assert res["control_real_checks"]["replay_ok"] == res["control_real_checks"]["probes"]
    assert res["real_divergence"]["replay_frames_ok"] == res["real_divergence"]["replay_frames_checked"]
    assert "first_frame_above_2x" in a["target"]["pole_angle"]
    fid = res["control_fidelity"]["a"]
    assert fid["held"]["states"] == 3 and fid["held"]["frames"] == 2 and fid["random"]["episodes"] == 3
    assert set(fid["held"]["variables"]) == {"cart_x", "pole_angle", "pixels"}
    loop = fid["closed_loop"]
    assert set(loop) == {"balance", "wrong-way"} and loop["balance"]["episodes"] == 2 and loop["balance"]["frames"] == 4
    assert loop["balance"]["real_full"] == 2  # the real pole stays up for 4 frames under the PD controller
    assert set(res["control_fidelity_headline"]["a"]) >= {"pole_angle sign agreement", "termination within 2 frames"}
    text = (out / "report.md").read_text()
    assert "Control fidelity against the real game" in text and "FAIL" in text  # random weights fail the targets
    assert "FD on our codec's latents" in text and "not FID" in text and "| a |" in text
    assert "closed loop" in text and "| wrong-way | 2 |" in text
    for f in (
        "drift.png",
        "psnr.png",
        "ssim.png",
        "pole_angle_err.png",
        "filmstrip.png",
        "control.png",
        "control_fidelity_a.png",
    ):
        assert (out / f).stat().st_size > 1000, f
    # Deterministic given --seed.
    assert main([*argv[:-6], "--out", str(tmp_path / "again"), "--seed", "0", "--device", "cpu", "--no-control"]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["models"]["a"]["curves"] == a["curves"]


def test_eval_bad_input(tmp_path: Path, tiny_world_path: Path, cartpole_data: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from worldsim.cli import main

    base = ["eval", str(tiny_world_path), "--world", "cartpole", "--data", str(cartpole_data), "--out", str(tmp_path)]
    assert main([*base, "--names", "a,b"]) == 2
    assert "names" in capsys.readouterr().err
    assert main([*base[:-4], "--data", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "no recorded data" in capsys.readouterr().err


def test_eval_of_your_own_game(tmp_path: Path, tiny_world_path: Path, cartpole_data: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A world that is not bundled is scored on pixels, rewards and ends from its recording alone."""
    from worldsim.cli import main

    argv = ["eval", str(tiny_world_path), "--world", "my-game", "--episodes", "1", "--horizon", "6"]
    argv += ["--horizons", "1,10", "--out", str(tmp_path), "--device", "cpu", "--control-states", "2"]
    argv += ["--control-frames", "2", "--random-episodes", "0", "--closed-loop-episodes", "0"]
    assert main(argv) == 2
    assert "not a bundled world: pass --data" in capsys.readouterr().err
    assert main([*argv, "--data", str(cartpole_data)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    m = next(iter(res["models"].values()))
    assert len(m["curves"]["psnr"]) == 6 and not any(k.endswith("_err") for k in m["curves"])
    text = (tmp_path / "report.md").read_text()
    assert "my-game" in text
    # Episodes of 25 frames leave 23 after the context: the horizon is clipped, and the report says so.
    assert res["meta"]["horizon"] == 6 and "horizon" not in " ".join(res["meta"]["notes"])
    assert list(res["control_fidelity"][next(iter(res["models"]))]["held"]["variables"]) == ["pixels"]
    assert "pixels sign agreement" in text


def test_eval_output_per_world_and_clipped_horizons(
    tmp_path: Path, tiny_world_path: Path, cartpole_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worldsim.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["eval", str(tiny_world_path), "--world", "cartpole", "--data", str(cartpole_data), "--episodes", "1"]
    argv += ["--horizon", "200", "--horizons", "1,10,50,200", "--device", "cpu", "--no-control", "--no-divergence"]
    argv += ["--control-states", "0", "--random-episodes", "0", "--closed-loop-episodes", "0"]
    assert main(argv) == 0
    res = json.loads((tmp_path / "eval" / "cartpole" / "results.json").read_text())
    assert res["meta"]["horizon"] == 23 and res["meta"]["horizons"] == [1, 10]  # 25 frames, 2 of them context
    notes = " ".join(res["meta"]["notes"])
    assert "clipped to 23" in notes and "50, 200" in notes
    assert "clipped to 23" in (tmp_path / "eval" / "cartpole" / "report.md").read_text()


def test_eval_only_control_needs_no_recording(tmp_path: Path, tiny_world_path: Path) -> None:
    from worldsim.cli import main

    out = tmp_path / "ctl"
    argv = ["eval", str(tiny_world_path), "--world", "cartpole", "--only-control", "--control-states", "2"]
    argv += ["--control-frames", "2", "--random-episodes", "2", "--random-frames", "4", "--out", str(out)]
    argv += ["--closed-loop-episodes", "0"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert main([*argv, "--device", "cpu"]) == 2
    assert main([*argv, "--device", "cpu", "--force"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["models"] == {} and res["control_fidelity"]["tiny"]["random"]["episodes"] == 2
    assert "Control fidelity" in (out / "report.md").read_text()
