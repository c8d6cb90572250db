"""Regenerate the committed gRPC stubs from ``proto/worldsim/v1/*.proto``.

    python -m worldsim.serve.codegen          # rewrite worldsim/serve/_proto/
    python -m worldsim.serve.codegen --check  # exit 1 if the committed stubs are stale

Needs grpcio-tools (in the ``dev`` extra). The generated ``import world_pb2`` is rewritten to a
package-relative import so the stubs live inside ``worldsim.serve._proto``.
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


def generate(dest: Path) -> list[Path]:
    from grpc_tools import protoc

    files = sorted((PROTO_DIR / "worldsim" / "v1").glob("*.proto"))
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
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    if not args.check:
        for f in generate(OUT):
            print(f"wrote {f}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [f.name for f in fresh if not (OUT / f.name).exists() or (OUT / f.name).read_text() != f.read_text()]
    if stale:
        print(f"stale gRPC stubs: {stale}; run python -m worldsim.serve.codegen", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
