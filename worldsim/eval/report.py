"""Per-horizon summaries, plots (matplotlib, Agg), a filmstrip, report.md and results.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.eval.metrics import end_precision_recall, frechet_distance, psnr, ssim
from worldsim.eval.rollout import Rollouts


def curve(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over valid episodes per horizon step; (H,) means and (H,) counts."""
    v = np.where(valid, values, np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(v, axis=0), valid.sum(0)


def summarize(
    r: Rollouts,
    reader: Any,
    state_names: tuple[str, ...],
    features: Any,
    horizons: list[int],
    buckets: list[tuple[int, int]],
) -> dict[str, Any]:
    E, H = r.valid.shape
    p = psnr(r.gen, r.real)
    s = ssim(r.gen, r.real)
    out: dict[str, Any] = {"curves": {}, "at": {}}
    pc, n = curve(p, r.valid)
    sc, _ = curve(s, r.valid)
    out["curves"]["psnr"], out["curves"]["ssim"], out["curves"]["n"] = pc.tolist(), sc.tolist(), n.tolist()
    if reader is not None:
        gs = reader(r.gen.reshape(-1, *r.gen.shape[2:])).reshape(E, H, -1)
        rs = reader(r.real.reshape(-1, *r.real.shape[2:])).reshape(E, H, -1)
        for c, name in enumerate(state_names):
            err = np.abs(gs[..., c] - rs[..., c])
            ok = r.valid & np.isfinite(err)
            out["curves"][f"{name}_err"] = curve(np.nan_to_num(err), ok)[0].tolist()
            miss = r.valid & ~np.isfinite(gs[..., c])
            out.setdefault("unreadable_share", {})[name] = float(miss.sum() / max(1, r.valid.sum()))
    for h in horizons:
        if h <= H:
            out["at"][h] = {k: (v[h - 1] if isinstance(v, list) else None) for k, v in out["curves"].items()}
    if features is not None:
        fd = {}
        for a, b in buckets:
            if a > H:
                continue
            m = r.valid[:, a - 1 : b]
            if m.sum() < 8:
                continue
            g = features(r.gen[:, a - 1 : b][m])
            rr = features(r.real[:, a - 1 : b][m])
            fd[f"{a}-{b}"] = frechet_distance(g, rr)
        out["fd_codec_latents"] = fd
    prec, rec = end_precision_recall(r.pred_term, r.real_term, r.valid)
    out["episode_end"] = {
        "precision": prec,
        "recall": rec,
        "real_ends": int((r.real_term & r.valid).sum()),
        "predicted_ends": int((r.pred_term & r.valid).sum()),
    }
    out["reward_mae"] = float(np.abs(r.pred_reward - r.real_reward)[r.valid].mean()) if r.valid.any() else math.nan
    return out


def plot(results: dict[str, dict[str, Any]], ref: dict[str, list[float]] | None, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in next(iter(results.values()))["curves"] if k != "n"]
    paths = []
    for key in keys:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, res in results.items():
            y = np.array(res["curves"][key], dtype=float)
            ax.plot(np.arange(1, len(y) + 1), y, label=name)
        if ref and key in ref:
            ax.plot(
                np.arange(1, len(ref[key]) + 1), 2 * np.array(ref[key]), "k--", label="2x real game's own divergence"
            )
        ax.set_xscale("log")
        ax.set_xlabel("frames after the context")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out_dir / f"{key}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def filmstrip(rollouts: dict[str, Rollouts], horizons: list[int], out_dir: Path, episode: int = 0) -> Path:
    """Rows: real, then each model; columns: frames 1, 10, 50, 200 (those within the horizon)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(rollouts.values()))
    hs = [h for h in horizons if h <= first.valid.shape[1]]
    rows = [("real", first.real)] + [(n, r.gen) for n, r in rollouts.items()]
    fig, axes = plt.subplots(len(rows), len(hs), figsize=(1.6 * len(hs), 1.7 * len(rows)), squeeze=False)
    for i, (name, frames) in enumerate(rows):
        for j, h in enumerate(hs):
            ax = axes[i][j]
            ax.imshow(frames[episode, h - 1], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"frame {h}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    p = out_dir / "filmstrip.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any], control: dict[str, Any], ref: Any) -> str:
    lines = [
        f"# worldsim eval: {meta['world']}",
        "",
        f"{meta['episodes']} held-out episodes ({meta['split']}), {meta['context']} real context frames, "
        f"then the real game's actions for up to {meta['horizon']} frames. Command: `{meta['command']}`",
        "",
    ]
    horizons = meta["horizons"]
    keys = [k for k in next(iter(results.values()))["curves"] if k != "n"]
    lines += [
        "| model | " + " | ".join(f"{k}@{h}" for k in keys for h in horizons) + " |",
        "|---|" + "---|" * (len(keys) * len(horizons)),
    ]
    for name, res in results.items():
        cells = [_fmt(res["at"].get(h, {}).get(k)) for k in keys for h in horizons]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n = next(iter(results.values()))["curves"]["n"]
    lines += [
        "",
        "Episodes still running at each horizon: " + ", ".join(f"{h}: {n[h - 1]}" for h in horizons if h <= len(n)),
        "",
    ]
    lines += [
        "| model | FD on codec latents (per bucket) | end precision | end recall | reward MAE |",
        "|---|---|---|---|---|",
    ]
    for name, res in results.items():
        fd = ", ".join(f"{b}: {v:.2f}" for b, v in res.get("fd_codec_latents", {}).items())
        ee = res["episode_end"]
        lines.append(f"| {name} | {fd} | {_fmt(ee['precision'])} | {_fmt(ee['recall'])} | {_fmt(res['reward_mae'])} |")
    lines += [
        "",
        "FD is a Fréchet distance on features of the first model's own codec encoder (2x2-pooled latents), not FID.",
        "",
    ]
    if control:
        lines += [
            f"## Control ({next(iter(control.values())).get('probes', 0)} probes, each action held "
            f"{next(iter(control.values())).get('k', 0)} frames)",
            "",
            "| model | component | sign agreement | correlation |",
            "|---|---|---|---|",
        ]
        for name, c in control.items():
            for comp, v in c.items():
                if isinstance(v, dict):
                    lines.append(f"| {name} | {comp} | {_fmt(v['sign_agreement'])} | {_fmt(v['correlation'])} |")
    if ref is not None:
        lines += [
            "",
            "Real game's own divergence (true state perturbed by 1e-4, same actions), read off pixels: "
            + ", ".join(f"{k}@{h}: {_fmt(v[h - 1])}" for k, v in ref.items() for h in horizons if h <= len(v)),
        ]
    lines += ["", "![psnr](psnr.png) ![ssim](ssim.png)", "", "![filmstrip](filmstrip.png)", ""]
    return "\n".join(lines)


def write_json(path: Path, obj: Any) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o))

    path.write_text(json.dumps(obj, indent=2, default=default))
