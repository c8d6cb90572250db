"""``worldsim train``'s command line: what to train (:func:`_add_stage_arguments`) and from what,
where to and how (:func:`_add_source_arguments`). The stages themselves: :mod:`worldsim.train.cli`."""

from __future__ import annotations

import argparse
from pathlib import Path

from worldsim.train.recipe import STAGES

__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``worldsim train``'s arguments on ``parser``."""
    _add_stage_arguments(parser)
    _add_source_arguments(parser)


def _add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """The world, the stage(s), their data, run folders and budgets."""
    parser.add_argument(
        "world",
        nargs="?",
        default=None,
        help="bundled world name (its recipe) or any name with --data: the world's name "
        "(default with --data: the game's id, Pendulum-v1 -> pendulum)",
    )
    parser.add_argument(
        "--stage",
        choices=(*STAGES, "heads", "guidance", "finetune", "all"),
        required=True,
        help="one stage, or `all`: codec, teacher, student, self-forcing in turn (skipping finished ones "
        "unless --force); "
        "`heads` re-fits a finished self-forcing run's reward/termination heads; "
        "`guidance` distils a world's action guidance into its denoiser, so it samples one row per row "
        "(the world from --init, default the self-forcing run's); "
        "`finetune` trains a finished world (--init) on new data with the teacher's loss, keeping its sampler "
        "(a DIAMOND-style round: e.g. real episodes played by an agent trained in the dream)",
    )
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="with --stage all: also train the Teacher Forcing and Diffusion Forcing baselines",
    )
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        help="recorded data folder(s) of one game (default data/<world>); with several, clips are drawn "
        "from all of them alike (e.g. the main recording plus an exploration round)",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="run folders root")
    parser.add_argument("--run-name", default=None, help="run folder name (default: the stage, or self-forcing-<mode>)")
    parser.add_argument(
        "--mode",
        choices=("self", "teacher", "diffusion"),
        default="self",
        help="self-forcing stage: context = own rollout (self), ground truth (teacher), noisy ground truth (diffusion)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="the stage's step count; with --stage all every stage's (one stage's: --set codec.steps=N, "
        "--set teacher.steps=N, --set student.steps=N, --set self_forcing.steps=N)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --stage all: retrain finished stages too (their run folders are replaced)",
    )


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The worlds a stage starts from, config overrides, resuming, compiling, exporting and the device."""
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="WORLD.safetensors",
        help="codec stage: start from this world instead of random weights (same game and frames): its codec is "
        "fine-tuned for the codec stage's steps (0 keeps it as it is) and its denoiser becomes the teacher's "
        "starting point (--set codec.fresh_denoiser=True: a new one); e.g. retrain a world on new recordings. "
        "guidance stage: the world to distil; finetune stage: the world to fine-tune; self-forcing stage: the "
        "student to roll out (default the student run's), e.g. Self Forcing again after fine-tune rounds; "
        "heads stage: the world whose heads to re-fit (default the self-forcing run's)",
    )
    parser.add_argument(
        "--teacher",
        type=Path,
        default=None,
        metavar="WORLD.safetensors",
        help="self-forcing stage: the world whose guided score is DMD's real score and the critic's start "
        "(default the teacher run's); any world trained with the teacher's loss at every noise level, e.g. a "
        "fine-tuned world",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a config field"
    )
    parser.add_argument(
        "--mirror",
        default=None,
        metavar="A,B,...",
        help="also train on left-right mirrored copies of the training episodes, action a becoming the a-th "
        "entry (CartPole: 1,0); for games that look the same in a mirror, it makes the world's dynamics symmetric",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's last state")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the denoiser's whole-clip training forward/backward through torch.compile: about a minute of "
        "compiling, then faster steps (docs/performance.md); default WORLDSIM_TRAIN_COMPILE, else off",
    )
    parser.add_argument("--export", action="store_true", help="copy the result to envs/<world>/<world>.safetensors")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--keys", default=None, metavar="MAP", help="key map stored in the world (see worldsim play)")
    parser.add_argument("--idle", default=None, metavar="ACTION", help="idle action stored in the world")
    parser.add_argument("--key-magnitude", type=float, default=None, metavar="M", help="Box key magnitude stored")
