"""The ``worldsim`` command: one entry point, one module per subcommand.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``main(args) -> int``. Only the chosen subcommand's module is imported, so ``worldsim play``
does not pay for gRPC or training imports.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "worlds": ("worldsim.worlds", "list the bundled worlds and where their checkpoints are"),
    "record": ("worldsim.data.record", "record episodes of a real Gymnasium game"),
    "train": ("worldsim.train.cli", "train a world: codec, teacher, student, self-forcing"),
    "eval": ("worldsim.eval.cli", "compare world checkpoints against the real game"),
    "bench": ("worldsim.bench", "measure frames/s, latency, memory and FLOPs"),
    "play": ("worldsim.play", "play a world with the keyboard in a pygame window"),
    "serve": ("worldsim.serve.server", "serve worlds over gRPC"),
}


def _usage() -> str:
    lines = ["usage: worldsim <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`worldsim <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"worldsim {name}", description=help_)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
