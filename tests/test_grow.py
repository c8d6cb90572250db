"""``worldsim grow``: a deeper world that plays the same frames until it is fine-tuned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim import checkpoint as ckpt
from worldsim.cli import main
from worldsim.engine import WorldModel
from worldsim.grow_cli import insertion_plan
from worldsim.testing import tiny_world


def _frames(path: Path) -> np.ndarray:
    s = WorldModel.load(path).session(batch=2, seed=3)
    s.reset()
    return np.stack([s.step(np.array([i % 2, (i // 2) % 2])).frames for i in range(12)])  # past the cache window


def test_insertion_plan_spreads_the_copies() -> None:
    assert insertion_plan(6, 8) == [0, 1, 2, 2, 3, 4, 5, 5]
    assert insertion_plan(6, 9) == [0, 1, 1, 2, 3, 3, 4, 5, 5]
    assert insertion_plan(2, 4) == [0, 0, 1, 1]
    for bad in (6, 5, 13):
        with pytest.raises(ValueError, match="--depth"):
            insertion_plan(6, bad)


def test_grown_world_is_the_same_function_and_can_learn(tmp_path: Path) -> None:
    src, out = tmp_path / "a.safetensors", tmp_path / "grown.safetensors"
    tiny_world(seed=0).save(src)
    assert main(["grow", str(src), "--depth", "3", "--out", str(out)]) == 0
    tensors, meta = ckpt.load_file(out)
    ckpt.verify_tensors(tensors, meta, out)
    entry = meta["provenance"]["grow"]
    assert entry["depth"] == [2, 3] and entry["copies_of"] == [0, 1, 1]
    grown = WorldModel.load(out)
    assert grown.config.denoiser.depth == 3 and len(grown.denoiser.blocks) == 3
    # the same frames from the same seed and actions, past the window of 4 (fill and full cache states)
    np.testing.assert_array_equal(_frames(src), _frames(out))
    # the copy is gated off but its gates get a gradient: a fine-tune can open them
    den = grown.config.denoiser
    x, t = torch.randn(1, 2, den.latent_channels, den.latent_size, den.latent_size), torch.rand(1, 2)
    action, has = torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool)
    grown.denoiser.requires_grad_(True)  # loaded for inference: frozen
    grown.denoiser(x, t, action, has).v.square().sum().backward()
    grad = grown.denoiser.blocks[2].ada.weight.grad
    assert grad is not None and grad[2 * den.dim : 3 * den.dim].abs().sum() > 0
    original = ckpt.load_file(src)[0]
    for name, t_ in tensors.items():  # codec, heads, start clips untouched
        if not name.startswith("denoiser.blocks."):
            assert torch.equal(t_, original[name]), name


def test_grow_refuses_a_shallower_world_and_names_a_corrupt_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "a.safetensors", tmp_path / "out.safetensors"
    tiny_world(seed=0).save(src)
    assert main(["grow", str(src), "--depth", "2", "--out", str(out)]) != 0
    assert "more than the world's 2 blocks" in capsys.readouterr().err
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(src.read_bytes()[:-100])
    assert main(["grow", str(broken), "--depth", "3", "--out", str(out)]) != 0
    assert "truncated" in capsys.readouterr().err
    assert not out.exists()
