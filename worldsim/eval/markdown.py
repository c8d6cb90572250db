"""``report.md`` as Markdown text from an :class:`~worldsim.eval.results.EvalResult`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from worldsim.eval.closed_loop import ClosedLoopFidelity
from worldsim.eval.fidelity import HeldFidelity, RandomFidelity
from worldsim.eval.plots import _label
from worldsim.eval.results import EvalResult, ModelScores


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
    results: dict[str, ModelScores], section: str, cols: Sequence[str], floors: dict[str, ModelScores]
) -> list[str]:
    keys = [k for k in next(iter(results.values())).curves]
    lines = []
    for key in keys:
        for name, res in [*results.items(), *floors.items()]:
            cells = [_fmt(getattr(res, section).get(c, {}).get(key)) for c in cols]
            lines.append(f"| {_label(key)} | {name} | " + " | ".join(cells) + " |")
    return lines


def summary_table(ev: EvalResult, hs: Sequence[str]) -> list[str]:
    """One row per model: the headline numbers (first and last horizon, last bucket, control, ends)."""
    results = ev.scores
    first, last = hs[0], hs[-1]
    r0 = next(iter(results.values()))
    last_b = list(r0.buckets)[-1]
    states = ev.state_names
    head = [f"PSNR @{first}", f"PSNR @{last}", f"SSIM @{last}"]
    head += [f"{c} err @{h}" for c in states for h in dict.fromkeys((hs[min(1, len(hs) - 1)], last))]
    head += [f"FD {last_b}"]
    has_control = any(r.control for r in results.values())
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
        at = r.at
        cells = [_fmt(at[first]["psnr"]), _fmt(at[last]["psnr"]), _fmt(at[last]["ssim"])]
        cells += [_fmt(at[h].get(f"{c}_err")) for c in states for h in dict.fromkeys((hs[min(1, len(hs) - 1)], last))]
        cells += [_fmt(r.fd_codec_latents.get(last_b), 2)]
        if has_control:
            cells += [_fmt((r.control or {}).get(c, {}).get("effect_sign_agreement")) for c in states]
        ee = r.episode_end
        cells += [f"{_fmt(ee['precision'])} / {_fmt(ee['recall'])}", _fmt(r.reward_mae)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def rollout_tables(ev: EvalResult) -> str:
    """The rollout numbers as Markdown tables (printed by the CLI, and the body of report.md)."""
    results = ev.scores
    hs = [str(h) for h in ev.horizons if h <= ev.horizon]
    n = ev.n_per_horizon
    assert n is not None
    lines = [*summary_table(ev, hs), ""]
    lines += [
        "### Fidelity and state error at horizon h (mean over episodes"
        + (f" and {ev.config.noise_draws} noise draws of each)" if ev.config.noise_draws > 1 else ")"),
        "",
        "| metric | model | " + " | ".join(f"h={h}" for h in hs) + " |",
        "|---|---|" + "---|" * len(hs),
        "| episodes with frame h (n) | all | " + " | ".join(str(n[int(h) - 1]) for h in hs) + " |",
        *_metric_rows(results, "at", hs, ev.floors),
        "",
    ]
    bks = list(next(iter(results.values())).buckets)
    first = next(iter(results.values())).buckets
    lines += [
        "### Drift: means over horizon buckets",
        "",
        "| metric | model | " + " | ".join(f"{b}" for b in bks) + " |",
        "|---|---|" + "---|" * len(bks),
        "| frames scored | all | " + " | ".join(str(first[b]["frames"]) for b in bks) + " |",
        *_metric_rows(results, "buckets", bks, ev.floors),
        "",
        "### FD on our codec's latents (not FID), episode ends, rewards",
        "",
        "| model | " + " | ".join(f"FD {b}" for b in bks) + " | end precision | end recall | predicted / real ends"
        " | reward MAE | frames/s |",
        "|---|" + "---|" * (len(bks) + 5),
    ]
    for name, res in results.items():
        fd = [_fmt(res.fd_codec_latents.get(b), 2) for b in bks]
        ee = res.episode_end
        lines.append(
            f"| {name} | "
            + " | ".join(fd)
            + f" | {_fmt(ee['precision'])} | {_fmt(ee['recall'])} | {ee['predicted_ends']} / {ee['real_ends']}"
            f" | {_fmt(res.reward_mae)} | {_fmt(res.frames_per_second, 1)} |"
        )
    lines += _probe_tables(ev)
    lines += _divergence_tables(ev)
    return "\n".join(lines)


def _probe_tables(ev: EvalResult) -> list[str]:
    """Control probes on recorded states, one row per model and component."""
    results, lines = ev.scores, []
    control = {k: r.control for k, r in results.items() if r.control}
    if control:
        c0 = next(iter(control.values()))
        lines += [
            "",
            f"### Control: {c0['probes']} states x {c0['actions']} actions, each held {ev.config.control_k} frames"
            " (or until the real game ends)",
            "",
            "| model | component | pairs | sign agreement | correlation | MAE | effect sign agreement"
            " | effect correlation |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, c in control.items():
            for comp in ev.state_names:
                v = c[comp]
                lines.append(
                    f"| {name} | {comp} | {v['pairs']} | {_fmt(v['sign_agreement'])} | {_fmt(v['correlation'])}"
                    f" | {_fmt(v['mae'])} | {_fmt(v['effect_sign_agreement'])} | {_fmt(v['effect_correlation'])} |"
                )
    return lines


def _divergence_tables(ev: EvalResult) -> list[str]:
    """The real game's own divergence and the models' state error against it."""
    results, lines = ev.scores, []
    hs = [str(h) for h in ev.horizons if h <= ev.horizon]
    div = ev.divergence
    if div is not None:
        names = ev.state_names
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
        targets = {k: r.target for k, r in results.items() if r.target}
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
    return lines


def _rollout_section(ev: EvalResult) -> list[str]:
    """The rollouts' description, tables and plots."""
    assert ev.episodes is not None
    eps, results = ev.episodes, ev.scores
    ck = "\n".join(
        f"- **{name}**: `{m.checkpoint}` ({m.context_frames} context frames, {m.sampler_steps} denoising"
        f" steps, guidance {m.guidance_scale:g}{''.join('; ' + c for c in m.sampler_changes)})"
        for name, m in ev.models.items()
    )
    lines = [
        f"{len(eps)} held-out episodes ({eps.splits}) from `{eps.data}`, the longest first. "
        f"Every model gets the same {ev.start} real context frames (with their actions) and then the real "
        f"game's actions, for up to {ev.horizon} frames; an episode shorter than that is scored while it lasts "
        f"(n per horizon below). Seed {ev.config.seed}.",
        "",
        ck,
        "",
        rollout_tables(ev),
        "",
        "## Plots",
        "",
        "![drift](drift.png)",
        "",
        "Real game (top row) and each model at frames " + ", ".join(str(h) for h in ev.filmstrip_frames) + ":",
        "",
        "![filmstrip](filmstrip.png)",
        "",
    ]
    if any(r.control for r in results.values()):
        lines += ["![control](control.png)", ""]
    return lines


def _definitions(ev: EvalResult) -> list[str]:
    """How the rollout numbers are defined."""
    same_codec = len({m.codec_fingerprint for m in ev.models.values()}) == 1
    checks = ev.probes.checks if ev.probes else None
    lines = [
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
        f"(where an env on the model would end the episode); it is correct within ±{ev.config.tol} frames of a real end (the model keeps running {ev.config.tol} frames past a real end with the "
        "null action). Reward MAE over the real episodes' frames.",
        "- Control: from real states (context windows of the held-out episodes), each action is held for "
        f"{ev.config.control_k} frames (or until the real game ends, then both are compared at that frame) in the model "
        "and in the real game (restored to the same state by replaying "
        "the episode's seed and actions, then branched); the state change is read off the pixels for both. "
        "'Effect' columns subtract, per state, the mean change over actions: they score how the actions differ, "
        "not the motion the state had anyway.",
    ]
    if checks:
        lines.append(
            f"  Real-game replay check: {checks['replay_ok']}/{checks['probes']} states reproduced the recorded frame; "
            f"{checks['branch_ok']}/{checks['branch_checked']} branches with the recorded next action reproduced the "
            f"recorded next frame; in {checks['ended_early']} branches the real game ended before {ev.config.control_k} frames (compared at its end frame)."
        )
    if ev.divergence is not None:
        d = ev.divergence
        lines.append(
            f"- Real game's own divergence: at the last context frame the true state is perturbed by "
            f"±{d['eps']:g} per component and both copies replay the recorded actions; mean |difference| of the "
            f"read-off (and true) state. The unperturbed replay matched {d['replay_frames_ok']}/"
            f"{d['replay_frames_checked']} recorded frames."
        )
    return lines


# ---------------------------------------------------------------------------- control fidelity
def headline_table(ev: EvalResult) -> list[str]:
    """One row per (model, target): value, bound, PASS / FAIL."""
    if not ev.fidelity:
        return []
    lines = ["### Control fidelity: targets", "", "| model | target | value | bound | result | measured as |"]
    lines.append("|---|---|---|---|---|---|")
    for name, fid in ev.fidelity.items():
        for t, v in fid.targets.items():
            result = "PASS" if v["pass"] else "FAIL"
            lines.append(f"| {name} | {t} | {_fmt(v['value'])} | {v['target']} | {result} | {v['what']} |")
    return [*lines, ""]


def _held_tables(name: str, h: HeldFidelity) -> list[str]:
    frames = range(1, h.frames + 1)
    lines = [
        f"#### {name}: every action held {h.frames} frames from {h.states} real states"
        f" ({len(h.actions)} actions, {len(h.pairs)} action pairs; {h.real_ended_early} branches ended early"
        " in the real game). Signs are scored where the real effect exceeds the reader's resolution"
        " (twice its 95th-percentile error against the game's internal state in this run; '-': no"
        " internal state, every nonzero effect counts).",
        "",
        "| variable | pairs | sign agreement | magnitude ratio | reader resolution | every pair: sign (pairs) | "
        + " | ".join(f"f{t}" for t in frames)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * h.frames,
    ]
    for v in h.variables.values():
        head = f"| {v.name} | {v.pairs_scored} | {_fmt(v.sign_agreement)} | {_fmt(v.magnitude_ratio)} |"
        every = f"{_fmt(v.sign_agreement_all)} ({v.pairs_all})" if v.pairs_all else "-"
        head += f" {_fmt(v.resolution) if v.resolution else '-'} | {every} |"
        rows = [("sign", v.sign_per_frame), ("ratio", v.ratio_per_frame), ("error", v.error_per_frame)]
        for label, row in rows + ([("bias", v.bias_per_frame)] if v.bias_per_frame else []):
            lines.append(head + " " + " | ".join(f"{label} {_fmt(x)}" for x in row) + " |")
            head = "| | | | | | |"
    biased = [v for v in h.variables.values() if v.bias_per_action]
    if biased:
        lines += ["", "Bias (mean world - real state over the held frames) per held action:", ""]
        lines += ["| variable | " + " | ".join(f"action {json.dumps(a)}" for a in h.actions) + " |"]
        lines += ["|---|" + "---|" * len(h.actions)]
        lines += [f"| {v.name} | " + " | ".join(_fmt(x) for x in v.bias_per_action) + " |" for v in biased]
    return [*lines, ""]


def _random_table(name: str, r: RandomFidelity) -> list[str]:
    def q(x: list[int]) -> str:
        return " / ".join(_fmt(float(v), 1) for v in np.percentile(x, [25, 50, 75])) if x else "-"

    lines = [
        f"#### {name}: {r.episodes} episodes of random actions from reset states (up to {r.frames} frames)",
        "",
        "| | real game | world |",
        "|---|---|---|",
        f"| episode length, quartiles (25 / 50 / 75 %) | {q(r.real_lengths)} | {q(r.world_lengths)} |",
        f"| episodes that ended within {r.frames} frames | {r.real_ended} | {r.world_ended} |",
        f"| termination head within 2 frames of the real end | | {_fmt(r.termination_within_2)} |",
        f"| world end (head or state bounds) within 2 frames | | {_fmt(r.end_within_2)} |",
    ]
    if r.termination_interval is not None:
        lo, hi = r.termination_interval
        lines.append(f"| the same, 95% interval over start sets (Wilson) | | {_fmt(lo)} - {_fmt(hi)} |")
    if r.end_rank_correlation is not None:
        lines.append(
            f"| the head's end follows the real one: rank correlation (Spearman, 1 = same order) | | "
            f"{_fmt(r.end_rank_correlation)} |"
        )
    if r.reader_end_within_2 is not None:
        lines.append(
            f"| check: the state bounds read off the real frames, within 2 | {_fmt(r.reader_end_within_2)} | |"
        )
    if r.timing_by_length:
        lines += ["", "Where the termination head's misses are, by the real episode's length:", ""]
        lines += ["| real length | episodes | timed within 2 | early | late or never | mean error (world - real) |"]
        lines += ["|---|---|---|---|---|---|"]
        lines += [
            f"| {b['real_length']} | {b['episodes']} | {_fmt(b['timed'])} | {_fmt(b['early'])} | "
            f"{_fmt(b['late_or_never'])} | {_fmt(b['mean_error'], 2)} |"
            for b in r.timing_by_length
        ]
    return [*lines, ""]


def _closed_loop_table(name: str, loops: dict[str, ClosedLoopFidelity]) -> list[str]:
    def q(x: list[int]) -> str:
        return " / ".join(_fmt(float(v), 1) for v in np.percentile(x, [25, 50, 75])) if x else "-"

    lines = [
        f"#### {name}: closed loop (a controller acting on the state read off each side's own frames)",
        "",
        "| controller | episodes | real: length quartiles | real: full runs | world: length quartiles | world: full runs "
        "| world: ended by head / by bounds | median world / real |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in loops.values():
        ended = c.episodes - c.world_full
        lines.append(
            f"| {c.controller} | {c.episodes} | {q(c.real_lengths)} | {c.real_full} of {c.episodes} "
            f"| {q(c.world_lengths)} | {c.world_full} of {c.episodes} | {c.world_by_head} / {ended - c.world_by_head} "
            f"| {_fmt(c.length_ratio)} |"
        )
    return [*lines, f"(runs of up to {next(iter(loops.values())).frames} frames)", ""]


def fidelity_section(ev: EvalResult) -> list[str]:
    """Control fidelity against the real game: targets, held actions, random actions, plots."""
    if not ev.fidelity:
        return []
    lines = ["## Control fidelity against the real game", "", *headline_table(ev)]
    for name, fid in ev.fidelity.items():
        if fid.held is not None:
            lines += _held_tables(name, fid.held)
        if fid.random is not None:
            lines += _random_table(name, fid.random)
        if fid.closed_loop:
            lines += _closed_loop_table(name, fid.closed_loop)
        lines += [f"![control fidelity {name}](control_fidelity_{name}.png)", ""]
    return lines


FIDELITY_DEFINITIONS = [
    "- Control fidelity: start states are the real game reset with a seed and stepped by uniformly random actions"
    " for a random number of frames, then snapshotted; the world gets the real frames before the branch point"
    " (its context) and both get the same actions. Held actions: every action (or a sampled set) held for k"
    " frames from every state. The effect of a pair of actions is the state after holding one minus the state"
    " after holding the other (read off the frames by the world's state reader on both sides); sign agreement is"
    " the share of (state, pair) whose world effect has the real sign (real effects of ~0 left out, a world"
    " effect of exactly 0 counts 1/2; the headline at the last frame both real branches are live), the magnitude"
    " ratio the median |world effect| / |real effect| (the headline over frames 1-6), the error the mean |world -"
    " real| state. Frames after the real game's end are not scored. `pixels`: the same on the branch-difference"
    " images (sign of their cosine, ratio of their norms, error = mean |pixel difference| / 255).",
    "- Random actions: episodes from reset states; the length counts frames after the context up to and"
    " including the end; the world ends where its termination head fires or its read-off state crosses the"
    " game's bounds (the world's `state_done`), whichever comes first; episodes not ended count as the run's"
    " length.",
    "- Closed loop: each controller of the world (`WorldDef.controllers`) acts on the state read off the last two"
    " frames of its own side, from the same reset states in the real game and in the world; episode lengths as"
    " for random actions. A world that obeys the controls lets a balancing controller balance and a wrong-way"
    " one fail, as the real game does.",
]


def markdown(ev: EvalResult) -> str:
    """The whole ``report.md``."""
    lines = [f"# worldsim eval: {ev.config.world}", "", f"Command: `{ev.config.command}`", ""]
    lines += [f"Note: {n}" for n in ev.notes] + ([""] if ev.notes else [])
    timings = ", ".join(f"{k} {v} s" for k, v in ev.timings.items())
    lines += [f"Wall time {ev.seconds} s ({timings}) on {ev.config.device} ({ev.config.dtype}).", ""]
    if ev.scores:
        lines += _rollout_section(ev)
    lines += fidelity_section(ev)
    lines += ["## Definitions", ""]
    if ev.scores:
        lines += _definitions(ev)
    if ev.fidelity:
        lines += FIDELITY_DEFINITIONS
    return "\n".join([*lines, ""])


def tables(ev: EvalResult) -> str:
    """What the CLI prints: the rollout tables and the control-fidelity targets."""
    parts = [rollout_tables(ev)] if ev.scores else []
    if ev.fidelity:
        parts.append("\n".join(headline_table(ev)))
    return "\n\n".join(parts)
