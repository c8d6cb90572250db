"""``worldsim blend``: the denoiser of (1 - w) A + w B, everything else A's, mistakes named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim import checkpoint as ckpt
from worldsim.cli import main
from worldsim.engine import WorldModel
from worldsim.testing import tiny_world


@pytest.fixture()
def two_finetunes(tmp_path: Path) -> tuple[Path, Path]:
    """A and B: one tiny world, B's denoiser moved as a fine-tune would (codec untouched)."""
    a = tiny_world(seed=0)
    a.save(tmp_path / "a.safetensors")
    b = WorldModel.load(tmp_path / "a.safetensors")
    with torch.no_grad():
        for p in b.denoiser.parameters():
            p.add_(0.1 * torch.randn_like(p))
    b.save(tmp_path / "b.safetensors", provenance={"note": "fine-tune B"})
    return tmp_path / "a.safetensors", tmp_path / "b.safetensors"


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_file(path)[0]


def test_blend_interpolates_the_denoiser_only(two_finetunes: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_finetunes
    ta, tb = _tensors(a), _tensors(b)
    for w in (0.0, 0.25, 1.0):
        out = tmp_path / f"w{w}.safetensors"
        assert main(["blend", str(a), str(b), "--weight", str(w), "--out", str(out)]) == 0
        tensors, meta = ckpt.load_file(out)
        ckpt.verify_tensors(tensors, meta, out)
        moved = 0
        for name, t in tensors.items():
            if name.startswith("denoiser.") and t.is_floating_point():
                want = ((1 - w) * ta[name].double() + w * tb[name].double()).to(t.dtype)
                assert torch.equal(t, want), name
                moved += int(not torch.equal(ta[name], tb[name]))
            else:  # codec, start clips: A's, byte for byte
                assert torch.equal(t, ta[name]), name
        assert moved > 10
        entry = meta["provenance"]["blend"]
        assert entry["weight"] == w and entry["with_provenance"]["note"] == "fine-tune B"
    # weight 0 is A's world: the same frames from the same seed and actions
    frames = []
    for path in (a, tmp_path / "w0.0.safetensors"):
        s = WorldModel.load(path).session(batch=1, seed=3)
        s.reset()
        frames.append(np.stack([s.step(np.array([i % 2])).frames for i in range(5)]))
    np.testing.assert_array_equal(frames[0], frames[1])
    # a blend of a blend records both entries
    twice = tmp_path / "twice.safetensors"
    assert main(["blend", str(tmp_path / "w0.25.safetensors"), str(b), "--weight", "0.5", "--out", str(twice)]) == 0
    assert {"blend", "blend-2"} <= set(ckpt.load_file(twice)[1]["provenance"])


def test_blend_refuses_what_is_not_one_world(
    two_finetunes: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two_finetunes
    out = tmp_path / "out.safetensors"
    for bad in ("1.5", "-0.1", "nan"):
        assert main(["blend", str(a), str(b), "--weight", bad, "--out", str(out)]) != 0
        assert "[0, 1]" in capsys.readouterr().err
    # another codec: a different world, not a fine-tune of A
    other = tmp_path / "other.safetensors"
    tiny_world(seed=1).save(other)
    assert main(["blend", str(a), str(other), "--weight", "0.5", "--out", str(out)]) != 0
    assert "codec" in capsys.readouterr().err
    # another architecture
    wide = tmp_path / "wide.safetensors"
    from worldsim.testing import tiny_config

    den = tiny_config().denoiser
    import dataclasses

    tiny_world(seed=0, denoiser=dataclasses.replace(den, dim=48)).save(wide)
    assert main(["blend", str(a), str(wide), "--weight", "0.5", "--out", str(out)]) != 0
    assert "denoiser" in capsys.readouterr().err
    # a corrupt file is named, nothing is written
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b.read_bytes()[:-100])
    assert main(["blend", str(a), str(broken), "--weight", "0.5", "--out", str(out)]) != 0
    assert "truncated" in capsys.readouterr().err
    assert not out.exists()
