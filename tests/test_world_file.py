"""World files through the engine: a bit-exact round trip, clear errors on corrupt files, atomic saves,
old keys."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.checkpoint import CheckpointError
from worldsim.engine import SamplerConfig, WorldModel
from worldsim.testing import tiny_world


def test_checkpoint_round_trip_bit_exact(tmp_path: Path) -> None:
    world = tiny_world(seed=3)
    path = tmp_path / "w.safetensors"
    world.save(path, provenance={"test": True})
    loaded = WorldModel.load(path, device="cpu")
    for (k, v), (k2, v2) in zip(world.state_tensors().items(), loaded.state_tensors().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert loaded.config == world.config
    assert loaded.provenance["test"] is True
    s1, s2 = world.session(1, seed=5), loaded.session(1, seed=5)
    s1.reset(), s2.reset()
    assert np.array_equal(s1.step([1]).frames, s2.step([1]).frames)


def _write_header(path: Path, header: dict, data: bytes) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_corrupt_checkpoints_raise_clear_errors(tmp_path: Path) -> None:
    world = tiny_world()
    good = tmp_path / "good.safetensors"
    world.save(good)
    raw = good.read_bytes()

    with pytest.raises(CheckpointError, match="no checkpoint file"):
        WorldModel.load(tmp_path / "missing.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        WorldModel.load(trunc)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or empty"):
        WorldModel.load(empty)

    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    wrong_version = tmp_path / "v99.safetensors"
    _write_header(wrong_version, {**header, "__metadata__": {**header["__metadata__"], "format_version": "99"}}, data)
    with pytest.raises(CheckpointError, match="format version 99"):
        WorldModel.load(wrong_version)
    not_ours = tmp_path / "other.safetensors"
    _write_header(not_ours, {**header, "__metadata__": {}}, data)
    with pytest.raises(CheckpointError, match="not a worldsim checkpoint"):
        WorldModel.load(not_ours)

    from safetensors.torch import save_file

    tensors = world.state_tensors()
    meta = header["__metadata__"]
    missing = dict(tensors)
    missing.pop("denoiser.out.weight")
    save_file(missing, str(tmp_path / "missing_t.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="missing tensor.*denoiser.out.weight"):
        WorldModel.load(tmp_path / "missing_t.safetensors")
    bad_shape = dict(tensors)
    bad_shape["codec.latent_std"] = torch.ones(7)
    save_file(bad_shape, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="shape mismatch for codec.latent_std"):
        WorldModel.load(tmp_path / "shape.safetensors")


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that dies midway leaves the old checkpoint intact and no temp file behind."""
    import safetensors.torch

    world = tiny_world()
    path = tmp_path / "w.safetensors"
    world.save(path)
    before = path.read_bytes()

    def boom(*a: object, **k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        world.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_old_guidance_key_loads(tmp_path: Path) -> None:
    """Checkpoints written before the rename store ``sampler.cfg_scale``; they load as before."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    world = tiny_world(sampler=SamplerConfig(guidance_scale=2.0))
    new = tmp_path / "new.safetensors"
    world.save(new)
    with safe_open(str(new), "pt") as f:
        meta = dict(f.metadata())
    config = json.loads(meta["config"])
    config["sampler"]["cfg_scale"] = config["sampler"].pop("guidance_scale")
    old = tmp_path / "old.safetensors"
    save_file(world.state_tensors(), str(old), metadata={**meta, "config": json.dumps(config)})
    a, b = WorldModel.load(new, device="cpu"), WorldModel.load(old, device="cpu")
    assert b.config == a.config and b.config.sampler.guidance_scale == 2.0
    sa, sb = a.session(1, seed=4), b.session(1, seed=4)
    sa.reset(), sb.reset()
    assert np.array_equal(sa.step([1]).frames, sb.step([1]).frames)
