"""Control fidelity against the real game: exact when the "world" is the real game itself, chance
for a world that ignores its actions, and the real game's snapshots restore exactly."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

from worldsim.eval.control import (
    Branches,
    RealSide,
    StartState,
    WorldSide,
    collect_starts,
    held_runs,
    probe_actions,
    random_runs,
)
from worldsim.eval.fidelity import (
    PIXELS,
    ControlFidelity,
    held_fidelity,
    random_fidelity,
    rank_correlation,
    targets,
    timing_by_length,
    wilson_interval,
)
from worldsim.real import RealGame
from worldsim.worlds import get_world


class ConstantActions:
    """A side that ignores the actions it is given: every row gets ``action`` instead."""

    def __init__(self, inner: RealSide | WorldSide, action: int) -> None:
        self.inner, self.action = inner, action

    def run(self, starts: Sequence[StartState], actions: np.ndarray) -> Branches:
        return self.inner.run(starts, np.full_like(actions, self.action))


class Shifted:
    """The real game drawn ``px`` pixels to the right: every action does what it should, with a drift."""

    def __init__(self, inner: RealSide, px: int) -> None:
        self.inner, self.px = inner, px

    def run(self, starts: Sequence[StartState], actions: np.ndarray) -> Branches:
        b = self.inner.run(starts, actions)
        return dataclasses.replace(b, frames=np.roll(b.frames, self.px, axis=-2))


@pytest.fixture(scope="module")
def cartpole():  # type: ignore[no-untyped-def]
    import gymnasium as gym

    from worldsim.spaces import ActionSpec

    wd = get_world("cartpole")
    spec = ActionSpec.from_space(gym.spaces.Discrete(2))
    game = RealGame.from_world(wd, spec)
    yield wd, game, spec
    game.close()


def test_snapshot_restores_the_real_game(cartpole) -> None:  # type: ignore[no-untyped-def]
    _, game, _ = cartpole
    game.reset(3)
    game.step(1)
    snap = game.snapshot()
    assert snap is not None and game.can_snapshot
    first = [game.step(a) for a in (0, 0, 1)]
    f1 = game.frame()
    game.restore(snap)
    again = [game.step(a) for a in (0, 0, 1)]
    assert first == again and np.array_equal(game.frame(), f1)
    with pytest.raises(Exception, match="reset"):  # stepping past the end names the fix
        game.reset(0)
        while not game.step(1).done:
            pass
        game.step(1)


def test_real_game_as_the_world_is_exact(cartpole) -> None:  # type: ignore[no-untyped-def]
    wd, game, spec = cartpole
    real = RealSide(game)
    starts = collect_starts(game, 6, context=2, seed=0, prefix=(0, 6))
    assert len({s.seed for s in starts}) == 6 and all(s.frames.shape == (2, 64, 64, 3) for s in starts)
    runs = held_runs(real, real, starts, probe_actions(spec), k=4)
    held = held_fidelity(runs, wd.state_reader, wd.state_names)
    for name in ("cart_x", "pole_angle", PIXELS):
        v = held.variables[name]
        assert v.pairs_scored > 0, name
        assert v.sign_agreement == 1.0 and v.magnitude_ratio == 1.0, name
        assert all(s == 1.0 for s in v.sign_per_frame if np.isfinite(s)), name
        assert all(e == 0.0 for e in v.error_per_frame if np.isfinite(e)), name
        assert all(b == 0.0 for b in v.bias_per_frame + v.bias_per_action if np.isfinite(b)), name
    assert len(held.variables["pole_angle"].bias_per_action) == 2 and not held.variables[PIXELS].bias_per_frame
    # The reader's resolution, from its error against CartPole's internal state on these very frames.
    assert runs.real.states is not None and runs.real.states.shape == (*runs.real.terminated.shape, 2)
    cart, pole = held.variables["cart_x"], held.variables["pole_angle"]
    assert 0 < cart.resolution < 0.05 and 0 < pole.resolution < 0.05 and held.variables[PIXELS].resolution == 0
    assert cart.sign_agreement_all == 1.0 and cart.pairs_all >= cart.pairs_scored
    # Pushing right moves the cart right of pushing left, in the real game.
    assert held.variables["cart_x"].real_effect_per_frame[-1] > 0
    resets = collect_starts(game, 12, context=2, seed=100, prefix=(0, 0))
    rnd = random_fidelity(random_runs(real, real, resets, spec, frames=40, seed=1), wd.state_reader, wd.state_done)
    assert rnd.real_ended == 12 and rnd.real_lengths == rnd.world_lengths  # random CartPole falls within 40 frames
    assert rnd.termination_within_2 == 1.0 and rnd.end_within_2 == 1.0
    assert rnd.reader_end_within_2 is not None and rnd.reader_end_within_2 >= 0.75  # the bounds rule, read off pixels
    assert rnd.termination_interval is not None and rnd.termination_interval[0] < 1.0 == rnd.termination_interval[1]
    assert sum(b["episodes"] for b in rnd.timing_by_length) == 12
    assert all(b["timed"] == 1.0 and b["mean_error"] == 0.0 for b in rnd.timing_by_length)
    assert rnd.end_rank_correlation is not None and rnd.end_rank_correlation > 0.999  # the real game follows itself
    fid = ControlFidelity(list(wd.state_names), held, rnd)
    t = targets(fid, "cartpole", min_episodes=10)
    assert all(v["pass"] for v in t.values()), t


def test_a_world_that_ignores_actions_scores_chance(cartpole, tiny_world) -> None:  # type: ignore[no-untyped-def]
    wd, game, spec = cartpole
    real = RealSide(game)
    starts = collect_starts(game, 24, context=tiny_world.config.context_frames, seed=0, prefix=(0, 6))
    actions = probe_actions(spec)
    # The real game with its actions replaced: no response at all, every sign a tie.
    deaf = held_runs(ConstantActions(real, 0), real, starts, actions, k=3)
    cart = held_fidelity(deaf, wd.state_reader, wd.state_names).variables["cart_x"]
    assert cart.pairs_scored > 12 and cart.sign_agreement == 0.5 and cart.magnitude_ratio == 0.0
    # A random-weight world with its actions replaced: branches differ by noise only, about half agree.
    world = ConstantActions(WorldSide(tiny_world, seed=0), 0)
    noisy = held_fidelity(held_runs(world, real, starts, actions, k=3), None, ())
    v = noisy.variables[PIXELS]
    assert v.pairs_scored == 24 and 0.25 <= v.sign_agreement <= 0.75, v
    t = targets(ControlFidelity([], noisy), "my-game")
    assert list(t) == ["pixels sign agreement"] and not t["pixels sign agreement"]["pass"]


def test_a_drift_shows_as_bias_not_in_the_pair_effects(cartpole) -> None:  # type: ignore[no-untyped-def]
    """A world whose cart sits 3 pixels right of the real one: signs and ratios exact, the bias positive."""
    wd, game, spec = cartpole
    real = RealSide(game)
    starts = collect_starts(game, 6, context=2, seed=0, prefix=(0, 6))
    cart = held_fidelity(
        held_runs(Shifted(real, 3), real, starts, probe_actions(spec), k=3), wd.state_reader, wd.state_names
    )
    v = cart.variables["cart_x"]
    assert v.sign_agreement == 1.0 and v.magnitude_ratio == pytest.approx(1.0, abs=0.05)
    assert all(b > 0.1 for b in v.bias_per_frame + v.bias_per_action), v  # 3 px = 0.225 env units
    assert all(b == pytest.approx(e) for b, e in zip(v.bias_per_frame, v.error_per_frame))


def test_world_side_batches_do_not_change_results(cartpole, tiny_world) -> None:  # type: ignore[no-untyped-def]
    _, game, spec = cartpole
    starts = collect_starts(game, 3, context=tiny_world.config.context_frames, seed=5)
    acts = np.random.default_rng(0).integers(0, 2, (3, 4))
    a = WorldSide(tiny_world, seed=2, batch=3).run(starts, acts)
    b = WorldSide(tiny_world, seed=2, batch=1).run(starts, acts)
    assert a.frames.shape == (3, 4, 64, 64, 3) and a.terminated.shape == (3, 4)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 2


def test_closed_loop_real_game_as_the_world_and_a_deaf_world(cartpole, tiny_world) -> None:  # type: ignore[no-untyped-def]
    from worldsim.eval.closed_loop import closed_loop_fidelity, real_closed_loop, world_closed_loop
    from worldsim.eval.fidelity import world_ends

    wd, game, _ = cartpole
    real = RealSide(game)
    resets = collect_starts(game, 4, context=2, seed=200, prefix=(0, 0))
    reader, done = wd.state_reader, wd.state_done
    balance, wrong = wd.controllers["balance"], wd.controllers["wrong-way"]
    # The real game against itself: equal lengths; the PD controller on read-off states balances,
    # the wrong-way one drops the pole within frames.
    up = real_closed_loop(real, resets, balance, reader, frames=40)
    again = closed_loop_fidelity(
        "balance", up, world_ends(real_closed_loop(real, resets, balance, reader, 40), None, None)[2]
    )
    assert again.real_full == 4 and again.world_full == 4 and again.length_ratio == 1.0
    down = real_closed_loop(real, resets, wrong, reader, frames=40)
    head, _, either = world_ends(down, None, None)
    fell = closed_loop_fidelity("wrong-way", down, either, head)
    assert fell.real_lengths == fell.world_lengths and max(fell.real_lengths) < 15
    assert fell.world_by_head == fell.episodes - fell.world_full == 4  # no bounds rule: every end is the head's
    # A "world" that ignores the controller (always pushes left) fails the balancing controller.
    deaf = real_closed_loop(real, resets, lambda s: np.zeros(len(s), np.int64), reader, frames=40)
    bad = closed_loop_fidelity("balance", up, world_ends(deaf, reader, done)[2])
    assert bad.world_full == 0 and bad.length_ratio < 0.3
    # A world model runs the same loop, batched, reproducibly from its seed; its ends come from the
    # termination head or the state read off its frames.
    a = world_closed_loop(tiny_world, resets, balance, reader, frames=5, seed=3)
    b = world_closed_loop(tiny_world, resets, balance, reader, frames=5, seed=3)
    assert a.frames.shape == (4, 5, 64, 64, 3) and np.array_equal(a.frames, b.frames)
    short = closed_loop_fidelity(
        "balance", Branches(up.frames[:, :5], up.terminated[:, :5]), world_ends(a, reader, done)[2]
    )
    assert short.episodes == 4 and short.frames == 5 and all(1 <= n <= 5 for n in short.world_lengths)


def test_end_timing_by_length_and_its_interval() -> None:
    real = np.array([2, 2, 5, 7, 7, 10, 20, 0])  # 0: the real episode did not end
    head = np.array([3, 0, 1, 9, 12, 10, 15, 4])
    rows = {b["real_length"]: b for b in timing_by_length(real, head)}
    assert list(rows) == ["1-3", "4-5", "6-8", "9-12", ">= 13"]  # the unended episode is in none
    assert rows["1-3"]["timed"] == 0.5 and rows["1-3"]["late_or_never"] == 0.5 and rows["1-3"]["mean_error"] == 1.0
    assert rows["4-5"]["early"] == 1.0 and rows["6-8"]["timed"] == 0.5 and rows["6-8"]["late_or_never"] == 0.5
    assert rows[">= 13"]["early"] == 1.0 and rows[">= 13"]["mean_error"] == -5.0
    lo, hi = wilson_interval(40, 50)
    assert 0.66 < lo < 0.68 and 0.88 < hi < 0.90  # 80% of 50 episodes: anything from 67% to 89%
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_rank_correlation_scores_order_not_bias() -> None:
    real = np.array([2, 3, 3, 5, 8, 13, 20])
    assert rank_correlation(real, real + 4) == pytest.approx(1.0)  # late by 4 frames, same order
    assert rank_correlation(real, -real) == pytest.approx(-1.0)
    pulled = np.array([4, 5, 5, 6, 6, 7, 7])  # every end pulled towards a typical time, order kept
    assert (rank_correlation(real, pulled) or 0.0) > 0.95
    shuffled = np.array([6, 7, 5, 7, 4, 6, 5])  # typical times in no relation to the real ones
    score = rank_correlation(real, shuffled)
    assert score is not None and abs(score) < 0.5
    assert rank_correlation(real, np.full(7, 5)) is None and rank_correlation(real[:2], real[:2]) is None
    with pytest.raises(ValueError):
        rank_correlation(real, real[:3])


def test_reader_resolution_is_twice_the_p95_error() -> None:
    """Twice the 95th percentile of |read - true| over the live frames; None without true states."""
    from worldsim.eval.control import Branches
    from worldsim.eval.fidelity import reader_resolution

    T = 100
    frames = np.zeros((1, T, 4, 4, 3), np.uint8)
    frames[0, :, 0, 0, 0] = np.arange(T)
    reader = lambda f: (f[:, 0, 0, :1] % 10).astype(np.float64) / 10  # noqa: E731  (error 0.0 .. 0.9)
    live = np.ones((1, T), bool)
    live[0, 50:] = False  # frames after the end are not scored
    res = reader_resolution(reader, Branches(frames, ~live, np.zeros((1, T, 1))), live)
    assert res is not None and res[0] == pytest.approx(2 * np.percentile(np.arange(50) % 10 / 10, 95))
    assert reader_resolution(reader, Branches(frames, ~live), live) is None
