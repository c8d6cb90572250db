"""The real game's own divergence: its sensitivity to a tiny perturbation of its state, the floor
a world's state error is compared with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from worldsim.eval.episodes import EvalEpisode
from worldsim.eval.probes import replay
from worldsim.real import RealGame
from worldsim.real import frames_match as _frames_match

Reader = Callable[[np.ndarray], np.ndarray]


def _replay_copy(game: RealGame, ep: EvalEpisode, start: int, horizon: int) -> tuple[list[np.ndarray], list[Any], int]:
    """Play ``ep``'s recorded actions from frame ``start`` on the game as it stands, for up to
    ``horizon`` frames or the episode's end: its frames, true states, and how many frames equal
    the recording's."""
    frames: list[np.ndarray] = []
    trues: list[Any] = []
    ok = 0
    for j in range(start, min(start + horizon, len(ep))):
        _, term, trunc = game.step(ep.actions[j])
        f = game.frame()
        frames.append(f)
        trues.append(game.true_state())
        ok += int(_frames_match(f, ep.frames[j]))
        if term or trunc:
            break
    return frames, trues, ok


def real_divergence(
    game: RealGame,
    episodes: Sequence[EvalEpisode],
    start: int,
    horizon: int,
    reader: Reader | None,
    eps: float = 1e-4,
    seed: int = 0,
    progress: Any = None,
) -> dict[str, Any] | None:
    """The real game against itself: at the last context frame (``start - 1``) its true state is
    perturbed by ``eps`` (a random sign per component), then both copies get the same recorded
    actions. Per horizon: mean |difference| of the pixel-read state (what model errors are
    measured with) and of the true state, plus the reader's own error on the real frames
    (|read - true|, its noise floor) and how many frames the replay reproduced exactly.
    None for games whose state cannot be perturbed (only classic-control ``state`` vectors)."""
    if not game.can_perturb or reader is None:
        return None
    rng = np.random.default_rng(seed)
    S = None
    read_d, true_d, read_err = [], [], []
    frames_checked = frames_ok = 0
    for ep in episodes:
        if ep.seed is None or not replay(game, ep, start - 1):
            continue
        snap = game.snapshot()
        assert snap is not None  # can_perturb: a state vector
        delta = eps * rng.choice([-1.0, 1.0], size=np.shape(snap.state))
        runs = []
        for perturb in (False, True):
            game.restore(snap)
            if perturb:
                game.perturb(delta)
            frames, trues, ok = _replay_copy(game, ep, start, horizon)
            if not perturb:
                frames_checked += len(frames)
                frames_ok += ok
            runs.append((frames, trues))
        n = min(len(runs[0][0]), len(runs[1][0]))
        if n == 0:
            continue
        ra, rb = reader(np.stack(runs[0][0][:n])), reader(np.stack(runs[1][0][:n]))
        S = ra.shape[1]
        d = np.full((horizon, S), np.nan)
        d[:n] = np.abs(ra - rb)
        read_d.append(d)
        if runs[0][1][0] is not None:
            ta, tb = np.stack(runs[0][1][:n]), np.stack(runs[1][1][:n])
            dt = np.full((horizon, S), np.nan)
            dt[:n] = np.abs(ta - tb)
            true_d.append(dt)
            read_err.append(np.abs(ra - ta))
        if progress is not None:
            progress.update(1)
    if S is None:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out: dict[str, Any] = {
            "eps": eps,
            "episodes": len(read_d),
            "read": np.nanmean(np.stack(read_d), 0),  # (H, S)
            "n": np.isfinite(np.stack(read_d)[..., 0]).sum(0),
            "true": np.nanmean(np.stack(true_d), 0) if true_d else None,
            "reader_error": np.nanmean(np.concatenate(read_err), 0) if read_err else None,  # (S,)
            "replay_frames_checked": frames_checked,
            "replay_frames_ok": frames_ok,
        }
    return out
