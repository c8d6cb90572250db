"""Control fidelity numbers from :mod:`worldsim.eval.control` runs (numpy only).

Held actions, per state variable (read off the frames with the world's state reader, the same
reader on both sides) and per frame 1..k after the branch point:

- the *effect* of a pair of actions (a, b) from a start: state after holding a minus state after
  holding b (every pair when there are at most :data:`MAX_PAIRS`, else each action against the
  first, the null action);
- **sign agreement**: share of (start, pair) whose world effect has the real effect's sign,
  leaving out real effects the reader cannot resolve (``|real| <= resolution``, below); a world
  effect of exactly 0 is a tie and counts 1/2, so a world that ignores its actions scores 0.5
  whether its branches differ by noise or not at all; the headline takes each (start, pair) at the
  last frame both real branches are still live. ``sign_agreement_all`` is the same over every pair
  with a nonzero real effect;
- **reader resolution**: when the real game reports its internal state (``WorldDef.true_state``),
  twice the 95th percentile of the reader's error against it on the real frames of this very run:
  an effect (a difference of two reads) smaller than that may have its sign from the reader's
  noise alone (Boxing: a punching arm moves a boxer's read centre by a unit or two). Without a
  true state the resolution is 0 and every nonzero real effect counts;
- **magnitude ratio**: median of |world effect| / |real effect| per frame, and pooled over frames
  1..min(6, k) (the headline), over the same resolvable real effects (a real effect within the
  reader's noise in the denominator would make any ratio);
- **error**: mean |world state - real state| per frame over (start, action);
- **bias**: the same signed, mean (world state - real state), per frame and per held action: a
  drift the pair effects cannot see (both actions' outcomes shifted the same way, as when the
  dreamed pole leans to one side), which an agent trained in the world learns to correct and
  then over-corrects in the real game.

Frames after the real game's end are not scored (the end frame itself is). A game without a state
reader is scored the same way on pixels: the branch-difference images, sign = the sign of their
cosine, magnitude = the ratio of their norms, error = mean |pixel difference| / 255.

Random actions from reset states: the episode length (frames after the context up to and including
the end frame) in both; the world ends where its termination head fires or, when the world has a
``state_done`` rule, where the state read off its frame crosses the game's bounds, whichever comes
first. Episodes that do not end within the run count as its length (censored, counted).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worldsim.eval.closed_loop import ClosedLoopFidelity
from worldsim.eval.control import Branches, HeldRuns, RandomRuns, first_true
from worldsim.eval.metrics import correlation

Reader = Callable[[np.ndarray], np.ndarray]
StateDone = Callable[[np.ndarray], np.ndarray]
MAX_PAIRS = 200
HEADLINE_FRAMES = 6
PIXELS = "pixels"


def _nan(f: Callable[..., Any], *a: Any, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return f(*a, **kw)


@dataclass
class VariableFidelity:
    """One state variable (or ``pixels``) under held actions."""

    name: str
    sign_agreement: float  # headline: at the last live frame of each (start, pair)
    magnitude_ratio: float  # headline: median over (start, pair, frame <= 6)
    pairs_scored: int
    sign_per_frame: list[float]
    ratio_per_frame: list[float]
    error_per_frame: list[float]
    real_effect_per_frame: list[float]  # median |real effect|, for scale
    bias_per_frame: list[float] = field(default_factory=list)  # mean (world - real) state; empty for pixels
    bias_per_action: list[float] = field(default_factory=list)  # the same per held action, over all frames
    resolution: float = 0.0  # real effects at most this large are not scored (see the module doc)
    sign_agreement_all: float = math.nan  # over every pair with a nonzero real effect
    pairs_all: int = 0


@dataclass
class HeldFidelity:
    """Every probe action held from every start state."""

    states: int
    actions: list[Any]
    pairs: list[tuple[int, int]]
    frames: int
    real_ended_early: int  # (start, action) branches where the real game ended before k frames
    variables: dict[str, VariableFidelity] = field(default_factory=dict)


@dataclass
class RandomFidelity:
    """Random action sequences from reset states."""

    episodes: int
    frames: int
    real_lengths: list[int]
    world_lengths: list[int]
    world_head_ends: list[int]  # 1-based frame of the head's first end, 0 if none
    world_state_ends: list[int]  # 1-based frame the read state crossed the bounds, 0 if none / no rule
    real_ended: int  # episodes the real game ended within the run
    world_ended: int
    median_real: float
    median_world: float
    termination_within_2: float  # share of real ends with the head's first end within 2 frames
    end_within_2: float  # the same for the world's end (head or state bounds)
    reader_end_within_2: float | None  # the state_done rule on the real frames vs the real end (a check)
    termination_interval: tuple[float, float] | None = None  # 95% Wilson interval of termination_within_2
    timing_by_length: list[dict[str, Any]] = field(default_factory=list)  # :func:`timing_by_length`
    # Spearman correlation of the head's end (never: after the run) with the real end, over the
    # episodes the real game ended: does the world's fall time follow the start state and the
    # actions, or a typical time? (None with fewer than 3 real ends or constant ends)
    end_rank_correlation: float | None = None


@dataclass
class ControlFidelity:
    """Everything control fidelity measured for one world."""

    state_names: list[str]
    held: HeldFidelity | None = None
    random: RandomFidelity | None = None
    closed_loop: dict[str, ClosedLoopFidelity] = field(default_factory=dict)
    """Per controller of the world (``WorldDef.controllers``), see :mod:`worldsim.eval.closed_loop`."""
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def headline(self) -> dict[str, Any]:
        """The compact headline: each target's value, bound and pass/fail."""
        return {k: dict(v) for k, v in self.targets.items()}


# ---------------------------------------------------------------------------- held actions
def action_pairs(n: int) -> list[tuple[int, int]]:
    """Every pair (a, b), a < b, when there are at most MAX_PAIRS; else each action against action 0."""
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    return pairs if len(pairs) <= MAX_PAIRS else [(a, 0) for a in range(1, n)]


def live_mask(real: Branches) -> np.ndarray:
    """(B, T) bool: the real frame is live (the end frame included, what follows it not)."""
    t = real.terminated
    return ~np.concatenate([np.zeros((len(t), 1), bool), t[:, :-1]], axis=1)


def _read(reader: Reader, frames: np.ndarray) -> np.ndarray:
    B, T = frames.shape[:2]
    return np.asarray(reader(frames.reshape(-1, *frames.shape[2:])), np.float64).reshape(B, T, -1)


def _score(
    name: str, w_eff: np.ndarray, r_eff: np.ndarray, live: np.ndarray, err: np.ndarray, eps: float
) -> VariableFidelity:
    """Effects (N, P, k) world / real (NaN where not live), live (N, P, k), error (k,)."""
    k = r_eff.shape[-1]
    ok = live & np.isfinite(w_eff) & np.isfinite(r_eff) & (np.abs(r_eff) > eps)
    same = np.where(w_eff == 0, 0.5, (np.sign(w_eff) == np.sign(r_eff)).astype(np.float64))  # no response: a tie
    sign_f = [float(same[..., t][ok[..., t]].mean()) if ok[..., t].any() else math.nan for t in range(k)]
    ratio = np.where(ok, np.abs(w_eff) / np.where(ok, np.abs(r_eff), 1.0), np.nan)
    ratio_f = [float(_nan(np.nanmedian, ratio[..., t])) if ok[..., t].any() else math.nan for t in range(k)]
    last = np.clip(live.sum(-1) - 1, 0, k - 1)  # the last live frame of each (start, pair)
    take = lambda x: np.take_along_axis(x, last[..., None], -1)[..., 0]  # noqa: E731
    ok_last = take(ok) & (live.sum(-1) > 0)
    h = min(HEADLINE_FRAMES, k)
    pooled = ratio[..., :h][ok[..., :h]]
    return VariableFidelity(
        name,
        float(take(same)[ok_last].mean()) if ok_last.any() else math.nan,
        float(np.median(pooled)) if pooled.size else math.nan,
        int(ok_last.sum()),
        sign_f,
        ratio_f,
        [float(e) for e in err],
        [float(_nan(np.nanmedian, np.where(ok[..., t], np.abs(r_eff[..., t]), np.nan))) for t in range(k)],
    )


def _pair_effects(x: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """(N, A, k, ...) -> (N, P, k, ...): x[:, a] - x[:, b] per pair."""
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    return x[:, a] - x[:, b]


def reader_resolution(reader: Reader, real: Branches, live: np.ndarray) -> np.ndarray | None:
    """(K,) twice the 95th percentile of |read - true state| over the live real frames, per
    variable; None when the real side has no true states."""
    if real.states is None:
        return None
    err = np.abs(_read(reader, real.frames) - real.states)[live]  # (M, K)
    return np.asarray(2 * _nan(np.nanpercentile, err, 95, axis=0), np.float64)


def held_fidelity(runs: HeldRuns, reader: Reader | None, state_names: Sequence[str], eps: float = 1e-6) -> HeldFidelity:
    """Sign agreement, magnitude ratio and error per variable and frame (see the module doc)."""
    N, A = runs.shape
    k = runs.real.frames.shape[1]
    pairs = action_pairs(A)
    live = live_mask(runs.real).reshape(N, A, k)
    ia, ib = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    plive = live[:, ia] & live[:, ib]  # (N, P, k)
    out = HeldFidelity(N, [np.asarray(a).tolist() for a in runs.actions], list(pairs), k, int((~live[..., -1]).sum()))
    if reader is not None:
        rs, ws = _read(reader, runs.real.frames), _read(reader, runs.world.frames)  # (N*A, k, S)
        rs, ws = rs.reshape(N, A, k, -1), ws.reshape(N, A, k, -1)
        res = reader_resolution(reader, runs.real, live.reshape(N * A, k))
        for c, name in enumerate(state_names):
            err = _nan(np.nanmean, np.where(live, np.abs(ws[..., c] - rs[..., c]), np.nan), axis=(0, 1))
            w_eff, r_eff = _pair_effects(ws[..., c], pairs), _pair_effects(rs[..., c], pairs)
            resolution = float(res[c]) if res is not None and np.isfinite(res[c]) else 0.0
            v = _score(name, w_eff, r_eff, plive, err, max(eps, resolution))
            every = _score(name, w_eff, r_eff, plive, err, eps)
            v.resolution, v.sign_agreement_all, v.pairs_all = resolution, every.sign_agreement, every.pairs_scored
            diff = np.where(live, ws[..., c] - rs[..., c], np.nan)  # (N, A, k)
            v.bias_per_frame = [float(x) for x in _nan(np.nanmean, diff, axis=(0, 1))]
            v.bias_per_action = [float(x) for x in _nan(np.nanmean, diff, axis=(0, 2))]
            out.variables[name] = v
    out.variables[PIXELS] = _pixel_fidelity(runs, pairs, live, plive)
    return out


def _pixel_fidelity(
    runs: HeldRuns, pairs: Sequence[tuple[int, int]], live: np.ndarray, plive: np.ndarray
) -> VariableFidelity:
    """Branch-difference images: cosine (as a signed 'effect' of magnitude 1) and norm ratio."""
    N, A = runs.shape
    k = runs.real.frames.shape[1]
    rf = runs.real.frames.reshape(N, A, k, -1)
    wf = runs.world.frames.reshape(N, A, k, -1)
    P = len(pairs)
    cos, nr, nw = np.full((N, P, k), np.nan), np.zeros((N, P, k)), np.zeros((N, P, k))
    for p, (a, b) in enumerate(pairs):
        dr = rf[:, a].astype(np.float32) - rf[:, b].astype(np.float32)
        dw = wf[:, a].astype(np.float32) - wf[:, b].astype(np.float32)
        nr[:, p], nw[:, p] = np.linalg.norm(dr, axis=-1), np.linalg.norm(dw, axis=-1)
        dot = (dr * dw).sum(-1)
        cos[:, p] = np.where((nr[:, p] > 0) & (nw[:, p] > 0), dot / np.maximum(nr[:, p] * nw[:, p], 1e-12), 0.0)
    err = np.abs(wf.astype(np.float32) - rf.astype(np.float32)).mean(-1) / 255.0  # (N, A, k)
    err_f = _nan(np.nanmean, np.where(live, err, np.nan), axis=(0, 1))
    # sign(cos) as the world's effect, +1 as the real one; magnitudes carried by the norms.
    w_eff = np.where(nr > 0, np.sign(cos) * np.where(nw > 0, nw, 1e-30), np.nan)
    r_eff = np.where(nr > 0, nr, 0.0)
    return _score(PIXELS, w_eff, r_eff, plive, err_f, 0.0)


# ---------------------------------------------------------------------------- random actions
def _within(a: np.ndarray, real: np.ndarray, mask: np.ndarray, tol: int = 2) -> float:
    ok = mask & (a > 0)
    return float((np.abs(a - real) <= tol)[ok].sum() / mask.sum()) if mask.any() else math.nan


def world_ends(
    world: Branches, reader: Reader | None, state_done: StateDone | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M,) 1-based first frames (0 = none) where the world's episode ends: by its termination head,
    by the state read off its frames crossing the game's bounds (0s without a rule), and either."""
    M, T = world.terminated.shape
    head_end = first_true(world.terminated)
    state_end = np.zeros(M, np.int64)
    if reader is not None and state_done is not None:
        ws = _read(reader, world.frames)
        state_end = first_true(np.asarray(state_done(ws.reshape(M * T, -1)), bool).reshape(M, T))
    ends = np.stack([head_end, state_end])
    return head_end, state_end, np.where((ends > 0).any(0), np.where(ends > 0, ends, T + 1).min(0), 0)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a share ``k / n``: how far another start set may move it."""
    if n <= 0:
        raise ValueError("an interval needs n >= 1")
    p, d = k / n, 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    centre = (p + z * z / (2 * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


LENGTH_BUCKETS: tuple[tuple[int, int | None], ...] = ((1, 3), (4, 5), (6, 8), (9, 12), (13, None))
"""Real episode lengths (frames after the start) that :func:`timing_by_length` groups by."""


def timing_by_length(real_end: np.ndarray, head_end: np.ndarray, tol: int = 2) -> list[dict[str, Any]]:
    """Where the end-timing misses are: per bucket of real episode length (real ends only), the
    episodes, the share the head times within ``tol`` frames, the shares it ends early / late or
    never, and its mean error (head - real, over the episodes where it fired)."""
    out = []
    for lo, hi in LENGTH_BUCKETS:
        m = (real_end >= lo) & (real_end <= (hi if hi is not None else real_end.max(initial=0)))
        n = int(m.sum())
        if not n:
            continue
        fired, err = m & (head_end > 0), head_end - real_end
        out.append(
            {
                "real_length": f"{lo}-{hi}" if hi is not None else f">= {lo}",
                "episodes": n,
                "timed": float((fired & (np.abs(err) <= tol)).sum() / n),
                "early": float((fired & (err < -tol)).sum() / n),
                "late_or_never": float(((m & (head_end == 0)) | (fired & (err > tol))).sum() / n),
                "mean_error": float(err[fired].mean()) if fired.any() else math.nan,
            }
        )
    return out


def rank_correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None for fewer than 3 pairs or a
    constant side. 1: the world orders episodes by length exactly as the real game does, whatever
    its bias; a world that ends every episode at one typical time scores ~0."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"rank_correlation needs two 1-d arrays of one length, got {x.shape} and {y.shape}")

    def ranks(v: np.ndarray) -> np.ndarray:
        _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return (first + (counts - 1) / 2)[inverse]  # average rank of each tie group (0-based)

    r = correlation(ranks(x), ranks(y)) if len(x) else math.nan  # Pearson on the ranks; NaN: < 3 or constant
    return None if math.isnan(r) else r


def random_fidelity(
    runs: RandomRuns, reader: Reader | None, state_done: StateDone | None, tol: int = 2
) -> RandomFidelity:
    """Episode lengths and end timing under random actions (see the module doc)."""
    M, T = runs.actions.shape[:2]
    real_end = first_true(runs.real.terminated)
    head_end, state_end, world_end = world_ends(runs.world, reader, state_done)
    reader_end: np.ndarray | None = None
    if reader is not None and state_done is not None:
        rs = _read(reader, runs.real.frames)
        reader_end = first_true(np.asarray(state_done(rs.reshape(M * T, -1)), bool).reshape(M, T))
    real_len, world_len = np.where(real_end > 0, real_end, T), np.where(world_end > 0, world_end, T)
    ended = real_end > 0
    timed = int((ended & (head_end > 0) & (np.abs(head_end - real_end) <= tol)).sum())
    return RandomFidelity(
        M,
        T,
        real_len.tolist(),
        world_len.tolist(),
        head_end.tolist(),
        state_end.tolist(),
        int(ended.sum()),
        int((world_end > 0).sum()),
        float(np.median(real_len)) if M else math.nan,
        float(np.median(world_len)) if M else math.nan,
        _within(head_end, real_end, ended, tol),
        _within(world_end, real_end, ended, tol),
        None if reader_end is None else _within(reader_end, real_end, ended, tol),
        wilson_interval(timed, int(ended.sum())) if ended.any() else None,
        timing_by_length(real_end, head_end, tol),
        rank_correlation(real_end[ended], np.where(head_end > 0, head_end, T + 1)[ended]),
    )


# ---------------------------------------------------------------------------- targets
SIGN_TARGETS = {"cartpole": ("cart_x", "pole_angle"), "boxing": ("player_x", "player_y")}
"""Variables whose sign agreement has a target (issue 13); other worlds: every variable (or pixels)."""
RATIO_TARGETS = {"cartpole": ("cart_x", "pole_angle")}


def _target(value: float, lo: float | None, hi: float | None, what: str) -> dict[str, Any]:
    ok = math.isfinite(value) and (lo is None or value >= lo) and (hi is None or value <= hi)
    bound = f">= {lo:g}" if hi is None else f"<= {hi:g}" if lo is None else f"in {lo:g}-{hi:g}"
    return {"value": value, "target": bound, "pass": bool(ok), "what": what}


def targets(fid: ControlFidelity, world: str, min_episodes: int = 50) -> dict[str, dict[str, Any]]:
    """The issue-13 targets, each with its value and pass/fail."""
    out: dict[str, dict[str, Any]] = {}
    if fid.held is not None:
        var = fid.held.variables
        names = SIGN_TARGETS.get(world) or tuple(fid.state_names) or (PIXELS,)
        for n in names:
            if n in var:
                out[f"{n} sign agreement"] = _target(var[n].sign_agreement, 0.95, None, "held actions, last live frame")
        for n in RATIO_TARGETS.get(world, ()):
            if n in var:
                out[f"{n} magnitude ratio"] = _target(
                    var[n].magnitude_ratio, 0.7, 1.3, f"median over frames 1-{min(HEADLINE_FRAMES, fid.held.frames)}"
                )
    r = fid.random
    if r is not None:
        gap = abs(r.median_world - r.median_real)
        enough = r.episodes >= min_episodes
        t = _target(gap, None, 2.0, f"|median world - median real| episode length, {r.episodes} episodes")
        t["pass"] = t["pass"] and enough
        if not enough:
            t["what"] += f" (needs >= {min_episodes})"
        out["random episode length"] = t
        out["termination within 2 frames"] = _target(r.termination_within_2, 0.8, None, "share of real ends")
    return out
