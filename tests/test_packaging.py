"""The package list in pyproject.toml covers every package folder (including the bundled worlds)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "worldsim").rglob("__init__.py")}
    found |= {
        "worldsim.envs" + "".join("." + x for x in p.parent.relative_to(ROOT / "envs").parts)
        for p in (ROOT / "envs").rglob("__init__.py")
    }
    assert found == listed, f"missing: {found - listed}, stale: {listed - found}"
