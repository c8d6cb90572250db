"""Plots of an evaluation (matplotlib, Agg backend; the only module that imports matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.eval.fidelity import ControlFidelity
from worldsim.eval.results import ModelScores

LABELS = {"psnr": "PSNR (dB), higher is better", "ssim": "SSIM (luma), higher is better"}


def _label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    if key.endswith("_err"):
        return f"{key[:-4]} abs error (read off pixels)"
    if key.endswith("_unreadable"):
        return f"share of frames where {key[:-11]} cannot be read"
    return key


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    results: dict[str, ModelScores],
    divergence: dict[str, Any] | None,
    state_names: Sequence[str],
    out_dir: Path,
    floors: dict[str, ModelScores] | None = None,
) -> list[Path]:
    """One PNG per metric against horizon (one line per model), and ``drift.png`` with them all;
    ``floors`` (codec reconstructions of the real frames) in grey."""
    plt = _plt()
    keys = list(next(iter(results.values())).curves)
    paths = []

    def draw(ax: Any, key: str) -> None:
        for name, res in results.items():
            y = np.asarray(res.curves[key], float)
            ax.plot(np.arange(1, len(y) + 1), y, label=name, lw=1.2)
        for name, res in (floors or {}).items():
            y = np.asarray(res.curves[key], float)
            ax.plot(np.arange(1, len(y) + 1), y, color="grey", ls="-.", lw=0.8, label=name)
        if divergence is not None and key.endswith("_err") and key[:-4] in state_names:
            c = list(state_names).index(key[:-4])
            src = divergence.get("target_source", "read")
            d = np.asarray(divergence[src], float)[:, c]
            label = "2x real game's own divergence" + (" (true state)" if src == "true" else " (read off pixels)")
            ax.plot(np.arange(1, len(d) + 1), 2 * d, "k--", lw=1, label=label)
            floor = divergence.get("reader_error")
            if floor is not None:
                ax.axhline(float(floor[c]), color="grey", ls=":", lw=1, label="reader error on real frames")
        ax.set_xscale("log")
        ax.set_xlabel("frames after the context")
        ax.set_ylabel(_label(key), fontsize=8)
        ax.grid(alpha=0.3)

    for key in keys:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        draw(ax, key)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / f"{key}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    main_keys = [k for k in keys if not k.endswith("_unreadable")]
    cols = min(2, len(main_keys))
    rows = math.ceil(len(main_keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, main_keys):
        draw(ax, key)
    for ax in list(axes.flat)[len(main_keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("drift: error against horizon, one line per model", fontsize=10)
    fig.tight_layout()
    p = out_dir / "drift.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p, *paths]


def plot_control(deltas: dict[str, np.ndarray], real: np.ndarray, state_names: Sequence[str], out_dir: Path) -> Path:
    """Scatter of model vs real state change per component (one colour per model)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(state_names), figsize=(4 * len(state_names), 3.8), squeeze=False)
    for c, (ax, name) in enumerate(zip(axes[0], state_names)):
        r = real[..., c].reshape(-1)
        for model, d in deltas.items():
            ax.scatter(r, d[..., c].reshape(-1), s=8, alpha=0.6, label=model)
        lim = np.nanmax(np.abs(r)) if np.isfinite(r).any() else 1.0
        ax.plot([-lim, lim], [-lim, lim], "k:", lw=1)
        ax.set_xlabel(f"real change of {name}")
        ax.set_ylabel(f"model change of {name}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    p = out_dir / "control.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def filmstrip(real: np.ndarray, generated: dict[str, np.ndarray], frames: Sequence[int], out_dir: Path) -> Path:
    """Rows: the real game, then each model; columns: horizons ``frames`` (1-based).
    ``real`` / each generated: (len(frames), 64, 64, 3) uint8."""
    plt = _plt()
    rows = [("real game", real)] + list(generated.items())
    fig, axes = plt.subplots(len(rows), len(frames), figsize=(1.7 * len(frames), 1.8 * len(rows)), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j, h in enumerate(frames):
            ax = axes[i][j]
            ax.imshow(imgs[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"frame {h}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    p = out_dir / "filmstrip.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def plot_fidelity(name: str, fid: ControlFidelity, out_dir: Path) -> Path:
    """Control fidelity of one model: sign agreement and magnitude ratio per frame (one line per
    variable), and the episode lengths under random actions (world against real)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if fid.held is not None:
        frames = np.arange(1, fid.held.frames + 1)
        for v in fid.held.variables.values():
            axes[0].plot(frames, v.sign_per_frame, marker="o", label=v.name)
            axes[1].plot(frames, v.ratio_per_frame, marker="o", label=v.name)
        axes[0].axhline(0.95, color="k", ls=":", lw=1, label="target 0.95")
        axes[0].axhline(0.5, color="grey", ls="--", lw=0.8, label="chance")
        axes[1].axhspan(0.7, 1.3, color="green", alpha=0.1, label="target 0.7-1.3")
        axes[0].set_ylim(0, 1.05)
        for ax, lab in ((axes[0], "sign agreement of action effects"), (axes[1], "median |world| / |real| effect")):
            ax.set_xlabel("frames the action is held")
            ax.set_ylabel(lab, fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    r = fid.random
    if r is not None and r.episodes:
        top = max(max(r.real_lengths), max(r.world_lengths))
        bins = np.arange(0.5, top + 1.5, max(1, top // 30))
        axes[2].hist(r.real_lengths, bins=bins, alpha=0.6, label="real game")
        axes[2].hist(r.world_lengths, bins=bins, alpha=0.6, label="world")
        axes[2].set_xlabel(f"episode length under random actions (frames, run of {r.frames})")
        axes[2].set_ylabel("episodes")
        axes[2].legend(fontsize=7)
    else:
        axes[2].axis("off")
    fig.suptitle(f"control fidelity against the real game: {name}", fontsize=10)
    fig.tight_layout()
    p = out_dir / f"control_fidelity_{name}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
