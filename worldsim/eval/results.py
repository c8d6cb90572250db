"""What an evaluation is asked (:class:`EvalConfig`) and what it found (:class:`EvalResult`), as
typed dataclasses; ``results.json`` is :meth:`EvalResult.to_json`."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.eval.fidelity import ControlFidelity


@dataclass
class EvalConfig:
    """The settings of one ``worldsim eval`` run (the CLI flags)."""

    world: str
    horizon: int = 200
    horizons: tuple[int, ...] = (1, 10, 50, 200, 1000)
    batch: int = 16
    seed: int = 0
    tol: int = 2
    rollouts: bool = True
    """Roll the worlds out on held-out episodes (needs recorded data)."""
    control_k: int = 5
    probes: int = 4
    control_actions: int = 4
    control: bool = True
    """Control probes on states of the recorded episodes."""
    divergence: bool = True
    perturb: float = 1e-4
    control_states: int = 32
    """Control fidelity: real start states (0: skip the held-action part)."""
    control_frames: int = 6
    random_episodes: int = 50
    """Control fidelity: random-action episodes from reset states (0: skip)."""
    random_frames: int = 60
    closed_loop_episodes: int = 16
    """Closed-loop control fidelity: episodes per controller of the world, from reset states (0: skip)."""
    closed_loop_frames: int = 250
    command: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    noise_draws: int = 1
    """Rollouts of each held-out episode, each with its own noise (episode ``i``'s draw ``k`` gets
    noise seed ``seed + i + k x episodes``, so draw ``k`` is the rollout a run with ``--seed seed +
    k x episodes`` makes); the prediction numbers average over episodes and draws. One draw's PSNR
    @10 on the bundled CartPole moves by ~2 dB with the seed alone."""


@dataclass
class ModelInfo:
    checkpoint: str
    context_frames: int
    sampler_steps: int
    guidance_scale: float
    cache_window: int
    cache_sink: int
    codec_fingerprint: str
    stages: list[str]
    sampler_changes: list[str] = field(default_factory=list)
    """The sampler's other fields that differ from :class:`SamplerConfig`'s defaults, ``FIELD=VALUE``."""


@dataclass
class EpisodeSet:
    """The held-out episodes the rollouts ran on."""

    data: str
    split: str
    splits: str
    ids: list[int]
    lengths: list[int]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ModelScores:
    """One model's rollout numbers (per-horizon curves, at the asked horizons, per bucket)."""

    curves: dict[str, np.ndarray]
    at: dict[str, dict[str, float]]
    buckets: dict[str, dict[str, float]]
    fd_codec_latents: dict[str, float] = field(default_factory=dict)
    episode_end: dict[str, float] = field(default_factory=dict)
    reward_mae: float = math.nan
    rollout_seconds: float = 0.0
    frames_per_second: float = math.nan
    control: dict[str, Any] | None = None
    """Control probes on recorded states (see :func:`worldsim.eval.stats.control_summary`)."""
    target: dict[str, dict[str, Any]] | None = None
    """State error against the real game's own divergence, per component."""


@dataclass
class ControlProbes:
    """The raw control probes on recorded states."""

    probes: list[tuple[int, int]]
    actions: np.ndarray
    real: np.ndarray  # (P, A, S)
    frames_held: np.ndarray  # (P, A)
    models: dict[str, np.ndarray]  # (P, A, S) per model
    checks: dict[str, int]


@dataclass
class EvalResult:
    """Everything one evaluation measured."""

    config: EvalConfig
    state_names: list[str]
    models: dict[str, ModelInfo]
    episodes: EpisodeSet | None = None
    start: int = 0
    horizon: int = 0
    horizons: list[int] = field(default_factory=list)
    n_per_horizon: np.ndarray | None = None
    scores: dict[str, ModelScores] = field(default_factory=dict)
    floors: dict[str, ModelScores] = field(default_factory=dict)
    probes: ControlProbes | None = None
    divergence: dict[str, Any] | None = None
    fidelity: dict[str, ControlFidelity] = field(default_factory=dict)
    filmstrip_frames: list[int] = field(default_factory=list)
    filmstrip_real: np.ndarray | None = None
    filmstrips: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    """What the reader of the report must know (clipped horizons, skipped parts)."""

    def headline(self) -> dict[str, dict[str, Any]]:
        """Control-fidelity targets per model: {model: {target: {value, target, pass, what}}}."""
        return {n: f.headline() for n, f in self.fidelity.items()}

    def to_json(self) -> dict[str, Any]:
        e = self.episodes
        meta = {
            "world": self.config.world,
            "command": self.config.command,
            "config": dataclasses.asdict(self.config),
            "data": e.data if e else None,
            "split": e.split if e else None,
            "episodes": len(e) if e else 0,
            "episode_ids": e.ids if e else [],
            "episode_lengths": e.lengths if e else [],
            "start": self.start,
            "horizon": self.horizon,
            "horizons": self.horizons,
            "state_names": self.state_names,
            "models": {n: dataclasses.asdict(m) for n, m in self.models.items()},
            "timings_s": self.timings,
            "seconds": self.seconds,
            "notes": self.notes,
        }
        p = self.probes
        return {
            "meta": meta,
            "n_per_horizon": self.n_per_horizon,
            "models": {n: _drop_none(dataclasses.asdict(s)) for n, s in self.scores.items()},
            "codec_reconstruction": {
                n: {k: getattr(s, k) for k in ("curves", "at", "buckets")} for n, s in self.floors.items()
            },
            "real_divergence": self.divergence,
            "control_real_checks": p.checks if p else None,
            "control_raw": None
            if p is None
            else {
                "probes": p.probes,
                "actions": p.actions,
                "real": p.real,
                "frames_held": p.frames_held,
                "models": p.models,
            },
            "control_fidelity": {n: dataclasses.asdict(f) for n, f in self.fidelity.items()},
            "control_fidelity_headline": self.headline(),
        }


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def jsonable(obj: Any) -> Any:
    """numpy -> lists/floats, non-finite floats -> None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(jsonable(obj), indent=1))
