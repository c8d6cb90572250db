"""The ``worldsim`` command: one entry point, one module per subcommand.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``main(args) -> int``. Only the chosen subcommand's module is imported, so ``worldsim play``
does not pay for gRPC or training imports.

Errors: an *expected* error (a bad or corrupt file, a bad flag value, a port in use, a missing
optional dependency: see :func:`expected_error`) ends any command with ONE line on stderr,
``worldsim <command>: <problem and fix>``, and exit code 2; ``-v`` adds the traceback. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import traceback
from types import FrameType

from worldsim import threads

COMMANDS: dict[str, tuple[str, str]] = {
    "worlds": ("worldsim.worlds", "list the bundled worlds and where their checkpoints are"),
    "record": ("worldsim.data.record_cli", "record episodes of a real Gymnasium game"),
    "data-check": ("worldsim.data.diagnostic", "can a world learn the actions from this recording? (predictability)"),
    "train": ("worldsim.train.cli", "train a world: codec, teacher, student, self-forcing"),
    "eval": ("worldsim.eval.cli", "compare world checkpoints against the real game"),
    "sampler": ("worldsim.sampler_cli", "show a world file's sampler, or bake new values in (guidance, steps)"),
    "blend": ("worldsim.blend_cli", "average the denoisers of two fine-tunes of one world (weight interpolation)"),
    "grow": ("worldsim.grow_cli", "a deeper world that starts as the same function (new blocks gated off)"),
    "bench": ("worldsim.bench", "measure frames/s, latency, memory and FLOPs"),
    "play": ("worldsim.play", "play a world with the keyboard in a pygame window"),
    "serve": ("worldsim.serve.cli", "serve worlds over gRPC"),
}


def _usage() -> str:
    lines = ["usage: worldsim <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`worldsim <command> --help` for a command's options."]
    return "\n".join(lines)


# The project's error types for a user's mistake, as (module, class): checked only when the module
# is already imported (an error cannot be of a type nobody imported), so this costs no imports.
_EXPECTED = (
    ("worldsim.checkpoint", "CheckpointError"),
    ("worldsim.spaces", "ActionError"),
    ("worldsim.data.record", "RecordError"),
    ("worldsim.data.policies", "PolicyError"),
    ("worldsim.real", "RealGameError"),
    ("worldsim.play.recorder", "RecorderError"),
    ("worldsim.client", "RemoteError"),
)
# Optional dependencies -> the extra that installs them.
_EXTRAS = {
    "ale_py": "atari",
    "flash_attn": "cuda",
    "stable_baselines3": "sb3",
    "matplotlib": "eval",
    "imageio": "video",
    "imageio_ffmpeg": "video",
    "PIL": "serve",
    "grpc_tools": "dev",
}


def expected_error(e: BaseException) -> str | None:
    """The one-line message for an expected error, None for a bug (which keeps its traceback)."""
    if isinstance(e, SystemExit):
        return e.code if isinstance(e.code, str) else None
    if isinstance(e, ModuleNotFoundError) and e.name:
        extra = _EXTRAS.get(e.name.split(".")[0])
        fix = f"pip install 'worldsim[{extra}]'" if extra else f"install the {e.name.split('.')[0]} package"
        return f"{e}: {fix}"
    for module, name in _EXPECTED:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(e, cls):
            return str(e)
    if isinstance(e, (OSError, ImportError, ValueError)):  # files, ports, extras, flag values
        return str(e) or type(e).__name__
    return None


def _one_line(command: str, message: str) -> str:
    text = " ".join(part.strip() for part in message.strip().splitlines() if part.strip())
    prefix = f"worldsim {command}: "
    return text if text.startswith(prefix) else prefix + text


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C is, so every command stops the way it does on
    Ctrl-C: a recording saves its finished episodes, a training run keeps its last checkpoint, the
    player closes its window. The command then exits with 143 (128 + SIGTERM), or with its own
    code where it handles the interrupt itself (``worldsim record``: 130, after saying where its
    finished episodes are)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _stop_on_sigterm() -> bool:
    """Route SIGTERM through :class:`Terminated` where it still has the default action (a command
    that handles it itself, ``worldsim serve``, installs its own). Also keeps SDL from taking it
    (SDL only takes signals still at the default action): see ``worldsim.real.leave_signals_to_python``."""
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (main() called from a thread): leave signals alone
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    verbose = any(a in ("-v", "--verbose") for a in argv[1:])
    installed = _stop_on_sigterm()
    try:
        return _run(argv)
    except KeyboardInterrupt as e:
        print(f"worldsim {command}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
    except BaseException as e:  # noqa: BLE001 - sorted into expected errors and bugs below
        message = expected_error(e)
        if message is None:  # a bug, or argparse's own exit (--help, usage error) with its code
            raise
        if verbose:
            traceback.print_exc()
        print(_one_line(command, message), file=sys.stderr)
        return 2
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from worldsim import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"worldsim: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    threads.single_threaded_numpy()
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"worldsim {name}", description=help_)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.add_arguments(parser)
    if name in threads.COMMANDS:
        threads.add_argument(parser)
    args = parser.parse_args(argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    threads.set_threads(getattr(args, "threads", None))
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
