"""Shared fixtures: tiny random-weight worlds saved as real checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
# Sessions run eager in the suite (a compile per test process would cost minutes);
# tests/test_compiled.py turns compilation on explicitly and checks it against eager.
os.environ.setdefault("WORLDSIM_COMPILE", "0")
# Worlds run in fp32 unless a test asks for another dtype: the engine's default is bf16 on a CPU
# with native bf16 (tests/test_dtype.py::test_default_dtype_follows_the_hardware checks the rule),
# and the suite's tolerances are for fp32 on any CPU.
os.environ.setdefault("WORLDSIM_DTYPE", "float32")
# Training stages encode anew instead of writing latents under ~/.cache (tests/test_train_speed.py
# turns the cache on in a temporary folder).
os.environ.setdefault("WORLDSIM_LATENT_CACHE", "0")


@pytest.fixture(scope="session")
def tiny_world_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Discrete(2) tiny world checkpoint (random weights)."""
    from worldsim.testing import tiny_world

    path = tmp_path_factory.mktemp("worlds") / "tiny.safetensors"
    tiny_world().save(path)
    return path


@pytest.fixture()
def tiny_world():  # type: ignore[no-untyped-def]
    from worldsim.testing import tiny_world as make

    return make()
