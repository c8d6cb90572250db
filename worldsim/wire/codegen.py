"""Regenerate the committed gRPC stubs from ``proto/worldsim/v1/*.proto``.

    python -m worldsim.wire.codegen          # rewrite worldsim/wire/_proto/
    python -m worldsim.wire.codegen --check  # exit 1 if the committed stubs are stale

Needs grpcio-tools (in the ``dev`` extra) and a source checkout (the .proto files live in
``proto/`` at the top of the repo). Two fixes are applied to protoc's output:

- ``from worldsim.v1 import world_pb2`` becomes ``from . import world_pb2``, so the stubs work as
  the subpackage ``worldsim.wire._proto``;
- nothing else. ``--check`` ignores the lines that only record the generator's version, so a
  different grpcio-tools with the same output format does not count as stale.

The .proto files are copied next to the stubs too, so that an installed worldsim carries its API
definition (for clients in other languages) without a source checkout.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT = Path(__file__).resolve().parent / "_proto"

_VERSION_LINES = [
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"^(\s*_runtime_version\.Domain\.PUBLIC,\n)(\s*\d+,\n){3}", re.M),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
]


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / "worldsim" / "v1").glob("*.proto"))


def generate(dest: Path) -> list[Path]:
    """Run protoc on every v1 .proto; write the fixed stubs into ``dest``; return their paths."""
    from grpc_tools import protoc

    files = proto_files()
    if not files:
        raise FileNotFoundError(f"no .proto files under {PROTO_DIR}/worldsim/v1 (a source checkout is needed)")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"]
        if protoc.main(args + [str(f) for f in files]) != 0:
            raise RuntimeError("protoc failed")
        out = []
        for f in sorted((Path(tmp) / "worldsim" / "v1").glob("*.py*")):
            text = re.sub(r"^from worldsim\.v1 import (\w+) as", r"from . import \1 as", f.read_text(), flags=re.M)
            target = dest / f.name
            target.write_text(text)
            out.append(target)
    for f in files:
        target = dest / f.name
        target.write_text(f.read_text())
        out.append(target)
    return out


def _masked(text: str) -> str:
    for pat in _VERSION_LINES:
        text = pat.sub("<version>", text)
    return text


def stale_stubs() -> list[str]:
    """Names of committed stubs that differ from a fresh generation (empty: in sync)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [
            f.name
            for f in fresh
            if not (OUT / f.name).exists() or _masked((OUT / f.name).read_text()) != _masked(f.read_text())
        ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check that the committed stubs are up to date")
    args = p.parse_args(argv)
    if args.check:
        stale = stale_stubs()
        if stale:
            print(f"stale gRPC stubs: {stale}; run python -m worldsim.wire.codegen", file=sys.stderr)
            return 1
        print("gRPC stubs are up to date")
        return 0
    for f in generate(OUT):
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
