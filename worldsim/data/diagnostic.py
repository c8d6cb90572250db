"""Data diagnostic: can a world learn what the actions do from this recording?

A world learns an action's effect only from frames where the action is not already given
away by the picture. If a recording's actions are (nearly) a function of the frames before
them, as they are for a deterministic controller, predicting the next frame never needs the
action input, and the trained world follows the controller and ignores the player. So:

- **action predictability**: a small CNN is trained to predict action ``a_t`` from frames
  ``t-1`` and ``t`` (what the policy saw) on 80% of the episodes and scored on the other 20%;
  where the world has a state reader, an MLP does the same from the state read off those two
  frames (a controller's decision can hang on a pixel of pole tilt that a small CNN trained for
  seconds misses), and the headline is the higher of the two.
  Discrete / MultiDiscrete / MultiBinary: held-out accuracy against the majority-action
  baseline, as ``predictability = (acc - base) / (1 - base)`` (0: no better than always guessing
  the commonest action; 1: the frames give every action away). Box: held-out R^2 against the
  mean action (clipped to [0, 1]). Averaged over action dimensions.
- **state coverage** (worlds with a state reader): quantiles of each state variable over the
  recorded frames, and the share of the variable's range (``WorldDef.state_ranges`` where
  declared, else the observed 1-99% range) that 10 equal bins cover with at least 0.5% of frames.

``worldsim record`` runs it at the end and stores the result in the manifest
(``manifest["diagnostic"]``); ``worldsim data-check DIR`` runs it on an existing folder.
It warns, with the fix, when predictability is above :data:`WARN_PREDICTABILITY` and fewer than
:data:`MIN_FREE_SHARE` of the actions are free (a recording without free marks counts as none free).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.data.episodes import Episode, load_episodes, read_manifest, write_manifest
from worldsim.spaces import ActionSpec

log = logging.getLogger(__name__)

WARN_PREDICTABILITY = 0.5
"""Above this the recording's actions are nearly determined by its frames: a warning names the fix."""

MIN_FREE_SHARE = 0.1
"""Below this share of free actions (``Episode.free``) a recording teaches little of what the actions
do under ``teacher.policy_actions=null`` (the default); at or above it, predictable policy actions
are harmless (the teacher conditions on the free ones only), so predictability alone does not warn."""


@dataclass
class DiagnosticConfig:
    """How hard the diagnostic looks (defaults: ~20-40 s on a 2-core CPU for ~40k frames)."""

    max_samples: int = 10000
    """Frames (with their previous frame and action) sampled from the recording."""
    steps: int = 400
    """Classifier optimiser steps."""
    batch: int = 128
    holdout: float = 0.2
    """Share of episodes held out for scoring."""
    seed: int = 0


@dataclass
class Diagnostic:
    """What :func:`diagnose` measured."""

    frames: int
    samples: int
    predictability: float
    """0 = actions independent of the frames, 1 = fully determined by them."""
    accuracy: float | None = None
    """Held-out accuracy (non-Box spaces), mean over action dimensions."""
    baseline: float | None = None
    """Majority-action accuracy on the same held-out frames."""
    r2: float | None = None
    """Held-out R^2 (Box spaces)."""
    pixel_predictability: float | None = None
    """What a small CNN on the two frames finds."""
    state_predictability: float | None = None
    """What an MLP on the state read off the two frames finds (worlds with a state reader)."""
    coverage: dict[str, dict[str, float]] = field(default_factory=dict)
    free_share: float | None = None
    """Share of the actions chosen without looking at the game (``Episode.free``; None: not
    recorded): the ones ``teacher.policy_actions=null`` learns action effects from."""
    warning: str | None = None

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def summary(self) -> str:
        head = f"action predictability {self.predictability:.2f} (0 = independent of the frames, 1 = determined)"
        if self.accuracy is not None:
            head += f": held-out accuracy {self.accuracy:.3f} vs majority {self.baseline:.3f}"
        if self.r2 is not None:
            head += f": held-out R^2 {self.r2:.3f}"
        lines = [head + f" on {self.samples} of {self.frames} frames"]
        if self.state_predictability is not None:
            lines.append(
                f"  from pixels (CNN) {self.pixel_predictability:.2f}, "
                f"from the state read off the frames (MLP) {self.state_predictability:.2f}"
            )
        if self.free_share is not None:
            lines.append(
                f"  free actions (chosen without looking at the game: random play, exploration): {self.free_share:.0%}"
            )
            if self.predictability > WARN_PREDICTABILITY and self.free_share >= MIN_FREE_SHARE:
                lines.append(
                    "  the policy's own actions are predictable, which is harmless with the default "
                    "teacher.policy_actions=null: the world learns what actions do from the free ones"
                )
        for name, c in self.coverage.items():
            lines.append(
                f"  {name}: 1/50/99% = {c['q01']:.3g} / {c['q50']:.3g} / {c['q99']:.3g}, "
                f"{c['bins_covered']:.0%} of [{c['range_low']:.3g}, {c['range_high']:.3g}] covered"
            )
        if self.warning:
            lines.append("WARNING: " + self.warning)
        return "\n".join(lines)


def _samples(eps: list[Episode], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(episode index, step t >= 1) pairs, uniform over all steps, at most ``n``."""
    pairs = [(i, t) for i, e in enumerate(eps) for t in range(1, len(e))]
    if len(pairs) > n:
        pairs = [pairs[j] for j in np.sort(rng.choice(len(pairs), n, replace=False))]
    return pairs


def _inputs(eps: list[Episode], pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([np.concatenate([eps[i].frames[t - 1], eps[i].frames[t]], -1) for i, t in pairs])  # (N, 64, 64, 6)
    y = np.stack([eps[i].actions[t] for i, t in pairs])
    return x, y


def _targets(spec: ActionSpec, y: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Per-dimension class indices (N, D) and class counts, or (N, D) floats for Box (counts = [])."""
    if spec.kind == "box":
        return y.reshape(len(y), -1).astype(np.float32), []
    if spec.kind == "discrete":
        return (y.reshape(-1, 1) - spec.start).astype(np.int64), [spec.n]
    if spec.kind == "multi_discrete":
        return y.astype(np.int64), list(spec.nvec)
    return y.reshape(len(y), -1).astype(np.int64), [2] * spec.n


def _cnn(out: int) -> Any:
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(6, 16, 5, stride=2, padding=2), nn.GELU(),  # (N, 16, 32, 32)
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GELU(),  # (N, 32, 16, 16)
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.GELU(),  # (N, 32, 8, 8)
        nn.Flatten(), nn.Linear(32 * 64, 128), nn.GELU(), nn.Linear(128, out),
    )  # fmt: skip


def _mlp(inp: int, out: int) -> Any:
    import torch.nn as nn

    return nn.Sequential(nn.Linear(inp, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, out))


def _pixels(x: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (N, 6, 64, 64)


def _fit_and_score(
    spec: ActionSpec, x_tr: Any, y_tr: np.ndarray, x_te: Any, y_te: np.ndarray, cfg: DiagnosticConfig, net: Any
) -> dict[str, float]:
    """Train ``net`` to predict the actions from inputs ``x`` (tensors) and score it on the held-out part."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    t_tr, counts = _targets(spec, y_tr)
    t_te, _ = _targets(spec, y_te)
    box = spec.kind == "box"
    if box:
        mu, sd = t_tr.mean(0), t_tr.std(0) + 1e-6
        t_tr, t_te = (t_tr - mu) / sd, (t_te - mu) / sd
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = np.random.default_rng(cfg.seed)

    def loss_of(out: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        if box:
            return F.mse_loss(out, tgt)
        parts, o = [], 0
        for d, k in enumerate(counts):
            parts.append(F.cross_entropy(out[:, o : o + k], tgt[:, d]))
            o += k
        return torch.stack(parts).mean()

    net.train()
    for _ in range(cfg.steps):
        idx = torch.from_numpy(gen.integers(0, len(x_tr), min(cfg.batch, len(x_tr))))
        loss = loss_of(net(x_tr[idx]), torch.from_numpy(t_tr[idx.numpy()]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        out = torch.cat([net(x_te[i : i + 512]) for i in range(0, len(x_te), 512)]).numpy()
    if box:
        r2 = 1.0 - ((out - t_te) ** 2).sum(0) / np.maximum(((t_te - t_te.mean(0)) ** 2).sum(0), 1e-9)
        r2m = float(np.clip(r2, 0.0, 1.0).mean())
        return {"r2": r2m, "predictability": r2m}
    accs, bases, o = [], [], 0
    for d, k in enumerate(counts):
        pred = out[:, o : o + k].argmax(1)
        o += k
        accs.append(float((pred == t_te[:, d]).mean()))
        majority = np.bincount(t_tr[:, d], minlength=k).argmax()
        bases.append(float((t_te[:, d] == majority).mean()))
    acc, base = float(np.mean(accs)), float(np.mean(bases))
    pred_score = float(np.clip((acc - base) / max(1.0 - base, 1e-9), 0.0, 1.0))
    return {"accuracy": acc, "baseline": base, "predictability": pred_score}


def _width(spec: ActionSpec) -> int:
    """Outputs of a predictor: logits per class of every dimension, or one value per Box dimension."""
    if spec.kind == "multi_discrete":
        return int(sum(spec.nvec))
    return 2 * spec.n if spec.kind == "multi_binary" else spec.n


def _state_inputs(reader: Any, x: np.ndarray) -> Any:
    """[s_t, s_t - s_(t-1)] read off both frames of each sample, standardised: (N, 2K)."""
    import torch

    prev = np.asarray(reader(np.ascontiguousarray(x[..., :3])), np.float64)
    cur = np.asarray(reader(np.ascontiguousarray(x[..., 3:])), np.float64)
    f = np.nan_to_num(np.concatenate([cur, cur - prev], 1))
    return torch.from_numpy(f).float()


def coverage(
    states: np.ndarray, names: tuple[str, ...], ranges: dict[str, tuple[float, float]] | None = None
) -> dict[str, dict[str, float]]:
    """Quantiles of each state variable (``states`` (N, K)) and the share of its range 10 bins cover."""
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        v = states[:, k][np.isfinite(states[:, k])]
        if len(v) == 0:
            continue
        q = np.quantile(v, [0.01, 0.05, 0.5, 0.95, 0.99])
        lo, hi = (ranges or {}).get(name, (float(q[0]), float(q[4])))
        hist, _ = np.histogram(np.clip(v, lo, hi), bins=10, range=(lo, hi if hi > lo else lo + 1e-6))
        covered = float((hist >= 0.005 * len(v)).mean())
        out[name] = {
            "q01": float(q[0]), "q05": float(q[1]), "q50": float(q[2]), "q95": float(q[3]), "q99": float(q[4]),
            "range_low": float(lo), "range_high": float(hi), "bins_covered": covered,
        }  # fmt: skip
    return out


def diagnose(
    eps: list[Episode], spec: ActionSpec, world: Any = None, cfg: DiagnosticConfig | None = None
) -> Diagnostic:
    """Measure how predictable ``eps``' actions are from their frames (and, with a ``world`` that
    has a state reader, its state coverage)."""
    cfg = cfg or DiagnosticConfig()
    rng = np.random.default_rng(cfg.seed)
    eps = [e for e in eps if len(e) >= 2]
    if len(eps) < 2:
        raise ValueError("the diagnostic needs at least two episodes of two or more steps: record more episodes")
    order = rng.permutation(len(eps))
    n_te = max(1, int(round(cfg.holdout * len(eps))))
    test, train = [eps[i] for i in order[:n_te]], [eps[i] for i in order[n_te:]]
    p_tr = _samples(train, int(cfg.max_samples * (1 - cfg.holdout)), rng)
    p_te = _samples(test, int(cfg.max_samples * cfg.holdout), rng)
    x_tr, y_tr = _inputs(train, p_tr)
    x_te, y_te = _inputs(test, p_te)
    out = _width(spec)
    scores = _fit_and_score(spec, _pixels(x_tr), y_tr, _pixels(x_te), y_te, cfg, _cnn(out))
    diag = Diagnostic(
        frames=sum(len(e) + 1 for e in eps),
        samples=len(p_tr) + len(p_te),
        predictability=scores["predictability"],
        accuracy=scores.get("accuracy"),
        baseline=scores.get("baseline"),
        r2=scores.get("r2"),
        pixel_predictability=scores["predictability"],
    )
    if all(e.free is not None for e in eps):
        diag.free_share = float(np.mean(np.concatenate([np.asarray(e.free, bool) for e in eps])))
    reader = getattr(world, "state_reader", None)
    if reader is not None:
        s_tr, s_te = _state_inputs(reader, x_tr), _state_inputs(reader, x_te)
        mu, sd = s_tr.mean(0), s_tr.std(0) + 1e-6
        st = _fit_and_score(spec, (s_tr - mu) / sd, y_tr, (s_te - mu) / sd, y_te, cfg, _mlp(s_tr.shape[1], out))
        diag.state_predictability = st["predictability"]
        if st["predictability"] > diag.predictability:  # the headline is what the better of the two finds
            diag.predictability, diag.accuracy, diag.r2 = st["predictability"], st.get("accuracy"), st.get("r2")
        frames = np.concatenate([x_tr[:, :, :, 3:], x_te[:, :, :, 3:]])
        states = np.asarray(reader(frames), dtype=np.float64)
        diag.coverage = coverage(states, tuple(world.state_names), getattr(world, "state_ranges", None))
    if diag.predictability > WARN_PREDICTABILITY and (diag.free_share or 0.0) < MIN_FREE_SHARE:
        diag.warning = (
            f"the recorded actions are nearly determined by the frames (predictability {diag.predictability:.2f} > "
            f"{WARN_PREDICTABILITY}): a world trained on this learns the policy, not what the actions do. "
            "Mix in state-independent exploration: `worldsim record ... --explore 0,0.5 --branch 0.5` "
            "(or an `Exploration` in the recipe), or add random / sticky episodes: with the default "
            "`teacher.policy_actions=null` only those teach the world what the actions do."
        )
    return diag


def check_folder(
    folder: Path, world: Any = None, cfg: DiagnosticConfig | None = None, store: bool = True
) -> Diagnostic:
    """Run :func:`diagnose` on a recorded data folder (all splits) and store it in its manifest."""
    from worldsim.data.episodes import action_spec

    manifest = read_manifest(folder)
    if world is None and manifest.get("world"):
        from worldsim.worlds import get_world

        try:
            world = get_world(manifest["world"])
        except KeyError:
            world = None
    diag = diagnose(load_episodes(folder, split=None), action_spec(folder), world, cfg)
    if store:
        write_manifest(folder, {**read_manifest(folder), "diagnostic": diag.to_json()})
    return diag


# ---------------------------------------------------------------------------- CLI: worldsim data-check
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="a recorded data folder (holds manifest.json)")
    parser.add_argument(
        "--world", default=None, help="bundled world whose state reader to use (default: the recording's)"
    )
    parser.add_argument("--samples", type=int, default=DiagnosticConfig.max_samples, help="frames sampled")
    parser.add_argument("--no-store", action="store_true", help="do not write the result into the manifest")
    parser.add_argument("--json", action="store_true", help="print JSON")


def main(args: argparse.Namespace) -> int:
    world = None
    if args.world:
        from worldsim.worlds import get_world

        world = get_world(args.world)
    try:
        diag = check_folder(args.data, world, DiagnosticConfig(max_samples=args.samples), store=not args.no_store)
    except (FileNotFoundError, ValueError) as e:
        print(f"worldsim data-check: {e}", file=sys.stderr)
        return 2
    print(json.dumps(diag.to_json(), indent=2) if args.json else diag.summary())
    return 0
