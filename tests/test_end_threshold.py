"""The world's end threshold: the termination probability a step reports and the threshold that
turns it into an end, set on a file with ``worldsim sampler --term-threshold``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worldsim.engine.world import WorldModel
from worldsim.testing import tiny_world


def test_a_step_reports_the_probability_its_end_is_decided_by() -> None:
    world = tiny_world()
    sess = world.session(batch=3, seed=[0, 1, 2])
    sess.reset()
    for _ in range(4):
        out = sess.step(np.array([0, 1, 0]))
        assert out.p_terminated.shape == (3,) and out.p_terminated.dtype == np.float32
        assert ((out.p_terminated >= 0) & (out.p_terminated <= 1)).all()
        np.testing.assert_array_equal(out.terminated, out.p_terminated > world.config.term_threshold)


def test_sampler_command_sets_the_threshold(
    tiny_world_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worldsim.cli import main

    out = tmp_path / "t.safetensors"
    assert main(["sampler", str(tiny_world_path), "--term-threshold", "0.35", "--out", str(out)]) == 0
    w = WorldModel.load(out, device="cpu", compile=False)
    assert w.config.term_threshold == 0.35 and w.provenance["threshold"]["from"] == 0.5
    assert main(["sampler", str(out), "--term-threshold", "1.5"]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err
    assert WorldModel.load(out, device="cpu", compile=False).config.term_threshold == 0.35  # nothing written
