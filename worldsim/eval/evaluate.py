"""``evaluate(config, worlds, episodes) -> EvalResult``: world models against the real game.

Parts (each skipped when not asked or not possible, with a note in the result):

1. rollouts on held-out recorded episodes (fidelity, state error, FD, ends, rewards) and the
   codec's reconstruction floor (:mod:`worldsim.eval.rollout`, :mod:`worldsim.eval.stats`);
2. control probes on states of those episodes (:mod:`worldsim.eval.probes`);
3. the real game's own divergence (:mod:`worldsim.eval.divergence`);
4. control fidelity from real states the game is stepped to (:mod:`worldsim.eval.control`,
   :mod:`worldsim.eval.fidelity`): needs only the real game, no recording.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from worldsim.engine.sampler import SamplerConfig
from worldsim.engine.world import WorldModel
from worldsim.eval import stats
from worldsim.eval.closed_loop import ClosedLoopFidelity, closed_loop_fidelity, real_closed_loop, world_closed_loop
from worldsim.eval.control import (
    RealSide,
    WorldSide,
    collect_starts,
    held_runs,
    probe_actions,
    random_play_starts,
    random_runs,
)
from worldsim.eval.episodes import EvalEpisode, max_horizon, reference, repeat
from worldsim.eval.fidelity import ControlFidelity, held_fidelity, random_fidelity, targets, world_ends
from worldsim.eval.results import ControlProbes, EpisodeSet, EvalConfig, EvalResult, ModelInfo
from worldsim.eval.rollout import Generated, rollout
from worldsim.real import GameSpec, RealGame
from worldsim.spaces import ActionSpec

log = logging.getLogger(__name__)


@dataclass
class HeldOut:
    """Held-out recorded episodes and where they came from."""

    episodes: list[EvalEpisode]
    spec: ActionSpec
    manifest: dict[str, Any]
    data: str = ""
    split: str = "test"


@dataclass
class Game:
    """What is known about the real game: how to make it and how to read its state."""

    spec: GameSpec
    reader: Callable[[np.ndarray], np.ndarray] | None = None
    state_names: tuple[str, ...] = ()
    true_state: Callable[[Any], np.ndarray] | None = None
    state_done: Callable[[np.ndarray], np.ndarray] | None = None
    controllers: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)

    @classmethod
    def from_world(cls, world_def: Any) -> Game:
        """From a bundled ``WorldDef``."""
        wd = world_def
        return cls(
            GameSpec.from_world(wd), wd.state_reader, tuple(wd.state_names), wd.true_state, wd.state_done,
            dict(wd.controllers),
        )  # fmt: skip


def codec_fingerprint(world: Any) -> str:
    h = hashlib.sha1()
    for k, v in sorted(world.codec.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def model_info(world: WorldModel, checkpoint: str) -> ModelInfo:
    c = world.config
    return ModelInfo(
        checkpoint,
        c.context_frames,
        len(c.sampler.timesteps),
        float(c.sampler.guidance_scale),
        c.cache.window,
        c.cache.sink,
        codec_fingerprint(world),
        [k for k in world.provenance if isinstance(world.provenance.get(k), dict)],
        sampler_changes(c.sampler),
    )


def sampler_changes(sampler: SamplerConfig) -> list[str]:
    """``FIELD=VALUE`` for each sampler field (but the steps and the guidance scale, which the
    report names anyway) that is not the default: how the world samples, in the report."""
    default = SamplerConfig()
    return [
        f"{f.name}={getattr(sampler, f.name)!r}"
        for f in dataclasses.fields(sampler)
        if f.name not in ("timesteps", "guidance_scale") and getattr(sampler, f.name) != getattr(default, f.name)
    ]


@contextmanager
def _timed(ev: EvalResult, label: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    ev.timings[label] = round(time.perf_counter() - t0, 1)


def _bar(total: int, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None)


def evaluate(
    config: EvalConfig,
    worlds: dict[str, WorldModel],
    episodes: HeldOut | None = None,
    game: Game | None = None,
    checkpoints: dict[str, str] | None = None,
) -> EvalResult:
    """Every asked part of the evaluation (see the module doc). ``game``: the real game and its
    state reader (default: made from the episodes' manifest, without a reader)."""
    t_start = time.time()
    if game is None:
        if episodes is None:
            raise ValueError("evaluate needs held-out episodes or the real game (a bundled world) to compare with")
        game = Game(GameSpec.from_manifest(episodes.manifest))
    spec = next(iter(worlds.values())).action_spec
    for n, w in worlds.items():
        if w.action_spec != spec or (episodes is not None and episodes.spec != spec):
            raise ValueError(f"{n}: the checkpoint's actions ({w.action_spec}) are not the data's / other worlds'")
    ev = EvalResult(
        config,
        list(game.state_names),
        {n: model_info(w, (checkpoints or {}).get(n, n)) for n, w in worlds.items()},
    )
    real = RealGame(game.spec, spec, game.true_state)
    try:
        if config.rollouts and episodes is not None:
            _rollouts(ev, worlds, episodes, game)
            if game.reader is not None and config.control:
                _probes(ev, worlds, episodes, game, real)
            if game.reader is not None and config.divergence and real.can_perturb:
                _divergence(ev, episodes, game, real)
        elif config.rollouts:
            ev.notes.append("no recorded episodes: rollouts, control probes and divergence were skipped")
        if (
            config.control_states > 0
            or config.random_episodes > 0
            or (config.closed_loop_episodes > 0 and game.controllers)
        ):
            _fidelity(ev, worlds, game, real)
    finally:
        real.close()
    ev.seconds = round(time.time() - t_start, 1)
    return ev


def _clip_horizon(ev: EvalResult, eps: list[EvalEpisode], start: int) -> int:
    c = ev.config
    H = min(c.horizon, max_horizon(eps, start))
    if H < c.horizon:
        ev.notes.append(
            f"horizon clipped to {H} frames: the longest episode has {H + start} frames, {start} of them context"
        )
    dropped = [h for h in c.horizons if H < h <= c.horizon]
    if dropped:
        ev.notes.append(f"horizons {', '.join(map(str, dropped))} are beyond the {H} frames the episodes allow")
    ev.horizons = [h for h in c.horizons if h <= H] or [H]
    return H


def _rollouts(ev: EvalResult, worlds: dict[str, WorldModel], held: HeldOut, game: Game) -> None:
    c = ev.config
    start = max(w.config.context_frames for w in worlds.values())
    eps = [e for e in held.episodes if len(e) > start]
    if not eps:
        raise ValueError(f"no episode of {held.data} is longer than the {start} context frames")
    splits = ", ".join(f"{s}: {sum(e.split == s for e in eps)}" for s in dict.fromkeys(e.split for e in eps))
    ev.episodes = EpisodeSet(held.data, held.split, splits, [e.episode_id for e in eps], [len(e) for e in eps])
    held.episodes = eps
    H = _clip_horizon(ev, eps, start)
    ev.start, ev.horizon = start, H
    one = reference(eps, start, H, c.tol)
    ev.n_per_horizon = one.valid.sum(0)
    S = len(game.state_names)
    read = (lambda f, m: _read(game.reader, f, m, S)) if game.reader is not None else (lambda f, m: None)
    one_state = read(one.frames, one.valid)
    # Each episode c.noise_draws times: rollout() gives row j noise seed c.seed + j (EvalConfig.noise_draws);
    # the real side is read once and repeated.
    ref = repeat(one, c.noise_draws)
    real_state = None if one_state is None else np.concatenate([one_state] * c.noise_draws)
    ev.filmstrip_frames = [h for h in ev.horizons if h <= int(ref.valid[0].sum())] or [1]
    ev.filmstrip_real = ref.frames[0, [h - 1 for h in ev.filmstrip_frames]]
    buckets = stats.buckets_for(ev.horizons, H)
    with _bar(len(worlds) * len(eps) * c.noise_draws * H, "eval rollouts", "frame") as bar:
        for n, w in worlds.items():
            with _timed(ev, f"rollout+summary {n}"):
                gen = rollout(w, eps * c.noise_draws, H, start, c.seed, c.batch, c.tol, progress=bar)
                ev.scores[n] = stats.summarize(
                    ref, gen, real_state, read(gen.frames, ref.valid), ev.state_names,
                    codec_features(w), ev.horizons, buckets, c.tol,
                )  # fmt: skip
                ev.filmstrips[n] = gen.frames[0, [h - 1 for h in ev.filmstrip_frames]].copy()
    by_codec: dict[str, str] = {}
    for n in worlds:
        by_codec.setdefault(ev.models[n].codec_fingerprint, n)
    for n in by_codec.values():
        label = "codec reconstruction" if len(by_codec) == 1 else f"codec reconstruction ({n})"
        rec = Generated(reconstruct(worlds[n], one.frames, one.valid), one.rewards, one.terminated, one.valid)
        ev.floors[label] = stats.summarize(
            one, rec, one_state, read(rec.frames, one.valid), ev.state_names, None, ev.horizons, buckets, c.tol
        )


def _probes(ev: EvalResult, worlds: dict[str, WorldModel], held: HeldOut, game: Game, real: RealGame) -> None:
    from worldsim.eval.probes import at_frames, control_probe, pick_probes, real_control

    c, eps, reader = ev.config, held.episodes, game.reader
    assert reader is not None
    probes = pick_probes(eps, ev.start - 1, c.control_k, c.probes, seed=c.seed)
    actions = probe_actions(held.spec, c.control_actions, seed=c.seed)
    if not probes:
        ev.notes.append(f"no episode is long enough for control probes of {c.control_k} frames")
        return
    with _timed(ev, "control: real game"), _bar(len(probes), "control: real game", "state") as bar:
        real_d, held_n, checks = real_control(real, eps, probes, actions, reader, c.control_k, progress=bar)
    if checks["replay_ok"] < len(probes):
        log.warning("the real game reproduced only %d/%d recorded states on replay", checks["replay_ok"], len(probes))
    ev.probes = ControlProbes(probes, actions, real_d, held_n, {}, checks)
    jobs = len(probes) * len(actions) * len(worlds)
    with _timed(ev, "control: models"), _bar(jobs, "control: models", "probe") as bar:
        for n, w in worlds.items():
            every = control_probe(w, eps, probes, actions, reader, c.control_k, c.seed, 4 * c.batch, bar)
            ev.probes.models[n] = d = at_frames(every, held_n)
            ev.scores[n].control = stats.control_summary(d, real_d, ev.state_names)


def _divergence(ev: EvalResult, held: HeldOut, game: Game, real: RealGame) -> None:
    from worldsim.eval.divergence import real_divergence

    c = ev.config
    with _timed(ev, "real game's divergence"), _bar(len(held.episodes), "real game's own divergence", "ep") as bar:
        div = real_divergence(real, held.episodes, ev.start, ev.horizon, game.reader, c.perturb, c.seed, bar)
    if div is None:
        return
    # The pixel-read divergence stays 0 until the difference moves a pixel: the target compares
    # with the true-state divergence when the game exposes its state.
    div["target_source"] = "true" if div["true"] is not None else "read"
    ref_curve = div[div["target_source"]]
    for s in ev.scores.values():
        s.target = {
            comp: stats.target_check(np.asarray(s.curves[f"{comp}_err"], float), ref_curve[:, i], div["n"])
            for i, comp in enumerate(ev.state_names)
        }
    ev.divergence = div


def _fidelity(ev: EvalResult, worlds: dict[str, WorldModel], game: Game, real: RealGame) -> None:
    """Control fidelity of every world against the real game, from the same start states."""
    c = ev.config
    K = max(w.config.context_frames for w in worlds.values())
    spec = next(iter(worlds.values())).action_spec
    actions = probe_actions(spec, c.control_actions, seed=c.seed)
    real_side = RealSide(real)
    with _timed(ev, "control fidelity: start states"):
        starts = collect_starts(real, c.control_states, K, seed=c.seed + 1) if c.control_states > 0 else []
        resets = random_play_starts(real, c.random_episodes, K, seed=c.seed)
        n_loop = c.closed_loop_episodes if game.controllers else 0
        loop_starts = collect_starts(real, n_loop, K, seed=c.seed + 70_000, prefix=(0, 0)) if n_loop else []
    if not game.reader:
        ev.notes.append("the world has no state reader: control fidelity is measured on pixels")
    world_name = ev.config.world
    for n, w in worlds.items():
        fid = ControlFidelity(list(game.state_names))
        rows = len(starts) * len(actions) + len(resets)
        with _timed(ev, f"control fidelity {n}"), _bar(rows, f"control fidelity {n}", "row") as bar:
            side = WorldSide(w, seed=c.seed, batch=max(64, 8 * c.batch), progress=bar)
            if starts:
                runs = held_runs(side, real_side, starts, actions, c.control_frames)
                fid.held = held_fidelity(runs, game.reader, game.state_names)
            if resets:
                rr = random_runs(side, real_side, resets, spec, c.random_frames, seed=c.seed)
                fid.random = random_fidelity(rr, game.reader, game.state_done, c.tol)
        if loop_starts and game.reader is not None:
            with _timed(ev, f"closed loop {n}"):
                fid.closed_loop = _closed_loop(w, real_side, loop_starts, game, c)
        fid.targets = targets(fid, world_name)
        fid.seconds = {"total": ev.timings[f"control fidelity {n}"]}
        ev.fidelity[n] = fid


def _closed_loop(
    w: WorldModel, real_side: RealSide, starts: list[Any], game: Game, c: EvalConfig
) -> dict[str, ClosedLoopFidelity]:
    """Every controller of the game, closed loop in the real game and in world ``w`` from the same resets."""
    assert game.reader is not None
    out = {}
    for name, ctl in game.controllers.items():
        with _bar(2 * len(starts), f"closed loop {name}", "episode") as bar:
            real_b = real_closed_loop(real_side, starts, ctl, game.reader, c.closed_loop_frames)
            bar.update(len(starts))
            world_b = world_closed_loop(w, starts, ctl, game.reader, c.closed_loop_frames, seed=c.seed)
            bar.update(len(starts))
        head, _, either = world_ends(world_b, game.reader, game.state_done)
        out[name] = closed_loop_fidelity(name, real_b, either, head)
        log.info(
            "closed loop %s: median episode length real %.0f, world %.0f",
            name,
            out[name].median_real,
            out[name].median_world,
        )
    return out


# ---------------------------------------------------------------------------- helpers on frames
def codec_features(world: Any, chunk: int = 256) -> Any:
    """frames (N, 64, 64, 3) uint8 -> (N, C*4): the checkpoint's own codec latents, mean-pooled to 2x2."""

    def f(frames: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(frames), chunk):
                x = torch.from_numpy(np.ascontiguousarray(frames[i : i + chunk])).to(world.device)
                z = torch.nn.functional.adaptive_avg_pool2d(world.codec.encode(x).float(), 2)
                out.append(z.flatten(1).cpu().numpy().astype(np.float64))
        return np.concatenate(out)

    return f


def reconstruct(world: Any, frames: np.ndarray, mask: np.ndarray, chunk: int = 256) -> np.ndarray:
    """The masked frames of (E, H, 64, 64, 3) through the checkpoint's codec (encode, decode); zeros elsewhere."""
    out = np.zeros_like(frames)
    sel = frames[mask]
    rec = []
    with torch.inference_mode():
        for i in range(0, len(sel), chunk):
            x = torch.from_numpy(np.ascontiguousarray(sel[i : i + chunk])).to(world.device)
            rec.append(world.codec.decode(world.codec.encode(x)).cpu().numpy())
    if rec:
        out[mask] = np.concatenate(rec)
    return out


def _read(reader: Any, frames: np.ndarray, mask: np.ndarray, n_state: int) -> np.ndarray:
    """reader over the masked frames of (E, H, ...) -> (E, H, S), NaN elsewhere."""
    out = np.full((*mask.shape, n_state), np.nan)
    if mask.any():
        out[mask] = reader(frames[mask])
    return out
