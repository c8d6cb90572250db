"""Module rules, checked on the source: model/ knows nothing of the engine; no surface knows the KV cache.

Imports are read with ``ast`` (function-level and ``TYPE_CHECKING`` imports included), so a rule
cannot be dodged by importing late.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import worldsim

PKG = Path(worldsim.__file__).parent
SURFACES = ("gym", "serve", "play", "client.py")
CACHE_MODULE = "worldsim.engine.cache"


def _modules(*parts: str) -> list[Path]:
    out: list[Path] = []
    for part in parts:
        p = PKG / part
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p] if p.exists() else []
    return out


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) of every import in ``source`` (the code of ``module``),
    relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out += [(base, a.name, node.lineno) for a in node.names]
    return sorted(out, key=lambda x: x[2])


def file_imports(path: Path) -> list[tuple[str, str | None, int]]:
    return imports(path.read_text(), _module_name(path), path.name == "__init__.py")


def _violations(paths: list[Path], bad: object) -> list[str]:
    return [
        f"{p.relative_to(PKG.parent)}:{line} imports {mod}{'.' + name if name else ''}"
        for p in paths
        for mod, name, line in file_imports(p)
        if bad(mod, name)  # type: ignore[operator]
    ]


def _is_engine(mod: str, name: str | None) -> bool:
    return mod == "worldsim.engine" or mod.startswith("worldsim.engine.") or (mod == "worldsim" and name == "engine")


def _knows_cache(mod: str, name: str | None) -> bool:
    if mod == CACHE_MODULE or mod.startswith(CACHE_MODULE + "."):
        return True
    if mod == "worldsim.engine" and name in ("cache", "KVCache"):
        return True
    return name == "KVCache"


def test_model_imports_nothing_from_engine() -> None:
    paths = _modules("model")
    assert paths, "worldsim/model/ not found"
    assert _violations(paths, _is_engine) == []


@pytest.mark.parametrize("surface", SURFACES)
def test_surfaces_do_not_know_the_kv_cache(surface: str) -> None:
    paths = _modules(surface)
    assert paths, f"worldsim/{surface} not found"
    assert _violations(paths, _knows_cache) == []


def test_the_checks_see_violations() -> None:
    """The rules flag what they forbid (absolute, relative, late imports) and let the public API through."""
    src = (
        "from ..engine.cache import KVCache\n"
        "import worldsim.engine.sampler\n"
        "def f():\n    from worldsim.engine import KVCache, WorldModel\n"
        "from worldsim.engine import Session\n"
        "from .attention import attend\n"
    )
    found = [(m, n) for m, n, _ in imports(src, "worldsim.model.denoiser")]
    assert found[0] == ("worldsim.engine.cache", "KVCache") and found[-1] == ("worldsim.model.attention", "attend")
    assert [_is_engine(m, n) for m, n in found] == [True, True, True, True, True, False]
    assert [_knows_cache(m, n) for m, n in found] == [True, False, True, False, False, False]
