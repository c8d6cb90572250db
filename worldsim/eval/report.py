"""Writing an evaluation's outputs: ``report.md``, ``results.json`` and the plots, into one folder
per world (``eval/<world>/`` by default), never over an existing report unless asked."""

from __future__ import annotations

from pathlib import Path

from worldsim.eval import markdown, plots
from worldsim.eval.results import EvalResult, write_json


class ReportExistsError(FileExistsError):
    """The output folder already holds a report."""


def default_out(world: str) -> Path:
    """Where ``worldsim eval`` writes by default: ``eval/<world>/``."""
    return Path("eval") / Path(world).stem


def check_out(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing report (the message says how)."""
    if (out / "report.md").exists() and not force:
        raise ReportExistsError(
            f"{out / 'report.md'} exists: pass --force to overwrite it, or --out DIR to write elsewhere"
        )


def write(ev: EvalResult, out: Path, force: bool = False) -> list[Path]:
    """Every output of ``ev`` into ``out``; the paths written."""
    check_out(out, force)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if ev.scores:
        paths += plots.plot_curves(ev.scores, ev.divergence, ev.state_names, out, ev.floors)
        if ev.filmstrip_real is not None:
            paths.append(plots.filmstrip(ev.filmstrip_real, ev.filmstrips, ev.filmstrip_frames, out))
        if ev.probes is not None and ev.probes.models:
            paths.append(plots.plot_control(ev.probes.models, ev.probes.real, ev.state_names, out))
    for name, fid in ev.fidelity.items():
        paths.append(plots.plot_fidelity(name, fid, out))
    (out / "report.md").write_text(markdown.markdown(ev))
    write_json(out / "results.json", ev.to_json())
    return [out / "report.md", out / "results.json", *paths]
