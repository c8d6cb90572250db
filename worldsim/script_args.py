"""Command-line arguments from a dataclass, for the CleanRL-style scripts in ``examples/``.

Each field is a flag (``--total-timesteps``) and the string literal right after a field is its help.
`tyro <https://github.com/brentyi/tyro>`_ is used when installed; otherwise a small argparse
parser is built from the fields (str, int, float and bool fields).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from typing import Any, TypeVar

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (string literals right after the field)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)  # type: ignore[union-attr]
    return docs


def parse_args(cls: type[T], description: str | None = None, argv: list[str] | None = None) -> T:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into an instance of the dataclass ``cls``."""
    if argv is None:
        try:
            import tyro
        except ImportError:
            pass
        else:
            return tyro.cli(cls, description=description)
    docs = field_docs(cls)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{docs.get(f.name, '')} (default: {f.default!r})"
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, help=help_)
    values: dict[str, Any] = vars(p.parse_args(argv))
    return cls(**values)
