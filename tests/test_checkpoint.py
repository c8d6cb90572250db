"""Checkpoint integrity: the tensor hash, finite weights, old files, and one-line CLI errors."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worldsim import checkpoint as ckpt
from worldsim.checkpoint import CheckpointError
from worldsim.engine.world import WorldModel
from worldsim.testing import tiny_world


def _split(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.safetensors"
    tiny_world(seed=1).save(path)
    return path


def _flipped(good: Path, out: Path, n_bytes: int = 64) -> Path:
    """``n_bytes`` bytes XOR-ed in the middle of the tensor data (the header stays intact)."""
    header, data = _split(good.read_bytes())
    mid = len(data) // 2
    data = data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + n_bytes]) + data[mid + n_bytes :]
    out.write_bytes(_join(header, data))
    return out


def _nan(good: Path, out: Path) -> Path:
    """A consistent file (its hash matches) whose weights hold NaNs: a diverged training run."""
    world = WorldModel.load(good, device="cpu")
    tensors = world.state_tensors()
    tensors["denoiser.out.weight"] = torch.full_like(tensors["denoiser.out.weight"], float("nan"))
    ckpt.save_file(out, tensors, world.config, {})
    return out


def _unhashed(good: Path, out: Path) -> Path:
    header, data = _split(good.read_bytes())
    header["__metadata__"].pop(ckpt.HASH_KEY)
    out.write_bytes(_join(header, data))
    return out


def test_save_writes_a_hash_that_load_checks(good: Path) -> None:
    header, _ = _split(good.read_bytes())
    digest = header["__metadata__"][ckpt.HASH_KEY]
    assert len(digest) == 64 and int(digest, 16) >= 0
    world = WorldModel.load(good, device="cpu")
    assert ckpt.tensor_digest(world.state_tensors()) == digest  # the loaded weights are the saved ones


def test_bit_flips_in_the_tensor_data_are_refused(good: Path, tmp_path: Path) -> None:
    for n in (64, 1):
        bad = _flipped(good, tmp_path / f"flip{n}.safetensors", n)
        with pytest.raises(CheckpointError, match="does not match the checkpoint's SHA-256.*--no-verify"):
            WorldModel.load(bad, device="cpu")
    # The escape hatch loads the damaged file as it is.
    world = WorldModel.load(bad, device="cpu", verify=False)
    assert ckpt.tensor_digest(world.state_tensors()) != ckpt.tensor_digest(WorldModel.load(good).state_tensors())


def test_non_finite_weights_are_refused(good: Path, tmp_path: Path) -> None:
    bad = _nan(good, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match=r"non-finite \(NaN or inf\) weights in denoiser.out.weight"):
        WorldModel.load(bad, device="cpu")


def test_a_file_without_a_hash_loads_with_one_warning(good: Path, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    old = _unhashed(good, tmp_path / "old.safetensors")
    with caplog.at_level(logging.WARNING, logger="worldsim.checkpoint"):
        a = WorldModel.load(old, device="cpu")
        b = WorldModel.load(old, device="cpu")
        WorldModel.load(good, device="cpu")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no tensor hash" in warnings[0].getMessage()
    assert str(old) in warnings[0].getMessage()
    assert ckpt.tensor_digest(a.state_tensors()) == ckpt.tensor_digest(b.state_tensors())
    # An old file with NaN weights is still refused: finiteness does not need the hash.
    nan_old = _unhashed(_nan(good, tmp_path / "nan.safetensors"), tmp_path / "nan_old.safetensors")
    with pytest.raises(CheckpointError, match="non-finite"):
        WorldModel.load(nan_old, device="cpu")


def _bad_files(good: Path, tmp_path: Path) -> dict[str, Path]:
    raw = good.read_bytes()
    header, data = _split(raw)
    files = {
        "empty": b"",
        "truncated": raw[: len(raw) // 2],
        "corrupt header": raw[:8] + b"{not json" + raw[17:],
        "not a checkpoint": _join({**header, "__metadata__": {}}, data),
    }
    out = {}
    for name, content in files.items():
        out[name] = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        out[name].write_bytes(content)
    out["bit flips"] = _flipped(good, tmp_path / "flip.safetensors")
    out["NaN weights"] = _nan(good, tmp_path / "nan.safetensors")
    out["missing"] = tmp_path / "missing.safetensors"
    return out


def test_serve_on_each_bad_file_exits_2_with_one_line(good: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from worldsim.cli import main

    for name, path in _bad_files(good, tmp_path).items():
        assert main(["serve", str(path), "--port", "0"]) == 2, name
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("worldsim serve: "), (name, err)
        assert str(path) in lines[0] and "Traceback" not in err, (name, err)


def test_serve_bad_flag_values_exit_2_with_one_line(good: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from worldsim.cli import main

    for flags, words in [
        (["--max-sessions", "0"], "--max-sessions"),
        (["--max-sessions", "-1"], "--max-sessions"),
        (["--max-sessions-per-client", "-1"], "--max-sessions-per-client"),
        (["--port", "70000"], "--port"),
        (["--idle-timeout", "-1"], "--idle-timeout"),
        (["--max-message-bytes", "0"], "--max-message-bytes"),
        (["--tls-cert", "c.pem"], "--tls-key"),
    ]:
        assert main(["serve", str(good), *flags]) == 2, flags
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (flags, lines)


def test_verbose_adds_the_traceback(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from worldsim.cli import main

    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert main(["serve", str(empty), "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("worldsim serve: ")


def test_the_worldsim_command_prints_one_line(good: Path, tmp_path: Path) -> None:
    """The real entry point (a subprocess), on a corrupt file: exit code 2, one line on stderr."""
    bad = _flipped(good, tmp_path / "flip.safetensors")
    code = "import sys; from worldsim.cli import main; sys.exit(main())"
    res = subprocess.run([sys.executable, "-c", code, "serve", str(bad)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "SHA-256" in lines[0] and "--no-verify" in lines[0], res.stderr
