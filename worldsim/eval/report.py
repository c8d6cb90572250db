"""Summaries of rollouts, plots (matplotlib, Agg), a filmstrip, ``report.md`` and ``results.json``."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.eval.metrics import correlation, end_precision_recall, frechet_distance, psnr, sign_agreement, ssim
from worldsim.eval.rollout import Generated, Reference

Features = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------- numbers
def buckets_for(horizons: Sequence[int], horizon: int) -> list[tuple[int, int]]:
    """Horizon buckets between consecutive requested horizons, clipped to the rollout:
    (1, 10), (11, 50), (51, 200) for horizons 1, 10, 50, 200 (plus the rest up to ``horizon``)."""
    edges = sorted({h for h in horizons if 1 < h <= horizon})
    if not edges or edges[-1] < horizon:
        edges.append(horizon)
    out, prev = [], 0
    for e in edges:
        out.append((prev + 1, e))
        prev = e
    return out


def _nanmean(x: np.ndarray, axis: Any = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _masked(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, values, np.nan)


def summarize(
    ref: Reference,
    gen: Generated,
    real_state: np.ndarray | None,
    gen_state: np.ndarray | None,
    state_names: Sequence[str],
    features: Features | None,
    horizons: Sequence[int],
    buckets: Sequence[tuple[int, int]],
    tol: int = 2,
) -> dict[str, Any]:
    """Every per-frame number of one model's rollouts, averaged over episodes per horizon, at
    the requested horizons and per bucket; FD per bucket; episode ends; reward error."""
    E, H = ref.valid.shape
    v = ref.valid
    per_frame: dict[str, np.ndarray] = {  # (E, H), NaN where not scored
        "psnr": _masked(psnr(gen.frames, ref.frames), v),
        "ssim": _masked(ssim(gen.frames, ref.frames), v),
    }
    if real_state is not None and gen_state is not None:
        for c, name in enumerate(state_names):
            err = np.abs(gen_state[..., c] - real_state[..., c])  # NaN where either side is unreadable
            per_frame[f"{name}_err"] = _masked(err, v)
            real_ok = v & np.isfinite(real_state[..., c])
            per_frame[f"{name}_unreadable"] = _masked((~np.isfinite(gen_state[..., c])).astype(float), real_ok)
    out: dict[str, Any] = {
        "curves": {k: _nanmean(x, 0) for k, x in per_frame.items()},
        "at": {},
        "buckets": {},
        "fd_codec_latents": {},
    }
    for h in horizons:
        if h <= H:
            out["at"][str(h)] = {k: float(c[h - 1]) for k, c in out["curves"].items()}
    for a, b in buckets:
        key = f"{a}-{b}"
        out["buckets"][key] = {k: float(_nanmean(x[:, a - 1 : b])) for k, x in per_frame.items()}
        out["buckets"][key]["frames"] = int(v[:, a - 1 : b].sum())
        if features is not None:
            m = v[:, a - 1 : b]
            if m.sum() >= 4:
                g = features(gen.frames[:, a - 1 : b][m])
                r = features(ref.frames[:, a - 1 : b][m])
                out["fd_codec_latents"][key] = frechet_distance(g, r)
    out["episode_end"] = end_precision_recall(gen.terminated, ref.terminated, ref.window & gen.stepped, tol)
    out["reward_mae"] = float(np.abs(gen.rewards - ref.rewards)[v].mean()) if v.any() else math.nan
    out["rollout_seconds"] = gen.seconds
    out["frames_per_second"] = float(gen.stepped.sum() / gen.seconds) if gen.seconds > 0 else math.nan
    return out


def control_summary(model_d: np.ndarray, real_d: np.ndarray, state_names: Sequence[str]) -> dict[str, Any]:
    """Model vs real state changes (P, A, S) for the same probes and actions, per component:
    sign agreement and correlation of the raw changes, and of the *action effects* (each
    action's change minus the mean change over actions from that state, which removes the
    motion the state had anyway), plus the mean absolute error of the changes."""
    out: dict[str, Any] = {"probes": int(model_d.shape[0]), "actions": int(model_d.shape[1])}
    both = np.isfinite(model_d) & np.isfinite(real_d)
    for c, name in enumerate(state_names):
        m, r, ok = model_d[..., c], real_d[..., c], both[..., c]
        mm, rr = np.where(ok, m, np.nan), np.where(ok, r, np.nan)
        em = mm - _nanmean(mm, 1)[:, None]
        er = rr - _nanmean(rr, 1)[:, None]
        out[name] = {
            "pairs": int(ok.sum()),
            "sign_agreement": sign_agreement(mm[ok], rr[ok]),
            "correlation": correlation(mm[ok], rr[ok]),
            "mae": float(np.abs(mm - rr)[ok].mean()) if ok.any() else math.nan,
            "effect_sign_agreement": sign_agreement(em[ok], er[ok]),
            "effect_correlation": correlation(em[ok], er[ok]),
        }
    return out


def target_check(curve: np.ndarray, divergence: np.ndarray, n: np.ndarray) -> dict[str, Any]:
    """Model error curve vs twice the real game's own divergence (both read off pixels)."""
    ok = np.isfinite(curve) & np.isfinite(divergence) & (n > 0)
    below = curve <= 2 * divergence
    first_above = np.flatnonzero(ok & ~below)
    return {
        "frames_compared": int(ok.sum()),
        "share_within_2x": float(below[ok].mean()) if ok.any() else math.nan,
        "first_frame_above_2x": int(first_above[0] + 1) if len(first_above) else None,
    }


# ---------------------------------------------------------------------------- plots
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
    results: dict[str, dict[str, Any]],
    divergence: dict[str, Any] | None,
    state_names: Sequence[str],
    out_dir: Path,
    floors: dict[str, dict[str, Any]] | None = None,
) -> list[Path]:
    """One PNG per metric against horizon (one line per model), and ``drift.png`` with them all;
    ``floors`` (codec reconstructions of the real frames) in grey."""
    plt = _plt()
    keys = list(next(iter(results.values()))["curves"])
    paths = []

    def draw(ax: Any, key: str) -> None:
        for name, res in results.items():
            y = np.asarray(res["curves"][key], float)
            ax.plot(np.arange(1, len(y) + 1), y, label=name, lw=1.2)
        for name, res in (floors or {}).items():
            y = np.asarray(res["curves"][key], float)
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


# ---------------------------------------------------------------------------- markdown
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    a = abs(float(v))
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.2e}"
    return f"{v:.{digits}f}" if a < 10 else f"{v:.1f}"


def _metric_rows(
    results: dict[str, dict[str, Any]], section: str, cols: Sequence[str], floors: dict[str, dict[str, Any]]
) -> list[str]:
    keys = [k for k in next(iter(results.values()))["curves"]]
    lines = []
    for key in keys:
        for name, res in [*results.items(), *floors.items()]:
            cells = [_fmt(res[section].get(c, {}).get(key)) for c in cols]
            lines.append(f"| {_label(key)} | {name} | " + " | ".join(cells) + " |")
    return lines


def summary_table(results: dict[str, dict[str, Any]], meta: dict[str, Any], hs: Sequence[str]) -> list[str]:
    """One row per model: the headline numbers (first and last horizon, last bucket, control, ends)."""
    first, last = hs[0], hs[-1]
    r0 = next(iter(results.values()))
    last_b = list(r0["buckets"])[-1]
    states = meta["state_names"]
    head = [f"PSNR @{first}", f"PSNR @{last}", f"SSIM @{last}"]
    head += [f"{c} err @{h}" for c in states for h in dict.fromkeys((hs[min(1, len(hs) - 1)], last))]
    head += [f"FD {last_b}"]
    has_control = any(r.get("control") for r in results.values())
    if has_control:
        head += [f"{c} action-effect sign" for c in states]
    head += ["end P / R", "reward MAE"]
    lines = [
        "### Summary (one row per model; details below)",
        "",
        "| model | " + " | ".join(head) + " |",
        "|---|" + "---|" * len(head),
    ]
    for name, r in results.items():
        at = r["at"]
        cells = [_fmt(at[first]["psnr"]), _fmt(at[last]["psnr"]), _fmt(at[last]["ssim"])]
        cells += [_fmt(at[h].get(f"{c}_err")) for c in states for h in dict.fromkeys((hs[min(1, len(hs) - 1)], last))]
        cells += [_fmt(r["fd_codec_latents"].get(last_b), 2)]
        if has_control:
            cells += [_fmt(r.get("control", {}).get(c, {}).get("effect_sign_agreement")) for c in states]
        ee = r["episode_end"]
        cells += [f"{_fmt(ee['precision'])} / {_fmt(ee['recall'])}", _fmt(r["reward_mae"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def tables(results: dict[str, dict[str, Any]], meta: dict[str, Any], extra: dict[str, Any]) -> str:
    """The numbers as Markdown tables (printed by the CLI, and the body of report.md)."""
    hs = [str(h) for h in meta["horizons"] if h <= meta["horizon"]]
    n = extra["n"]
    lines = [*summary_table(results, meta, hs), ""]
    lines += [
        "### Fidelity and state error at horizon h (mean over episodes)",
        "",
        "| metric | model | " + " | ".join(f"h={h}" for h in hs) + " |",
        "|---|---|" + "---|" * len(hs),
        "| episodes with frame h (n) | all | " + " | ".join(str(n[int(h) - 1]) for h in hs) + " |",
        *_metric_rows(results, "at", hs, extra.get("floors") or {}),
        "",
    ]
    bks = list(next(iter(results.values()))["buckets"])
    first = next(iter(results.values()))["buckets"]
    lines += [
        "### Drift: means over horizon buckets",
        "",
        "| metric | model | " + " | ".join(f"{b}" for b in bks) + " |",
        "|---|---|" + "---|" * len(bks),
        "| frames scored | all | " + " | ".join(str(first[b]["frames"]) for b in bks) + " |",
        *_metric_rows(results, "buckets", bks, extra.get("floors") or {}),
        "",
        "### FD on our codec's latents (not FID), episode ends, rewards",
        "",
        "| model | " + " | ".join(f"FD {b}" for b in bks) + " | end precision | end recall | predicted / real ends"
        " | reward MAE | frames/s |",
        "|---|" + "---|" * (len(bks) + 5),
    ]
    for name, res in results.items():
        fd = [_fmt(res["fd_codec_latents"].get(b), 2) for b in bks]
        ee = res["episode_end"]
        lines.append(
            f"| {name} | "
            + " | ".join(fd)
            + f" | {_fmt(ee['precision'])} | {_fmt(ee['recall'])} | {ee['predicted_ends']} / {ee['real_ends']}"
            f" | {_fmt(res['reward_mae'])} | {_fmt(res['frames_per_second'], 1)} |"
        )
    control = {k: r["control"] for k, r in results.items() if r.get("control")}
    if control:
        c0 = next(iter(control.values()))
        lines += [
            "",
            f"### Control: {c0['probes']} states x {c0['actions']} actions, each held {meta['control_k']} frames"
            " (or until the real game ends)",
            "",
            "| model | component | pairs | sign agreement | correlation | MAE | effect sign agreement"
            " | effect correlation |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, c in control.items():
            for comp in meta["state_names"]:
                v = c[comp]
                lines.append(
                    f"| {name} | {comp} | {v['pairs']} | {_fmt(v['sign_agreement'])} | {_fmt(v['correlation'])}"
                    f" | {_fmt(v['mae'])} | {_fmt(v['effect_sign_agreement'])} | {_fmt(v['effect_correlation'])} |"
                )
    div = extra.get("real_divergence")
    if div is not None:
        names = meta["state_names"]
        lines += [
            "",
            f"### The real game's own divergence (true state perturbed by {div['eps']:g}, same actions;"
            f" {div['episodes']} episodes)",
            "",
            "| component | source | " + " | ".join(f"h={h}" for h in hs) + " |",
            "|---|---|" + "---|" * len(hs),
        ]
        for c, comp in enumerate(names):
            lines.append(
                f"| {comp} | read off pixels | " + " | ".join(_fmt(div["read"][int(h) - 1][c]) for h in hs) + " |"
            )
            if div.get("true") is not None:
                lines.append(
                    f"| {comp} | true state | " + " | ".join(_fmt(div["true"][int(h) - 1][c]) for h in hs) + " |"
                )
        if div.get("reader_error") is not None:
            lines += [
                "",
                "State reader's own error on real frames (|read - true|, mean): "
                + ", ".join(f"{comp} {_fmt(div['reader_error'][c])}" for c, comp in enumerate(names))
                + ".",
            ]
        targets = {k: r["target"] for k, r in results.items() if r.get("target")}
        if targets:
            lines += [
                "",
                "Target: model error (read off pixels) <= 2x the real game's own divergence ("
                + ("true state" if div.get("target_source") == "true" else "read off pixels")
                + "), frame by frame while both are defined (the perturbed game may end earlier).",
                "",
                "| model | component | share of frames within 2x | first frame above 2x |",
                "|---|---|---|---|",
            ]
            for name, t in targets.items():
                for comp, v in t.items():
                    lines.append(
                        f"| {name} | {comp} | {_fmt(v['share_within_2x'])} | {_fmt(v['first_frame_above_2x'])} |"
                    )
    return "\n".join(lines)


def markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any], extra: dict[str, Any]) -> str:
    ck = "\n".join(
        f"- **{name}**: `{m['checkpoint']}` ({m['context_frames']} context frames, {m['sampler_steps']} denoising"
        f" steps, guidance {m['cfg_scale']:g})"
        for name, m in meta["models"].items()
    )
    same_codec = len({m["codec_fingerprint"] for m in meta["models"].values()}) == 1
    checks = extra.get("control_real_checks")
    lines = [
        f"# worldsim eval: {meta['world']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"{meta['episodes']} held-out episodes ({meta['splits']}) from `{meta['data']}`, the longest first. "
        f"Every model gets the same {meta['start']} real context frames (with their actions) and then the real "
        f"game's actions, for up to {meta['horizon']} frames; an episode shorter than that is scored while it lasts "
        f"(n per horizon below). Seed {meta['seed']}.",
        "",
        ck,
        "",
        f"Wall time {meta.get('seconds', '-')} s ("
        + ", ".join(f"{k} {v} s" for k, v in meta.get("timings_s", {}).items())
        + f") on {meta.get('device', '-')}.",
        "",
        tables(results, meta, extra),
        "",
        "## Plots",
        "",
        "![drift](drift.png)",
        "",
        "Real game (top row) and each model at frames " + ", ".join(str(h) for h in meta["filmstrip_frames"]) + ":",
        "",
        "![filmstrip](filmstrip.png)",
        "",
    ]
    if any(r.get("control") for r in results.values()):
        lines += ["![control](control.png)", ""]
    lines += [
        "## Definitions",
        "",
        "- PSNR: on uint8 RGB, MSE over pixels and channels, peak 255; identical frames are capped at 100 dB.",
        "- SSIM: on luma (0.299 R + 0.587 G + 0.114 B), 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, "
        "valid region.",
        "- Codec reconstruction rows (grey in the plots): the real frames encoded and decoded by the checkpoints' "
        "codec, scored like a model: the best a model with this codec can reach, and a check that the state reader "
        "reads decoded frames like real ones.",
        "- State error: |state read off the generated frame - state read off the real frame| with the world's state "
        "reader, per component; frames where the generated state cannot be read are left out of the error and "
        "counted in the `unreadable` share.",
        "- FD: this is **FD on our codec's latents, not FID**: the Fréchet distance between Gaussian fits of "
        "generated and real frames' features, the features being each checkpoint's own codec encoder's latents, "
        "mean-pooled to 2x2 and flattened, pooled over the frames of a horizon bucket. FD is biased upwards with few samples: compare models "
        "within a bucket rather than buckets with different frame counts. "
        + (
            "All checkpoints here share one codec, so their FDs are comparable."
            if same_codec
            else "The checkpoints have different codecs: compare FDs across models with care."
        ),
        f"- Episode ends: a run of consecutive predicted terminal frames is one predicted end, at its first frame "
        f"(where an env on the model would end the episode); it is correct within ±{meta['tol']} frames of a real end (the model keeps running {meta['tol']} frames past a real end with the "
        "null action). Reward MAE over the real episodes' frames.",
        "- Control: from real states (context windows of the held-out episodes), each action is held for "
        f"{meta['control_k']} frames (or until the real game ends, then both are compared at that frame) in the model "
        "and in the real game (restored to the same state by replaying "
        "the episode's seed and actions, then branched); the state change is read off the pixels for both. "
        "'Effect' columns subtract, per state, the mean change over actions: they score how the actions differ, "
        "not the motion the state had anyway.",
    ]
    if checks:
        lines.append(
            f"  Real-game replay check: {checks['replay_ok']}/{checks['probes']} states reproduced the recorded frame; "
            f"{checks['branch_ok']}/{checks['branch_checked']} branches with the recorded next action reproduced the "
            f"recorded next frame; in {checks['ended_early']} branches the real game ended before {meta['control_k']} frames (compared at its end frame)."
        )
    if extra.get("real_divergence") is not None:
        d = extra["real_divergence"]
        lines.append(
            f"- Real game's own divergence: at the last context frame the true state is perturbed by "
            f"±{d['eps']:g} per component and both copies replay the recorded actions; mean |difference| of the "
            f"read-off (and true) state. The unperturbed replay matched {d['replay_frames_ok']}/"
            f"{d['replay_frames_checked']} recorded frames."
        )
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- json
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
