"""Exploration mixing and the data diagnostic (action predictability, state coverage)."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from worldsim.data.diagnostic import DiagnosticConfig, coverage, diagnose
from worldsim.data.episodes import Episode
from worldsim.data.policies import Exploration, PolicyError, explore
from worldsim.data.record import RecordConfig, open_game, record, record_episode
from worldsim.spaces import ActionSpec


# ---------------------------------------------------------------------------- exploration
def _rollout(plan: dict, seed: int, steps: int = 200, hold: float = 1.0) -> list[int]:
    space = gym.spaces.Discrete(3)
    policy = explore(lambda env, frame: 2, space, np.random.default_rng(seed), plan, hold)
    return [int(policy(None, None)) for _ in range(steps)]


def test_exploration_is_reproducible_from_the_seed() -> None:
    plan = {"epsilon": 0.4, "branch_at": None}
    assert _rollout(plan, 7, hold=3.0) == _rollout(plan, 7, hold=3.0)
    assert _rollout(plan, 7, hold=3.0) != _rollout(plan, 8, hold=3.0)
    x = Exploration(epsilon_range=(0.1, 0.9), branch=0.5)
    assert x.plan(np.random.default_rng(3)) == x.plan(np.random.default_rng(3))


def test_exploration_shares_and_full_random_play() -> None:
    none = _rollout({"epsilon": 0.0, "branch_at": None}, 0)
    assert set(none) == {2}  # the policy alone
    full = _rollout({"epsilon": 1.0, "branch_at": None}, 0, steps=3000)
    counts = np.bincount(full, minlength=3) / len(full)
    assert np.all(np.abs(counts - 1 / 3) < 0.04)  # uniform: the policy's action 2 is no likelier
    half = _rollout({"epsilon": 0.5, "branch_at": None}, 0, steps=3000)
    # explored frames play a uniform action (2 with prob 1/3): P(not 2) = 0.5 * 2/3
    assert abs(np.mean(np.array(half) != 2) - 1 / 3) < 0.04
    branched = _rollout({"epsilon": 0.0, "branch_at": 50}, 0, steps=400)
    assert set(branched[:50]) == {2} and len(set(branched[50:])) == 3


def test_exploration_checks_its_config() -> None:
    with pytest.raises(PolicyError, match="epsilon_range"):
        Exploration(epsilon_range=(0.5, 0.2))
    with pytest.raises(PolicyError, match="hold"):
        Exploration(hold=0.5)


def test_recording_with_exploration_is_reproducible(tmp_path: Path) -> None:
    cfg = RecordConfig(
        env_id="CartPole-v1", out=tmp_path / "a", episodes=4, policies=(("scripted", 1.0),), max_steps=40,
        frameskip=2, explore=Exploration(epsilon_range=(1.0, 1.0)),
    )  # fmt: skip
    manifest = record(cfg, progress=False)
    assert manifest["explore"]["epsilon_range"] == [1.0, 1.0]
    assert manifest["shards"][0]["explore"][0]["epsilon"] == 1.0
    game = open_game(cfg)
    spec = ActionSpec.from_space(game.env.action_space)
    a, b = (record_episode(game, cfg, 1, spec) for _ in range(2))
    game.close()
    assert np.array_equal(a.actions, b.actions) and np.array_equal(a.frames, b.frames)


def test_free_actions_are_recorded_and_stored(tmp_path: Path) -> None:
    """Episode.free marks the actions chosen without looking at the game: every one at epsilon 1
    and under random play, none of a scripted bot's without exploration, the explored share
    otherwise; shards keep it; a branching episode is free from its branch point on."""
    from worldsim.data import load_episodes

    def rec(name: str, policy: str, explore: Exploration) -> list[Episode]:
        cfg = RecordConfig(
            env_id="CartPole-v1", out=tmp_path / name, episodes=3, policies=((policy, 1.0),), max_steps=60,
            frameskip=2, explore=explore,
        )  # fmt: skip
        record(cfg, progress=False)
        return load_episodes(tmp_path / name, split=None)

    assert all(e.free is not None and e.free.all() for e in rec("all", "scripted", Exploration(epsilon_range=(1, 1))))
    assert all(e.free is not None and e.free.all() for e in rec("random", "random", Exploration()))
    assert all(e.free is not None and not e.free.any() for e in rec("bot", "scripted", Exploration()))
    some = rec("some", "scripted", Exploration(epsilon_range=(0.5, 0.5)))
    share = np.concatenate([e.free for e in some if e.free is not None]).mean()
    assert 0.25 < share < 0.75
    for e in rec("branch", "scripted", Exploration(branch=1.0, branch_after=(5, 5))):
        assert e.free is not None and not e.free[:5].any() and e.free[5:].all()


# ---------------------------------------------------------------------------- the diagnostic
def _dot_episodes(deterministic: bool, n: int = 24, steps: int = 60, seed: int = 0) -> list[Episode]:
    """A dot drifting on a white frame; the action is a function of where it is (or random)."""
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        x = rng.uniform(8, 56)
        frames, actions = [], []
        for _ in range(steps + 1):
            f = np.full((64, 64, 3), 255, np.uint8)
            f[28:36, int(x) - 3 : int(x) + 3] = 0
            frames.append(f)
            a = int(x < 32) if deterministic else int(rng.integers(2))
            actions.append(a)
            x = float(np.clip(x + (2.0 if a else -2.0) + rng.normal(0, 1.0), 4, 60))
        eps.append(
            Episode(
                frames=np.stack(frames),
                actions=np.array(actions[:-1], np.int64),
                rewards=np.zeros(steps, np.float32),
                terminated=np.zeros(steps, bool),
                truncated=np.zeros(steps, bool),
                seed=i,
                episode_id=i,
                free=np.full(steps, not deterministic),
            )  # fmt: skip
        )
    return eps


SPEC = ActionSpec(kind="discrete", n=2)
FAST = DiagnosticConfig(max_samples=1200, steps=150, batch=64)


def test_diagnostic_flags_a_deterministic_policy_and_passes_random_play() -> None:
    det = diagnose(_dot_episodes(True), SPEC, cfg=FAST)
    rnd = diagnose(_dot_episodes(False), SPEC, cfg=FAST)
    assert det.predictability > 0.8 and det.warning is not None and "--explore" in det.warning
    assert rnd.predictability < 0.3 and rnd.warning is None
    assert rnd.accuracy is not None and rnd.baseline is not None and abs(rnd.accuracy - rnd.baseline) < 0.15
    assert det.free_share == 0.0 and rnd.free_share == 1.0 and "free actions" in rnd.summary()
    assert "policy_actions=null" in det.warning


def test_diagnostic_predictable_policy_with_enough_free_actions_does_not_warn() -> None:
    """With the default teacher.policy_actions=null the free actions teach the controls: a predictable
    policy is harmless once at least MIN_FREE_SHARE of the actions are free."""
    from worldsim.data.diagnostic import MIN_FREE_SHARE

    eps = _dot_episodes(True)
    for e in eps:  # a quarter of each episode marked free (exploration), the rest the policy's
        e.free = np.arange(len(e.actions)) % 4 == 0
    d = diagnose(eps, SPEC, cfg=FAST)
    assert d.predictability > 0.8 and d.free_share is not None and d.free_share >= MIN_FREE_SHARE
    assert d.warning is None and "harmless" in d.summary()


def test_diagnostic_box_actions() -> None:
    eps = _dot_episodes(True)
    for e in eps:  # a Box(1) action: the dot's position, known from the frame
        x = np.array([np.argmin(f[32, :, 0]) for f in e.frames[:-1]], np.float32)
        e.actions = ((x - 32) / 32).reshape(-1, 1)
    spec = ActionSpec(kind="box", n=1, shape=(1,), low=(-1.0,), high=(1.0,))
    d = diagnose(eps, spec, cfg=FAST)
    assert d.r2 is not None and d.r2 > 0.6 and d.warning is not None


def test_coverage_counts_bins_of_the_declared_range() -> None:
    states = np.stack([np.linspace(-1, 1, 1000), np.zeros(1000)], 1)
    c = coverage(states, ("a", "b"), {"a": (-1.0, 1.0), "b": (-1.0, 1.0)})
    assert c["a"]["bins_covered"] == 1.0 and c["b"]["bins_covered"] == 0.1


def test_observed_policy_acts_on_the_recorded_frames_only(tmp_path: Path) -> None:
    """The ``observed`` policy is the world's controller on the state read off the frames: the same
    frames give the same action whatever the game's hidden state, and it balances the real pole."""
    from worldsim.data import load_episodes, preprocess
    from worldsim.data.policies import make_policy
    from worldsim.worlds import get_world

    wd = get_world("cartpole")
    env = wd.make_env()
    with pytest.raises(PolicyError, match="controller"):
        make_policy("observed", env, np.random.default_rng(0), world=None)
    env.reset(seed=0)
    first = preprocess(env.render(), wd.crop)
    a = make_policy("observed", env, np.random.default_rng(0), world=wd)
    b = make_policy("observed", env, np.random.default_rng(1), world=wd)
    env.unwrapped.state = np.array([0.0, 5.0, 0.0, -5.0])  # hidden velocities the frame does not show
    assert a(env, first) == b(env, first)  # a function of the frames, not of the generator or the internals
    cfg = RecordConfig(env_id="CartPole-v1", out=tmp_path / "obs", episodes=2, policies=(("observed", 1.0),),
                       max_steps=100, frameskip=2, crop=wd.crop, world=wd)  # fmt: skip
    record(cfg, progress=False)
    assert [len(e.actions) for e in load_episodes(tmp_path / "obs", split=None)] == [100, 100]  # balanced
